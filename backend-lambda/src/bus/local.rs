//! The in-process `ChangeBus`: per user, a watch channel holding the newest sequence number,
//! and per folder someone waits on, one holding the newest sequence number of an event in it.
//!
//! Devices read it through the long-poll route: the route waits here until an event after
//! the device's cursor touches a folder the device watches (or, for a device that hears
//! everything, until the user's newest sequence number passes its cursor), then reads the
//! events from the log. Nothing is queued per device, so a device that is away costs nothing
//! and misses nothing (the log holds what it needs). A commit wakes only the devices whose
//! folders it touched: with a thousand devices of one user, each in its own folder, a change
//! wakes the few that watch that folder, not all thousand. A folder's channel exists only
//! while someone waits on it, and starts at the user's newest sequence number (so a waiter
//! may wake once early, never late). A device that lists a new folder bumps its watch
//! generation, which ends its waits (they then wait on the new folder too). It serves one
//! process only — which is what
//! `jewel-server` is.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use jewel_wire::{ChangeEvent, DeviceId, Listen, NodeId, Seq};
use tokio::sync::watch;

use super::{BusResult, ChangeBus, FolderWait};
use crate::store::{event_folders, UserId};

/// A poll waiting on more folders than this waits on the user's channel instead (woken by
/// every change of the user; it reads its page and waits again).
pub const MAX_FOLDERS_PER_WAIT: usize = 256;

type FolderChannels = HashMap<UserId, HashMap<NodeId, watch::Sender<Seq>>>;

#[derive(Default)]
pub struct LocalBus {
    users: Mutex<HashMap<UserId, watch::Sender<Seq>>>,
    folders: Mutex<FolderChannels>,
    /// Per device, a generation bumped when it starts watching a folder.
    devices: Mutex<HashMap<(UserId, DeviceId), watch::Sender<u64>>>,
}

impl LocalBus {
    fn channel(&self, user: &UserId) -> watch::Sender<Seq> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .entry(user.clone())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// The device's watch generation (kept for the life of the process: one small entry
    /// per device that listed a folder).
    fn device_channel(&self, user: &UserId, device: DeviceId) -> watch::Sender<u64> {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .entry((user.clone(), device))
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    fn folders(&self) -> MutexGuard<'_, FolderChannels> {
        self.folders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the folder channels nobody waits on any more when a wait ends (or is cancelled).
struct Unsubscribe<'a> {
    bus: &'a LocalBus,
    user: &'a UserId,
    folders: &'a [NodeId],
}

impl Drop for Unsubscribe<'_> {
    fn drop(&mut self) {
        let mut all = self.bus.folders();
        if let Some(channels) = all.get_mut(self.user) {
            for f in self.folders {
                if channels.get(f).is_some_and(|c| c.receiver_count() == 0) {
                    channels.remove(f);
                }
            }
            if channels.is_empty() {
                all.remove(self.user);
            }
        }
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
        let all = self.folders();
        if let Some(channels) = all.get(user) {
            for event in events {
                for folder in event_folders(event) {
                    if let Some(c) = channels.get(&folder) {
                        c.send_modify(|seq| *seq = (*seq).max(event.seq));
                    }
                }
            }
        }
        Ok(())
    }

