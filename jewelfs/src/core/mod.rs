//! The FUSE-free core of the client: everything `jewelfs` does, as plain (async) methods on
//! [`Core`], so it can be tested without mounting and driven by the thin `fuse` adapter.
//!
//! What it owns, one piece of state per module (each with its own lock), composed by [`Core`]:
//! - the tree cache: the service's nodes as last heard plus pinned local ones ([`tree`]);
//! - the upload journal, this machine's pending changes, durable ([`journal`]);
//! - inode numbers ↔ node ids: local ids and their aliases ([`inodes`]);
//! - files open in the kernel, and removed files still read through them ([`open_files`]);
//! - the disk block cache ([`blocks`]);
//! - the uploader and pre-uploader, which send the journal in order ([`uploader`], with
//!   `batch.rs` for many small changes in one request), and what happens to a change the
//!   service refuses for good ([`refused`]);
//! - the change listener, which applies other machines' changes ([`listener`]), and this
//!   device's registration and listening ([`listen`]); where notifications come from (poll,
//!   SQS) is `crate::sources`, which sees only the [`Api`];
//! - the reconciliation that re-lists what an unusual upload touched ([`reconcile`]);
//! - the service's routes as one trait, [`Api`], with its HTTP client ([`api`]); conflict
//!   names ([`conflict`]);
//! - **listings with local changes on top**: a listing read from the service shows the
//!   journal's pending moves and deletes (after a restart the tree knows only what the
//!   journal says); a node removed here is forgotten, not left pinned;
//! - **staging files**: one per file open for writing, under `<cache>/staging/`. Writes,
//!   truncates and reads of a file being written go there. On `flush` (every `close`) a dirty
//!   staging file is *moved* (renamed, no copy) into the journal and fsync'd, and a journal
//!   entry names it; a later write through the same handle copies it first (copy on write);
//! - **local content**: the newest journaled content of a file not yet committed, kept open,
//!   so reads see local changes at once and never race the uploader deleting the file.
//!
//! Every mutation is applied locally first and journaled; the uploader sends it in order in
//! the background. Callers therefore never wait for the network to change anything; only
//! reads of what is not cached (a listing, a block) wait for the service. See
//! `docs/SEMANTICS.md` for what a user sees.

pub mod api;
mod batch;
pub mod blocks;
pub mod conflict;
pub mod inodes;
pub mod journal;
pub mod listen;
pub mod listener;
pub mod open_files;
pub mod reconcile;
pub mod refused;
pub mod tree;
pub mod uploader;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jewel_wire::*;

use self::api::{Api, ApiErr};
use self::blocks::{BlockCache, BlockErr};
use self::inodes::Inodes;
use self::journal::{is_local, Journal, LocalKind, Op, Seen};
use self::open_files::{OpenFiles, Orphan};
use self::tree::Tree;

/// The knobs of the core, each default with its reason.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where blocks, staging files, the journal and state live.
    pub cache_dir: PathBuf,
    /// Shown in conflict copy names and device registration.
    pub device_name: String,
    /// Bytes of block cache on disk: 10 GiB holds a working set of documents and code
    /// without filling a laptop disk.
    pub cache_size: u64,
    /// How long a journal entry rests before upload: long enough for an editor's
    /// write-close-rename to be folded into one upload, short enough to be invisible.
    pub settle_ms: u64,
    /// The long-poll wait: under common idle timeouts of proxies (30 s).
    pub poll_timeout_ms: u64,
    /// Blocks fetched ahead of a sequential reader: 4 × 4 MiB keeps a fast link busy.
    pub readahead_blocks: usize,
    /// The service's address: the saved device id is kept per server and user.
    pub server: String,
}

impl Config {
    pub fn new(cache_dir: PathBuf, device_name: String) -> Config {
        Config {
            cache_dir,
            device_name,
            cache_size: 10 << 30,
            settle_ms: 20,
            poll_timeout_ms: 25_000,
            readahead_blocks: 4,
            server: String::new(),
        }
    }
}

/// Why an operation failed; [`CoreErr::errno`] is the one errno table.
#[derive(Debug, thiserror::Error)]
pub enum CoreErr {
    #[error("no such file or directory")]
    NotFound,
    #[error("the name is taken")]
    Exists,
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("name too long")]
    NameTooLong,
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("offline and not cached")]
    Offline,
    #[error("the folder kept changing during the operation; try again")]
    Busy,
    #[error("{0}")]
    Api(ApiErr),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ApiErr> for CoreErr {
    fn from(e: ApiErr) -> Self {
        if e.is_transient() {
            return CoreErr::Offline;
        }
        match e.code() {
            Some(ErrorCode::NotFound) => CoreErr::NotFound,
            Some(ErrorCode::Exists) => CoreErr::Exists,
            Some(ErrorCode::NotEmpty) => CoreErr::NotEmpty,
            Some(ErrorCode::NotADirectory) => CoreErr::NotDir,
            Some(ErrorCode::IsADirectory) => CoreErr::IsDir,
            _ => CoreErr::Api(e),
        }
    }
}

impl From<BlockErr> for CoreErr {
    fn from(e: BlockErr) -> Self {
        match e {
            BlockErr::Api(a) => a.into(),
            BlockErr::Io(io) => CoreErr::Io(io),
            other => CoreErr::Io(std::io::Error::other(other.to_string())),
        }
    }
}

impl From<NameError> for CoreErr {
    fn from(e: NameError) -> Self {
        match e {
            NameError::TooLong(_) => CoreErr::NameTooLong,
            other => CoreErr::Invalid(other.to_string()),
        }
    }
}

impl CoreErr {
    pub fn errno(&self) -> i32 {
        match self {
            CoreErr::NotFound => libc::ENOENT,
            CoreErr::Exists => libc::EEXIST,
            CoreErr::NotEmpty => libc::ENOTEMPTY,
            CoreErr::NotDir => libc::ENOTDIR,
            CoreErr::IsDir => libc::EISDIR,
            CoreErr::Invalid(_) => libc::EINVAL,
            CoreErr::NameTooLong => libc::ENAMETOOLONG,
            CoreErr::Unsupported(_) => libc::ENOTSUP,
            CoreErr::Offline => libc::EIO,
            CoreErr::Busy => libc::EBUSY,
            CoreErr::Api(_) => libc::EIO,
            CoreErr::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreErr>;

/// Another machine's change as a local program would have made it: the mount replays it
/// through its own mountpoint so that the kernel raises the inotify events a watcher would
/// have heard (see `fuse/replay.rs`). Places are the ones before the change was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A node new to this machine now at `parent`/`name`.
    Created {
        parent: NodeId,
        name: String,
        id: NodeId,
    },
    /// A file's content changed.
    Changed { id: NodeId },
    /// A node's mode or mtime changed, not its content.
    Attributes { id: NodeId },
    /// A node moved (renamed) from `from_parent`/`from_name` to where the tree has it now.
    Moved {
        from_parent: NodeId,
        from_name: String,
        id: NodeId,
    },
    /// A node was deleted; `node` is what it was (the tree has forgotten it).
    Removed { node: Node },
}

/// What the kernel must forget or hear (sent to the notifier thread, never called in a
/// callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    Entry {
        parent: NodeId,
        name: String,
    },
    Inode(NodeId),
    /// Only the node's attributes (not its cached pages): they depend on more than the
    /// node, as a folder's link count on its listing.
    Attr(NodeId),
    /// Replay another machine's change (after the invalidations queued before it); for a
    /// [`Heard::Removed`] that cannot be replayed, the kernel is told of the delete instead.
    Replay(Heard),
    Delete {
        parent: NodeId,
        child: NodeId,
        name: String,
    },
}

struct StagingFile {
    file: Arc<File>,
    /// The staging file's name while it is ours (not yet moved into the journal).
    path: Option<PathBuf>,
    sealed: bool,
}

/// The local copy of a file open for writing.
pub struct Staging {
    inner: Mutex<StagingFile>,
    size: AtomicU64,
    dirty: AtomicBool,
    handles: AtomicUsize,
    /// The service version (and its blocks) this copy descends from; moved forward when our
    /// own upload of an earlier state of this copy is committed.
    base: Mutex<(Version, Vec<BlockHash>)>,
}

/// Journaled content of a file that the service does not have yet.
#[derive(Clone)]
pub struct LocalContent {
    pub data: String,
    pub file: Arc<File>,
    pub size: u64,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64
}

