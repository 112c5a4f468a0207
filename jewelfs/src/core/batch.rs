//! The uploader's batch path: a run of small independent changes that are ready together
//! (creates, content commits, removes, renames to a free name, attribute changes) goes up in
//! one `POST /batch` instead of a round trip each. On a link of tens of milliseconds that is the difference between a thousand new
//! files taking a minute and taking a second.
//!
//! A batch changes nothing about what the uploader means, only how many requests carry it:
//! - **In order, stopping at the first failure.** The service applies the changes in
//!   journal order and stops at the first that fails; the applied ones are handled exactly
//!   as their single answers would be (`created`, `committed`, a remove's `drop_gone`), the
//!   failed one is sent again on its own through the single path, which owns every conflict
//!   rule (`uploader.rs`), and the ones after it are taken again next time.
//! - **Independent.** A change joins only if everything it names already exists on the
//!   service: a file in a folder created in the same batch waits for the next one (its
//!   folder's id is known only from the answer), and so does a second change of one file
//!   (it is based on the version the first one's answer makes) — except an attribute
//!   change, which is based on no version.
//! - **Renames only to a free name.** A rename goes in a batch as `no_replace` (the service
//!   takes no other kind there): one the app made over an existing file, or onto a name the
//!   service finds taken, is the change that ends the batch and goes again on its own, where
//!   every rule for a taken name lives. Exchanges never join.
//! - **Bounded.** At most [`MAX_BATCH_CHANGES`] changes and [`MAX_BATCH_BYTES`] of content
//!   behind the first change, so a big file does not hold up the small ones behind it for
//!   longer than its own upload, and no answer grows without bound.
//! - **Content first, together.** The blocks of every file in the batch are sent before the
//!   batch (what the pre-uploader has not sent yet: one `missing` question for all of
//!   them), so the batch itself only names them.
//! - **Lost answers.** Every change in a batch counts as sent (the service may have applied
//!   any prefix of it): never rewritten or cancelled after. Sent again, the applied prefix
//!   answers "exists" / "conflict" with our own content, which the single path recognises.
//!
//! An older service without the route answers `NotFound` for the batch itself: batching
//! stops for this mount and changes go one by one.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jewel_wire::*;

use super::journal::{is_local, Entry, LocalKind, Op, Seen};
use super::uploader::{Fail, Pacing, Res};
use super::Core;

/// The most content a batch carries behind its first change.
pub const MAX_BATCH_BYTES: u64 = 8 << 20;

impl Core {
    /// The entries after `first` that go up with it in one batch; empty: `first` goes
    /// alone, by the single path.
    pub(crate) fn take_batch(&self, first: &Entry) -> Vec<Entry> {
        if !self.batching.load(Ordering::Relaxed) || !self.batchable(first, &HashSet::new()) {
            return Vec::new();
        }
        let mut made_here: HashSet<NodeId> = created_node(first).into_iter().collect();
        let mut touched: HashSet<NodeId> = self.changed_node(first).into_iter().collect();
        let mut bytes = 0u64;
        self.journal
            .take_more(first.seq, self.cfg.settle_ms, MAX_BATCH_CHANGES - 1, |e| {
                if !self.batchable(e, &made_here) {
                    return false;
                }
                // A second change of one node waits for the first one's answer: it is based
                // on the version that answer makes (the journal rebases it then). An
                // attribute change is based on no version, so it may follow in the batch.
                if let Some(id) = self.changed_node(e) {
                    let unconditional = matches!(e.op, Op::SetAttr { .. });
                    if !touched.insert(id) && !unconditional {
                        return false;
                    }
                }
                bytes += content_bytes(&e.op);
                if bytes > MAX_BATCH_BYTES {
                    return false;
                }
                made_here.extend(created_node(e));
                true
            })
    }

    /// Whether `entry` can go in a batch: a create, content commit or remove whose nodes
    /// the service knows already (not ones made earlier in this batch, `made_here`).
    fn batchable(&self, entry: &Entry, made_here: &HashSet<NodeId>) -> bool {
        let known = |id: NodeId| {
            let id = self.journal.resolve(id);
            !is_local(id) && !made_here.contains(&id)
        };
        match &entry.op {
            Op::Create { node, parent, .. } => {
                self.journal.resolve(*node) == *node && known(*parent)
            }
            Op::Content { node, .. } | Op::Delete { node, .. } | Op::SetAttr { node, .. } => {
                known(*node)
            }
            Op::Move {
                node,
                new_parent,
                mode,
                expect,
                ..
            } => {
                *mode != MoveMode::Exchange
                    && matches!(expect, None | Some(Seen::Free))
                    && known(*node)
                    && known(*new_parent)
                    && self.base_of(*node).is_some()
            }
        }
    }

