//! Open files: how many handles the kernel holds on each file, and what a file that was
//! removed while open still reads.
//!
//! POSIX keeps an unlinked file usable through the descriptors already open on it
//! (`exec 3<f; rm f; cat <&3` prints the file). The tree forgets a removed node and the
//! core drops its local content, so without this owner a read or `fstat` through such a
//! descriptor found nothing (ENOENT) — or, worse, an older version's blocks. When a node
//! with open handles is removed (here, or on another machine), its last view and its
//! local content are kept here as an **orphan** until its last handle closes; the core's
//! reads and attribute lookups fall back to it.
//!
//! Keys are the service's ids as the core resolves them; a node that gets its service id
//! while open is moved over with [`OpenFiles::rekey`] (the core does it where it moves the
//! node's other local state).

use std::collections::HashMap;
use std::sync::Mutex;

use jewel_wire::{Node, NodeId};

use super::LocalContent;

/// What a removed file still reads through its open handles.
#[derive(Clone)]
pub struct Orphan {
    pub node: Node,
    /// Content not (yet) on the service when the node was removed: it is read from here.
    pub content: Option<LocalContent>,
}

#[derive(Default)]
struct Inner {
    handles: HashMap<NodeId, usize>,
    orphans: HashMap<NodeId, Orphan>,
}

#[derive(Default)]
pub struct OpenFiles {
    inner: Mutex<Inner>,
}

impl OpenFiles {
    /// A handle on `id` was opened.
    pub fn opened(&self, id: NodeId) {
        *self.inner.lock().unwrap().handles.entry(id).or_default() += 1;
    }

    /// A handle on `id` was closed; the last one lets go of its orphan. False if no handle
    /// was known under `id`.
    pub fn closed(&self, id: NodeId) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let Some(count) = inner.handles.get_mut(&id) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            inner.handles.remove(&id);
            inner.orphans.remove(&id);
        }
        true
    }

    pub fn is_open(&self, id: NodeId) -> bool {
        self.inner.lock().unwrap().handles.contains_key(&id)
    }

    /// Keeps `orphan` for the handles open on `id` (the first one kept wins: it is the
    /// state at the removal).
    pub fn keep(&self, id: NodeId, orphan: Orphan) {
        let mut inner = self.inner.lock().unwrap();
        if inner.handles.contains_key(&id) {
            inner.orphans.entry(id).or_insert(orphan);
        }
    }

    pub fn orphan(&self, id: NodeId) -> Option<Orphan> {
        self.inner.lock().unwrap().orphans.get(&id).cloned()
    }

    /// Node `local` is `server` from now on.
    pub fn rekey(&self, local: NodeId, server: NodeId) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(count) = inner.handles.remove(&local) {
            *inner.handles.entry(server).or_default() += count;
        }
        if let Some(mut orphan) = inner.orphans.remove(&local) {
            orphan.node.id = server;
            inner.orphans.entry(server).or_insert(orphan);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jewel_wire::NodeKind;

    fn node(id: NodeId) -> Node {
        Node {
            id,
            parent: 1,
            name: "f".into(),
            kind: NodeKind::File,
            size: 3,
            mode: 0o644,
            mtime_ns: 0,
            version: 1,
            blocks: vec![],
            target: None,
        }
    }

    #[test]
    fn an_orphan_lives_until_its_last_handle_closes() {
        let open = OpenFiles::default();
        open.keep(
            5,
            Orphan {
                node: node(5),
                content: None,
            },
        );
        assert!(open.orphan(5).is_none(), "nothing open: nothing kept");
        open.opened(5);
        open.opened(5);
        open.keep(
            5,
            Orphan {
                node: node(5),
                content: None,
            },
        );
        open.rekey(5, 9);
        assert!(open.closed(9));
        assert_eq!(open.orphan(9).map(|o| o.node.id), Some(9));
        assert!(open.closed(9));
        assert!(open.orphan(9).is_none());
        assert!(!open.closed(9));
    }
}
