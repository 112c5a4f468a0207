//! Other machines' changes replayed through this machine's own mountpoint, so that inotify
//! watchers (file managers, editors that reload, build watchers, `tail -f`) hear them.
//!
//! The kernel raises inotify events only for operations that pass through its VFS: it
//! raises none for FUSE's invalidations (`inval_entry`, `inval_inode`), and on this kernel
//! (6.18, measured by `mount_posix.rs`) none for `notify_delete` either. So once the
//! listener has applied a remote change to the tree and queued the invalidations, the
//! notifier thread makes the same change again with ordinary system calls on the mount
//! (relative to a descriptor of its root, see below):
//!
//! | remote change | replayed as | a watcher hears |
//! |---|---|---|
//! | new file | `openat(O_CREAT\|O_EXCL)`, `ftruncate(size)`, `close` | `CREATE`, `OPEN`, `MODIFY`, `CLOSE_WRITE` |
//! | new folder / symlink | `mkdirat` / `symlinkat` | `CREATE` |
//! | content changed | `openat(O_WRONLY)`, `ftruncate(size)`, `close` | `OPEN`, `MODIFY`, `CLOSE_WRITE` |
//! | moved / renamed | `renameat` | `MOVED_FROM`, `MOVED_TO` |
//! | deleted | `unlinkat` | `DELETE` |
//!
//! The adapter knows these requests by the calling thread (the kernel sends the caller's
//! thread id: only the notifier thread replays) or by a handle opened by a replay, and
//! answers them from the state the tree already has, changing nothing: a replayed `create`
//! answers the node that is already there, `unlink` and `rename` just succeed, `ftruncate`
//! answers the attributes as they are. For the lookups the kernel makes on the way, the
//! names the change touched answer as they were *before* it ([`Replays::before`]): the
//! old name of a moved or deleted node still finds it, the new name of a created or moved
//! one is not there yet.
//!
//! **Its own thread.** The notifier thread hands each change over once the invalidations
//! queued before it are done (so a watcher that reads on hearing finds the new content);
//! a replay (a few requests to this same process) never holds up an invalidation. At most
//! [`MAX_WAITING`] changes wait: in a larger burst the rest are not replayed.
//!
//! **Never outside the mount.** Each replay works relative to a descriptor of the mount's
//! root, checked to be a FUSE filesystem: after an unmount the calls fail (`ENOTCONN`)
//! instead of landing in the empty folder underneath. The descriptor is closed after each
//! replay: one held open would keep a lazily unmounted drive alive (its session never
//! ends).
//!
//! A replay that fails (the name was taken, the folder is read-only to its owner, the mount
//! is ending) is logged at debug and dropped: the change itself is already applied, only
//! the event is lost; a failed delete is told to the kernel as `notify_delete` instead.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use jewel_wire::{Node, NodeId, NodeKind, ROOT_ID};

use crate::core::{Core, Heard};

/// `statfs` magic of a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The deepest folder a replay walks up from (deeper: not replayed).
const MAX_DEPTH: usize = 1024;

/// How many heard changes may wait for their replay (a few hundred bytes each). Replays
/// take well under a millisecond each, so only a burst of thousands of changes at once
/// fills it; what does not fit is not replayed (watchers miss those events).
pub const MAX_WAITING: usize = 4096;

/// Hands heard changes to the replaying thread, in order.
pub struct ReplayQueue {
    tx: std::sync::mpsc::SyncSender<Heard>,
    unreplayed: Arc<dyn Fn(&Heard) + Send + Sync>,
}

impl ReplayQueue {
    /// Queues `heard`; when the queue is full (or the thread gone) it is not replayed.
    pub fn push(&self, heard: Heard) {
        use std::sync::mpsc::TrySendError;
        if let Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) = self.tx.try_send(heard)
        {
            tracing::debug!(?h, "not replayed: {MAX_WAITING} changes wait already");
            (self.unreplayed)(&h);
        }
    }
}

