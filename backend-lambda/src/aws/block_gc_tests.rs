//! Maintenance and block collection in AWS mode, on DynamoDB Local (AWS's own server: its
//! condition and batch rules) and S3 on moto: garbage disappears and live files read back
//! byte-identical; a commit racing a sweep, interleaved step by step every way the protocol
//! allows, never loses a block; and a thousand-odd blocks go in bounded requests.
//!
//! Time is the run's `now` argument, so "two hours later" needs no waiting: S3 stamps the
//! uploads with the real time, the runs are told a later one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jewel_wire::{Content, NewKind, Node, ROOT_ID};

use super::block_gc::{Collector, GcSettings, Swept};
use super::dynamo::DynamoStore;
use super::gc_guard::GuardedBlobs;
use super::s3::S3BlobStore;
use super::scheduled::{run, MaintenanceSettings};
use super::testing::{dynamodb_local, fresh_settings, moto, sdk_for, Emulator};
use crate::blobs::{sha256_hex, BlobStore};
use crate::store::{now_ns, MetaStore, NewNode, Origin};

const HOUR: i64 = 3600 * 1_000_000_000;

struct Setup {
    meta: Arc<DynamoStore>,
    s3: Arc<S3BlobStore>,
    /// What the service serves with: S3 behind the collector's guard.
    blobs: GuardedBlobs,
    user: String,
    _servers: (Arc<Emulator>, Arc<Emulator>),
}

impl Setup {
    async fn new() -> Option<Setup> {
        let ddb = dynamodb_local()?;
        let m = moto()?;
        let settings = fresh_settings();
        let meta = Arc::new(DynamoStore::new(&sdk_for(&ddb.url).await, &settings));
        meta.create_table().await.unwrap();
        let s3 = Arc::new(S3BlobStore::new(&sdk_for(&m.url).await, &settings));
        s3.create_bucket().await.unwrap();
        let (user, _) = crate::admin::add_user(meta.as_ref(), "gc").await.unwrap();
        Some(Setup {
            blobs: GuardedBlobs::new(s3.clone(), meta.clone()),
            meta,
            s3,
            user: user.id,
            _servers: (ddb, m),
        })
    }

    fn collector(&self) -> Collector<'_> {
        Collector {
            meta: &self.meta,
            blobs: &self.s3,
            settings: GcSettings {
                grace: Duration::from_secs(3600),
                stale_claim: Duration::from_secs(3600),
            },
        }
    }

    /// Stores a block as a client's presigned PUT does; returns its hash.
    async fn upload(&self, data: &[u8]) -> String {
        let hash = sha256_hex(data);
        self.s3
            .put(&self.user, &hash, Bytes::copy_from_slice(data))
            .await
            .unwrap();
        hash
    }

    async fn file(&self, name: &str, size: u64, blocks: Vec<String>) -> Node {
        let node = NewNode {
            parent: ROOT_ID,
            name: name.into(),
            kind: NewKind::File {
                content: Content {
                    size,
                    blocks,
                    inline: None,
                },
            },
            mode: 0o644,
            mtime_ns: 0,
        };
        self.meta
            .create(&self.user, &node, origin())
            .await
            .unwrap()
            .0
    }

    async fn stored(&self) -> BTreeSet<String> {
        self.s3
            .list(&self.user)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.hash)
            .collect()
    }

    /// A file's content as a client downloads it, block after block.
    async fn read_back(&self, node: &Node) -> Vec<u8> {
        let node = self.meta.get_node(&self.user, node.id).await.unwrap();
        let mut out = Vec::new();
        for hash in &node.blocks {
            out.extend_from_slice(&self.blobs.get(&self.user, hash).await.unwrap());
        }
        out
    }

    /// What a client does before it commits: asks which blocks are missing (through the
    /// guard, as `POST /blocks/missing` and the commit's own check do) and uploads those,
    /// until none is; returns how many uploads that took.
    async fn upload_until_present(&self, data: &[u8]) -> usize {
        let hash = sha256_hex(data);
        for uploads in 0..5 {
            let missing = self
                .blobs
                .missing(&self.user, std::slice::from_ref(&hash))
                .await
                .unwrap();
            if missing.is_empty() {
                return uploads;
            }
            self.upload(data).await;
        }
        panic!("block {hash} still missing after 5 uploads");
    }
}

