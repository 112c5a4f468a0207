//! Where a running mount tells others how it is: a status file, and a socket beside it.
//!
//! Both live at a path derived from the mountpoint (`$XDG_RUNTIME_DIR/jewelfs/` or
//! `/tmp/jewelfs-<uid>/`, named by a hash of the absolute mountpoint): `<hash>.json` and
//! `<hash>.sock`.
//!
//! - **The file** ([`StatusFile`]) holds the last [`Status`] as JSON, for scripts and for
//!   whoever cannot connect. It is rewritten only when what it would say changes (the new
//!   text is compared with what was last written), so an idle mount writes nothing: a laptop
//!   with `~/Jewel` mounted all day must not wake the disk five times a second. At exit the
//!   mount writes it once more with `ready: false` and what is left to upload, and leaves it:
//!   that is how `jewelfs unmount` learns the outcome after the process is gone. A file whose
//!   `pid` is no longer alive (or not `ready`) describes no running mount.
//! - **The socket** ([`serve`], [`query`]) answers each connection with the status computed
//!   at that moment, then closes. A reader that must not act on a stale answer (`jewelfs
//!   status`, `jewelfs unmount`, a test waiting for uploads to drain) asks here: the file
//!   may lag a change by up to its refresh interval, the socket never does. It costs nothing
//!   while nobody connects.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use crate::core::Status;

/// How long [`query`] waits for a mount's answer before falling back to the file.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The folder every mount of this user publishes in.
fn status_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("jewelfs"),
        None => std::env::temp_dir().join(format!("jewelfs-{}", unsafe { libc::getuid() })),
    }
}

fn base_path(mountpoint: &Path) -> PathBuf {
    let abs = absolute(mountpoint);
    let hash = hex::encode(&sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    status_dir().join(hash)
}

/// Where a mount at `mountpoint` publishes its status file.
pub fn status_path(mountpoint: &Path) -> PathBuf {
    base_path(mountpoint).with_extension("json")
}

/// Where a mount at `mountpoint` answers status requests.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    base_path(mountpoint).with_extension("sock")
}

/// Creates the folder the file and socket live in, readable by this user only (they name
/// the server, the cache and the files waiting to upload), and proves it is ours.
///
/// Without `XDG_RUNTIME_DIR` the folder is in `/tmp`, where another local user can create
/// it first (or put a symlink there) to feed us a server URL or a PID, or to catch our
/// writes. So the folder is checked with `lstat` after creating it: a real directory (not
/// a symlink), owned by this user; then it is made 0700. Anything else is refused with an
/// error naming the folder, and nothing is read from or written into it.
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let meta = verify_ours(dir)?;
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `dir` is a directory (not a symlink) owned by this user; returns its `lstat`.
fn verify_ours(dir: &Path) -> std::io::Result<std::fs::Metadata> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    let me = unsafe { libc::getuid() };
    if !meta.file_type().is_dir() || meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a folder of this user's (owner uid {}, this user {me}); remove it and try again",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(meta)
}

/// Whether the status folder of `path` may be trusted: ours, not a symlink, and nobody
/// else can write in it.
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = path.parent() else {
        return false;
    };
    verify_ours(dir).is_ok_and(|m| m.mode() & 0o022 == 0)
}

/// The status file as last written (possibly by a mount that has ended; check `pid`/`ready`).
/// `None` when its folder is not this user's own (see [`private_dir`]).
pub fn read_status(mountpoint: &Path) -> Option<Status> {
    let path = status_path(mountpoint);
    if !trusted(&path) {
        return None;
    }
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The status of this user's mounts that are running now (`ready`, their process alive),
/// asked of each: what `jewelfs devices` knows of this machine's pending uploads.
pub fn running_statuses() -> Vec<Status> {
    let dir = status_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    if !trusted(&dir.join("x.json")) {
        return Vec::new();
    }
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let file: Status = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            if !(file.ready && Path::new(&format!("/proc/{}", file.pid)).exists()) {
                return None;
            }
            // The mount's answer of the moment; its file may lag by seconds.
            Some(ask(&e.path().with_extension("sock")).unwrap_or(file))
        })
        .collect()
}

/// The status of the mount at `mountpoint` as of now, asked of the mount itself; `None` when
/// no mount answers there (or the folder is not this user's own).
pub fn query(mountpoint: &Path) -> Option<Status> {
    ask(&socket_path(mountpoint))
}

fn ask(socket: &Path) -> Option<Status> {
    if !trusted(socket) {
        return None;
    }
    let mut conn = UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(QUERY_TIMEOUT)).ok()?;
    let mut text = Vec::new();
    conn.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The status file of one mount: written only when its text changes.
pub struct StatusFile {
    path: PathBuf,
    last: Vec<u8>,
}

impl StatusFile {
    /// Creates the folder the file lives in (see `private_dir`).
    pub fn new(mountpoint: &Path) -> std::io::Result<StatusFile> {
        let path = status_path(mountpoint);
        private_dir(&path)?;
        Ok(StatusFile {
            path,
            last: Vec::new(),
        })
    }

    /// Writes `status` (by rename, so a reader never sees half of it) unless the file
    /// already says exactly that. Returns whether it wrote.
    pub fn publish(&mut self, status: &Status) -> std::io::Result<bool> {
        let text = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        if text == self.last {
            return Ok(false);
        }
        // A fresh name, created exclusively and never through a symlink, then renamed over.
        let tmp = self
            .path
            .with_extension(format!("tmp-{:x}", rand::random::<u64>()));
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
        };
        f.write_all(&text)?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        self.last = text;
        Ok(true)
    }
}

/// Answers status requests on the mount's socket until the runtime stops: each connection
/// gets `current()` as JSON. A socket left by a mount that was killed is replaced.
pub fn serve(
    rt: &tokio::runtime::Handle,
    mountpoint: &Path,
    current: impl Fn() -> Status + Send + Sync + 'static,
) -> std::io::Result<()> {
    let path = socket_path(mountpoint);
    private_dir(&path)?;
    // Only this mount serves this mountpoint (the caller checked it is not mounted).
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _in_rt = rt.enter();
        tokio::net::UnixListener::bind(&path)?
    };
    rt.spawn(async move {
        loop {
            let mut conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of file descriptors, say: try again shortly rather than spin.
                    tracing::debug!("status socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let text = serde_json::to_vec(&current()).unwrap_or_default();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = conn.write_all(&text).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}

/// Removes the socket (at exit; the file stays, see the module docs).
pub fn remove_socket(mountpoint: &Path) {
    let _ = std::fs::remove_file(socket_path(mountpoint));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_folder_planted_by_someone_else_is_refused() {
        let root = tempfile::tempdir().unwrap();
        // Ours: made private and used.
        let mine = root.path().join("mine");
        private_dir(&mine.join("x.json")).unwrap();
        assert!(trusted(&mine.join("x.json")));
        // A symlink to a folder elsewhere (another user's trap): refused, nothing read.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(private_dir(&link.join("x.json")).is_err());
        assert!(!trusted(&link.join("x.json")));
        // A folder of another user's (made here as root and given away): refused.
        if unsafe { libc::getuid() } == 0 {
            let theirs = root.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = private_dir(&theirs.join("x.json")).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(!trusted(&theirs.join("x.json")));
        }
    }
}
