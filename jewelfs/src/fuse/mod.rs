//! The thin `fuser` adapter: translates kernel requests into [`Core`] calls and replies. It is
//! the only part of the client that knows `fuser`: the session (mounting, the notifier
//! thread, unmounting) is in [`session`], which `mount.rs` drives.
//!
//! Rules it keeps:
//! - **Never block a dispatch thread on the network.** A request that the caches can answer
//!   (lookup, getattr, readdir of a listed directory, read of cached blocks, write into a
//!   staging file) is answered in the callback; anything else moves its reply object into a
//!   tokio task. `create` in a cached folder, `flush` and `release` touch only the local
//!   disk (a file, a rename and a small journal entry, no fsync: the journal syncs in
//!   groups) and run in the callback too: a thread hop per small file cost more than the
//!   work itself on a busy machine.
//! - **Inode numbers are node ids** (the root, id 1, is `FUSE_ROOT_ID`); a file created here
//!   has a local id until its create reaches the service, and keeps answering under it after
//!   (the core resolves aliases).
//! - **Long TTLs**: the listener pushes invalidations through the notifier from its own
//!   thread (see [`session`]), never from here.
//! - Errors become errno values in one place, [`CoreErr::errno`].
//! - Ownership is the mounting user's; chown to anyone else is refused (`EPERM`), as are hard
//!   links and special files; extended attributes are not supported (`ENOTSUP`).
//! - What `stat` shows and which names are taken: [`attrs`]; the times kept on this machine
//!   only (ctime, a set atime): [`times`]; other machines' changes replayed through the
//!   mount for inotify watchers, and how their requests are answered: [`replay`]; the
//!   session and its notifier thread: [`session`].
//! - **Attributes the kernel holds stay true.** A reply carries the node as it is after the
//!   change; a change the kernel did not ask for in that request — the mtime a `close`
//!   gives the file it journals — is followed by an invalidation of the inode's attributes
//!   *before* the reply, so the next `stat` cannot read the older mtime (the kernel keeps
//!   attributes for [`TTL`]).

mod attrs;
pub mod replay;
pub mod session;
mod times;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use jewel_wire::{MoveMode, Node, NodeId, NodeKind, BLOCK_SIZE};

use crate::core::{now_ns, Core, CoreErr};
use attrs::{kind_of, name_of, AttrMaker};
use replay::Replays;
use times::LocalTimes;

/// Attribute and entry lifetime in the kernel: long, because changes are pushed.
const TTL: Duration = Duration::from_secs(3600);

struct Handle {
    write: bool,
    /// Opened by a replay (see [`replay`]): its flush, release and truncate change nothing.
    replay: bool,
}

pub struct JewelFs {
    core: Arc<Core>,
    rt: tokio::runtime::Handle,
    /// Makes every attribute the kernel gets (owner, times, link counts).
    attrs: AttrMaker,
    /// The session's notifier, set once the session exists (see [`JewelFs::notifier_slot`]).
    notifier: Arc<OnceLock<Notifier>>,
    /// Tells replayed requests from programs' (see [`replay`]).
    replays: Arc<Replays>,
    handles: Arc<Mutex<HashMap<u64, Handle>>>,
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<Node>>>>>,
    /// Directories (by inode number) the kernel may cache the listing of, with the tree's
    /// generation when that cache was started (see `opendir`).
    dir_caches: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
    /// Run once when the session ends (see [`JewelFs::on_destroy`]).
    on_destroy: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

fn errno(e: &CoreErr) -> Errno {
    if !matches!(e, CoreErr::NotFound | CoreErr::Exists | CoreErr::NotEmpty) {
        tracing::debug!("request failed: {e}");
    }
    Errno::from_i32(e.errno())
}

/// Makes the kernel drop inode `ino`'s attributes now (not its pages): called before the
/// reply to a request that changed them without the kernel knowing.
fn forget_attrs(notifier: &OnceLock<Notifier>, ino: u64) {
    if let Some(notifier) = notifier.get() {
        if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, "attribute invalidation failed: {e}");
            }
        }
    }
}