pub struct Core {
    pub cfg: Config,
    pub api: Arc<dyn Api>,
    pub tree: Tree,
    pub blocks: Arc<BlockCache>,
    pub journal: Journal,
    /// Inode numbers ↔ node ids (the journal makes their aliases durable).
    pub inodes: Arc<Inodes>,
    staging: Mutex<HashMap<NodeId, Arc<Staging>>>,
    local: Mutex<HashMap<NodeId, LocalContent>>,
    /// Handles the kernel holds, and what removed files still read through them.
    pub(crate) open_files: OpenFiles,
    /// Files created here whose create is not journaled yet (no close so far).
    unsent: Mutex<HashSet<NodeId>>,
    pub online: AtomicBool,
    pub cursor: AtomicU64,
    /// Whether `cursor` says where this device's view stands (from a snapshot, or set at
    /// the first connect); 0 is a real position for a user with no changes yet.
    pub(crate) cursor_known: AtomicBool,
    pub device: AtomicU64,
    /// How this device hears of changes (from its registration; see `listen.rs`).
    pub(crate) listen: Mutex<Listen>,
    /// The newest sequence number when this process attached its device: events up to it
    /// were made by an earlier mount of the same device, never echoes of this one.
    pub(crate) echo_floor: AtomicU64,
    pub conflicts: AtomicU64,
    pub uploaded: AtomicU64,
    inval_tx: Mutex<Option<std::sync::mpsc::Sender<Inval>>>,
    pub last_error: Mutex<Option<String>>,
    /// The last applied change events, to correct a listing read while they arrived.
    recent: Mutex<std::collections::VecDeque<ChangeEvent>>,
    /// Content whose blocks the pre-uploader already sent, by journal data name.
    pub(crate) pre: Mutex<HashMap<String, Content>>,
    /// The newest version of each node that this device's own requests produced: a commit
    /// that finds the service at such a version conflicts with no one but itself.
    pub(crate) own: Mutex<HashMap<NodeId, Version>>,
    /// Content files the pre-uploader is working on right now.
    pub(crate) pre_busy: Mutex<HashSet<String>>,
    /// Nodes our own requests changed in the tree (their answers are not in `recent`: our
    /// own echoes are skipped), numbered, so a listing read meanwhile can be corrected.
    own_changed: Mutex<std::collections::VecDeque<(u64, NodeId)>>,
    own_gen: AtomicU64,
    /// The journal entry the uploader is sending now (0: none).
    pub(crate) uploading: AtomicU64,
    /// Whether the service takes batches (`batch.rs`); false once it said it has no such
    /// route (an older server), and changes go one by one.
    pub(crate) batching: std::sync::atomic::AtomicBool,
    /// Whether the service takes small files' bytes inline with their commit (it says so in
    /// `GET /me`, read on every connect); until it has said so, every block is uploaded.
    pub(crate) inline_content: std::sync::atomic::AtomicBool,
    /// Directories to re-list from the service once the journal is drained (see
    /// `reconcile.rs`).
    pub(crate) suspect: Mutex<reconcile::Suspect>,
    /// Serializes changes of places in the tree: a local operation's check-then-change
    /// (rename, create), an answer of the service applied by the uploader, a remote event
    /// applied by the listener. Without it an answer could put back a name a rename had
    /// just left (git then found its `index.lock` still there after renaming it).
    pub(crate) edit: Mutex<()>,
    /// Held while `tree.json` is written: the saver task and the listener (when the
    /// service goes away) both save it.
    saving: Mutex<()>,
}

