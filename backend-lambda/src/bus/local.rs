//! The in-process `ChangeBus`: one watch channel per user holding the newest sequence number.
//!
//! Devices read it through the long-poll route: the route waits here until the user's newest
//! sequence number passes the device's cursor, then reads the events from the log. Nothing is
//! queued per device, so a device that is away costs nothing and misses nothing (the log
//! holds what it needs). It serves one process only — which is what `jewel-server` is.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jewel_wire::{ChangeEvent, DeviceId, Listen, Seq};
use tokio::sync::watch;

use super::{BusResult, ChangeBus};
use crate::store::UserId;

#[derive(Default)]
pub struct LocalBus {
    users: Mutex<HashMap<UserId, watch::Sender<Seq>>>,
}

impl LocalBus {
    fn channel(&self, user: &UserId) -> watch::Sender<Seq> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(user.clone())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }
}

#[async_trait]
impl ChangeBus for LocalBus {
    async fn register_device(&self, _user: &UserId, _device: DeviceId) -> BusResult<Listen> {
        Ok(Listen::Poll)
    }

    fn wants_device_list(&self) -> bool {
        false
    }

    async fn publish(
        &self,
        user: &UserId,
        _devices: &[DeviceId],
        events: &[ChangeEvent],
    ) -> BusResult<()> {
        if let Some(newest) = events.iter().map(|e| e.seq).max() {
            self.channel(user)
                .send_modify(|seq| *seq = (*seq).max(newest));
        }
        Ok(())
    }

    async fn wait_after(&self, user: &UserId, after: Seq, timeout: Duration) -> BusResult<Seq> {
        let mut rx = self.channel(user).subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|seq| *seq > after)).await;
        let newest = *rx.borrow();
        Ok(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::change_bus_conformance!(async { (LocalBus::default(), ()) });
}
