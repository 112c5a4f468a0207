//! `ChangeBus`: tells a user's devices that something changed.
//!
//! The change log in the `MetaStore` is the truth; the bus only wakes devices up, carrying the
//! events so that a device usually needs no extra request. A device that sees a gap in sequence
//! numbers, or reconnects, catches up from the log with `changes since`.
//!
//! Two engines: in-process (`local.rs`, read by the long-poll route) and one SQS queue per device
//! (AWS mode, read by the client directly). Both pass one conformance suite.

use std::time::Duration;

use async_trait::async_trait;
use jewel_wire::{ChangeEvent, DeviceId, Listen, NodeId, Seq};

use crate::store::UserId;

pub mod local;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("this change bus is not read by long-poll")]
    PollUnsupported,
    #[error("change bus failure: {0}")]
    Backend(String),
}

pub type BusResult<T> = Result<T, BusError>;

#[async_trait]
pub trait ChangeBus: Send + Sync + 'static {
    /// Prepares the device's channel (a queue in SQS) and says how the device listens.
    async fn register_device(&self, user: &UserId, device: DeviceId) -> BusResult<Listen>;
    /// Whether `publish` needs the list of the user's devices (a queue per device does; an
    /// in-process bus does not, which saves a store read per change).
    fn wants_device_list(&self) -> bool {
        true
    }
    /// Delivers committed events to the user's devices (all of them; a device skips its own).
    async fn publish(
        &self,
        user: &UserId,
        devices: &[DeviceId],
        events: &[ChangeEvent],
    ) -> BusResult<()>;
    /// Waits until the user's newest sequence number exceeds `after` or `timeout` passes;
    /// returns the newest sequence number known to the bus. Only for buses read by long-poll.
    async fn wait_after(&self, user: &UserId, after: Seq, timeout: Duration) -> BusResult<Seq>;
    /// Waits until an event after `wait.after` touches one of `wait.folders` (as
    /// [`event_folders`](crate::store::event_folders) names them), the device watches a new
    /// folder (its [`ChangeBus::watch_generation`] is no longer `wait.watch_generation`), or
    /// `timeout` passes. A bus may wake early (the caller reads, finds nothing new, and waits
    /// again); the default wakes on any of the user's events.
    async fn wait_in_folders(
        &self,
        user: &UserId,
        wait: FolderWait<'_>,
        timeout: Duration,
    ) -> BusResult<()> {
        self.wait_after(user, wait.after, timeout).await.map(|_| ())
    }
    /// A number that changes whenever the device starts watching a folder
    /// ([`ChangeBus::watch_added`]); read before the device's folders, so a wait on them ends
    /// when they have grown since.
    fn watch_generation(&self, _user: &UserId, _device: DeviceId) -> u64 {
        0
    }
    /// The device watches a new folder (it listed it): its waits end, to wait on it too.
    fn watch_added(&self, _user: &UserId, _device: DeviceId) {}
    /// Deletes whatever the bus keeps for the user's devices (the user is being removed; SQS:
    /// their queues); returns how many channels went. Nothing to do for an in-process bus.
    async fn remove_user(&self, _user: &UserId) -> BusResult<u64> {
        Ok(0)
    }
    /// Deletes whatever the bus keeps for one device (it was unlinked; SQS: its queue, so the
    /// credentials it holds reach nothing). Nothing to do for an in-process bus.
    async fn remove_device(&self, _user: &UserId, _device: DeviceId) -> BusResult<()> {
        Ok(())
    }
}

/// What a long-poll waits for: an event after `after` in one of the device's `folders`, or a
/// change of its watches since `watch_generation`.
#[derive(Debug, Clone, Copy)]
pub struct FolderWait<'a> {
    pub device: DeviceId,
    pub folders: &'a [NodeId],
    pub after: Seq,
    pub watch_generation: u64,
}

/// Runs `futures` with at most `limit` of them in flight at once; the results come in the
/// given order. A fan-out to every device of a user goes through this, so its cost in
/// connections and memory is bounded whatever the number of devices.
pub async fn bounded<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) -> Vec<F::Output> {
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffered(limit.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn bounded_keeps_at_most_limit_in_flight_and_the_order() {
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let tasks = (0..50).map(|i| {
            let (now, peak) = (&now, &peak);
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                i
            }
        });
        let out = super::bounded(tasks, 8).await;
        assert_eq!(out, (0..50).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 8);
    }
}