/// A symlink's target (any length up to what the core allows, unlike a name).
fn target_str(target: &Path) -> Result<&str, Errno> {
    std::str::from_utf8(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn ns_of(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl JewelFs {
    pub fn new(core: Arc<Core>, rt: tokio::runtime::Handle) -> JewelFs {
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        JewelFs {
            attrs: AttrMaker {
                core: core.clone(),
                times: Arc::new(LocalTimes::default()),
                uid,
                gid,
            },
            core,
            rt,
            notifier: Arc::default(),
            replays: Arc::default(),
            handles: Arc::new(Mutex::new(HashMap::new())),
            dirs: Arc::new(Mutex::new(HashMap::new())),
            dir_caches: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            on_destroy: Mutex::new(None),
        }
    }

    /// `f` runs once when the session ends, before `fuser` lets go of the mount: the mount
    /// uses it to release the mount handle itself when the system unmounted the drive first
    /// (`umount`, logout), so that nothing tries to unmount it a second time.
    pub fn on_destroy(self, f: impl FnOnce() + Send + 'static) -> JewelFs {
        *self.on_destroy.lock().unwrap() = Some(Box::new(f));
        self
    }

    /// What the replayer shares with the adapter (see [`replay`]).
    pub fn replays(&self) -> Arc<Replays> {
        self.replays.clone()
    }

    /// A handle for a request of the replayer: nothing it does changes anything.
    fn new_replay_fh(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            write: true,
            replay: true,
        };
        self.handles.lock().unwrap().insert(fh, handle);
        fh
    }

    /// Whether handle `fh` was opened by a replay.
    fn is_replay_fh(&self, fh: u64) -> bool {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .is_some_and(|h| h.replay)
    }

    /// A replayed create, mkdir or symlink: the node is already in the tree.
    fn replayed_entry(&self, parent: INodeNo, name: &OsStr) -> Result<Node, Errno> {
        let name = name_of(name)?;
        let parent = self.core.resolve(parent.0);
        match self.replays.creating(parent, name) {
            Some(id) => self.core.view(id).ok_or(Errno::ENOENT),
            None => Err(Errno::ENOENT),
        }
    }

    /// Where the mount puts the session's notifier once the session exists (the session
    /// is made from this filesystem, so it cannot be given at [`JewelFs::new`]).
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// After a `close` (or the last `release`) journaled content: the file's mtime is now
    /// the time of that close, which the kernel was not told; it forgets the attributes it
    /// holds before the reply returns, so the next `stat` reads the new mtime.
    fn after_journaling(&self, ino: u64, id: NodeId, mtime_before: Option<i64>) {
        if self.mtime_of(id) != mtime_before {
            forget_attrs(&self.notifier, ino);
        }
    }

    /// The mtime of node `id` as the tree has it now.
    fn mtime_of(&self, id: NodeId) -> Option<i64> {
        self.core.view(id).map(|n| n.mtime_ns)
    }

    fn dir_store(&self) -> impl Fn(u64, Arc<Vec<Node>>) + Send + 'static {
        let dirs = self.dirs.clone();
        move |fh, entries| {
            dirs.lock().unwrap().insert(fh, entries);
        }
    }

    fn handle_store(&self) -> impl Fn(u64, bool) + Send + 'static {
        let handles = self.handles.clone();
        move |fh, write| {
            handles.lock().unwrap().insert(
                fh,
                Handle {
                    write,
                    replay: false,
                },
            );
        }
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let parent = self.core.resolve(parent.0);
        let core = self.core.clone();
        self.spawn(async move {
            match core.remove(parent, &name, dir).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn entry(&self, reply: ReplyEntry, n: &Node) {
        reply.entry(
            &TTL,
            &self.attrs.attr(n, self.core.ino(n.id)),
            Generation(0),
        );
    }

    fn new_fh(&self, write: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                write,
                replay: false,
            },
        );
        fh
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.rt.spawn(f);
    }
}

impl Filesystem for JewelFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(f) = self.on_destroy.lock().unwrap().take() {
            f();
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let parent = self.core.resolve(parent.0);
        if self.replays.is_replay(req.pid()) {
            // The names a replayed change touched look as they did before it.
            match self.replays.before(parent, &name) {
                Some(Some(n)) => return self.entry(reply, &n),
                Some(None) => return reply.error(Errno::ENOENT),
                None => {}
            }
        }
        match self.core.lookup_cached(parent, &name) {
            Some(Ok(n)) => self.entry(reply, &n),
            Some(Err(e)) => reply.error(errno(&e)),
            None => {
                let core = self.core.clone();
                let attr_of = self.attrs.clone();
                self.spawn(async move {
                    match core.lookup(parent, &name).await {
                        Ok(n) => {
                            reply.entry(&TTL, &attr_of.attr(&n, core.ino(n.id)), Generation(0))
                        }
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let id = self.core.resolve(ino.0);
        match self.core.view(id) {
            Some(n) => reply.attr(&TTL, &self.attrs.attr(&n, ino.0)),
            None => {
                let core = self.core.clone();
                let maker = self.attrs.clone();
                self.spawn(async move {
                    match core.node(id).await {
                        Ok(n) => reply.attr(&TTL, &maker.attr(&n, ino.0)),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if uid.is_some_and(|u| u != self.attrs.uid) || gid.is_some_and(|g| g != self.attrs.gid) {
            return reply.error(Errno::EPERM);
        }
        let id = self.core.resolve(ino.0);
        if self.replays.is_replay(req.pid()) || fh.is_some_and(|fh| self.is_replay_fh(fh.0)) {
            // A replayed truncate: the attributes as they are.
            return match self.core.view(id) {
                Some(n) => reply.attr(&TTL, &self.attrs.attr(&n, ino.0)),
                None => reply.error(Errno::ENOENT),
            };
        }
        let core = self.core.clone();
        let maker = self.attrs.clone();
        let mtime = mtime.map(ns_of);
        let atime = atime.map(ns_of);
        self.spawn(async move {
            match core.setattr(id, mode, mtime, size).await {
                Ok(n) => {
                    // Every setattr is a change of the node (its ctime), whatever it set.
                    match atime {
                        Some(t) => maker.times.accessed_set(ino.0, t, now_ns()),
                        None => maker.times.changed(ino.0, now_ns()),
                    }
                    reply.attr(&TTL, &maker.attr(&n, ino.0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(self.core.resolve(ino.0)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let parent = self.core.resolve(parent.0);
        let core = self.core.clone();
        let maker = self.attrs.clone();
        self.spawn(async move {
            match core.create_file(parent, &name, mode & !umask).await {
                Ok(n) => {
                    let core2 = core.clone();
                    let _ = tokio::task::spawn_blocking(move || core2.release(n.id, true)).await;
                    reply.entry(&TTL, &maker.attr(&n, n.id), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if self.replays.is_replay(req.pid()) {
            return match self.replayed_entry(parent, name) {
                Ok(n) => self.entry(reply, &n),
                Err(e) => reply.error(e),
            };
        }
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        let parent = self.core.resolve(parent.0);
        let core = self.core.clone();
        let maker = self.attrs.clone();
        self.spawn(async move {
            match core.mkdir(parent, &name, mode & !umask).await {
                Ok(n) => reply.entry(&TTL, &maker.attr(&n, n.id), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.replays.is_replay(req.pid()) {
            return reply.ok(); // applied already
        }
        self.remove(parent, name, false, reply)
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.replays.is_replay(req.pid()) {
            return reply.ok(); // applied already
        }
        self.remove(parent, name, true, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if self.replays.is_replay(req.pid()) {
            return match self.replayed_entry(parent, link_name) {
                Ok(n) => self.entry(reply, &n),
                Err(e) => reply.error(e),
            };
        }
        let (name, target) = match (name_of(link_name), target_str(target)) {
            (Ok(n), Ok(t)) => (n.to_string(), t.to_string()),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let parent = self.core.resolve(parent.0);
        let core = self.core.clone();
        let maker = self.attrs.clone();
        self.spawn(async move {
            match core.symlink(parent, &name, &target).await {
                Ok(n) => reply.entry(&TTL, &maker.attr(&n, n.id), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if self.replays.is_replay(req.pid()) {
            return reply.ok(); // applied already
        }
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a.to_string(), b.to_string()),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            MoveMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            MoveMode::NoReplace
        } else if flags.is_empty() {
            MoveMode::Replace
        } else {
            return reply.error(Errno::EINVAL); // RENAME_WHITEOUT
        };
        let parent = self.core.resolve(parent.0);
        let newparent = self.core.resolve(newparent.0);
        let core = self.core.clone();
        let times = self.attrs.times.clone();
        self.spawn(async move {
            match core.rename(parent, &name, newparent, &newname, mode).await {
                Ok(()) => {
                    // A move changes the node (its ctime); an exchange changes both.
                    let now = now_ns();
                    for (dir, name) in [(newparent, &newname), (parent, &name)] {
                        if let Some(Ok(n)) = core.lookup_cached(dir, name) {
                            times.changed(core.ino(n.id), now);
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let id = self.core.resolve(ino.0);
        if self.replays.is_replay(req.pid()) {
            let fh = self.new_replay_fh();
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        }
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let trunc = flags.0 & libc::O_TRUNC != 0;
        if !write {
            if let Some(n) = self.core.view(id) {
                if n.is_dir() {
                    return reply.error(Errno::EISDIR);
                }
                let fh = self.new_fh(false);
                self.core.opened(id);
                return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
        }
        let core = self.core.clone();
        let fh = self.new_fh(write);
        let handles = self.handles.clone();
        self.spawn(async move {
            match core.open_file(id, write, trunc).await {
                Ok(()) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => {
                    handles.lock().unwrap().remove(&fh);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let id = self.core.resolve(ino.0);
        if offset % BLOCK_SIZE < size as u64 {
            let _guard = self.rt.enter();
            self.core.read_ahead(id, offset);
        }
        match self.core.read_local(id, offset, size) {
            Some(Ok(data)) => reply.data(&data),
            Some(Err(e)) => reply.error(errno(&e)),
            None => {
                let core = self.core.clone();
                self.spawn(async move {
                    match core.read(id, offset, size).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(self.core.resolve(ino.0), offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let write = self
            .handles
            .lock()
            .unwrap()
            .get(&fh.0)
            .is_some_and(|h| h.write && !h.replay);
        if !write {
            return reply.ok();
        }
        // Local disk only (a rename and a small write, no fsync: see `journal.rs`), so it
        // runs here rather than paying a thread hop per `close`.
        let id = self.core.resolve(ino.0);
        let before = self.mtime_of(id);
        let flushed = self.core.flush(id);
        self.after_journaling(ino.0, id, before);
        match flushed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self.handles.lock().unwrap().remove(&fh.0);
        let Some(handle) = handle.filter(|h| !h.replay) else {
            return reply.ok();
        };
        // Local disk only, like `flush`.
        let id = self.core.resolve(ino.0);
        let before = self.mtime_of(id);
        let released = self.core.release(id, handle.write);
        self.after_journaling(ino.0, id, before);
        match released {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let id = self.core.resolve(ino.0);
        let core = self.core.clone();
        let (notifier, before) = (self.notifier.clone(), self.mtime_of(id));
        self.spawn(async move {
            let c2 = core.clone();
            let flushed = tokio::task::spawn_blocking(move || c2.flush(id)).await;
            if core.view(id).map(|n| n.mtime_ns) != before {
                forget_attrs(&notifier, ino.0);
            }
            match flushed {
                Ok(Ok(())) => match core.fsync(id).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(errno(&e)),
                },
                Ok(Err(e)) => reply.error(errno(&e)),
                Err(_) => reply.error(Errno::EIO),
            }
        });
    }

    /// The kernel may keep a directory's listing in its page cache (`FOPEN_CACHE_DIR`), so
    /// a warm `ls` needs no request at all. The cache is kept (`FOPEN_KEEP_CACHE`) only if
    /// nothing in the tree changed since it was started; otherwise the kernel drops it at
    /// this open and reads the listing again. Whatever path changed a listing (an event, an
    /// answer, a reconciliation), the kernel never shows an old one.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.new_fh(false);
        let generation = self.core.tree.generation();
        let unchanged =
            self.dir_caches.lock().unwrap().insert(ino.0, generation) == Some(generation);
        let flags = if unchanged {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_CACHE_DIR
        };
        reply.opened(FileHandle(fh), flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let id = self.core.resolve(ino.0);
        let cached = if offset == 0 {
            None
        } else {
            self.dirs.lock().unwrap().get(&fh.0).cloned()
        };
        let inos = self.core.clone();
        let fill = move |entries: &Vec<Node>, parent: u64, reply: &mut ReplyDirectory| {
            let mut i = offset;
            loop {
                let (ino, kind, name): (u64, FileType, &str) = match i {
                    0 => (id, FileType::Directory, "."),
                    1 => (parent, FileType::Directory, ".."),
                    n => match entries.get((n - 2) as usize) {
                        Some(e) => (inos.ino(e.id), kind_of(e.kind), e.name.as_str()),
                        None => break,
                    },
                };
                if reply.add(INodeNo(ino), i + 1, kind, name) {
                    break;
                }
                i += 1;
            }
        };
        let parent = self.core.view(id).map(|n| n.parent).unwrap_or(1);
        if let Some(entries) = cached {
            fill(&entries, parent, &mut reply);
            return reply.ok();
        }
        let core = self.core.clone();
        let store = self.dir_store();
        self.spawn(async move {
            match core.readdir(id).await {
                Ok(entries) => {
                    let entries = Arc::new(entries);
                    store(fh.0, entries.clone());
                    fill(&entries, parent, &mut reply);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let id = self.core.resolve(ino.0);
        let cached = if offset == 0 {
            None
        } else {
            self.dirs.lock().unwrap().get(&fh.0).cloned()
        };
        let maker = self.attrs.clone();
        let me = self.core.view(id);
        let inos = self.core.clone();
        let fill = move |entries: &Vec<Node>, me: &Option<Node>, reply: &mut ReplyDirectoryPlus| {
            let mut i = offset;
            loop {
                let (node, name): (Node, &str) = match i {
                    0 | 1 => match me {
                        Some(n) => (n.clone(), if i == 0 { "." } else { ".." }),
                        None => break,
                    },
                    n => match entries.get((n - 2) as usize) {
                        Some(e) => (e.clone(), e.name.as_str()),
                        None => break,
                    },
                };
                let ino = inos.ino(node.id);
                let attr = maker.attr(&node, ino);
                if reply.add(INodeNo(ino), i + 1, name, &TTL, &attr, Generation(0)) {
                    break;
                }
                i += 1;
            }
        };
        if let Some(entries) = cached {
            fill(&entries, &me, &mut reply);
            return reply.ok();
        }
        let core = self.core.clone();
        let store = self.dir_store();
        self.spawn(async move {
            match core.readdir(id).await {
                Ok(entries) => {
                    let me = match me {
                        Some(m) => Some(m),
                        None => core.node(id).await.ok(),
                    };
                    let entries = Arc::new(entries);
                    store(fh.0, entries.clone());
                    fill(&entries, &me, &mut reply);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&fh.0);
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bsize = 4096u32;
        let total = (1u64 << 40) / bsize as u64;
        reply.statfs(total, total, total, 1 << 30, 1 << 30, bsize, 255, bsize);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // ENOSYS, not ENOTSUP: the kernel then stops asking (applications get ENOTSUP).
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS: the kernel answers every later getxattr itself with ENOTSUP. Without it,
        // each `write` costs one more round trip (the kernel asks for `security.capability`
        // before every write, to clear set-uid bits and capabilities).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let id = self.core.resolve(ino.0);
        match self.core.view(id) {
            Some(n)
                if mask.contains(AccessFlags::X_OK)
                    && n.kind == NodeKind::File
                    && n.mode & 0o111 == 0 =>
            {
                reply.error(Errno::EACCES)
            }
            _ => reply.ok(),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if self.replays.is_replay(req.pid()) {
            return match self.replayed_entry(parent, name) {
                Ok(n) => {
                    let fh = self.new_replay_fh();
                    let attr = self.attrs.attr(&n, self.core.ino(n.id));
                    let keep = FopenFlags::FOPEN_KEEP_CACHE;
                    reply.created(&TTL, &attr, Generation(0), FileHandle(fh), keep)
                }
                Err(e) => reply.error(e),
            };
        }
        let name = match name_of(name) {
            Ok(n) => n.to_string(),
            Err(e) => return reply.error(e),
        };
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return reply.error(Errno::EPERM);
        }
        let parent = self.core.resolve(parent.0);
        let core = self.core.clone();
        let maker = self.attrs.clone();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handles = self.handle_store();
        // Answered here when the cache knows the folder (the common case: no task, no
        // thread hop); a task asks the service otherwise.
        let answer = move |result: crate::core::CoreResult<Node>| match result {
            Ok(n) => {
                handles(fh, true);
                reply.created(
                    &TTL,
                    &maker.attr(&n, n.id),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Err(e) => reply.error(errno(&e)),
        };
        if let Some(result) = core.create_file_now(parent, &name, mode & !umask) {
            return answer(result);
        }
        self.spawn(async move { answer(core.create_file(parent, &name, mode & !umask).await) });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Not a terminal, no special controls (asked by every `isatty` on an open file).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}
