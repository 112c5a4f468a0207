//! How this device listens: its id across mounts, how it attaches to the service, and
//! applying what a change source heard (the sources themselves, poll and SQS, live in
//! `sources/`, and talk to the service only through the [`Api`](super::api::Api)).
//!
//! - **The device id across mounts**: `device.json` in the cache directory holds one id per
//!   (server, user). A mount first renews that device's listener; only when the service no
//!   longer knows it (`NotFound`: the device or the whole service was reset) does it register
//!   a new device. So one machine stays one device (one queue in AWS mode) however often it
//!   mounts; a second cache directory is a second device.
//! - **A new device lists again**: the service sends a device the changes in the folders it
//!   listed as that device, so a newly registered device marks every cached listing for
//!   reconciliation (read again, as this device, once the journal is drained).
//! - **Echoes of an earlier mount**: events naming this device are skipped as echoes only
//!   when newer than the log's head at attach time (`echo_floor`); older ones come from an
//!   earlier mount, which may have been killed after a commit but before its tree snapshot,
//!   so they are applied.
//! - **A batch** ([`apply_batch`]) is applied by sequence number, whatever order its pages
//!   came in; a gap, or a source asking for it, sends the listener to the change feed. A
//!   `Listen` the source renewed is kept, so the listener's next wait uses a source built for
//!   it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use jewel_wire::*;
use serde::{Deserialize, Serialize};

use super::api::ApiResult;
use super::Core;
use crate::sources::Batch;

/// Applies a batch's pages in sequence order; false when the feed must be read (a gap, or the
/// source asked for it).
pub fn apply_batch(core: &Core, mut batch: Batch) -> bool {
    if let Some(listen) = batch.renewed.take() {
        *core.listen.lock().unwrap() = listen;
    }
    batch
        .pages
        .sort_by_key(|p| p.events.iter().map(|e| e.seq).min().unwrap_or(p.latest_seq));
    let mut complete = !batch.catch_up;
    for page in &batch.pages {
        if !core.apply_page(page) {
            complete = false;
        }
    }
    complete
}

