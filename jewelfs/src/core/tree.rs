//! The tree cache: the service's tree as last heard (nodes by id, complete directory
//! listings by directory id), plus the nodes this machine made or changed and has not
//! uploaded yet, pinned over it. It is what lookups, `stat` and `readdir` read; the journal
//! (`journal.rs`) says why a node is pinned. Its name stays `tree`: it holds both kinds of
//! node, so it is neither only the service's tree nor only the local one.
//!
//! - Nodes the service knows live in a `moka` cache (bounded, so a huge tree does not grow
//!   memory without limit); an evicted node is fetched again by id on demand.
//! - Nodes with local state (created here and not uploaded, or with changes in the journal)
//!   are **pinned**: kept in a plain map that is never evicted and always wins over the cache,
//!   so a pending local change can never be lost to eviction or overwritten by a listing.
//! - A directory's listing is cached only when complete (all pages read); so "name not in
//!   the listing" means ENOENT without asking the service. Evicted listings are listed again,
//!   and pinned nodes are merged back in ([`Tree::set_listing`]).
//! - A pinned node wins its name over a node of the service with the same name; such a name
//!   is marked **shadowed**. Whatever takes the local node off that name (a local rename or
//!   remove, or the service's answer that puts the node elsewhere: [`Tree::unlink`] is the
//!   one way out) marks the directory **uncovered**, and the core re-lists it
//!   ([`Tree::take_uncovered`]) instead of showing nothing where the service has a node.
//! - Long TTLs are safe because the change listener applies every remote change here (and
//!   tells the kernel) as it happens; a cursor gap or `cursor_too_old` clears everything.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use jewel_wire::{Node, NodeId};

type Listing = Arc<Mutex<BTreeMap<String, NodeId>>>;

pub struct Tree {
    nodes: moka::sync::Cache<NodeId, Arc<Node>>,
    dirs: moka::sync::Cache<NodeId, Listing>,
    pinned: Mutex<HashMap<NodeId, Arc<Node>>>,
    /// Local id → the service's id, for nodes created here and uploaded since. Every method
    /// resolves through it, so an operation that started with the local id still lands on
    /// the right node; a directory's listing is shared by both ids (one map, two keys), so
    /// no entry added during the switch is lost.
    aliases: RwLock<HashMap<NodeId, NodeId>>,
    /// Names where a pinned local node hides a node the service has under that name: when
    /// the local node leaves the name without reaching the service, the listing is stale.
    shadowed: Mutex<std::collections::HashSet<(NodeId, String)>>,
    /// Directories where a shadowed name lost its local node: their listing lacks the node
    /// of the service it hid, until they are listed again.
    uncovered: Mutex<std::collections::HashSet<NodeId>>,
    /// Counts changes, so the mount saves its snapshot only when there is something new.
    generation: std::sync::atomic::AtomicU64,
}

/// Default bounds: about 200 bytes a node; a million nodes stay well under the memory goal.
pub const MAX_NODES: u64 = 1_000_000;
pub const MAX_DIRS: u64 = 100_000;

impl Default for Tree {
    fn default() -> Self {
        Tree::new(MAX_NODES, MAX_DIRS)
    }
}