fn copy_file(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let want = ((len - off) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    dst.set_len(len)
}

fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

impl Core {
    /// Opens the caches and journal under `cfg.cache_dir` (replaying pending changes).
    pub fn open(cfg: Config, api: Arc<dyn Api>) -> anyhow::Result<Arc<Core>> {
        let dir = &cfg.cache_dir;
        std::fs::create_dir_all(dir)?;
        // Cached blocks, the journal and staging files are the user's files: the folder is
        // closed to other local users (so is everything in it, whatever its own mode).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let staging_dir = dir.join("staging");
        let _ = std::fs::remove_dir_all(&staging_dir);
        std::fs::create_dir_all(&staging_dir)?;
        let blocks = Arc::new(BlockCache::open(
            &dir.join("blocks"),
            cfg.cache_size,
            api.clone(),
        )?);
        let journal = Journal::open(&dir.join("journal"))?;
        let tree = Tree::default();
        let root = Node {
            id: ROOT_ID,
            parent: ROOT_ID,
            name: String::new(),
            kind: NodeKind::Dir,
            size: 0,
            mode: 0o755,
            mtime_ns: now_ns(),
            version: 0,
            blocks: vec![],
            target: None,
        };
        tree.put(root);
        let core = Core {
            cfg,
            api,
            tree,
            blocks,
            inodes: journal.inodes().clone(),
            journal,
            staging: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            open_files: OpenFiles::default(),
            unsent: Mutex::new(HashSet::new()),
            online: AtomicBool::new(false),
            cursor: AtomicU64::new(0),
            cursor_known: AtomicBool::new(false),
            device: AtomicU64::new(0),
            listen: Mutex::new(Listen::Poll),
            echo_floor: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            inval_tx: Mutex::new(None),
            last_error: Mutex::new(None),
            recent: Mutex::new(std::collections::VecDeque::new()),
            pre: Mutex::new(HashMap::new()),
            pre_busy: Mutex::new(HashSet::new()),
            own: Mutex::new(HashMap::new()),
            uploading: AtomicU64::new(0),
            batching: std::sync::atomic::AtomicBool::new(true),
            inline_content: std::sync::atomic::AtomicBool::new(false),
            own_changed: Mutex::new(std::collections::VecDeque::new()),
            own_gen: AtomicU64::new(0),
            suspect: Mutex::new(Default::default()),
            edit: Mutex::new(()),
            saving: Mutex::new(()),
        };
        let core = Arc::new(core);
        core.forget_checkpointed();
        core.replay_local_state()?;
        Ok(core)
    }

    /// After a restart: show journaled changes in the tree again (local nodes, local content).
    fn replay_local_state(&self) -> anyhow::Result<()> {
        for entry in self.journal.entries() {
            match &entry.op {
                Op::Create {
                    node,
                    parent,
                    name,
                    kind,
                    mode,
                    mtime_ns,
                } => {
                    let (k, size, target) = match kind {
                        LocalKind::File { size, .. } => (NodeKind::File, *size, None),
                        LocalKind::Dir => (NodeKind::Dir, 0, None),
                        LocalKind::Symlink { target } => {
                            (NodeKind::Symlink, target.len() as u64, Some(target.clone()))
                        }
                    };
                    self.tree.pin(Node {
                        id: *node,
                        parent: self.journal.resolve(*parent),
                        name: name.clone(),
                        kind: k,
                        size,
                        mode: *mode,
                        mtime_ns: *mtime_ns,
                        version: 0,
                        blocks: vec![],
                        target,
                    });
                    if k == NodeKind::Dir {
                        self.tree.new_listing(*node);
                    }
                    if let Some(data) = entry.op.data() {
                        self.set_local(*node, data, size);
                    }
                }
                Op::Content {
                    node,
                    data: Some(data),
                    size,
                    ..
                } => {
                    self.set_local(self.journal.resolve(*node), data, *size);
                }
                // A node created here moves or goes with its later entries (the moves and
                // deletes of the service's nodes show through `overlay_pending`).
                Op::Move {
                    node,
                    new_parent,
                    new_name,
                    ..
                } if self.tree.is_pinned(*node) => {
                    let parent = self.journal.resolve(*new_parent);
                    self.tree.pin_changed(*node, |n| {
                        n.parent = parent;
                        n.name = new_name.clone();
                    });
                }
                Op::Delete { node, .. } if self.tree.is_pinned(*node) => {
                    self.local.lock().unwrap().remove(&self.resolve(*node));
                    self.tree.forget(*node);
                }
                _ => {}
            }
        }
        // A node made in a folder made here shows in that folder's listing, which is
        // complete from the start (others show when their folder is listed).
        self.link_pinned();
        Ok(())
    }

    /// Links every pinned node into its folder's listing, where that listing is cached.
    fn link_pinned(&self) {
        for n in self.tree.known() {
            if self.tree.is_pinned(n.id) {
                self.tree.link(n.parent, &n.name, n.id);
            }
        }
    }

    fn set_local(&self, id: NodeId, data: &str, size: u64) {
        if let Ok(f) = File::open(self.journal.data_path(data)) {
            let mut map = self.local.lock().unwrap();
            map.insert(
                self.resolve(id),
                LocalContent {
                    data: data.to_string(),
                    file: Arc::new(f),
                    size,
                },
            );
        }
    }

    pub fn set_invalidator(&self, tx: std::sync::mpsc::Sender<Inval>) {
        *self.inval_tx.lock().unwrap() = Some(tx);
    }

    /// Queues a kernel invalidation, under every inode number the kernel may know the nodes
    /// by: a folder or file made here keeps the local id it was created with in the kernel
    /// (its dentry stays), so news about it, named by the service's id, is told under both.
    pub fn inval(&self, what: Inval) {
        let guard = self.inval_tx.lock().unwrap();
        let Some(tx) = guard.as_ref() else { return };
        let with = |id: NodeId| {
            let mut ids = vec![id];
            ids.extend(self.inodes.earlier_ids(id));
            ids
        };
        match what {
            Inval::Entry { parent, name } => {
                for p in with(parent) {
                    let _ = tx.send(Inval::Entry {
                        parent: p,
                        name: name.clone(),
                    });
                }
            }
            Inval::Inode(id) => {
                for i in with(id) {
                    let _ = tx.send(Inval::Inode(i));
                }
            }
            Inval::Attr(id) => {
                for i in with(id) {
                    let _ = tx.send(Inval::Attr(i));
                }
            }
            Inval::Replay(heard) => {
                let _ = tx.send(Inval::Replay(heard));
            }
            Inval::Delete {
                parent,
                child,
                name,
            } => {
                for p in with(parent) {
                    for c in with(child) {
                        let _ = tx.send(Inval::Delete {
                            parent: p,
                            child: c,
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }

    /// The service's id for a kernel inode number ([`Inodes::resolve`]).
    pub fn resolve(&self, ino: NodeId) -> NodeId {
        self.inodes.resolve(ino)
    }

    /// The inode number the kernel knows node `id` by ([`Inodes::ino`]).
    pub fn ino(&self, id: NodeId) -> u64 {
        self.inodes.ino(id)
    }

    fn new_local_id(&self) -> NodeId {
        self.inodes.new_local_id()
    }

    pub fn device_name(&self) -> &str {
        &self.cfg.device_name
    }

    // ---------------------------------------------------------------- reading the tree

    /// A node as the user sees it: local content sizes win over the service's.
    pub fn view(&self, id: NodeId) -> Option<Node> {
        let id = self.resolve(id);
        let orphan = || self.open_files.orphan(id);
        let mut node = match self.tree.get(id) {
            Some(n) => (*n).clone(),
            None => orphan()?.node,
        };
        // One lock at a time (never nested): staging, then local content.
        let staging = self
            .staging
            .lock()
            .unwrap()
            .get(&id)
            .map(|s| s.size.load(Ordering::Relaxed));
        if let Some(size) = staging {
            node.size = size;
        } else if let Some(size) = self.local_of(id).map(|l| l.size) {
            node.size = size;
        } else if let Some(o) = orphan() {
            // Removed while open: the handles read what it was when it went.
            node.size = o.content.map_or(o.node.size, |c| c.size);
        }
        Some(node)
    }

    /// A node, from the cache or the service.
    pub async fn node(&self, id: NodeId) -> CoreResult<Node> {
        if let Some(n) = self.view(id) {
            return Ok(n);
        }
        if is_local(id) {
            return Err(CoreErr::NotFound);
        }
        let node = self.api.get_node(id).await?;
        self.tree.put(node);
        self.view(id).ok_or(CoreErr::NotFound)
    }

    /// Answers a lookup from the cache alone, or `None` if the service must be asked.
    pub fn lookup_cached(&self, parent: NodeId, name: &str) -> Option<CoreResult<Node>> {
        match self.tree.child(parent, name)? {
            None => Some(Err(CoreErr::NotFound)),
            Some(id) => self.view(id).map(Ok),
        }
    }

    pub async fn lookup(&self, parent: NodeId, name: &str) -> CoreResult<Node> {
        if let Some(r) = self.lookup_cached(parent, name) {
            return r;
        }
        self.ensure_listing(parent).await?;
        match self.tree.child(parent, name) {
            Some(Some(id)) => self.node(id).await,
            _ => Err(CoreErr::NotFound),
        }
    }

    /// Makes sure the directory's complete listing is cached.
    pub async fn ensure_listing(&self, dir: NodeId) -> CoreResult<()> {
        if self.tree.has_listing(dir) {
            return Ok(());
        }
        let node = self.node(dir).await?;
        if !node.is_dir() {
            return Err(CoreErr::NotDir);
        }
        if is_local(dir) {
            self.tree.new_listing(dir);
            return Ok(());
        }
        self.read_listing(dir, false).await
    }

    /// Reads a directory's listing from the service and caches it, with the local changes
    /// still in the journal on top. `fresh` (reconciliation): replace a cached listing too,
    /// and take the service's place of every listed node without local changes.
    pub(crate) async fn read_listing(&self, dir: NodeId, fresh: bool) -> CoreResult<()> {
        let seen_before = self.cursor.load(Ordering::Relaxed);
        let own_before = self.own_gen.load(Ordering::SeqCst);
        // The service sends a device the changes in the folders it listed as that device; a
        // listing read before this mount had its device is read again once it has one.
        if self.device.load(Ordering::Relaxed) == 0 {
            self.suspect([dir]);
        }
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.api.list_children(dir, after).await?;
            all.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        // From here on the listing is merged with what happened while it was on its way;
        // nothing else may change places meanwhile.
        let _edit = self.edit.lock().unwrap();
        if fresh {
            for node in &all {
                if self.has_local_changes(node.id) {
                    continue;
                }
                self.tree.unpin(node.id);
                let stale = self.tree.get(node.id).filter(|cur| {
                    cur.version <= node.version
                        && (cur.parent != node.parent || cur.name != node.name)
                });
                if let Some(cur) = stale {
                    self.tree.unlink(cur.parent, &cur.name, node.id);
                    self.inval(Inval::Entry {
                        parent: cur.parent,
                        name: cur.name.clone(),
                    });
                    self.tree.put(node.clone());
                }
            }
        } else if self.tree.has_listing(dir) {
            return Ok(());
        }
        self.tree.set_listing(dir, all);
        // Events applied while the listing was read may be newer than it: replay them.
        let recent: Vec<ChangeEvent> = self
            .recent
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.seq > seen_before)
            .cloned()
            .collect();
        for ev in recent {
            self.relink(dir, &ev);
        }
        // Likewise the answers to our own requests applied meanwhile (a node our upload
        // moved here or away, created or deleted while the listing was on its way).
        let own: Vec<NodeId> = self
            .own_changed
            .lock()
            .unwrap()
            .iter()
            .filter(|(g, _)| *g > own_before)
            .map(|(_, id)| *id)
            .collect();
        for id in own {
            let id = self.resolve(id);
            let cur = self.tree.get(id);
            for (name, listed) in self.tree.listing(dir).unwrap_or_default() {
                let stays = cur
                    .as_ref()
                    .is_some_and(|c| c.parent == dir && c.name == name);
                if listed == id && !stays {
                    self.tree.unlink(dir, &name, id);
                }
            }
            if let Some(c) = cur.filter(|c| c.parent == dir) {
                self.tree.link_remote(dir, &c.name, id);
            }
        }
        self.overlay_pending(dir);
        // The kernel may hold the folder's attributes from before its listing was known
        // (a link count of 1, "unknown"): it asks again now that the count is known.
        self.inval(Inval::Attr(dir));
        Ok(())
    }

    /// Notes that our own request changed node `id` in the tree (see `own_changed`).
    pub(crate) fn own_changed(&self, id: NodeId) {
        let g = self.own_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut own = self.own_changed.lock().unwrap();
        own.push_back((g, id));
        while own.len() > 4096 {
            own.pop_front();
        }
    }

    /// Shows the journal's pending moves and deletes in a listing just read from the
    /// service (after a restart the tree has forgotten them; a pinned node deleted here
    /// must not come back with its old place).
    fn overlay_pending(&self, dir: NodeId) {
        self.overlay_pending_in(&[dir]);
    }

    /// [`Core::overlay_pending`] for the listings of `dirs` (all of a snapshot just loaded);
    /// a node whose pending move the tree forgot is pinned at its new place wherever it was.
    fn overlay_pending_in(&self, dirs: &[NodeId]) {
        let entries = self.journal.entries();
        if entries.is_empty() {
            return;
        }
        let mut fate: HashMap<NodeId, Option<(NodeId, String)>> = HashMap::new();
        for e in entries {
            match &e.op {
                Op::Move {
                    node,
                    new_parent,
                    new_name,
                    mode: mode @ (MoveMode::Replace | MoveMode::NoReplace),
                    expect,
                } => {
                    // The node it replaced at the target name is gone here.
                    if let (MoveMode::Replace, Some(Seen::Node { id, .. })) = (mode, expect) {
                        fate.insert(self.resolve(*id), None);
                    }
                    let to = (self.resolve(*new_parent), new_name.clone());
                    fate.insert(self.resolve(*node), Some(to));
                }
                Op::Delete { node, .. } => {
                    fate.insert(self.resolve(*node), None);
                }
                _ => {}
            }
        }
        // A node moved here and not pinned (the tree forgot the move: a restart) leaves its
        // old place in these listings and is pinned at its new one.
        let forgotten = |id: NodeId| !self.tree.is_pinned(id) && self.tree.get(id).is_some();
        for &dir in dirs {
            for (name, id) in self.tree.listing(dir).unwrap_or_default() {
                match fate.get(&id) {
                    Some(None) => self.tree.unlink(dir, &name, id),
                    Some(Some((p, n)))
                        if (*p, n.as_str()) != (dir, name.as_str()) && forgotten(id) =>
                    {
                        self.tree.unlink(dir, &name, id)
                    }
                    _ => {}
                }
            }
        }
        // Whether or not a listing held its old place: a saved tree holds such a node where
        // it was moved to, and leaves out a folder made here that it went into.
        for (id, to) in fate {
            let Some((parent, name)) = to else { continue };
            if !forgotten(id) {
                continue;
            }
            if let Some(node) = self.tree.get(id) {
                self.tree.link(parent, &name, id);
                self.tree.pin(Node {
                    parent,
                    name,
                    ..(*node).clone()
                });
            }
        }
    }

    /// A directory's entries (without `.` and `..`).
    pub async fn readdir(&self, dir: NodeId) -> CoreResult<Vec<Node>> {
        self.ensure_listing(dir).await?;
        let listing = self.tree.listing(dir).ok_or(CoreErr::NotFound)?;
        // Entries whose node this device does not hold (yet): asked for together, not one
        // round trip after another (on a slow link a thousand of them took half a minute).
        use futures::StreamExt;
        let unknown: Vec<NodeId> = listing
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| self.view(*id).is_none())
            .collect();
        let mut fetched: HashMap<NodeId, Node> = futures::stream::iter(unknown)
            .map(|id| self.node(id))
            .buffer_unordered(16)
            .filter_map(|n| async move { n.ok() })
            .map(|n| (n.id, n))
            .collect()
            .await;
        // In the listing's order (the kernel reads a big folder in several calls, by offset).
        Ok(listing
            .into_iter()
            .filter_map(|(_, id)| self.view(id).or_else(|| fetched.remove(&self.resolve(id))))
            .collect())
    }

    /// Our own upload of `node` was committed: an open copy of it now descends from it.
    pub(crate) fn rebase_staging(&self, node: &Node) {
        if let Some(s) = self.staging_of(node.id) {
            let mut base = s.base.lock().unwrap();
            if base.0 < node.version {
                *base = (node.version, node.blocks.clone());
            }
        }
    }

    /// Remembers an applied event (see `recent`).
    pub(crate) fn remember(&self, ev: &ChangeEvent) {
        let mut recent = self.recent.lock().unwrap();
        recent.push_back(ev.clone());
        while recent.len() > 4096 {
            recent.pop_front();
        }
    }

    /// Re-applies one event to a freshly read listing of `dir`.
    fn relink(&self, dir: NodeId, ev: &ChangeEvent) {
        let node = &ev.node;
        let current = self.tree.get(node.id);
        let newest = current.as_ref().is_none_or(|c| c.version <= node.version);
        match ev.op {
            ChangeOp::Upsert if newest => {
                if let Some(from) = &ev.from {
                    if from.parent == dir {
                        self.tree.unlink(dir, &from.name, node.id);
                    }
                }
                if node.parent == dir {
                    self.tree.link_remote(dir, &node.name, node.id);
                    self.tree.put(node.clone());
                } else if let Some(c) = &current {
                    if c.parent == dir && c.version <= node.version {
                        self.tree.unlink(dir, &c.name, node.id);
                    }
                }
            }
            ChangeOp::Remove if !self.journal.has_pending(node.id) => {
                self.tree.unlink(dir, &node.name, node.id);
                if let Some(c) = &current {
                    self.tree.unlink(dir, &c.name, node.id);
                }
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- reading content

    /// Reads from local state or ready blocks; `None` when blocks must be fetched first.
    pub fn read_local(&self, id: NodeId, offset: u64, size: u32) -> Option<CoreResult<Vec<u8>>> {
        let id = self.resolve(id);
        let staging = self.staging_of(id);
        if let Some(s) = staging {
            let len = s.size.load(Ordering::Relaxed);
            let file = s.inner.lock().unwrap().file.clone();
            return Some(read_range(&file, offset, size, len));
        }
        let local = self.local_of(id);
        if let Some(l) = local {
            return Some(read_range(&l.file, offset, size, l.size));
        }
        let orphan = self.open_files.orphan(id);
        if let Some(content) = orphan.as_ref().and_then(|o| o.content.as_ref()) {
            return Some(read_range(&content.file, offset, size, content.size));
        }
        let node = match orphan {
            Some(o) => Arc::new(o.node),
            None => self.tree.get(id)?,
        };
        if node.size <= offset || size == 0 {
            return Some(Ok(Vec::new()));
        }
        let end = (offset + size as u64).min(node.size);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        for b in first..=last {
            let hash = node.blocks.get(b as usize)?;
            if !self.blocks.ready(hash) {
                return None;
            }
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK_SIZE;
            let within = pos % BLOCK_SIZE;
            let take = ((BLOCK_SIZE - within).min(end - pos)) as usize;
            let at = (pos - offset) as usize;
            match self
                .blocks
                .read(&node.blocks[b as usize], within, &mut out[at..at + take])
            {
                Ok(n) if n == take => {}
                Ok(_) => return Some(Err(CoreErr::Io(std::io::Error::other("short block")))),
                Err(_) => return None,
            }
            pos += take as u64;
        }
        Some(Ok(out))
    }

    /// Starts fetching the blocks after the one holding `offset` (sequential read-ahead).
    pub fn read_ahead(&self, id: NodeId, offset: u64) {
        let Some(node) = self.tree.get(id) else {
            return;
        };
        let first = (offset / BLOCK_SIZE) as usize;
        let want: Vec<BlockHash> = node
            .blocks
            .iter()
            .skip(first)
            .take(self.cfg.readahead_blocks + 1)
            .filter(|h| !self.blocks.ready(h))
            .cloned()
            .collect();
        if !want.is_empty() {
            self.blocks.prefetch(want);
        }
    }

    /// Reads, fetching missing blocks (one download per block, however many readers).
    pub async fn read(&self, id: NodeId, offset: u64, size: u32) -> CoreResult<Vec<u8>> {
        for _ in 0..3 {
            if let Some(r) = self.read_local(id, offset, size) {
                return r;
            }
            let node = self.node(id).await?;
            let end = (offset + size as u64).min(node.size);
            if end <= offset {
                return Ok(Vec::new());
            }
            self.read_ahead(id, offset);
            for b in offset / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE {
                let hash =
                    node.blocks
                        .get(b as usize)
                        .ok_or(CoreErr::Io(std::io::Error::other(
                            "file has fewer blocks than its size",
                        )))?;
                self.blocks.get(hash).await?;
            }
        }
        self.read_local(id, offset, size)
            .unwrap_or(Err(CoreErr::Offline))
    }

    pub fn readlink(&self, id: NodeId) -> CoreResult<String> {
        let node = self.view(id).ok_or(CoreErr::NotFound)?;
        node.target.ok_or(CoreErr::Invalid("not a symlink".into()))
    }

    // ---------------------------------------------------------------- creating

    async fn check_new_name(&self, parent: NodeId, name: &str) -> CoreResult<Node> {
        check_name(name)?;
        let p = self.node(parent).await?;
        if !p.is_dir() {
            return Err(CoreErr::NotDir);
        }
        self.ensure_listing(parent).await?;
        if let Some(Some(_)) = self.tree.child(parent, name) {
            return Err(CoreErr::Exists);
        }
        Ok(p)
    }

    fn new_node(&self, parent: NodeId, name: &str, kind: NodeKind, mode: u32) -> Node {
        Node {
            id: self.new_local_id(),
            parent,
            name: name.to_string(),
            kind,
            size: 0,
            mode: mode & 0o7777,
            mtime_ns: now_ns(),
            version: 0,
            blocks: vec![],
            target: None,
        }
    }

    fn add_local_node(&self, node: &Node) {
        self.tree.pin(node.clone());
        self.tree.link(node.parent, &node.name, node.id);
        self.touch_dir(node.parent);
    }

    fn touch_dir(&self, dir: NodeId) {
        if let Some(d) = self.tree.get(dir) {
            let mut d = (*d).clone();
            d.mtime_ns = now_ns();
            self.tree.put(d);
        }
    }

    pub async fn mkdir(&self, parent: NodeId, name: &str, mode: u32) -> CoreResult<Node> {
        self.check_new_name(parent, name).await?;
        let _edit = self.edit.lock().unwrap();
        self.check_name_free(parent, name)?;
        let node = self.new_node(parent, name, NodeKind::Dir, mode);
        self.tree.new_listing(node.id);
        self.add_local_node(&node);
        self.journal.append(Op::Create {
            node: node.id,
            parent,
            name: name.to_string(),
            kind: LocalKind::Dir,
            mode: node.mode,
            mtime_ns: node.mtime_ns,
        })?;
        Ok(node)
    }

    pub async fn symlink(&self, parent: NodeId, name: &str, target: &str) -> CoreResult<Node> {
        if target.len() > MAX_SYMLINK_BYTES || target.is_empty() || target.contains('\0') {
            return Err(CoreErr::NameTooLong);
        }
        self.check_new_name(parent, name).await?;
        let _edit = self.edit.lock().unwrap();
        self.check_name_free(parent, name)?;
        let mut node = self.new_node(parent, name, NodeKind::Symlink, 0o777);
        node.size = target.len() as u64;
        node.target = Some(target.to_string());
        self.add_local_node(&node);
        self.journal.append(Op::Create {
            node: node.id,
            parent,
            name: name.to_string(),
            kind: LocalKind::Symlink {
                target: target.to_string(),
            },
            mode: node.mode,
            mtime_ns: node.mtime_ns,
        })?;
        Ok(node)
    }

    /// Creates an empty file, open for writing (one handle).
    pub async fn create_file(&self, parent: NodeId, name: &str, mode: u32) -> CoreResult<Node> {
        self.check_new_name(parent, name).await?;
        let _edit = self.edit.lock().unwrap();
        self.check_name_free(parent, name)?;
        self.create_file_in(parent, name, mode)
    }

    /// [`Core::create_file`] answered from the cache alone (the parent and its listing are
    /// cached), without a task; `None` if the service must be asked first.
    pub fn create_file_now(
        &self,
        parent: NodeId,
        name: &str,
        mode: u32,
    ) -> Option<CoreResult<Node>> {
        if let Err(e) = check_name(name) {
            return Some(Err(e.into()));
        }
        let p = self.view(parent)?;
        if !p.is_dir() {
            return Some(Err(CoreErr::NotDir));
        }
        let _edit = self.edit.lock().unwrap();
        match self.tree.child(parent, name)? {
            Some(_) => Some(Err(CoreErr::Exists)),
            None => Some(self.create_file_in(parent, name, mode)),
        }
    }

    /// `Exists` if `name` is taken in `parent` (checked again under the edit lock: the
    /// listing was read before it was taken).
    fn check_name_free(&self, parent: NodeId, name: &str) -> CoreResult<()> {
        match self.tree.child(parent, name) {
            Some(Some(_)) => Err(CoreErr::Exists),
            _ => Ok(()),
        }
    }

    fn create_file_in(&self, parent: NodeId, name: &str, mode: u32) -> CoreResult<Node> {
        let node = self.new_node(parent, name, NodeKind::File, mode);
        let staging = self.new_staging(0, vec![])?;
        staging.dirty.store(true, Ordering::Relaxed);
        staging.handles.store(1, Ordering::Relaxed);
        self.staging.lock().unwrap().insert(node.id, staging);
        self.open_files.opened(node.id);
        self.unsent.lock().unwrap().insert(node.id);
        self.add_local_node(&node);
        Ok(node)
    }

    fn staging_file(&self) -> CoreResult<(Arc<File>, PathBuf)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .cfg
            .cache_dir
            .join("staging")
            .join(format!("{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok((Arc::new(file), path))
    }

    fn new_staging(
        &self,
        base_version: Version,
        base_blocks: Vec<BlockHash>,
    ) -> CoreResult<Arc<Staging>> {
        let (file, path) = self.staging_file()?;
        Ok(Arc::new(Staging {
            inner: Mutex::new(StagingFile {
                file,
                path: Some(path),
                sealed: false,
            }),
            size: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
            base: Mutex::new((base_version, base_blocks)),
        }))
    }

    // ---------------------------------------------------------------- writing

    /// Notes a handle opened on a node the caller already found (see `open_files.rs`);
    /// [`Core::release`] closes it.
    pub fn opened(&self, id: NodeId) {
        self.open_files.opened(self.resolve(id));
    }

    /// Opens a file; for writing, makes (or shares) its staging copy. Every successful open
    /// is matched by one [`Core::release`].
    pub async fn open_file(&self, id: NodeId, write: bool, trunc: bool) -> CoreResult<()> {
        let id = self.resolve(id);
        let node = self.node(id).await?;
        if node.is_dir() {
            return if write { Err(CoreErr::IsDir) } else { Ok(()) };
        }
        if !write {
            self.opened(id);
            return Ok(());
        }
        let shared = {
            let map = self.staging.lock().unwrap();
            map.get(&id)
                .map(|s| s.handles.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if shared {
            self.opened(id);
            return Ok(());
        }
        let staging = self.new_staging(node.version, node.blocks.clone())?;
        // What the copy starts from: this device's newest content not yet on the service,
        // else the tree's node. Looked up in that order and only now: the uploader puts the
        // committed node in the tree *before* it lets go of the local content, so a reader
        // that finds no local content finds the tree already up to date. (Taking the
        // tree's blocks first and the local content after could pair an old version's
        // blocks with a newer size: a reopen then lost the last close's writes.)
        if !trunc {
            let file = staging.inner.lock().unwrap().file.clone();
            let len = match self.local_of(id) {
                Some(l) => {
                    let src = l.file.clone();
                    tokio::task::spawn_blocking(move || copy_file(&src, &file, l.size))
                        .await
                        .map_err(std::io::Error::other)??;
                    l.size
                }
                None => {
                    let node = self.view(id).ok_or(CoreErr::NotFound)?;
                    for (i, hash) in node.blocks.iter().enumerate() {
                        self.blocks.get(hash).await?;
                        let path = self.blocks.path(hash);
                        let file = file.clone();
                        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                            let bytes = std::fs::read(path)?;
                            file.write_all_at(&bytes, i as u64 * BLOCK_SIZE)
                        })
                        .await
                        .map_err(std::io::Error::other)??;
                    }
                    file.set_len(node.size)?;
                    node.size
                }
            };
            staging.size.store(len, Ordering::Relaxed);
        }
        if trunc && node.size > 0 {
            staging.dirty.store(true, Ordering::Relaxed);
        }
        let mut map = self.staging.lock().unwrap();
        // Resolved under the lock: the node may have got its service id while we copied;
        // then this copy descends from the version the service just created.
        let key = self.resolve(id);
        if key != id {
            if let Some(n) = self.tree.get(key) {
                let mut base = staging.base.lock().unwrap();
                if base.0 < n.version {
                    *base = (n.version, n.blocks.clone());
                }
            }
        }
        let s = map.entry(key).or_insert(staging);
        s.handles.fetch_add(1, Ordering::Relaxed);
        if trunc && node.size > 0 {
            s.dirty.store(true, Ordering::Relaxed);
        }
        drop(map);
        self.opened(key);
        Ok(())
    }

    fn staging_of(&self, id: NodeId) -> Option<Arc<Staging>> {
        let map = self.staging.lock().unwrap();
        map.get(&self.resolve(id)).or_else(|| map.get(&id)).cloned()
    }

    fn local_of(&self, id: NodeId) -> Option<LocalContent> {
        let map = self.local.lock().unwrap();
        map.get(&self.resolve(id)).or_else(|| map.get(&id)).cloned()
    }

    /// Makes the staging file writable again after a flush moved it into the journal.
    ///
    /// Every change of a staging copy runs under its lock, as `flush` does: a flush can come
    /// at any time, even in the middle of a write (a forked child closing its inherited copy
    /// of the descriptor sends one), and must see each write whole or not at all.
    fn change_staging<R>(
        &self,
        s: &Staging,
        f: impl FnOnce(&File) -> std::io::Result<R>,
    ) -> CoreResult<R> {
        let mut inner = s.inner.lock().unwrap();
        if inner.sealed {
            let (file, path) = self.staging_file()?;
            copy_file(&inner.file, &file, s.size.load(Ordering::Relaxed))?;
            inner.file = file;
            inner.path = Some(path);
            inner.sealed = false;
        }
        let result = f(&inner.file)?;
        s.dirty.store(true, Ordering::Relaxed);
        Ok(result)
    }

    /// Writes into the staging copy (local disk only).
    pub fn write(&self, id: NodeId, offset: u64, data: &[u8]) -> CoreResult<usize> {
        let id = self.resolve(id);
        let s = self
            .staging_of(id)
            .ok_or(CoreErr::Invalid("file not open for writing".into()))?;
        self.change_staging(&s, |file| {
            file.write_all_at(data, offset)?;
            s.size
                .fetch_max(offset + data.len() as u64, Ordering::Relaxed);
            Ok(())
        })?;
        Ok(data.len())
    }

    /// `close`/`fsync`: journals a dirty staging copy (durably) for upload.
    pub fn flush(&self, id: NodeId) -> CoreResult<()> {
        let id = self.resolve(id);
        let Some(s) = self.staging_of(id) else {
            return Ok(());
        };
        if !s.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut inner = s.inner.lock().unwrap();
        if !s.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let size = s.size.load(Ordering::Relaxed);
        let path = inner.path.take();
        let data = self.journal.new_data_name();
        let dest = self.journal.data_path(&data);
        match (&path, inner.sealed) {
            (Some(path), false) => std::fs::rename(path, &dest)?,
            _ => {
                let f = File::create(&dest)?;
                copy_file(&inner.file, &f, size)?;
            }
        }
        inner.file.set_len(size)?;
        inner.sealed = true;
        drop(inner);
        if let Err(e) = self.journal_content(id, &s, &data, size) {
            s.dirty.store(true, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn journal_content(&self, id: NodeId, s: &Staging, data: &str, size: u64) -> CoreResult<()> {
        let node = self.view(id).ok_or(CoreErr::NotFound)?;
        let mtime_ns = now_ns();
        let old_local = self.local.lock().unwrap().get(&id).map(|l| l.data.clone());
        let was_unsent = self.unsent.lock().unwrap().remove(&id);
        let data_opt = Some(data.to_string());
        // The tree and local content first: the uploader may take the entry at once, and its
        // answer must not be overwritten by this older local view afterwards.
        self.set_local(id, data, size);
        self.tree.pin_changed(id, |n| {
            n.size = size;
            n.mtime_ns = mtime_ns;
        });
        if was_unsent {
            self.journal.append(Op::Create {
                node: id,
                parent: node.parent,
                name: node.name.clone(),
                kind: LocalKind::File {
                    data: data_opt,
                    size,
                },
                mode: node.mode,
                mtime_ns,
            })?;
        } else if let Some(e) = self
            .journal
            .find_pending(id, |op| matches!(op, Op::Create { .. }))
        {
            let Op::Create {
                node: n,
                parent,
                name,
                mode,
                ..
            } = e.op.clone()
            else {
                unreachable!()
            };
            let op = Op::Create {
                node: n,
                parent,
                name,
                kind: LocalKind::File {
                    data: data_opt.clone(),
                    size,
                },
                mode,
                mtime_ns,
            };
            if !self.journal.rewrite(e.seq, op)? {
                self.append_content(id, s, data_opt, size, mtime_ns)?;
            }
        } else if let Some(e) = self
            .journal
            .find_pending(id, |op| matches!(op, Op::Content { .. }))
        {
            let Op::Content {
                node: n,
                base_version,
                base_blocks,
                ..
            } = e.op.clone()
            else {
                unreachable!()
            };
            let op = Op::Content {
                node: n,
                base_version,
                base_blocks,
                data: data_opt.clone(),
                size,
                mtime_ns,
            };
            if !self.journal.rewrite(e.seq, op)? {
                self.append_content(id, s, data_opt, size, mtime_ns)?;
            }
        } else {
            self.append_content(id, s, data_opt, size, mtime_ns)?;
        }
        if let Some(old) = old_local {
            if old != data
                && !self
                    .journal
                    .entries()
                    .iter()
                    .any(|e| e.op.data() == Some(&old))
            {
                let _ = std::fs::remove_file(self.journal.data_path(&old));
            }
        }
        Ok(())
    }

    fn append_content(
        &self,
        id: NodeId,
        s: &Staging,
        data: Option<String>,
        size: u64,
        mtime_ns: i64,
    ) -> CoreResult<()> {
        let (base_version, base_blocks) = s.base.lock().unwrap().clone();
        self.journal.append(Op::Content {
            node: id,
            base_version,
            base_blocks,
            data,
            size,
            mtime_ns,
        })?;
        Ok(())
    }

    /// A handle of a file is closed (the staging copy goes with the last writer).
    pub fn release(&self, id: NodeId, write: bool) -> CoreResult<()> {
        let id = self.resolve(id);
        self.open_files.closed(id);
        if !write {
            return Ok(());
        }
        let Some(s) = self.staging_of(id) else {
            return Ok(());
        };
        if s.handles.fetch_sub(1, Ordering::Relaxed) > 1 {
            return Ok(());
        }
        let result = self.flush(id);
        let removed = {
            // Found by identity, not by id: the node may have been given its service id
            // (and the staging copy moved to it) since this call started.
            let mut map = self.staging.lock().unwrap();
            let key = map
                .iter()
                .find(|(_, cur)| Arc::ptr_eq(cur, &s))
                .map(|(k, _)| *k);
            match key {
                Some(k) if s.handles.load(Ordering::Relaxed) == 0 => map.remove(&k),
                _ => None,
            }
        };
        if let Some(s) = removed {
            let path = s.inner.lock().unwrap().path.take();
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    /// `fsync`: journal now, then wait (while online) until the service has the change.
    pub async fn fsync(&self, id: NodeId) -> CoreResult<()> {
        let id = self.resolve(id);
        let me_id = id;
        self.flush(me_id)?;
        tokio::task::block_in_place(|| self.journal.sync())?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.journal.has_pending(me_id) && self.online.load(Ordering::Relaxed) {
            let notified = self.journal.changed.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- changing the tree

    /// Removes every pending entry about a node that never reached the service; false if
    /// one is already on its way (then the node must be deleted on the service too).
    fn cancel_local(&self, id: NodeId) -> bool {
        if self.unsent.lock().unwrap().remove(&id) {
            return true;
        }
        if !is_local(id) || self.journal.resolve(id) != id {
            return false;
        }
        self.journal.cancel_node(id)
    }

    /// A node removed (here, or gone on the service) is forgotten: nothing of it stays
    /// pinned (a pinned node would come back in the next listing of its parent). A file
    /// still open keeps its node, unpinned, until closed (POSIX: an unlinked open file stays
    /// usable).
    pub(crate) fn forget_node(&self, id: NodeId) {
        self.keep_for_open_handles(id);
        if self.staging_of(id).is_some() {
            self.tree.unpin(id);
        } else {
            self.tree.forget(id);
        }
    }

    pub(crate) fn drop_local_content(&self, id: NodeId) {
        self.keep_for_open_handles(id);
        self.local.lock().unwrap().remove(&id);
    }

    /// A node is being removed or forgotten: if handles are open on it, they keep reading
    /// what it is now (see `open_files.rs`).
    pub(crate) fn keep_for_open_handles(&self, id: NodeId) {
        let id = self.resolve(id);
        if !self.open_files.is_open(id) {
            return;
        }
        if let Some(node) = self.view(id) {
            let content = self.local_of(id);
            self.open_files.keep(id, Orphan { node, content });
        }
    }

    /// The id of `name` in `parent`, from the folder's listing (read first if not cached).
    async fn listed_child(&self, parent: NodeId, name: &str) -> CoreResult<NodeId> {
        self.ensure_listing(parent).await?;
        self.tree
            .child(parent, name)
            .flatten()
            .ok_or(CoreErr::NotFound)
    }

    /// unlink / rmdir.
    pub async fn remove(&self, parent: NodeId, name: &str, dir: bool) -> CoreResult<()> {
        // Read what the check needs into the caches, then check and change under the edit
        // lock; if a cache dropped it meanwhile (eviction, a cursor gap), read it again.
        for _ in 0..4 {
            let id = self.listed_child(parent, name).await?;
            if self.node(id).await?.is_dir() && dir {
                self.ensure_listing(id).await?;
            }
            let _edit = self.edit.lock().unwrap();
            if let Some(done) = self.remove_now(parent, name, dir) {
                return done;
            }
        }
        Err(CoreErr::Busy)
    }

    /// The remove, from the caches alone; `None` if something it needs is not cached.
    fn remove_now(&self, parent: NodeId, name: &str, dir: bool) -> Option<CoreResult<()>> {
        let Some(id) = self.tree.child(parent, name)? else {
            return Some(Err(CoreErr::NotFound));
        };
        let node = self.view(id)?;
        if dir && !node.is_dir() {
            return Some(Err(CoreErr::NotDir));
        }
        if !dir && node.is_dir() {
            return Some(Err(CoreErr::IsDir));
        }
        if dir && !self.tree.listing(id)?.is_empty() {
            return Some(Err(CoreErr::NotEmpty));
        }
        let cancelled = self.cancel_local(id);
        if !cancelled {
            let delete = Op::Delete {
                node: id,
                base_version: node.version,
                base_blocks: node.blocks.clone(),
            };
            if let Err(e) = self.journal.append(delete) {
                return Some(Err(e.into()));
            }
        }
        self.tree.unlink(parent, name, id);
        if cancelled {
            self.forget_node(id);
        }
        self.drop_local_content(id);
        self.touch_dir(parent);
        Some(Ok(()))
    }

    fn is_ancestor(&self, ancestor: NodeId, mut id: NodeId) -> bool {
        for _ in 0..4096 {
            if id == ancestor {
                return true;
            }
            match self.tree.get(id) {
                Some(n) if n.parent != n.id => id = n.parent,
                _ => return false,
            }
        }
        false
    }

    /// rename, with the `RENAME_NOREPLACE` / `RENAME_EXCHANGE` modes.
    pub async fn rename(
        &self,
        parent: NodeId,
        name: &str,
        new_parent: NodeId,
        new_name: &str,
        mode: MoveMode,
    ) -> CoreResult<()> {
        check_name(new_name)?;
        // Read what the checks need into the caches, then check and change under the edit
        // lock; if a cache dropped it meanwhile (eviction, a cursor gap), read it again.
        for _ in 0..4 {
            self.ensure_listing(new_parent).await?;
            let id = self.listed_child(parent, name).await?;
            self.node(id).await?;
            if let Some(t) = self.tree.child(new_parent, new_name).flatten() {
                if self.node(t).await?.is_dir() {
                    self.ensure_listing(t).await?;
                }
            }
            let _edit = self.edit.lock().unwrap();
            if let Some(done) = self.rename_now(parent, name, new_parent, new_name, mode) {
                return done;
            }
        }
        Err(CoreErr::Busy)
    }

    /// The rename, from the caches alone; `None` if something it needs is not cached.
    fn rename_now(
        &self,
        parent: NodeId,
        name: &str,
        new_parent: NodeId,
        new_name: &str,
        mode: MoveMode,
    ) -> Option<CoreResult<()>> {
        let Some(id) = self.tree.child(parent, name)? else {
            return Some(Err(CoreErr::NotFound));
        };
        let node = self.view(id)?;
        if node.is_dir() && self.is_ancestor(id, new_parent) {
            return Some(Err(CoreErr::Invalid(
                "cannot move a directory into itself".into(),
            )));
        }
        let target = self.tree.child(new_parent, new_name)?;
        if target == Some(id) {
            return Some(Ok(()));
        }
        let target_node = match target {
            Some(t) => Some(self.view(t)?),
            None => None,
        };
        match (mode, &target_node) {
            (MoveMode::NoReplace, Some(_)) => return Some(Err(CoreErr::Exists)),
            (MoveMode::Exchange, None) => return Some(Err(CoreErr::NotFound)),
            (MoveMode::Exchange, Some(t)) => return Some(self.exchange(node, t.clone())),
            (_, Some(t)) if t.is_dir() && !node.is_dir() => return Some(Err(CoreErr::IsDir)),
            (_, Some(t)) if !t.is_dir() && node.is_dir() => return Some(Err(CoreErr::NotDir)),
            (_, Some(t)) if t.is_dir() && !self.tree.listing(t.id)?.is_empty() => {
                return Some(Err(CoreErr::NotEmpty));
            }
            _ => {}
        }
        Some(self.move_node(node, parent, name, new_parent, new_name, target_node))
    }

    /// Moves `node` from `parent`/`name` to `new_parent`/`new_name`, replacing `target_node`
    /// (checked by the caller): journal first, then the tree.
    fn move_node(
        &self,
        node: Node,
        parent: NodeId,
        name: &str,
        new_parent: NodeId,
        new_name: &str,
        target_node: Option<Node>,
    ) -> CoreResult<()> {
        let id = node.id;
        let mut moved = node.clone();
        moved.parent = new_parent;
        moved.name = new_name.to_string();

        // Editors' atomic save: a new file, not uploaded yet, replaces an uploaded file. Fold
        // it into one content change of the replaced file, which keeps its id.
        if let Some(t) = &target_node {
            if !t.is_dir() && !is_local(t.id) && node.kind == NodeKind::File {
                if let Some(e) = self
                    .journal
                    .find_pending(id, |op| matches!(op, Op::Create { .. }))
                {
                    // Not when the replaced file has changes journaled after the new file's
                    // create: the folded content would go up first and those older changes
                    // over it (the rename undone on the service, the new content only in
                    // the file's earlier versions).
                    let entries = self.journal.entries();
                    let later_change_of_target = entries
                        .iter()
                        .any(|x| x.seq > e.seq && self.journal.resolve(x.op.node()) == t.id);
                    if entries.iter().all(|x| x.seq == e.seq || x.op.node() != id)
                        && !later_change_of_target
                        && self.staging_of(id).is_none()
                    {
                        if let Op::Create {
                            kind: LocalKind::File { data, size },
                            ..
                        } = &e.op
                        {
                            if self.journal.rewrite(
                                e.seq,
                                Op::Content {
                                    node: t.id,
                                    base_version: t.version,
                                    base_blocks: t.blocks.clone(),
                                    data: data.clone(),
                                    size: *size,
                                    mtime_ns: node.mtime_ns,
                                },
                            )? {
                                self.journal.add_alias(id, t.id)?;
                                let local = self.local.lock().unwrap().remove(&id);
                                if let Some(l) = local {
                                    self.local.lock().unwrap().insert(t.id, l);
                                }
                                let mut replaced =
                                    (**self.tree.get(t.id).as_ref().unwrap()).clone();
                                replaced.size = *size;
                                replaced.mtime_ns = node.mtime_ns;
                                replaced.mode = node.mode;
                                self.tree.unlink(parent, name, id);
                                self.tree.forget(id);
                                self.tree.pin(replaced);
                                self.touch_dir(parent);
                                if node.mode != t.mode {
                                    self.journal.append(Op::SetAttr {
                                        node: t.id,
                                        mode: Some(node.mode),
                                        mtime_ns: None,
                                    })?;
                                }
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }

        let unsent = self.unsent.lock().unwrap().contains(&id);
        if let Some(t) = &target_node {
            if self.cancel_local(t.id) {
                // The replaced node never reached the service.
                self.tree.unlink(new_parent, new_name, t.id);
                self.forget_node(t.id);
            } else if unsent || is_local(id) || is_local(t.id) {
                // The replacing node has not reached the service (its create may still be
                // cancelled by a remove), or the replaced one's create is on its way (the
                // move would replace it on the service, but nothing here would say so: the
                // create's answer and its echo would list it again under the name): the
                // replaced one is deleted on its own.
                self.journal.append(Op::Delete {
                    node: t.id,
                    base_version: t.version,
                    base_blocks: t.blocks.clone(),
                })?;
            }
            self.drop_local_content(t.id);
            self.tree.unlink(new_parent, new_name, t.id);
        }
        if !unsent {
            let pending_create = self
                .journal
                .find_pending(id, |op| matches!(op, Op::Create { .. }));
            // Only while nothing later in the journal moves the node again (that move would
            // land after the rewritten create and put it back: an editor's save onto `f1`
            // journaled as a move, then `f1` renamed to `f4`: the service ended at `f1`), and
            // while nothing later moves or deletes anything (the new name may be freed only
            // by such a later entry: the create would find it taken and become a conflict
            // copy of this device's own file).
            let names_change_later = |seq: u64| {
                self.journal
                    .entries()
                    .iter()
                    .any(|x| x.seq > seq && matches!(x.op, Op::Move { .. } | Op::Delete { .. }))
            };
            let rewritten = match (pending_create, &target_node) {
                (Some(e), None)
                    if self.exists_before(new_parent, e.seq)
                        && !self.journal.has_later(e.seq, id)
                        && !names_change_later(e.seq) =>
                {
                    let mut op = e.op.clone();
                    if let Op::Create {
                        parent: p, name: n, ..
                    } = &mut op
                    {
                        *p = new_parent;
                        *n = new_name.to_string();
                    }
                    self.journal.rewrite(e.seq, op)?
                }
                _ => false,
            };
            if !rewritten {
                // What the app replaces: the service's node as seen here. One made here
                // never reached the service or is deleted by the entry just journaled: the
                // name is free by the time this move goes (if another device took it
                // meanwhile, both are kept).
                let expect = match &target_node {
                    None => Some(Seen::Free),
                    Some(t) if is_local(t.id) => Some(Seen::Free),
                    Some(t) if t.version > 0 => Some(Seen::Node {
                        id: t.id,
                        version: t.version,
                        blocks: t.blocks.clone(),
                    }),
                    Some(_) => None,
                };
                self.journal.append(Op::Move {
                    node: id,
                    new_parent,
                    new_name: new_name.to_string(),
                    mode: MoveMode::Replace,
                    expect,
                })?;
            }
        }
        self.tree.unlink(parent, name, id);
        self.tree.link(new_parent, new_name, id);
        self.tree.pin(moved);
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        Ok(())
    }

    /// Whether folder `dir` will exist on the service by the time the journal entry `seq`
    /// is uploaded: it is there already, or its own create comes earlier in the journal. A
    /// pending create moved into a folder made *after* it must not be rewritten to that
    /// folder (it would go up first and find no folder); a move queued after both does it.
    fn exists_before(&self, dir: NodeId, seq: u64) -> bool {
        let dir = self.journal.resolve(dir);
        if !is_local(dir) {
            return true;
        }
        self.journal
            .entries()
            .iter()
            .any(|e| e.seq < seq && matches!(e.op, Op::Create { .. }) && e.op.node() == dir)
    }

    fn exchange(&self, a: Node, b: Node) -> CoreResult<()> {
        if is_local(a.id) || is_local(b.id) {
            return Err(CoreErr::Unsupported(
                "RENAME_EXCHANGE of a file not uploaded yet",
            ));
        }
        self.journal.append(Op::Move {
            node: a.id,
            new_parent: b.parent,
            new_name: b.name.clone(),
            mode: MoveMode::Exchange,
            expect: None,
        })?;
        let mut a2 = a.clone();
        a2.parent = b.parent;
        a2.name = b.name.clone();
        let mut b2 = b.clone();
        b2.parent = a.parent;
        b2.name = a.name.clone();
        self.tree.link(a2.parent, &a2.name, a2.id);
        self.tree.link(b2.parent, &b2.name, b2.id);
        self.tree.pin(a2);
        self.tree.pin(b2);
        Ok(())
    }

    /// chmod / utimens / truncate.
    pub async fn setattr(
        &self,
        id: NodeId,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
        size: Option<u64>,
    ) -> CoreResult<Node> {
        let id = self.resolve(id);
        let node = self.node(id).await?;
        if let Some(size) = size {
            if node.is_dir() {
                return Err(CoreErr::IsDir);
            }
            let opened_here = self.staging_of(id).is_none();
            if opened_here {
                self.open_file(id, true, size == 0).await?;
            }
            let s = self.staging_of(id).ok_or(CoreErr::NotFound)?;
            self.change_staging(&s, |file| {
                file.set_len(size)?;
                s.size.store(size, Ordering::Relaxed);
                Ok(())
            })?;
            // A truncate is a change of content: the file's mtime moves now (make, rsync
            // and editors read it), not only at the close that journals it.
            let now = now_ns();
            self.tree.pin_changed(id, |n| n.mtime_ns = now);
            if opened_here {
                self.release(id, true)?;
            }
        }
        if mode.is_some() || mtime_ns.is_some() {
            let mut n = self.view(id).ok_or(CoreErr::NotFound)?;
            if let Some(m) = mode {
                n.mode = m & 0o7777;
            }
            if let Some(t) = mtime_ns {
                n.mtime_ns = t;
            }
            let (new_mode, new_mtime) = (n.mode, n.mtime_ns);
            let is_unsent = self.unsent.lock().unwrap().contains(&id);
            let folded = is_unsent || {
                match self
                    .journal
                    .find_pending(id, |op| matches!(op, Op::Create { .. }))
                {
                    Some(e) => {
                        let mut op = e.op.clone();
                        if let Op::Create {
                            mode: m,
                            mtime_ns: t,
                            ..
                        } = &mut op
                        {
                            *m = n.mode;
                            *t = n.mtime_ns;
                        }
                        self.journal.rewrite(e.seq, op)?
                    }
                    None => false,
                }
            };
            if !folded {
                self.journal.append(Op::SetAttr {
                    node: id,
                    mode: mode.map(|m| m & 0o7777),
                    mtime_ns,
                })?;
            }
            self.tree.pin_changed(id, |n| {
                n.mode = new_mode;
                n.mtime_ns = new_mtime;
            });
        }
        self.view(id).ok_or(CoreErr::NotFound)
    }

    // ---------------------------------------------------------------- snapshot

    /// Saves what the tree cache knows (nodes, complete listings, the change cursor) to
    /// `<cache>/tree.json`, so a later mount can start offline with the same view.
    /// This is also the journal's checkpoint: the uploaded entries whose answers the tree
    /// holds are forgotten once it is saved (see `journal.rs`).
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        let _one_at_a_time = self.saving.lock().unwrap();
        // Taken before the tree is read: their answers are in it already.
        let covered: Vec<u64> = self.journal.uploaded().iter().map(|u| u.seq).collect();
        let nodes: Vec<Node> = self
            .tree
            .known()
            .into_iter()
            .filter(|n| !is_local(n.id))
            .map(|n| (*n).clone())
            .collect();
        let dirs: Vec<(NodeId, Vec<(String, NodeId)>)> = self
            .tree
            .listed_dirs()
            .into_iter()
            .filter(|d| !is_local(*d))
            .filter_map(|d| {
                let entries = self
                    .tree
                    .listing(d)?
                    .into_iter()
                    .filter(|(_, id)| !is_local(*id))
                    .collect();
                Some((d, entries))
            })
            .collect();
        let snap = Snapshot {
            cursor: self.cursor.load(Ordering::Relaxed),
            covered,
            nodes,
            dirs,
        };
        let dir = &self.cfg.cache_dir;
        let tmp = dir.join("tree.json.tmp");
        {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer(std::io::BufWriter::new(&mut f), &snap)
                .map_err(std::io::Error::other)?;
            f.sync_data()?;
        }
        std::fs::rename(tmp, dir.join("tree.json"))?;
        // Durable before the journal drops what it covers.
        File::open(dir)?.sync_all()?;
        self.journal.forget(&snap.covered);
        Ok(())
    }

    /// At start: the uploaded entries the saved snapshot covers are forgotten (a crash came
    /// between saving it and dropping them).
    fn forget_checkpointed(&self) {
        #[derive(serde::Deserialize)]
        struct Covered {
            #[serde(default)]
            covered: Vec<u64>,
        }
        if self.journal.uploaded().is_empty() {
            return;
        }
        let path = self.cfg.cache_dir.join("tree.json");
        if let Ok(Ok(c)) = std::fs::read(path).map(|b| serde_json::from_slice::<Covered>(&b)) {
            self.journal.forget(&c.covered);
        }
    }

    /// Puts the answers of the uploaded entries no saved snapshot includes yet over the
    /// snapshot just loaded, in order (see `journal.rs`).
    fn replay_uploaded(&self) {
        for up in self.journal.uploaded() {
            match &up.node {
                Some(node) => {
                    if up.created && node.kind == NodeKind::Dir && !self.tree.has_listing(node.id) {
                        self.tree.new_listing(node.id);
                    }
                    let cached = node.blocks.iter().all(|b| self.blocks.ready(b));
                    if let (false, Some(data)) = (cached, &up.data) {
                        self.set_local(node.id, data, node.size);
                    }
                    self.tree.place(node.clone());
                }
                None => {
                    if let Some(n) = self.tree.get(up.id) {
                        self.tree.unlink(n.parent, &n.name, up.id);
                    }
                    self.tree.forget(up.id);
                }
            }
        }
    }

    /// Loads the snapshot of an earlier mount (used when starting offline). Journaled local
    /// changes, already replayed, stay on top.
    pub fn load_snapshot(&self) -> std::io::Result<bool> {
        let path = self.cfg.cache_dir.join("tree.json");
        let snap = std::fs::read(&path)
            .map_err(|_| None)
            .and_then(|b| serde_json::from_slice::<Snapshot>(&b).map_err(Some));
        let snap = match snap {
            Ok(snap) => snap,
            Err(why) => {
                // Without a saved tree the answers the journal kept are all there is.
                self.replay_uploaded();
                return why.map_or(Ok(false), |e| Err(std::io::Error::other(e)));
            }
        };
        for n in snap.nodes {
            if !self.tree.is_pinned(n.id) {
                self.tree.put(n);
            }
        }
        for (dir, entries) in snap.dirs {
            self.tree.new_listing(dir);
            for (name, id) in entries {
                if !self.tree.is_pinned(id) {
                    self.tree.link(dir, &name, id);
                }
            }
        }
        self.replay_uploaded();
        self.overlay_pending_in(&self.tree.listed_dirs());
        self.link_pinned();
        if !self.cursor_known.swap(true, Ordering::Relaxed) {
            self.cursor.store(snap.cursor, Ordering::Relaxed);
        }
        Ok(true)
    }

    // ---------------------------------------------------------------- status

    pub fn status(&self) -> Status {
        Status {
            online: self.online.load(Ordering::Relaxed),
            pending_uploads: self.journal.pending(),
            pending: self
                .journal
                .entries()
                .iter()
                .take(20)
                .map(|e| describe(&e.op))
                .collect(),
            cache_bytes: self.blocks.used(),
            cache_limit: self.cfg.cache_size,
            last_seq: self.cursor.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            uploaded: self.uploaded.load(Ordering::Relaxed),
            device: self.cfg.device_name.clone(),
            device_id: self.device.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap().clone(),
            ..Default::default()
        }
    }
}

fn read_range(file: &File, offset: u64, size: u32, len: u64) -> CoreResult<Vec<u8>> {
    if offset >= len {
        return Ok(Vec::new());
    }
    let want = (size as u64).min(len - offset) as usize;
    let mut buf = vec![0u8; want];
    let n = read_full(file, offset, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn describe(op: &Op) -> String {
    match op {
        Op::Create { name, kind, .. } => format!(
            "create {name} ({})",
            match kind {
                LocalKind::File { size, .. } => format!("file, {size} bytes"),
                LocalKind::Dir => "directory".into(),
                LocalKind::Symlink { .. } => "symlink".into(),
            }
        ),
        Op::Content { node, size, .. } => format!("content of node {node} ({size} bytes)"),
        Op::Move { node, new_name, .. } => format!("move node {node} to {new_name}"),
        Op::Delete { node, .. } => format!("delete node {node}"),
        Op::SetAttr { node, .. } => format!("attributes of node {node}"),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    cursor: Seq,
    /// The uploaded journal entries whose answers the tree includes (the checkpoint: the
    /// journal forgets them once this is saved; see `journal.rs`).
    #[serde(default)]
    covered: Vec<u64>,
    nodes: Vec<Node>,
    dirs: Vec<(NodeId, Vec<(String, NodeId)>)>,
}

/// What `jewelfs status` shows.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub online: bool,
    pub pending_uploads: usize,
    #[serde(default)]
    pub pending: Vec<String>,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub last_seq: Seq,
    pub conflicts: u64,
    pub uploaded: u64,
    pub device: String,
    pub device_id: DeviceId,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub mountpoint: String,
    #[serde(default)]
    pub cache_dir: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub ready: bool,
}
#[cfg(test)]
mod model_tests;
