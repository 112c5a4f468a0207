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
//! | mode or mtime changed | `fchmodat(mode)` (not for symlinks: Linux has no mode for them) | `ATTRIB` |
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

use crate::core::{Core, Heard, Inval};

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
    #[error("a name in the tree is not one a replay may use ({0:?})")]
    BadName(String),
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
    /// The node a replayed create makes appear, by folder and name (the folder's listing
    /// need not be on this machine).
    creating: Mutex<Option<(NodeId, String, NodeId)>>,
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

    /// During a replayed create: the node it makes appear at `parent`/`name`.
    pub fn creating(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        match &*self.creating.lock().unwrap() {
            Some((p, n, id)) if *p == parent && n == name => Some(*id),
            _ => None,
        }
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
                let place = place(&core, *parent, name)?;
                let call = match node.kind {
                    NodeKind::File => Call::Create(place, node.size),
                    NodeKind::Dir => Call::Mkdir(place),
                    NodeKind::Symlink => {
                        let target = node.target.unwrap_or_default();
                        Call::Symlink(place, cstr(&target)?)
                    }
                };
                *self.replays.creating.lock().unwrap() =
                    Some((core.resolve(*parent), name.clone(), *id));
                (vec![(core.resolve(*parent), name.clone(), None)], call)
            }
            Heard::Changed { id } => {
                let node = core.view(*id).ok_or(ReplayErr::NoPath(*id))?;
                let place = place(&core, node.parent, &node.name)?;
                (vec![], Call::Write(place, node.size))
            }
            Heard::Attributes { id } => {
                let node = core.view(*id).ok_or(ReplayErr::NoPath(*id))?;
                if node.kind == NodeKind::Symlink {
                    return Ok(()); // no mode to set on a symlink: nothing to replay
                }
                let place = place(&core, node.parent, &node.name)?;
                (vec![], Call::Chmod(place, node.mode & 0o7777))
            }
            Heard::Moved {
                from_parent,
                from_name,
                id,
            } => {
                let node = tree.get(*id).ok_or(ReplayErr::NoPath(*id))?;
                holds(&core, *from_parent, from_name, None)?;
                let from = place(&core, *from_parent, from_name)?;
                let to = place(&core, node.parent, &node.name)?;
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
                let place = place(&core, node.parent, &node.name)?;
                let before = vec![(
                    core.resolve(node.parent),
                    node.name.clone(),
                    Some(node.clone()),
                )];
                (before, Call::Remove(place, node.is_dir()))
            }
        };
        // Names the lookups below may show as they were: forgotten by the kernel after the
        // replay, in case it did not move or remove them itself (a race with a program).
        let shown_before: Vec<(NodeId, String)> = before
            .iter()
            .filter(|(_, _, node)| node.is_some())
            .map(|(p, n, _)| (*p, n.clone()))
            .collect();
        drop(core);
        self.replays
            .tid
            .store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
        *self.replays.before.lock().unwrap() = before;
        let result = call.run(&root);
        self.replays.before.lock().unwrap().clear();
        *self.replays.creating.lock().unwrap() = None;
        if let Some(core) = self.core.upgrade() {
            for (parent, name) in shown_before {
                core.inval(Inval::Entry { parent, name });
            }
        }
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

/// Where a replay acts: a folder (a path below the mount's root, every name checked) and
/// a name in it.
struct Place {
    dir: String,
    name: CString,
}

impl Place {
    fn shown(&self) -> String {
        format!("{}/{}", self.dir, self.name.to_string_lossy())
    }
}

/// `parent`/`name` as a [`Place`], from this machine's tree. Every name is checked as the
/// service checks names (no `/`, no `.` or `..`): a replay never leaves the mount.
fn place(core: &Core, parent: NodeId, name: &str) -> Result<Place, ReplayErr> {
    let mut parts = Vec::new();
    let mut at = core.resolve(parent);
    for _ in 0..MAX_DEPTH {
        if at == ROOT_ID {
            parts.push(".".to_string());
            parts.reverse();
            return Ok(Place {
                dir: parts.join("/"),
                name: cstr(checked(name)?)?,
            });
        }
        let n = core.tree.get(at).ok_or(ReplayErr::NoPath(parent))?;
        parts.push(checked(&n.name)?.to_string());
        at = n.parent;
    }
    Err(ReplayErr::NoPath(parent))
}

