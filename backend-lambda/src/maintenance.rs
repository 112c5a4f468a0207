//! Housekeeping a long-running `jewel-server` does on its own, every [`INTERVAL`]:
//! - **trimming each user's change log** to [`LOG_RETENTION`]. A device that was away longer
//!   gets `cursor_too_old` and re-lists its tree, so trimming never loses a change — it only
//!   bounds the log's size. (In AWS mode DynamoDB's TTL does this without a process.)
//! - **emptying the trash** of deletions older than [`TRASH_RETENTION`] (deleted and
//!   replaced files and folders stay restorable that long), and forgetting earlier versions of
//!   files replaced longer ago, or beyond the newest [`crate::store::MAX_VERSIONS`] of a file,
//!   in both modes (in AWS mode DynamoDB's TTL also ends versions without a process);
//! - **collecting blocks** no live or trashed file references any more, once they are older
//!   than [`BLOCK_GRACE`]: a client uploads blocks *before* the commit that names them, so a
//!   fresh unreferenced block is usually a commit on its way. The collector lists a user's
//!   blocks first, then — holding [`Service::block_guard`] exclusively, so no commit checks
//!   its blocks meanwhile — reads what is referenced and deletes the rest. A commit that
//!   names a block deleted just before is refused (`missing_blocks`) and its client uploads
//!   the block again. Small blocks kept in the database with their nodes (SQLite) go the
//!   same way, under the same guard, but with no grace: one is written in the very change
//!   that names it, so an unnamed one is garbage at once. The guard is one process's, so this collector deletes blocks only where
//!   one process serves everything: the embedded server (local block folder). In AWS mode
//!   many Lambda instances commit at once and no lock spans them: there a scheduled function
//!   collects S3 blocks with a protocol kept in the table (`aws/block_gc.rs`), and empties
//!   the trash (`aws/scheduled.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::service::Service;
use crate::store::now_ns;

/// How long change events are kept: long enough for a laptop back from a month away to catch
/// up by the log instead of re-listing.
pub const LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long deleted (and replaced) files stay in the trash, restorable: a month, like the
/// change log, so what a returning laptop missed can still be found.
pub const TRASH_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How old an unreferenced block must be before it is collected: far longer than any client
/// takes from uploading a block to committing the file that names it.
pub const BLOCK_GRACE: Duration = Duration::from_secs(3600);

/// How often the housekeeping runs.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// What one garbage collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Trash entries (deleted files or folders, with their subtrees) purged for good.
    pub trash_entries: usize,
    /// Earlier versions of files forgotten.
    pub versions: usize,
    /// Blocks deleted from the block store.
    pub blocks: usize,
}

/// Empties old trash and forgets old versions for every user and, when this process is the only one committing (the
/// embedded server), deletes blocks nothing references that are older than `block_grace`.
pub async fn collect_garbage(
    service: &Service,
    trash_retention: Duration,
    block_grace: Duration,
) -> anyhow::Result<Collected> {
    let now = now_ns();
    let mut collected = Collected::default();
    for user in service.meta.list_users().await? {
        let before = now - trash_retention.as_nanos() as i64;
        collected.trash_entries += service.meta.purge_trash(&user.id, before).await?;
        collected.versions += service.meta.purge_versions(&user.id, before).await?;
        if service.local_blobs.is_none() {
            continue;
        }
        let stored = service.blobs.list(&user.id).await?;
        let cutoff = now - block_grace.as_nanos() as i64;
        let _no_commits = service.block_guard.write().await;
        let referenced: HashSet<String> = service
            .meta
            .referenced_blocks(&user.id)
            .await?
            .into_iter()
            .collect();
        for block in stored {
            if block.stored_at_ns < cutoff && !referenced.contains(&block.hash) {
                service.blobs.delete(&user.id, &block.hash).await?;
                collected.blocks += 1;
            }
        }
        collected.blocks += service.meta.collect_small_blocks(&user.id).await?;
    }
    Ok(collected)
}

/// Trims every user's log once.
pub async fn trim_logs(service: &Service, retention: Duration) -> anyhow::Result<usize> {
    let before = now_ns() - retention.as_nanos() as i64;
    let users = service.meta.list_users().await?;
    for user in &users {
        service.meta.trim_log(&user.id, before).await?;
    }
    Ok(users.len())
}