impl Tree {
    pub fn new(max_nodes: u64, max_dirs: u64) -> Tree {
        Tree {
            nodes: moka::sync::Cache::new(max_nodes),
            dirs: moka::sync::Cache::new(max_dirs),
            pinned: Mutex::new(HashMap::new()),
            aliases: RwLock::new(HashMap::new()),
            shadowed: Mutex::new(Default::default()),
            uncovered: Mutex::new(Default::default()),
            generation: Default::default(),
        }
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many changes the tree has seen (grows with every change).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current id of `id` (itself unless it is an uploaded local id).
    pub fn r(&self, id: NodeId) -> NodeId {
        let aliases = self.aliases.read().unwrap();
        if aliases.is_empty() {
            return id;
        }
        let mut id = id;
        for _ in 0..16 {
            match aliases.get(&id) {
                Some(next) if *next != id => id = *next,
                _ => break,
            }
        }
        id
    }

    fn fix(&self, node: Node) -> Node {
        let (id, parent) = (self.r(node.id), self.r(node.parent));
        if id == node.id && parent == node.parent {
            return node;
        }
        Node { id, parent, ..node }
    }

    /// Local node `local` is `server` from now on (its listing too).
    pub fn alias(&self, local: NodeId, server: NodeId) {
        self.changed();
        if local == server {
            return;
        }
        // Everything is put under the service's id first, then the alias switches readers
        // over, then the local entries go: a reader never finds the node (or its listing)
        // under neither id, which would send it to the service for a listing that lacks
        // the children not uploaded yet.
        if let Some(listing) = self.dirs.get(&local) {
            match self.dirs.get(&server) {
                Some(existing) if !Arc::ptr_eq(&existing, &listing) => {
                    let entries = listing.lock().unwrap().clone();
                    existing.lock().unwrap().extend(entries);
                    self.dirs.insert(local, existing);
                }
                Some(_) => {}
                None => self.dirs.insert(server, listing),
            }
        }
        let pinned = self.pinned.lock().unwrap().get(&local).cloned();
        if let Some(n) = pinned {
            let moved = Node {
                id: server,
                parent: self.r(n.parent),
                ..(*n).clone()
            };
            self.pinned.lock().unwrap().insert(server, Arc::new(moved));
        }
        self.aliases.write().unwrap().insert(local, server);
        self.pinned.lock().unwrap().remove(&local);
        self.nodes.invalidate(&local);
    }

    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        let id = self.r(id);
        let found = self.pinned.lock().unwrap().get(&id).cloned();
        let n = found.or_else(|| self.nodes.get(&id))?;
        if self.r(n.parent) != n.parent {
            return Some(Arc::new(self.fix((*n).clone())));
        }
        Some(n)
    }

    /// Stores a node (pinned stays pinned).
    pub fn put(&self, node: Node) {
        self.changed();
        let node = self.fix(node);
        let id = node.id;
        let node = Arc::new(node);
        let mut pinned = self.pinned.lock().unwrap();
        if let Some(slot) = pinned.get_mut(&id) {
            *slot = node;
        } else {
            drop(pinned);
            self.nodes.insert(id, node);
        }
    }

    /// Keeps the node in memory whatever happens (it has local state).
    pub fn pin(&self, node: Node) {
        self.changed();
        let node = self.fix(node);
        self.nodes.invalidate(&node.id);
        self.pinned.lock().unwrap().insert(node.id, Arc::new(node));
    }

    /// Pins node `id` as it is *now*, changed by `change` — one step, so an answer applied
    /// meanwhile (a newer version, its blocks) is never overwritten by an older copy.
    /// False if the node is not known.
    pub fn pin_changed(&self, id: NodeId, change: impl FnOnce(&mut Node)) -> bool {
        self.changed();
        let id = self.r(id);
        let mut pinned = self.pinned.lock().unwrap();
        let current = pinned.get(&id).cloned().or_else(|| self.nodes.get(&id));
        let Some(current) = current else {
            return false;
        };
        let mut node = self.fix((*current).clone());
        change(&mut node);
        self.nodes.invalidate(&id);
        pinned.insert(id, Arc::new(node));
        true
    }

    pub fn is_pinned(&self, id: NodeId) -> bool {
        let id = self.r(id);
        self.pinned.lock().unwrap().contains_key(&id)
    }

    pub fn unpin(&self, id: NodeId) {
        let id = self.r(id);
        if let Some(n) = self.pinned.lock().unwrap().remove(&id) {
            self.nodes.insert(id, n);
        }
    }

    /// Forgets a node entirely (not its listing entry: see [`Tree::unlink`]).
    pub fn forget(&self, id: NodeId) {
        self.changed();
        let id = self.r(id);
        self.pinned.lock().unwrap().remove(&id);
        self.nodes.invalidate(&id);
        self.dirs.invalidate(&id);
    }

    pub fn has_listing(&self, dir: NodeId) -> bool {
        self.dirs.contains_key(&self.r(dir))
    }

    /// `None` when the listing is not cached; `Some(None)` when the name is known absent.
    pub fn child(&self, dir: NodeId, name: &str) -> Option<Option<NodeId>> {
        let listing = self.dirs.get(&self.r(dir))?;
        let found = listing.lock().unwrap().get(name).copied();
        Some(found.map(|id| self.r(id)))
    }

