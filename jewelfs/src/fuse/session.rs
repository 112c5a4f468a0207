//! The FUSE session of a mount: everything `mount.rs` needs from `fuser`, behind a small
//! interface ([`mount`], [`Session::run`], [`Unmounter`]), so that no module outside `fuse/`
//! knows `fuser`.
//!
//! - **Mount options**: `fsname`/`subtype` `jewelfs`, `noatime`, `nodev`, `nosuid`; with
//!   `allow_other`, other users are let in and the kernel checks the stored modes for
//!   everyone (`default_permissions`).
//! - **The notifier thread**: the core queues [`Inval`] messages (never calling the kernel
//!   from a callback, which could deadlock); one thread turns them into `fuser` notifier
//!   calls in order, and hands replays of other machines' changes to the replay thread
//!   (`replay.rs`) when `inotify_replay` is on, else tells the kernel of a delete as one.
//! - **The end of the session**: the mount handle is taken out of `fuser` when the session
//!   ends (see [`release_mount`]), so a mount the system already unmounted is not unmounted
//!   again with a confusing warning.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::JewelFs;
use crate::core::{Core, Heard, Inval};

/// How the drive is mounted (from the command line and the config file).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Let other local users in (`allow_other`, with `default_permissions`).
    pub allow_other: bool,
    /// Replay other machines' changes through the mount for inotify watchers.
    pub inotify_replay: bool,
}

/// A mounted session, not yet serving requests.
pub struct Session {
    session: fuser::Session<JewelFs>,
}

/// Unmounts the session from another thread (a stop signal).
pub struct Unmounter {
    inner: fuser::SessionUnmounter,
}

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.inner.unmount()
    }
}

impl Session {
    /// A handle that unmounts this session, which makes [`Session::run`] return.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: self.session.unmount_callable(),
        }
    }

    /// Serves kernel requests until the drive is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        self.session.run()
    }
}

/// Mounts `core` at `mountpoint` and starts the notifier thread (and the replay thread when
/// `inotify_replay` is on); callbacks run their async work on `rt`.
pub fn mount(
    core: &Arc<Core>,
    rt: &tokio::runtime::Handle,
    mountpoint: &Path,
    options: &Options,
) -> anyhow::Result<Session> {
    // The session's own unmount handle, released when the session ends (see `release_mount`).
    let handle: Arc<std::sync::Mutex<Option<fuser::SessionUnmounter>>> = Arc::default();
    let fs = JewelFs::new(core.clone(), rt.clone()).on_destroy({
        let (handle, mp) = (handle.clone(), mountpoint.to_path_buf());
        move || release_mount(&handle, &mp)
    });
    let notifier_slot = fs.notifier_slot();
    let replayer = super::replay::Replayer::new(core, fs.replays(), mountpoint);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("jewelfs".into()),
        fuser::MountOption::Subtype("jewelfs".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if options.allow_other {
        // Other users in, and the kernel checks the stored modes for everyone (without
        // `default_permissions` it would let any user who reaches the mount do anything).
        config.acl = fuser::SessionACL::All;
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
    }
    config.n_threads = Some(4);
    let mut session = fuser::Session::new(fs, mountpoint, &config).with_context(|| {
        format!(
            "mounting {} (is /dev/fuse usable and fusermount3 installed?)",
            mountpoint.display()
        )
    })?;

    *handle.lock().unwrap() = Some(session.unmount_callable());
    let _ = notifier_slot.set(session.notifier());

    // Kernel invalidations and replays of other machines' changes: their own thread,
    // never inside a callback.
    let notifier = session.notifier();
    let (tx, rx) = std::sync::mpsc::channel::<Inval>();
    core.set_invalidator(tx);
    // Other machines' changes replayed for inotify watchers; a delete that is not replayed
    // is told to the kernel as one. (Weak: these threads live as long as the core's sender,
    // which the core holds.)
    let told = Arc::downgrade(core);
    let not_replayed = move |heard: &Heard| {
        if let (Heard::Removed { node }, Some(core)) = (heard, told.upgrade()) {
            core.inval(Inval::Delete {
                parent: node.parent,
                child: node.id,
                name: node.name.clone(),
            });
        }
    };
    let replays = if options.inotify_replay {
        Some(super::replay::start(replayer, not_replayed.clone())?)
    } else {
        None
    };
    std::thread::Builder::new()
        .name("jewelfs-notify".into())
        .spawn(move || {
            for what in rx {
                let r = match &what {
                    // After the invalidations queued before it, on the replay thread.
                    Inval::Replay(heard) => {
                        match &replays {
                            Some(replays) => replays.push(heard.clone()),
                            None => not_replayed(heard),
                        }
                        Ok(())
                    }
                    Inval::Entry { parent, name } => {
                        notifier.inval_entry(fuser::INodeNo(*parent), name.as_ref())
                    }
                    Inval::Inode(id) => notifier.inval_inode(fuser::INodeNo(*id), 0, 0),
                    // A negative offset: the attributes only, no cached pages.
                    Inval::Attr(id) => notifier.inval_inode(fuser::INodeNo(*id), -1, 0),
                    Inval::Delete {
                        parent,
                        child,
                        name,
                    } => notifier
                        .delete(
                            fuser::INodeNo(*parent),
                            fuser::INodeNo(*child),
                            name.as_ref(),
                        )
                        .or_else(|_| notifier.inval_entry(fuser::INodeNo(*parent), name.as_ref())),
                };
                if let Err(e) = r {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(?what, "kernel invalidation failed: {e}");
                    }
                }
            }
        })?;
    Ok(Session { session })
}

/// At the end of the session: takes the mount handle out of `fuser` (which would otherwise
/// unmount on drop, and warn "Invalid argument" when the system already had: `umount`,
/// `fusermount3 -u`, logout). When the mount is gone already, that is the clean end it
/// looks like; only a mount still there that cannot be unmounted is worth a warning.
fn release_mount(handle: &std::sync::Mutex<Option<fuser::SessionUnmounter>>, mountpoint: &Path) {
    let Some(mut unmounter) = handle.lock().unwrap().take() else {
        return;
    };
    if let Err(e) = unmounter.unmount() {
        if crate::mount::is_mounted(mountpoint) {
            tracing::warn!("could not unmount {}: {e}", mountpoint.display());
        }
    }
}