/// Starts the replaying thread. `unreplayed` is told of every change that could not be
/// replayed (the mount tells the kernel of a delete another way).
pub fn start(
    mut replayer: Replayer,
    unreplayed: impl Fn(&Heard) + Send + Sync + 'static,
) -> std::io::Result<ReplayQueue> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Heard>(MAX_WAITING);
    let unreplayed: Arc<dyn Fn(&Heard) + Send + Sync> = Arc::new(unreplayed);
    let on_failure = unreplayed.clone();
    std::thread::Builder::new()
        .name("jewelfs-replay".into())
        .spawn(move || {
            for heard in rx {
                if let Err(e) = replayer.replay(&heard) {
                    tracing::debug!(?heard, "not replayed: {e}");
                    on_failure(&heard);
                }
            }
        })?;
    Ok(ReplayQueue { tx, unreplayed })
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayErr {
    #[error("the mount is ending")]
    Ended,
    #[error("{0} is not (or no longer) this jewelfs mount")]
    NotMounted(PathBuf),
    #[error("{0} holds another node by now")]
    Taken(String),
    #[error("node {0} has no known path in this machine's tree")]
    NoPath(NodeId),
    #[error("{op} {path}: {err}")]
    Call {
        op: &'static str,
        path: String,
        err: std::io::Error,
    },
}

/// What the adapter needs to know while a replay runs (shared with the replayer).
#[derive(Default)]
pub struct Replays {
    /// The thread id of the replaying thread (0 before the first replay).
    tid: AtomicU32,
    /// The names the change being replayed touched, as they were before it: `None` for a
    /// name that did not exist yet.
    before: Mutex<Vec<(NodeId, String, Option<Node>)>>,
}

impl Replays {
    /// Whether a request comes from the replaying thread.
    pub fn is_replay(&self, pid: u32) -> bool {
        let tid = self.tid.load(Ordering::Relaxed);
        tid != 0 && tid == pid
    }

    /// During a replay: what `parent`/`name` showed before the change (`Some(None)`: not
    /// there), or `None` for a name the change did not touch.
    pub fn before(&self, parent: NodeId, name: &str) -> Option<Option<Node>> {
        self.before
            .lock()
            .unwrap()
            .iter()
            .find(|(p, n, _)| *p == parent && n == name)
            .map(|(_, _, node)| node.clone())
    }
}

/// Replays heard changes on the mount (runs on its own thread, see [`start`]).
pub struct Replayer {
    /// Weak: the replayer lives on the notifier thread, which the core's channel feeds.
    core: Weak<Core>,
    replays: Arc<Replays>,
    mountpoint: PathBuf,
}

impl Replayer {
    pub fn new(core: &Arc<Core>, replays: Arc<Replays>, mountpoint: &Path) -> Replayer {
        Replayer {
            core: Arc::downgrade(core),
            replays,
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// Replays one change. On error nothing was changed by the replay.
    pub fn replay(&mut self, heard: &Heard) -> Result<(), ReplayErr> {
        let root = self.open_root()?;
        let core = self.core.upgrade().ok_or(ReplayErr::Ended)?;
        let tree = &core.tree;
        let (before, call): (Vec<(NodeId, String, Option<Node>)>, Call) = match heard {
            Heard::Created { parent, name, id } => {
                holds(&core, *parent, name, Some(*id))?;
                let node = core.view(*id).ok_or(ReplayErr::NoPath(*id))?;
                let path = child_path(&core, *parent, name)?;
                let call = match node.kind {
                    NodeKind::File => Call::Create(path, node.size),
                    NodeKind::Dir => Call::Mkdir(path),
                    NodeKind::Symlink => Call::Symlink(path, node.target.unwrap_or_default()),
                };
                (vec![(core.resolve(*parent), name.clone(), None)], call)
            }
            Heard::Changed { id } => {
                let node = core.view(*id).ok_or(ReplayErr::NoPath(*id))?;
                (vec![], Call::Write(path(&core, *id)?, node.size))
            }
            Heard::Moved {
                from_parent,
                from_name,
                id,
            } => {
                let node = tree.get(*id).ok_or(ReplayErr::NoPath(*id))?;
                holds(&core, *from_parent, from_name, None)?;
                let from = child_path(&core, *from_parent, from_name)?;
                let to = path(&core, *id)?;
                let before = vec![
                    (
                        core.resolve(*from_parent),
                        from_name.clone(),
                        Some((*node).clone()),
                    ),
                    (core.resolve(node.parent), node.name.clone(), None),
                ];
                (before, Call::Rename(from, to))
            }
            Heard::Removed { node } => {
                holds(&core, node.parent, &node.name, None)?;
                let path = child_path(&core, node.parent, &node.name)?;
                let before = vec![(
                    core.resolve(node.parent),
                    node.name.clone(),
                    Some(node.clone()),
                )];
                (before, Call::Remove(path, node.is_dir()))
            }
        };
        drop(core);
        self.replays
            .tid
            .store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
        *self.replays.before.lock().unwrap() = before;
        let result = call.run(root.as_raw_fd());
        self.replays.before.lock().unwrap().clear();
        result
    }

    /// A descriptor of the mount's root, if the mountpoint holds a FUSE filesystem now.
    fn open_root(&self) -> Result<OwnedFd, ReplayErr> {
        let not_mounted = || ReplayErr::NotMounted(self.mountpoint.clone());
        let path = CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|_| not_mounted())?;
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(not_mounted());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0
            || fs.f_type as i64 != FUSE_SUPER_MAGIC
        {
            return Err(not_mounted());
        }
        Ok(fd)
    }
}

/// The path of node `id` relative to the mount's root.
fn path(core: &Core, id: NodeId) -> Result<String, ReplayErr> {
    let mut parts = Vec::new();
    let mut at = core.resolve(id);
    for _ in 0..MAX_DEPTH {
        if at == ROOT_ID {
            parts.reverse();
            return Ok(parts.join("/"));
        }
        let n = core.tree.get(at).ok_or(ReplayErr::NoPath(id))?;
        parts.push(n.name.clone());
        at = n.parent;
    }
    Err(ReplayErr::NoPath(id))
}

/// Checks that `parent`/`name` holds `expect` in the tree now, when its folder is listed
/// here: a later change may have given the name to another node (a rename over a deleted
/// file), whose dentry a replay must not touch.
fn holds(core: &Core, parent: NodeId, name: &str, expect: Option<NodeId>) -> Result<(), ReplayErr> {
    let Some(now) = core.tree.child(parent, name) else {
        return Ok(()); // not listed here: nothing else known under the name
    };
    if now.map(|id| core.resolve(id)) != expect.map(|id| core.resolve(id)) {
        return Err(ReplayErr::Taken(name.to_string()));
    }
    Ok(())
}

fn child_path(core: &Core, parent: NodeId, name: &str) -> Result<String, ReplayErr> {
    let dir = path(core, parent)?;
    Ok(if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    })
}