    pub fn listing(&self, dir: NodeId) -> Option<Vec<(String, NodeId)>> {
        let listing = self.dirs.get(&self.r(dir))?;
        let entries: Vec<(String, NodeId)> = listing
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Some(entries.into_iter().map(|(k, v)| (k, self.r(v))).collect())
    }

    /// How many subdirectories `dir` holds, from the cache alone: `None` when its listing
    /// is not cached, one of its nodes is not (evicted), or it has more than `max_scan`
    /// entries (the count is asked for at every `stat` of a folder, so its cost is bounded).
    pub fn subdirs(&self, dir: NodeId, max_scan: usize) -> Option<u64> {
        let listing = self.dirs.get(&self.r(dir))?;
        let ids: Vec<NodeId> = {
            let entries = listing.lock().unwrap();
            if entries.len() > max_scan {
                return None;
            }
            entries.values().copied().collect()
        };
        let mut dirs = 0;
        for id in ids {
            if self.get(id)?.is_dir() {
                dirs += 1;
            }
        }
        Some(dirs)
    }

    /// An empty, complete listing (a directory created here).
    pub fn new_listing(&self, dir: NodeId) {
        self.changed();
        self.dirs
            .insert(self.r(dir), Arc::new(Mutex::new(BTreeMap::new())));
    }

    /// Stores a complete listing read from the service. Pinned nodes win: one that lives
    /// here locally is added, one that moved away locally is left out.
    pub fn set_listing(&self, dir: NodeId, entries: Vec<Node>) {
        self.changed();
        let dir = self.r(dir);
        let pinned: Vec<Arc<Node>> = self.pinned.lock().unwrap().values().cloned().collect();
        let pinned_by_id: HashMap<NodeId, Arc<Node>> =
            pinned.iter().map(|n| (n.id, n.clone())).collect();
        let mut map = BTreeMap::new();
        for node in entries {
            if let Some(p) = pinned_by_id.get(&node.id) {
                if self.r(p.parent) != dir {
                    continue;
                }
                map.insert(p.name.clone(), p.id);
                continue;
            }
            map.insert(node.name.clone(), node.id);
            // A listing read while changes arrived may be older than what events told us.
            match self.nodes.get(&node.id) {
                Some(cur) if cur.version >= node.version => {}
                Some(cur) => {
                    // It moved here since we last saw it: its old place no longer has it.
                    if self.r(cur.parent) != dir || cur.name != node.name {
                        self.unlink(cur.parent, &cur.name, node.id);
                    }
                    self.nodes.insert(node.id, Arc::new(node));
                }
                None => self.nodes.insert(node.id, Arc::new(node)),
            }
        }
        for p in pinned {
            if self.r(p.parent) == dir && p.id != dir {
                if let Some(hidden) = map.insert(p.name.clone(), p.id) {
                    if self.r(hidden) != p.id {
                        self.shadow(dir, &p.name);
                    }
                }
            }
        }
        self.dirs.insert(dir, Arc::new(Mutex::new(map)));
    }

    /// Adds `name → id` to a cached listing.
    pub fn link(&self, dir: NodeId, name: &str, id: NodeId) {
        self.changed();
        if let Some(listing) = self.dirs.get(&self.r(dir)) {
            listing.lock().unwrap().insert(name.to_string(), self.r(id));
        }
    }

    /// Like [`Tree::link`], but never hides a pinned node that holds the name. False when
    /// it did not link for that reason; the name is then marked shadowed (see
    /// [`Tree::take_uncovered`]).
    pub fn link_remote(&self, dir: NodeId, name: &str, id: NodeId) -> bool {
        self.changed();
        if let Some(listing) = self.dirs.get(&self.r(dir)) {
            let mut map = listing.lock().unwrap();
            if let Some(existing) = map.get(name) {
                let existing = self.r(*existing);
                if existing != id && self.is_pinned(existing) {
                    drop(map);
                    self.shadow(dir, name);
                    return false;
                }
            }
            map.insert(name.to_string(), id);
        }
        true
    }

    fn shadow(&self, dir: NodeId, name: &str) {
        let dir = self.r(dir);
        self.shadowed
            .lock()
            .unwrap()
            .insert((dir, name.to_string()));
    }