fn checked(name: &str) -> Result<&str, ReplayErr> {
    jewel_wire::check_name(name).map_err(|_| ReplayErr::BadName(name.to_string()))?;
    Ok(name)
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

/// The system calls of one replay.
enum Call {
    Create(Place, u64),
    Mkdir(Place),
    Symlink(Place, CString),
    Write(Place, u64),
    Chmod(Place, u32),
    Rename(Place, Place),
    Remove(Place, bool),
}

impl Call {
    fn run(&self, root: &OwnedFd) -> Result<(), ReplayErr> {
        match self {
            Call::Create(at, size) => {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                write_through(root, at, flags, *size, "create")
            }
            Call::Write(at, size) => write_through(root, at, libc::O_WRONLY, *size, "write"),
            Call::Chmod(at, mode) => {
                // The node itself, never a symlink's target: opened without following (an
                // O_PATH open raises no event), checked, and changed through its descriptor.
                let dir = open_dir(root, at, "chmod")?;
                let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                let fd = unsafe { libc::openat(dir.as_raw_fd(), at.name.as_ptr(), flags) };
                check(fd, "chmod", at)?;
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, "chmod", at)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Ok(());
                }
                let by_fd = cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
                check(unsafe { libc::chmod(by_fd.as_ptr(), *mode) }, "chmod", at)
            }
            Call::Mkdir(at) => {
                let dir = open_dir(root, at, "mkdir")?;
                let ret = unsafe { libc::mkdirat(dir.as_raw_fd(), at.name.as_ptr(), 0o755) };
                check(ret, "mkdir", at)
            }
            Call::Symlink(at, target) => {
                let dir = open_dir(root, at, "symlink")?;
                let ret =
                    unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), at.name.as_ptr()) };
                check(ret, "symlink", at)
            }
            Call::Rename(from, to) => {
                let (d1, d2) = (
                    open_dir(root, from, "rename")?,
                    open_dir(root, to, "rename")?,
                );
                let ret = unsafe {
                    libc::renameat(
                        d1.as_raw_fd(),
                        from.name.as_ptr(),
                        d2.as_raw_fd(),
                        to.name.as_ptr(),
                    )
                };
                check(ret, "rename", from)
            }
            Call::Remove(at, is_dir) => {
                let dir = open_dir(root, at, "unlink")?;
                let flags = if *is_dir { libc::AT_REMOVEDIR } else { 0 };
                let ret = unsafe { libc::unlinkat(dir.as_raw_fd(), at.name.as_ptr(), flags) };
                check(ret, "unlink", at)
            }
        }
    }
}

/// Opens the folder of `at` strictly below the root: no symlink followed, no `..`, no
/// other mount (the kernel's view of a path may still hold a symlink where the tree has a
/// folder: it is refused, never followed out of the drive).
fn open_dir(root: &OwnedFd, at: &Place, op: &'static str) -> Result<OwnedFd, ReplayErr> {
    let dir = CString::new(at.dir.as_str()).map_err(|_| ReplayErr::BadName(at.dir.clone()))?;
    // (`open_how` is non-exhaustive: made zeroed, then filled.)
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            dir.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    check(fd as i32, op, at)?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Open (or create) without following a symlink, `ftruncate` to the size the file has
/// (the kernel raises `MODIFY`), close (`CLOSE_WRITE`).
fn write_through(
    root: &OwnedFd,
    at: &Place,
    flags: i32,
    size: u64,
    op: &'static str,
) -> Result<(), ReplayErr> {
    let dir = open_dir(root, at, op)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let fd = unsafe { libc::openat(dir.as_raw_fd(), at.name.as_ptr(), flags, 0o600) };
    check(fd, op, at)?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ret = unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) };
    check(ret, op, at)
}

fn cstr(s: &str) -> Result<CString, ReplayErr> {
    CString::new(s).map_err(|_| ReplayErr::BadName(s.to_string()))
}

fn check(ret: i32, op: &'static str, at: &Place) -> Result<(), ReplayErr> {
    if ret < 0 {
        return Err(ReplayErr::Call {
            op,
            path: at.shown(),
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
