//! Reconciliation: the safety net under the uploader's conflict rules.
//!
//! The uploader settles each unusual answer of the service (a conflict, a refusal, a name
//! taken, a node gone, an edit brought back after a delete) with a local repair; the change
//! listener skips our own echoes and never hides a local node behind a remote one of the
//! same name (a local remove or rename that uncovers such a name marks the directory: the
//! local node may go without ever reaching the service). Each repair is written for its
//! case; a case nobody thought of could leave the tree cache showing something the service
//! does not hold, for good, because nothing would ever tell this device otherwise. So every
//! such answer also marks the directories it touched as **suspect** (a refusal marks every
//! cached listing), and once the journal is drained (no local change left to protect, the
//! uploader idle and online) each suspect directory is listed again from the service and the
//! cache takes the service's truth for every node without local changes; the kernel is told
//! about each name that changed. Subtle points:
//! - it runs only with an empty journal, and stops as soon as a new change is journaled (the
//!   rest stays marked): local changes always win locally until uploaded;
//! - listings read while events arrive are corrected as in `ensure_listing` (recent events
//!   are replayed on top), and a cached node is only replaced by a listing of the same or a
//!   newer version, so an older listing never undoes a newer event;
//! - a suspect directory the service no longer has is dropped from its parent here;
//! - bounded: at most [`MAX_DIRS_PER_PASS`] listings per pass; the rest waits for the next.
//!   Unusual answers are rare, so this costs nothing in the common case, and each pass is
//!   logged with what it corrected.

use std::collections::{BTreeMap, HashSet};

use jewel_wire::*;

use super::journal::is_local;
use super::{Core, CoreErr, Inval};

/// At most this many directories are re-listed in one pass (each is one request or a few).
pub const MAX_DIRS_PER_PASS: usize = 256;

/// Directories whose cached listing may differ from the service's.
#[derive(Default)]
pub struct Suspect {
    dirs: HashSet<NodeId>,
    /// Every cached listing (after a refusal: the local change shown may never happen).
    all: bool,
    /// A pass is running (its directories are taken out of `dirs`).
    busy: bool,
}

impl Core {
    /// Marks directories for reconciliation once the journal is drained.
    pub(crate) fn suspect(&self, dirs: impl IntoIterator<Item = NodeId>) {
        let dirs: Vec<NodeId> = dirs.into_iter().collect();
        tracing::debug!(?dirs, "marked for reconciliation");
        self.suspect.lock().unwrap().dirs.extend(dirs);
        self.journal.changed.notify_waiters(); // wakes an idle uploader
    }

    /// Marks every cached listing for reconciliation.
    pub(crate) fn suspect_all(&self) {
        self.suspect.lock().unwrap().all = true;
    }

    /// The place (parent) a node has in the tree cache now, if known.
    pub(crate) fn parent_here(&self, id: NodeId) -> Option<NodeId> {
        self.tree.get(id).map(|n| n.parent)
    }

    /// Whether directories wait for reconciliation; takes in those where a local node left
    /// a name it shadowed (`Tree::take_uncovered`), whatever took it away.
    pub fn has_suspects(&self) -> bool {
        let uncovered = self.tree.take_uncovered();
        let mut s = self.suspect.lock().unwrap();
        s.dirs.extend(uncovered);
        s.all || s.busy || !s.dirs.is_empty()
    }

    /// Re-lists the suspect directories from the service (see the module doc). Returns the
    /// number of directory entries corrected.
    pub async fn reconcile(&self) -> usize {
        let (mut dirs, all) = {
            let mut s = self.suspect.lock().unwrap();
            let all = std::mem::take(&mut s.all);
            s.busy = true;
            (std::mem::take(&mut s.dirs), all)
        };
        if all {
            dirs.extend(self.tree.listed_dirs());
        }
        let mut todo: Vec<NodeId> = dirs
            .into_iter()
            .map(|d| self.resolve(d))
            .filter(|d| !is_local(*d) && self.tree.has_listing(*d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        todo.sort_unstable();
        let mut corrected = 0;
        let mut done = 0;
        while let Some(dir) = todo.pop() {
            if done >= MAX_DIRS_PER_PASS || self.journal.pending() > 0 {
                todo.push(dir);
                break;
            }
            done += 1;
            let before: BTreeMap<String, NodeId> = self
                .tree
                .listing(dir)
                .unwrap_or_default()
                .into_iter()
                .collect();
            match self.read_listing(dir, true).await {
                Ok(()) => {}
                Err(CoreErr::NotFound) => {
                    // The directory itself is gone on the service.
                    if !self.has_local_changes(dir) {
                        if let Some(n) = self.tree.get(dir) {
                            self.tree.unlink(n.parent, &n.name, dir);
                            self.inval(Inval::Delete {
                                parent: n.parent,
                                child: dir,
                                name: n.name.clone(),
                            });
                            corrected += 1;
                        }
                        self.tree.forget(dir);
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!("reconciliation waits: {e}");
                    todo.push(dir);
                    break;
                }
            }
            let after: BTreeMap<String, NodeId> = self
                .tree
                .listing(dir)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let mut changed = false;
            for (name, id) in &before {
                if after.get(name) != Some(id) {
                    changed = true;
                    corrected += 1;
                    self.inval(Inval::Entry {
                        parent: dir,
                        name: name.clone(),
                    });
                    // Listed here no more and known nowhere else: forget what we knew.
                    let here = self.tree.get(*id).is_some_and(|n| n.parent == dir);
                    if here && !self.has_local_changes(*id) && !after.values().any(|v| v == id) {
                        self.tree.forget(*id);
                    }
                }
            }
            for (name, id) in &after {
                if before.get(name) != Some(id) {
                    changed = true;
                    corrected += 1;
                    self.inval(Inval::Entry {
                        parent: dir,
                        name: name.clone(),
                    });
                }
            }
            if changed {
                self.inval(Inval::Inode(dir));
            }
        }
        {
            let mut s = self.suspect.lock().unwrap();
            s.dirs.extend(todo);
            s.busy = false;
        }
        if corrected > 0 {
            tracing::info!(
                "reconciled {done} directories with the service: {corrected} entries corrected"
            );
        } else {
            tracing::debug!("reconciled {done} directories with the service: all as cached");
        }
        corrected
    }
}