fn origin() -> Origin {
    Origin {
        device: None,
        now_ns: now_ns(),
    }
}

fn bytes(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

fn settings(grace_hours: u64) -> MaintenanceSettings {
    MaintenanceSettings {
        trash_retention: Duration::ZERO,
        gc: GcSettings {
            grace: Duration::from_secs(grace_hours * 3600),
            stale_claim: Duration::from_secs(3600),
        },
        ..MaintenanceSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_and_live_files_read_back_byte_identical() {
    let Some(t) = Setup::new().await else { return };
    let u = &t.user;
    // A live file of two blocks; a block it shares with a file that is then deleted; the
    // deleted file's own block; an edited file's first content (an earlier version); a block
    // uploaded and never committed.
    let (a1, a2) = (bytes(1, 300_000), bytes(2, 200_000));
    let (shared, deleted, first, second, orphan) = (
        bytes(3, 1000),
        bytes(4, 1000),
        bytes(5, 1000),
        bytes(6, 1000),
        bytes(7, 1000),
    );
    let mut hashes = Vec::new();
    for data in [&a1, &a2, &shared, &deleted, &first, &second, &orphan] {
        hashes.push(t.upload(data).await);
    }
    let [h_a1, h_a2, h_shared, h_deleted, h_first, h_second, h_orphan] =
        <[String; 7]>::try_from(hashes).unwrap();
    let live = t
        .file("live", 500_000, vec![h_a1.clone(), h_a2.clone()])
        .await;
    let keeper = t.file("keeper", 1000, vec![h_shared.clone()]).await;
    let gone = t
        .file("gone", 2000, vec![h_shared.clone(), h_deleted.clone()])
        .await;
    t.meta
        .remove(u, gone.id, None, false, origin())
        .await
        .unwrap();
    let edited = t.file("edited", 1000, vec![h_first.clone()]).await;
    let second_content = Content {
        inline: None,
        size: 1000,
        blocks: vec![h_second.clone()],
    };
    t.meta
        .commit_content(
            u,
            edited.id,
            edited.version,
            &second_content,
            None,
            origin(),
        )
        .await
        .unwrap();
    let all: BTreeSet<String> = t.stored().await;
    assert_eq!(all.len(), 7);

    // Now: every block is younger than the grace, nothing is condemned; the trash and the
    // earlier version (retention zero here) go.
    let now = now_ns();
    let r = run(&t.meta, &t.s3, settings(1), now).await.unwrap();
    assert!(r.finished);
    assert_eq!((r.trash_entries, r.versions), (1, 1), "{r:?}");
    assert_eq!(r.blocks, Swept::default(), "{r:?}");
    assert_eq!(t.stored().await, all);

    // Two hours on: the three garbage blocks are condemned, still stored.
    let r = run(&t.meta, &t.s3, settings(1), now + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(r.blocks.condemned, 3, "{r:?}");
    assert_eq!(r.blocks.deleted, 0, "{r:?}");
    assert_eq!(t.stored().await, all);
    // Half an hour later the condemnations are too young to act on.
    let r = run(&t.meta, &t.s3, settings(1), now + 5 * HOUR / 2)
        .await
        .unwrap();
    assert_eq!(r.blocks, Swept::default(), "{r:?}");

    // An hour after condemning: they go, in one DeleteObjects.
    let r = run(&t.meta, &t.s3, settings(1), now + 3 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        r.blocks,
        Swept {
            claimed: 3,
            deleted: 3,
            delete_requests: 1,
            ..Swept::default()
        }
    );
    let want: BTreeSet<String> = [&h_a1, &h_a2, &h_shared, &h_second]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(t.stored().await, want);
    assert!(!want.contains(&h_orphan) && !want.contains(&h_deleted) && !want.contains(&h_first));
    assert!(t.meta.condemned_blocks(u).await.unwrap().is_empty());
    assert_eq!(t.meta.gc_cursor().await.unwrap(), None);

    // Live files read back byte-identical.
    let mut a = a1.clone();
    a.extend_from_slice(&a2);
    assert_eq!(t.read_back(&live).await, a);
    assert_eq!(t.read_back(&keeper).await, shared);
    assert_eq!(t.read_back(&edited).await, second);

    // And a further run finds nothing more to do.
    let r = run(&t.meta, &t.s3, settings(1), now + 6 * HOUR)
        .await
        .unwrap();
    assert_eq!(r.blocks, Swept::default(), "{r:?}");
}

/// The `missing` answer comes before the sweep that would delete the block, the commit after:
/// the answer rescued the condemned block, so the sweep cannot claim it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_answered_present_before_a_sweep_survives_the_commit_after_it() {
    let Some(t) = Setup::new().await else { return };
    let data = bytes(9, 70_000);
    let hash = t.upload(&data).await;
    let c = t.collector();
    let now = now_ns();
    // Garbage (uploaded two hours "ago", never committed): condemned.
    assert_eq!(
        c.sweep_user(&t.user, now + 2 * HOUR)
            .await
            .unwrap()
            .condemned,
        1
    );

    // A client saves the same bytes: `missing` says the block is there (no upload)...
    assert_eq!(t.upload_until_present(&data).await, 0);
    // ... a sweep an hour after the condemnation runs ...
    let s = c.sweep_user(&t.user, now + 3 * HOUR).await.unwrap();
    assert_eq!((s.claimed, s.deleted), (0, 0), "{s:?}");
    // ... then the commit lands, and later sweeps keep the block.
    let node = t.file("late", data.len() as u64, vec![hash.clone()]).await;
    for hours in [4, 6, 8] {
        let s = c.sweep_user(&t.user, now + hours * HOUR).await.unwrap();
        assert_eq!(s.deleted, 0, "{s:?}");
    }
    assert_eq!(t.read_back(&node).await, data);
}

/// The block is checked while nothing has condemned it; a sweep then finds it unreferenced
/// (the commit is still on its way) and condemns it; the commit lands; the sweep that may
/// claim it (a grace later) sees the reference and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_condemned_while_its_commit_is_on_the_way_is_kept() {
    let Some(t) = Setup::new().await else { return };
    let data = bytes(10, 70_000);
    let hash = t.upload(&data).await;
    let c = t.collector();
    let now = now_ns();
    assert_eq!(t.upload_until_present(&data).await, 0);
    let s = c.sweep_user(&t.user, now + 2 * HOUR).await.unwrap();
    assert_eq!(s.condemned, 1, "the commit is not stored yet: {s:?}");
    let node = t.file("slow", data.len() as u64, vec![hash.clone()]).await;
    let s = c.sweep_user(&t.user, now + 3 * HOUR).await.unwrap();
    assert_eq!(
        (s.claimed, s.deleted, s.rescued),
        (1, 0, 1),
        "claimed, then found referenced and kept: {s:?}"
    );
    assert!(t.meta.condemned_blocks(&t.user).await.unwrap().is_empty());
    assert_eq!(t.stored().await, BTreeSet::from([hash]));
    assert_eq!(t.read_back(&node).await, data);
}

/// The sweep has claimed the block before the client asks: `missing` answers it missing even
/// though S3 still holds it, the client uploads it, the sweep deletes it (upload and all),
/// the client's check before its commit finds it missing again and uploads it again; the
/// commit that follows names a block that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_claimed_before_the_check_is_uploaded_again_before_the_commit() {
    let Some(t) = Setup::new().await else { return };
    let data = bytes(11, 70_000);
    let hash = t.upload(&data).await;
    let c = t.collector();
    let now = now_ns();
    assert_eq!(
        c.sweep_user(&t.user, now + 2 * HOUR)
            .await
            .unwrap()
            .condemned,
        1
    );
    // The next sweep, step by step: it claims...
    let items = t.meta.condemned_blocks(&t.user).await.unwrap();
    let claimed = c.claim(&t.user, &items, now + 3 * HOUR).await.unwrap();
    assert_eq!(claimed, vec![hash.clone()]);
    // ... the client's `missing` now says missing although S3 holds the block ...
    assert!(t.stored().await.contains(&hash));
    assert_eq!(
        t.blobs
            .missing(&t.user, std::slice::from_ref(&hash))
            .await
            .unwrap(),
        vec![hash.clone()]
    );
    t.upload(&data).await;
    // ... the sweep deletes it, the fresh upload with it ...
    let (refs, s) = c.sweep(&t.user, &claimed).await.unwrap();
    assert_eq!(s.deleted, 1);
    c.mark(&t.user, &items, &claimed, &refs, now + 3 * HOUR)
        .await
        .unwrap();
    assert!(t.stored().await.is_empty());
    // ... so the check before the commit finds it missing, and the client uploads again.
    assert_eq!(t.upload_until_present(&data).await, 1);
    let node = t.file("again", data.len() as u64, vec![hash.clone()]).await;
    for hours in [5, 7, 9] {
        let s = c.sweep_user(&t.user, now + hours * HOUR).await.unwrap();
        assert_eq!(s.deleted, 0, "{s:?}");
    }
    assert_eq!(t.read_back(&node).await, data);
}

/// 1,234 garbage blocks: the listing follows S3's 1000-key pages, the deletes go in two
/// `DeleteObjects` (at most 1000 keys each), the claims are forgotten 25 to a batch write
/// (DynamoDB would refuse more), and the condemnations are read in 1000-item pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_blocks_go_in_bounded_requests() {
    let Some(t) = Setup::new().await else { return };
    const N: usize = 1234;
    let started = Instant::now();
    let keep = t.upload(b"keep").await;
    let node = t.file("keep", 4, vec![keep.clone()]).await;
    let hashes: Vec<String> = futures::stream::iter(0..N)
        .map(|i| {
            let t = &t;
            async move {
                let data = format!("garbage block {i}");
                Ok::<_, ()>(t.upload(data.as_bytes()).await)
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(hashes.len(), N);
    eprintln!("uploaded {N} blocks in {:?}", started.elapsed());
    let c = t.collector();
    let now = now_ns();
    let marked = Instant::now();
    let s = c.sweep_user(&t.user, now + 2 * HOUR).await.unwrap();
    assert_eq!(s.condemned, N, "{s:?}");
    let mark_time = marked.elapsed();
    assert_eq!(t.meta.condemned_blocks(&t.user).await.unwrap().len(), N);
    let swept = Instant::now();
    let s = c.sweep_user(&t.user, now + 3 * HOUR).await.unwrap();
    let sweep_time = swept.elapsed();
    assert_eq!(
        s,
        Swept {
            claimed: N,
            deleted: N,
            delete_requests: 2,
            ..Swept::default()
        }
    );
    assert_eq!(t.stored().await, BTreeSet::from([keep]));
    assert!(t.meta.condemned_blocks(&t.user).await.unwrap().is_empty());
    assert_eq!(t.read_back(&node).await, b"keep");
    let per_1000 = |d: Duration| d.as_secs_f64() * 1000.0 / N as f64;
    eprintln!(
        "{N} garbage blocks: marked in {mark_time:?} ({:.2} s per 1000), swept in {sweep_time:?} ({:.2} s per 1000)",
        per_1000(mark_time),
        per_1000(sweep_time)
    );
}

/// A run with no time left does nothing but remembers nothing either; one stopped after a
/// user goes on from the next user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_out_of_time_leaves_the_rest_to_the_next() {
    let Some(t) = Setup::new().await else { return };
    crate::admin::add_user(t.meta.as_ref(), "gd").await.unwrap();
    let out_of_time = MaintenanceSettings {
        budget: Duration::ZERO,
        ..settings(1)
    };
    let r = run(&t.meta, &t.s3, out_of_time, now_ns()).await.unwrap();
    assert_eq!((r.users, r.finished), (0, false));
    // The cursor says where a cut run stopped: the next run starts after it.
    t.meta.set_gc_cursor(Some("gc")).await.unwrap();
    let r = run(&t.meta, &t.s3, settings(1), now_ns()).await.unwrap();
    assert_eq!((r.users, r.finished), (1, true), "only `gd` was left");
    assert_eq!(t.meta.gc_cursor().await.unwrap(), None);
    let r = run(&t.meta, &t.s3, settings(1), now_ns()).await.unwrap();
    assert_eq!(
        r.users, 2,
        "a finished run starts from the first user again"
    );
}