/// Runs [`trim_logs`] and [`collect_garbage`] now and every [`INTERVAL`], in the background, for the process's life.
pub fn spawn(service: Arc<Service>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            match trim_logs(&service, LOG_RETENTION).await {
                Ok(n) => tracing::debug!("trimmed the change logs of {n} users"),
                Err(e) => tracing::warn!(error = %e, "could not trim change logs; will retry"),
            }
            match collect_garbage(&service, TRASH_RETENTION, BLOCK_GRACE).await {
                Ok(c) => tracing::info!(
                    trash_entries = c.trash_entries,
                    versions = c.versions,
                    blocks = c.blocks,
                    "garbage collected"
                ),
                Err(e) => tracing::warn!(error = %e, "could not collect garbage; will retry"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn old_events_are_trimmed_and_devices_told_to_relist() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::embedded(dir.path()).unwrap();
        let (user, _) = crate::admin::add_user(service.meta.as_ref(), "u")
            .await
            .unwrap();
        let origin = crate::store::Origin {
            device: None,
            now_ns: now_ns(),
        };
        for name in ["a", "b"] {
            let node = crate::store::NewNode {
                parent: jewel_wire::ROOT_ID,
                name: name.into(),
                kind: jewel_wire::NewKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
            };
            service.meta.create(&user.id, &node, origin).await.unwrap();
        }
        assert_eq!(
            service
                .meta
                .changes_since(&user.id, 0, 10)
                .await
                .unwrap()
                .events
                .len(),
            2
        );
        // Retention zero: everything but the newest event goes.
        assert_eq!(trim_logs(&service, Duration::ZERO).await.unwrap(), 1);
        let err = service
            .meta
            .changes_since(&user.id, 0, 10)
            .await
            .unwrap_err();
        assert!(matches!(err, crate::store::StoreError::CursorTooOld));
        let latest = service.meta.latest_seq(&user.id).await.unwrap();
        assert!(service
            .meta
            .changes_since(&user.id, latest, 10)
            .await
            .unwrap()
            .events
            .is_empty());
    }

    #[tokio::test]
    async fn old_trash_and_unreferenced_blocks_are_collected() {
        use bytes::Bytes;
        use jewel_wire::{Content, NewKind, ROOT_ID};

        let dir = tempfile::tempdir().unwrap();
        let service = Service::embedded(dir.path()).unwrap();
        let (user, _) = crate::admin::add_user(service.meta.as_ref(), "u")
            .await
            .unwrap();
        let u = &user.id;
        let mut hashes = Vec::new();
        for data in [&b"live"[..], b"deleted", b"orphan", b"edit"] {
            let hash = crate::blobs::sha256_hex(data);
            service
                .blobs
                .put(u, &hash, Bytes::copy_from_slice(data))
                .await
                .unwrap();
            hashes.push(hash);
        }
        let origin = crate::store::Origin {
            device: None,
            now_ns: now_ns(),
        };
        let mut ids = Vec::new();
        for (name, hash) in [("live", &hashes[0]), ("deleted", &hashes[1])] {
            let node = crate::store::NewNode {
                parent: ROOT_ID,
                name: name.into(),
                kind: NewKind::File {
                    content: Content {
                        inline: None,
                        size: 4,
                        blocks: vec![hash.clone()],
                    },
                },
                mode: 0o644,
                mtime_ns: 0,
            };
            ids.push(service.meta.create(u, &node, origin).await.unwrap().0.id);
        }
        service
            .meta
            .remove(u, ids[1], None, false, origin)
            .await
            .unwrap();
        // "live" is edited: its first content becomes an earlier version.
        let edit = Content {
            inline: None,
            size: 4,
            blocks: vec![hashes[3].clone()],
        };
        service
            .meta
            .commit_content(u, ids[0], 1, &edit, None, origin)
            .await
            .unwrap();
        let stored = || async {
            let mut s: Vec<String> = service
                .blobs
                .list(u)
                .await
                .unwrap()
                .into_iter()
                .map(|b| b.hash)
                .collect();
            s.sort();
            s
        };

        // Within the retention and the grace nothing goes.
        let c = collect_garbage(&service, TRASH_RETENTION, BLOCK_GRACE)
            .await
            .unwrap();
        assert_eq!(c, Collected::default());
        assert_eq!(stored().await.len(), 4);
        assert_eq!(
            service
                .meta
                .list_trash(u, None, 1000)
                .await
                .unwrap()
                .entries
                .len(),
            1
        );

        // Trash kept, grace over: only the orphan block goes (trashed content and earlier
        // versions stay restorable).
        let c = collect_garbage(&service, TRASH_RETENTION, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            c,
            Collected {
                blocks: 1,
                ..Collected::default()
            }
        );
        let mut want = vec![hashes[0].clone(), hashes[1].clone(), hashes[3].clone()];
        want.sort();
        assert_eq!(stored().await, want);

        // Retention over too: the deleted file, the earlier version and their blocks go; the
        // live file stays whole.
        let c = collect_garbage(&service, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            c,
            Collected {
                trash_entries: 1,
                versions: 1,
                blocks: 2,
            }
        );
        assert_eq!(stored().await, vec![hashes[3].clone()]);
        assert!(service
            .meta
            .list_trash(u, None, 1000)
            .await
            .unwrap()
            .entries
            .is_empty());
        let live = service.meta.get_node(u, ids[0]).await.unwrap();
        assert_eq!(
            service
                .blobs
                .get(u, &live.blocks[0])
                .await
                .unwrap()
                .as_ref(),
            b"edit"
        );
    }

    /// A small file's block kept in the database with its node: collection keeps it while a
    /// live or trashed file names it, whatever its age, and forgets it once nothing does —
    /// and a block another file still names stays when one of its files goes.
    #[tokio::test]
    async fn small_blocks_in_the_database_go_only_when_nothing_names_them() {
        use jewel_wire::{Content, InlineBytes, NewKind, ROOT_ID};

        let dir = tempfile::tempdir().unwrap();
        let service = Service::embedded(dir.path()).unwrap();
        assert!(service.meta.keeps_small_blocks());
        let (user, _) = crate::admin::add_user(service.meta.as_ref(), "u")
            .await
            .unwrap();
        let u = &user.id;
        let origin = crate::store::Origin {
            device: None,
            now_ns: now_ns(),
        };
        let small = |bytes: &[u8]| Content {
            inline: Some(InlineBytes(bytes.to_vec())),
            size: bytes.len() as u64,
            blocks: vec![crate::blobs::sha256_hex(bytes)],
        };
        let create = |name: &str, content: Content| {
            let node = crate::store::NewNode {
                parent: ROOT_ID,
                name: name.into(),
                kind: NewKind::File { content },
                mode: 0o644,
                mtime_ns: 0,
            };
            let meta = service.meta.clone();
            async move { meta.create(u, &node, origin).await.unwrap().0 }
        };
        let (shared, alone) = (small(b"shared"), small(b"alone"));
        let a = create("a", shared.clone()).await;
        create("b", shared.clone()).await;
        let c = create("c", alone.clone()).await;
        let kept = || async {
            let mut held = service
                .meta
                .small_blocks_held(u, &[shared.blocks[0].clone(), alone.blocks[0].clone()])
                .await
                .unwrap();
            held.sort();
            held
        };
        let both = {
            let mut v = vec![shared.blocks[0].clone(), alone.blocks[0].clone()];
            v.sort();
            v
        };
        assert!(
            service.blobs.list(u).await.unwrap().is_empty(),
            "no block file"
        );

        // No grace for them, yet all named: nothing goes.
        let c0 = collect_garbage(&service, TRASH_RETENTION, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(c0, Collected::default());
        assert_eq!(kept().await, both);
        // Trashed files still name theirs (restorable).
        for id in [a.id, c.id] {
            service
                .meta
                .remove(u, id, None, false, origin)
                .await
                .unwrap();
        }
        let c1 = collect_garbage(&service, TRASH_RETENTION, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(c1, Collected::default());
        assert_eq!(kept().await, both);
        // The trash emptied: "alone" goes; "shared" stays, "b" still names it.
        let c2 = collect_garbage(&service, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            c2,
            Collected {
                trash_entries: 2,
                blocks: 1,
                ..Collected::default()
            }
        );
        assert_eq!(kept().await, [shared.blocks[0].clone()]);
        assert_eq!(
            service
                .meta
                .small_block(u, &shared.blocks[0])
                .await
                .unwrap()
                .as_deref(),
            Some(&b"shared"[..])
        );
        assert_eq!(
            service.meta.small_block(u, &alone.blocks[0]).await.unwrap(),
            None
        );
    }
}
