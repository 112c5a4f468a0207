//! Inode numbers: which number the kernel knows a node by, and which node a number names.
//!
//! A node's inode number is its id (the root, id 1, is `FUSE_ROOT_ID`). A file, folder or
//! symlink made here first gets a **local id** ([`Inodes::new_local_id`], from
//! [`LOCAL_ID_BASE`] up, far above anything the service hands out), because the service has
//! not named it yet; when its create is uploaded the service's id is recorded as an
//! **alias** (local → service). The kernel goes on knowing the node by the local number (its
//! dentry stays, and a lookup after the kernel forgot it answers the same number, as
//! SEMANTICS promises), so every way across is kept here:
//!
//! - [`Inodes::resolve`]: a number the kernel sends → the node's id now (through the aliases,
//!   local → service, possibly local → local → service);
//! - [`Inodes::ino`]: a node → the number the kernel knows it by (its first local id while
//!   the aliases remember it, else its id);
//! - [`Inodes::earlier_ids`]: every local number a node had, so that news about it (an
//!   invalidation) reaches the kernel under each.
//!
//! The aliases are made durable by the journal (its `aliases` file and `=` log records,
//! written before the create's entry is dropped; see `journal.rs`), which fills this map on
//! replay and on every upload of a create ([`Journal::add_alias`]); once the journal is empty
//! at start nothing names a local id any more and the map starts afresh. The tree cache keeps
//! its own copy of the aliases for its maps (`Tree::alias`).
//!
//! [`Journal::add_alias`]: super::journal::Journal::add_alias

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use jewel_wire::NodeId;

/// Ids at or above this are local (not yet known to the service).
pub const LOCAL_ID_BASE: NodeId = 1 << 62;

pub fn is_local(id: NodeId) -> bool {
    id >= LOCAL_ID_BASE
}

/// The map between inode numbers and node ids (see the module docs).
pub struct Inodes {
    /// Local id → the id it became (the service's, or another local id).
    aliases: Mutex<HashMap<NodeId, NodeId>>,
    /// The reverse of `aliases`: the local ids each id had (see [`Inodes::earlier_ids`]).
    earlier: Mutex<HashMap<NodeId, Vec<NodeId>>>,
    /// The next local id. Started from the clock, so a restart never hands out a local id
    /// that an alias or a kernel dentry of an earlier run still names.
    next_local: AtomicU64,
}

/// Each id's earlier local ids, from the local → service id aliases.
fn reverse(aliases: &HashMap<NodeId, NodeId>) -> HashMap<NodeId, Vec<NodeId>> {
    let mut out: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for (local, server) in aliases {
        out.entry(*server).or_default().push(*local);
    }
    out
}

impl Inodes {
    /// The map with the aliases the journal read back; local ids start at `first_local`.
    pub fn new(aliases: HashMap<NodeId, NodeId>, first_local: NodeId) -> Inodes {
        Inodes {
            earlier: Mutex::new(reverse(&aliases)),
            aliases: Mutex::new(aliases),
            next_local: AtomicU64::new(first_local),
        }
    }

    /// A fresh local id for a node made here.
    pub fn new_local_id(&self) -> NodeId {
        self.next_local.fetch_add(1, Ordering::Relaxed)
    }

    /// Local id `local` is `server` from now on (already made durable by the journal).
    pub fn add(&self, local: NodeId, server: NodeId) {
        self.aliases.lock().unwrap().insert(local, server);
        self.earlier
            .lock()
            .unwrap()
            .entry(server)
            .or_default()
            .push(local);
    }

    /// The local ids that stand for `id` (directly or through other local ids): the kernel
    /// keeps knowing a file or folder made here by the inode number it was created with, so
    /// a change to it must be told to the kernel under those numbers too.
    pub fn earlier_ids(&self, id: NodeId) -> Vec<NodeId> {
        let earlier = self.earlier.lock().unwrap();
        let mut out = Vec::new();
        let mut todo = vec![id];
        while let Some(next) = todo.pop() {
            for local in earlier.get(&next).into_iter().flatten() {
                if *local != id && !out.contains(local) && out.len() < 16 {
                    out.push(*local);
                    todo.push(*local);
                }
            }
        }
        out
    }

    /// The service's id for `id` (itself unless it is an uploaded local id).
    pub fn resolve(&self, id: NodeId) -> NodeId {
        let aliases = self.aliases.lock().unwrap();
        let mut id = id;
        for _ in 0..16 {
            match aliases.get(&id) {
                Some(next) if *next != id => id = *next,
                _ => break,
            }
        }
        id
    }

    /// The inode number the kernel knows node `id` by: a file or folder made here keeps
    /// the local id it was created with for as long as the aliases remember it (lookups
    /// after the kernel forgot it answer the same number, as SEMANTICS promises); every
    /// other node is known by its service id.
    pub fn ino(&self, id: NodeId) -> u64 {
        self.earlier_ids(id).into_iter().min().unwrap_or(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_id_resolves_to_the_service_id_and_back() {
        let a = LOCAL_ID_BASE + 1;
        let b = LOCAL_ID_BASE + 2;
        let inodes = Inodes::new(HashMap::from([(a, 77)]), LOCAL_ID_BASE + 10);
        inodes.add(b, a);
        assert_eq!(inodes.resolve(a), 77);
        assert_eq!(inodes.resolve(b), 77);
        assert_eq!(inodes.resolve(5), 5);
        assert_eq!(inodes.ino(77), a, "the first local number stays");
        assert_eq!(inodes.ino(5), 5);
        let mut ids = inodes.earlier_ids(77);
        ids.sort();
        assert_eq!(ids, vec![a, b]);
        assert!(is_local(inodes.new_local_id()));
    }
}