    async fn wait_after(&self, user: &UserId, after: Seq, timeout: Duration) -> BusResult<Seq> {
        let mut rx = self.channel(user).subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|seq| *seq > after)).await;
        let newest = *rx.borrow();
        Ok(newest)
    }

    async fn wait_in_folders(
        &self,
        user: &UserId,
        wait: FolderWait<'_>,
        timeout: Duration,
    ) -> BusResult<()> {
        let mut watches = self.device_channel(user, wait.device).subscribe();
        if *watches.borrow_and_update() != wait.watch_generation {
            return Ok(()); // it watches more folders than the caller read
        }
        if wait.folders.is_empty() {
            // Nothing it watches can change: only a new watch (or the timeout) ends the wait,
            // not every change of its user.
            let _ = tokio::time::timeout(timeout, watches.changed()).await;
            return Ok(());
        }
        if wait.folders.len() > MAX_FOLDERS_PER_WAIT {
            let everything = self.wait_after(user, wait.after, timeout);
            tokio::select! {
                _ = everything => {}
                _ = watches.changed() => {}
            }
            return Ok(());
        }
        let user_newest = *self.channel(user).borrow();
        let _unsubscribe = Unsubscribe {
            bus: self,
            user,
            folders: wait.folders,
        };
        let mut receivers: Vec<watch::Receiver<Seq>> = {
            let mut all = self.folders();
            let channels = all.entry(user.clone()).or_default();
            wait.folders
                .iter()
                .map(|f| {
                    channels
                        .entry(*f)
                        .or_insert_with(|| watch::channel(user_newest).0)
                        .subscribe()
                })
                .collect()
        };
        let after = wait.after;
        let news = futures::future::select_all(
            receivers
                .iter_mut()
                .map(|rx| Box::pin(async move { rx.wait_for(|seq| *seq > after).await.is_ok() })),
        );
        let _ = tokio::time::timeout(timeout, async {
            tokio::select! {
                _ = news => {}
                _ = watches.changed() => {}
            }
        })
        .await;
        Ok(())
    }

    fn watch_generation(&self, user: &UserId, device: DeviceId) -> u64 {
        *self.device_channel(user, device).borrow()
    }

    fn watch_added(&self, user: &UserId, device: DeviceId) {
        self.device_channel(user, device)
            .send_modify(|generation| *generation += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::change_bus_conformance!(async { (LocalBus::default(), ()) });

    fn in_folder(seq: Seq, parent: NodeId) -> ChangeEvent {
        let mut e = crate::bus::conformance::event(seq);
        e.node.parent = parent;
        e
    }

    fn wait<'a>(folders: &'a [NodeId], after: Seq) -> FolderWait<'a> {
        FolderWait {
            device: 3,
            folders,
            after,
            watch_generation: 0,
        }
    }

    /// A poll waiting on its folders sleeps through changes elsewhere, wakes for one of its
    /// own, and leaves no channel behind.
    #[tokio::test]
    async fn a_folder_waiter_wakes_only_for_its_folders() {
        let bus = LocalBus::default();
        let u: UserId = "ann".into();
        let long = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        let (woke, (), ()) = tokio::join!(
            async {
                bus.wait_in_folders(&u, wait(&[7, 8], 0), long)
                    .await
                    .unwrap();
                start.elapsed()
            },
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                bus.publish(&u, &[], &[in_folder(1, 9)]).await.unwrap();
            },
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(bus.folders().get(&u).map(|c| c.len()), Some(2));
                bus.publish(&u, &[], &[in_folder(2, 8)]).await.unwrap();
            },
        );
        assert!(
            woke >= Duration::from_millis(300) && woke < Duration::from_secs(5),
            "woken by the event in folder 8, not the one in 9 ({woke:?})"
        );
        assert!(
            bus.folders().is_empty(),
            "no channel left once nobody waits"
        );
        // Already newer than the cursor when it starts: at once.
        let start = tokio::time::Instant::now();
        bus.wait_in_folders(&u, wait(&[8], 0), long).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// A device that starts watching a folder ends its wait, also when it did so between
    /// reading its folders and waiting.
    #[tokio::test]
    async fn a_new_watch_ends_the_wait() {
        let bus = LocalBus::default();
        let u: UserId = "ann".into();
        let long = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        let ((), ()) = tokio::join!(
            async { bus.wait_in_folders(&u, wait(&[7], 0), long).await.unwrap() },
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                bus.watch_added(&u, 3);
            },
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "woken by the new watch"
        );
        let start = tokio::time::Instant::now();
        bus.wait_in_folders(&u, wait(&[7], 0), long).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "generation 0 is stale: at once"
        );
        let mut current = wait(&[7], 0);
        current.watch_generation = bus.watch_generation(&u, 3);
        let waited = bus.wait_in_folders(&u, current, Duration::from_millis(200));
        let start = tokio::time::Instant::now();
        waited.await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "nothing new: the full wait"
        );
    }
}