/// The system calls of one replay, relative to the root descriptor.
enum Call {
    Create(String, u64),
    Mkdir(String),
    Symlink(String, String),
    Write(String, u64),
    Rename(String, String),
    Remove(String, bool),
}

impl Call {
    fn run(&self, root: i32) -> Result<(), ReplayErr> {
        match self {
            Call::Create(path, size) => {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                write_through(root, path, flags, *size, "create")
            }
            Call::Write(path, size) => {
                write_through(root, path, libc::O_WRONLY | libc::O_CLOEXEC, *size, "write")
            }
            Call::Mkdir(path) => {
                let c = cstr(path, "mkdir")?;
                check(
                    unsafe { libc::mkdirat(root, c.as_ptr(), 0o755) },
                    "mkdir",
                    path,
                )
            }
            Call::Symlink(path, target) => {
                let (c, t) = (cstr(path, "symlink")?, cstr(target, "symlink")?);
                check(
                    unsafe { libc::symlinkat(t.as_ptr(), root, c.as_ptr()) },
                    "symlink",
                    path,
                )
            }
            Call::Rename(from, to) => {
                let (f, t) = (cstr(from, "rename")?, cstr(to, "rename")?);
                check(
                    unsafe { libc::renameat(root, f.as_ptr(), root, t.as_ptr()) },
                    "rename",
                    from,
                )
            }
            Call::Remove(path, dir) => {
                let c = cstr(path, "unlink")?;
                let flags = if *dir { libc::AT_REMOVEDIR } else { 0 };
                check(
                    unsafe { libc::unlinkat(root, c.as_ptr(), flags) },
                    "unlink",
                    path,
                )
            }
        }
    }
}

/// Open (or create), `ftruncate` to the size the file has (the kernel raises `MODIFY`),
/// close (`CLOSE_WRITE`).
fn write_through(
    root: i32,
    path: &str,
    flags: i32,
    size: u64,
    op: &'static str,
) -> Result<(), ReplayErr> {
    let c = cstr(path, op)?;
    let fd = unsafe { libc::openat(root, c.as_ptr(), flags, 0o600) };
    check(fd, op, path)?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check(
        unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) },
        op,
        path,
    )
}

fn cstr(s: &str, op: &'static str) -> Result<CString, ReplayErr> {
    CString::new(s).map_err(|_| ReplayErr::Call {
        op,
        path: s.to_string(),
        err: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

fn check(ret: i32, op: &'static str, path: &str) -> Result<(), ReplayErr> {
    if ret < 0 {
        return Err(ReplayErr::Call {
            op,
            path: path.to_string(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