    /// Uploads `entries` (taken in flight, in journal order) as one batch and ends each
    /// one's attempt. Returns the pause before the uploader's next try, if any.
    pub(crate) async fn upload_batch(
        &self,
        entries: &[Entry],
        pacing: &mut Pacing,
    ) -> Option<Duration> {
        let sent = match self.batch_changes(entries).await {
            Ok(changes) => changes,
            Err(fail) => return self.fall_back(entries, Some(fail), pacing).await,
        };
        let changes = sent.iter().map(|s| s.change.clone()).collect();
        let answer = match self.api.batch(&Batch { changes }).await {
            Ok(answer) => answer,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                tracing::info!("the service takes no batches: changes go one by one");
                self.batching.store(false, Ordering::Relaxed);
                return self.fall_back(entries, None, pacing).await;
            }
            Err(e) => return self.fall_back(entries, Some(e.into()), pacing).await,
        };
        let mut pause = None;
        let mut answers = answer.done.into_iter();
        for (i, (entry, sent)) in entries.iter().zip(&sent).enumerate() {
            let result = match (answers.next(), i) {
                (Some(node), _) => {
                    self.uploading.store(entry.seq, Ordering::Relaxed);
                    let applied = self.apply_batch_answer(entry, sent, node);
                    self.uploading.store(0, Ordering::Relaxed);
                    applied
                }
                // The change that ended the batch: on its own, through every conflict rule.
                (None, _) if answer.failed.is_some() && pause.is_none() => {
                    self.uploading.store(entry.seq, Ordering::Relaxed);
                    let result = self.upload(entry).await;
                    self.uploading.store(0, Ordering::Relaxed);
                    result
                }
                // Not applied by the service: taken again next time.
                (None, _) => {
                    self.journal.retry_later(entry.seq);
                    continue;
                }
            };
            let failed = result.is_err();
            pause = pause.max(self.finish(entry, result, pacing));
            if failed {
                // Everything after a failed change waits for it.
                for later in &entries[i + 1..] {
                    self.journal.retry_later(later.seq);
                }
                break;
            }
        }
        pause
    }

    /// The batch could not go: the first entry goes by the single path (which knows every
    /// rule and error), the others are taken again next time. `fail`: why not, when the
    /// failure is the service's or the link's (then the first entry waits as well).
    async fn fall_back(
        &self,
        entries: &[Entry],
        fail: Option<Fail>,
        pacing: &mut Pacing,
    ) -> Option<Duration> {
        for later in &entries[1..] {
            self.journal.retry_later(later.seq);
        }
        let first = &entries[0];
        if let Some(fail @ (Fail::Transient(_) | Fail::Retry(_))) = fail {
            return self.finish(first, Err(fail), pacing);
        }
        self.uploading.store(first.seq, Ordering::Relaxed);
        let result = self.upload(first).await;
        self.uploading.store(0, Ordering::Relaxed);
        self.finish(first, result, pacing)
    }

    /// The version a rename of `node` is based on: the one this device knows (none: the
    /// rename goes alone, and the single path asks the service).
    fn base_of(&self, node: NodeId) -> Option<Version> {
        let id = self.journal.resolve(node);
        self.tree.get(id).map(|n| n.version).filter(|v| *v > 0)
    }

    /// The batch's changes, with the content of each file sent first (all files together).
    async fn batch_changes(&self, entries: &[Entry]) -> Res<Vec<Sent>> {
        let data: Vec<(Option<&str>, u64)> = entries
            .iter()
            .map(|e| match &e.op {
                Op::Create {
                    kind: LocalKind::File { data, size },
                    ..
                }
                | Op::Content { data, size, .. } => (data.as_deref(), *size),
                _ => (None, 0),
            })
            .collect();
        let mut contents = self.upload_many(&data).await?.into_iter();
        let mut changes = Vec::with_capacity(entries.len());
        for entry in entries {
            let content = contents.next().unwrap_or_default();
            // What this device knew of the node as the change left (see `apply_batch_answer`).
            let known_blocks = self
                .tree
                .get(self.journal.resolve(entry.op.node()))
                .map(|n| n.blocks.clone());
            let change = match &entry.op {
                Op::Create {
                    parent,
                    name,
                    kind,
                    mode,
                    mtime_ns,
                    ..
                } => Change::Create(CreateNode {
                    parent: self.journal.resolve(*parent),
                    name: name.clone(),
                    kind: match kind {
                        LocalKind::File { .. } => NewKind::File { content },
                        LocalKind::Dir => NewKind::Dir,
                        LocalKind::Symlink { target } => NewKind::Symlink {
                            target: target.clone(),
                        },
                    },
                    mode: Some(*mode),
                    mtime_ns: Some(*mtime_ns),
                }),
                Op::Content {
                    node,
                    base_version,
                    mtime_ns,
                    ..
                } => Change::Commit {
                    id: self.journal.resolve(*node),
                    commit: CommitContent {
                        base_version: *base_version,
                        content,
                        mtime_ns: Some(*mtime_ns),
                    },
                },
                Op::Delete {
                    node, base_version, ..
                } => Change::Remove {
                    id: self.journal.resolve(*node),
                    base_version: *base_version,
                },
                Op::Move {
                    node,
                    new_parent,
                    new_name,
                    ..
                } => Change::Move {
                    id: self.journal.resolve(*node),
                    mv: MoveNode {
                        base_version: self.base_of(*node).unwrap_or_default(),
                        new_parent: self.journal.resolve(*new_parent),
                        new_name: new_name.clone(),
                        mode: MoveMode::NoReplace,
                        expect_target: None,
                    },
                },
                Op::SetAttr {
                    node,
                    mode,
                    mtime_ns,
                } => Change::SetAttr {
                    id: self.journal.resolve(*node),
                    attr: SetAttr {
                        mode: *mode,
                        mtime_ns: *mtime_ns,
                    },
                },
            };
            changes.push(Sent {
                change,
                known_blocks,
            });
        }
        Ok(changes)
    }

    /// The content of each `(data, size)` (empty for `None`): what the pre-uploader sent
    /// already, the rest hashed and their missing blocks sent in one go.
    async fn upload_many(&self, data: &[(Option<&str>, u64)]) -> Res<Vec<Content>> {
        let mut contents = Vec::with_capacity(data.len());
        let mut to_send = Vec::new();
        for (name, size) in data {
            let Some(name) = name else {
                contents.push(Content::default());
                continue;
            };
            // The pre-uploader may be sending this very file: wait for it rather than race.
            for _ in 0..6000 {
                if !self.pre_busy.lock().unwrap().contains(*name) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ready = self.pre.lock().unwrap().remove(*name);
            let content = match ready {
                Some(content) => content,
                None => {
                    let content = self.hash_data(name, *size).await?;
                    if content.inline.is_none() {
                        to_send.push((self.journal.data_path(name), content.blocks.clone()));
                    }
                    content
                }
            };
            contents.push(content);
        }
        if !to_send.is_empty() {
            self.send_blocks(to_send).await?;
        }
        Ok(contents)
    }

    /// Handles the service's answer to one applied change of a batch, as the single path
    /// handles its own answer.
    fn apply_batch_answer(&self, entry: &Entry, sent: &Sent, node: Node) -> Res<()> {
        match &entry.op {
            Op::Create { node: local, .. } => self.created(entry.seq, *local, node),
            Op::Content {
                node: id,
                base_version,
                ..
            } => {
                let id = self.journal.resolve(*id);
                self.committed(entry.seq, id, *base_version, node);
                Ok(())
            }
            Op::Delete { node: id, .. } => {
                self.drop_gone(self.journal.resolve(*id));
                Ok(())
            }
            // The moved version's content is ours only if the version we moved was (as
            // on the single path).
            Op::Move { .. } => {
                let ours = match &sent.change {
                    Change::Move { id, mv } => {
                        self.own.lock().unwrap().get(id) == Some(&mv.base_version)
                    }
                    _ => false,
                };
                self.apply_answer(node, ours);
                Ok(())
            }
            // An attribute change is unconditional: its answer is ours only if it carries
            // the content this device knew when it sent it.
            Op::SetAttr { .. } => {
                let ours = sent.known_blocks.as_ref() == Some(&node.blocks);
                self.apply_answer(node, ours);
                Ok(())
            }
        }
    }
}

/// One change of a batch as sent, with what this device knew of its node then.
pub(crate) struct Sent {
    change: Change,
    known_blocks: Option<Vec<BlockHash>>,
}

impl Core {
    /// The service's node a content change or remove changes.
    fn changed_node(&self, entry: &Entry) -> Option<NodeId> {
        match &entry.op {
            Op::Content { node, .. }
            | Op::Delete { node, .. }
            | Op::Move { node, .. }
            | Op::SetAttr { node, .. } => Some(self.journal.resolve(*node)),
            _ => None,
        }
    }
}

/// The node a create entry makes (its local id).
fn created_node(entry: &Entry) -> Option<NodeId> {
    match &entry.op {
        Op::Create { node, .. } => Some(*node),
        _ => None,
    }
}

/// The bytes of content an entry carries.
fn content_bytes(op: &Op) -> u64 {
    match op {
        Op::Create {
            kind: LocalKind::File { size, .. },
            ..
        }
        | Op::Content { size, .. } => *size,
        _ => 0,
    }
}