    /// The directories whose shadowed names lost their local node since the last call (see
    /// the module doc): each must be listed again. Forgets them.
    pub fn take_uncovered(&self) -> Vec<NodeId> {
        self.uncovered.lock().unwrap().drain().collect()
    }

    /// Removes `name` from a cached listing if it points at `id`.
    pub fn unlink(&self, dir: NodeId, name: &str, id: NodeId) {
        self.changed();
        if let Some(listing) = self.dirs.get(&self.r(dir)) {
            let id = self.r(id);
            let mut map = listing.lock().unwrap();
            if map.get(name).is_some_and(|cur| self.r(*cur) == id) {
                map.remove(name);
                drop(map);
                let dir = self.r(dir);
                if self
                    .shadowed
                    .lock()
                    .unwrap()
                    .remove(&(dir, name.to_string()))
                {
                    self.uncovered.lock().unwrap().insert(dir);
                }
            }
        }
    }

    /// Moves a node to a new place (listing entries and the node itself).
    pub fn place(&self, node: Node) {
        let node = self.fix(node);
        if let Some(old) = self.get(node.id) {
            if old.parent != node.parent || old.name != node.name {
                self.unlink(old.parent, &old.name, node.id);
            }
        }
        self.link(node.parent, &node.name, node.id);
        self.put(node);
    }

    /// Every directory whose listing is cached.
    pub fn listed_dirs(&self) -> Vec<NodeId> {
        self.dirs.iter().map(|(k, _)| *k).collect()
    }

    /// Every node known (cached or pinned).
    pub fn known(&self) -> Vec<Arc<Node>> {
        let mut all: Vec<Arc<Node>> = self.nodes.iter().map(|(_, v)| v).collect();
        all.extend(self.pinned.lock().unwrap().values().cloned());
        all
    }

    /// Drops every listing and unpinned node (after `cursor_too_old`).
    pub fn clear_unpinned(&self) {
        self.changed();
        self.nodes.invalidate_all();
        self.dirs.invalidate_all();
    }

    pub fn pinned_count(&self) -> usize {
        self.pinned.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jewel_wire::NodeKind;

    fn node(id: NodeId, parent: NodeId, name: &str) -> Node {
        Node {
            id,
            parent,
            name: name.into(),
            kind: NodeKind::File,
            size: 0,
            mode: 0o644,
            mtime_ns: 0,
            version: 1,
            blocks: vec![],
            target: None,
        }
    }

    #[test]
    fn listings_merge_pinned_nodes() {
        let tree = Tree::default();
        tree.pin(node(100, 1, "local.txt"));
        tree.pin(node(5, 2, "moved-away.txt"));
        tree.set_listing(1, vec![node(5, 1, "moved-away.txt"), node(6, 1, "b")]);
        let names: Vec<String> = tree.listing(1).unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, vec!["b", "local.txt"]);
        assert_eq!(tree.child(1, "nope"), Some(None));
        assert_eq!(tree.child(3, "x"), None, "unknown listing");
    }

    #[test]
    fn subdirs_are_counted_from_a_cached_listing_only() {
        let tree = Tree::default();
        assert_eq!(tree.subdirs(1, 100), None, "no listing");
        let dir = |id, name: &str| Node {
            kind: NodeKind::Dir,
            ..node(id, 1, name)
        };
        tree.set_listing(1, vec![dir(5, "a"), dir(6, "b"), node(7, 1, "f")]);
        assert_eq!(tree.subdirs(1, 100), Some(2));
        assert_eq!(tree.subdirs(1, 2), None, "more entries than it may scan");
    }

    #[test]
    fn remote_links_never_hide_pinned_nodes() {
        let tree = Tree::default();
        tree.set_listing(1, vec![]);
        tree.pin(node(100, 1, "a"));
        tree.link(1, "a", 100);
        tree.link_remote(1, "a", 7);
        assert_eq!(tree.child(1, "a"), Some(Some(100)));
        tree.place(node(8, 1, "c"));
        tree.place(node(8, 1, "d"));
        assert_eq!(tree.child(1, "c"), Some(None));
        assert_eq!(tree.child(1, "d"), Some(Some(8)));
    }
}