impl Core {
    /// Makes this mount a device of the service: the one saved for this server and user if the
    /// service still knows it (renewing its listener), else a newly registered one (saved).
    pub(crate) async fn attach_device(&self, me: &Me) -> ApiResult<()> {
        let file = self.cfg.cache_dir.join(DEVICE_FILE);
        let server = &self.cfg.server;
        let dev = match saved_device(&file, server, &me.user) {
            Some(id) => match self.api.renew_listen(id).await {
                Ok(dev) => Some(dev),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    tracing::info!("the service forgot device {id}: registering anew");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let dev = match dev {
            Some(dev) => dev,
            None => {
                let dev = self.api.register_device(&self.cfg.device_name).await?;
                if let Err(e) = save_device(&file, server, &me.user, dev.id) {
                    tracing::warn!("cannot save the device id in {}: {e}", file.display());
                }
                // The service sends a device the changes in the folders it listed as that
                // device: the listings cached under another id are read again as this one.
                if !self.tree.listed_dirs().is_empty() {
                    self.suspect_all();
                }
                dev
            }
        };
        self.api.set_device(dev.id);
        // Changes up to now that name this device were made by an earlier mount (a snapshot
        // restored offline may not know them yet): apply them like anyone else's.
        self.echo_floor.store(me.latest_seq, Ordering::Relaxed);
        *self.listen.lock().unwrap() = dev.listen;
        self.device.store(dev.id, Ordering::Relaxed);
        self.journal.changed.notify_waiters(); // the uploader waits for a device
        Ok(())
    }
}

/// The file in the cache directory that keeps this machine's device ids.
pub const DEVICE_FILE: &str = "device.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct DeviceFile {
    devices: Vec<SavedDevice>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedDevice {
    server: String,
    user: String,
    id: DeviceId,
}

fn read_devices(file: &Path) -> DeviceFile {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The device id saved for this server and user, if any.
pub fn saved_device(file: &Path, server: &str, user: &str) -> Option<DeviceId> {
    read_devices(file)
        .devices
        .into_iter()
        .find(|d| d.server == server && d.user == user)
        .map(|d| d.id)
}

/// Saves the device id for this server and user (replacing an older one), atomically.
pub fn save_device(file: &Path, server: &str, user: &str, id: DeviceId) -> std::io::Result<()> {
    let mut all = read_devices(file);
    all.devices
        .retain(|d| !(d.server == server && d.user == user));
    all.devices.push(SavedDevice {
        server: server.to_string(),
        user: user.to_string(),
        id,
    });
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", file.display()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_kept_per_server_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(DEVICE_FILE);
        assert_eq!(saved_device(&f, "http://a", "alice"), None);
        save_device(&f, "http://a", "alice", 7).unwrap();
        save_device(&f, "http://b", "alice", 8).unwrap();
        save_device(&f, "http://a", "bob", 9).unwrap();
        save_device(&f, "http://a", "alice", 10).unwrap();
        assert_eq!(saved_device(&f, "http://a", "alice"), Some(10));
        assert_eq!(saved_device(&f, "http://b", "alice"), Some(8));
        assert_eq!(saved_device(&f, "http://a", "bob"), Some(9));
        std::fs::write(&f, "not json").unwrap();
        assert_eq!(saved_device(&f, "http://a", "alice"), None);
    }

    fn page(seqs: &[Seq], latest: Seq) -> ChangePage {
        ChangePage {
            events: seqs
                .iter()
                .map(|&seq| ChangeEvent {
                    inline: None,
                    seq,
                    op: ChangeOp::Remove,
                    node: Node {
                        id: 1_000_000 + seq,
                        parent: ROOT_ID,
                        name: format!("f{seq}"),
                        kind: NodeKind::File,
                        size: 0,
                        mode: 0o644,
                        mtime_ns: 0,
                        version: 1,
                        blocks: vec![],
                        target: None,
                    },
                    from: None,
                    device: None,
                    at_ns: 0,
                })
                .collect(),
            latest_seq: latest,
            through: None,
        }
    }

    /// A core whose service is unreachable (these tests never call it).
    fn offline_core(dir: &Path) -> std::sync::Arc<Core> {
        let api: std::sync::Arc<dyn super::super::api::Api> = std::sync::Arc::new(
            super::super::api::HttpApi::new("http://127.0.0.1:9", "t").unwrap(),
        );
        Core::open(
            super::super::Config::new(dir.to_path_buf(), "dev".into()),
            api,
        )
        .unwrap()
    }

    #[test]
    fn changes_of_an_earlier_mount_of_this_device_are_applied_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let core = offline_core(dir.path());
        core.device.store(7, Ordering::Relaxed);
        core.echo_floor.store(10, Ordering::Relaxed);
        let mut early = page(&[9], 9).events.remove(0);
        early.op = ChangeOp::Upsert;
        early.device = Some(7);
        let mut late = page(&[11], 11).events.remove(0);
        late.op = ChangeOp::Upsert;
        late.device = Some(7);
        core.apply_event(&early);
        core.apply_event(&late);
        assert!(
            core.tree.get(early.node.id).is_some(),
            "made before this mount"
        );
        assert!(core.tree.get(late.node.id).is_none(), "our own echo");
    }

    #[test]
    fn a_batch_applies_out_of_order_pages_and_spots_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let core = offline_core(dir.path());
        core.cursor.store(10, Ordering::Relaxed);
        // Two messages received in reverse order, one repeated: all applied in order.
        let b = Batch {
            pages: vec![page(&[13], 13), page(&[11, 12], 12), page(&[11], 11)],
            ..Batch::default()
        };
        assert!(apply_batch(&core, b));
        assert_eq!(core.cursor.load(Ordering::Relaxed), 13);
        // A missing 14: stop before the gap and ask for the feed.
        let b = Batch {
            pages: vec![page(&[15], 15)],
            ..Batch::default()
        };
        assert!(!apply_batch(&core, b));
        assert_eq!(core.cursor.load(Ordering::Relaxed), 13);
        // An empty page naming a newer sequence number (an event too big for a message).
        assert!(!apply_batch(
            &core,
            Batch {
                pages: vec![page(&[], 14)],
                ..Batch::default()
            }
        ));
        assert!(!apply_batch(
            &core,
            Batch {
                catch_up: true,
                ..Batch::default()
            }
        ));
    }
}
