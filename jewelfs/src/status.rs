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

fn base_path(mountpoint: &Path) -> PathBuf {
    let abs = absolute(mountpoint);
    let hash = hex::encode(&sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("jewelfs"),
        None => std::env::temp_dir().join(format!("jewelfs-{}", unsafe { libc::getuid() })),
    };
    base.join(hash)
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
/// the server, the cache and the files waiting to upload).
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The status file as last written (possibly by a mount that has ended; check `pid`/`ready`).
pub fn read_status(mountpoint: &Path) -> Option<Status> {
    let text = std::fs::read(status_path(mountpoint)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The status of the mount at `mountpoint` as of now, asked of the mount itself; `None` when
/// no mount answers there.
pub fn query(mountpoint: &Path) -> Option<Status> {
    let mut conn = UnixStream::connect(socket_path(mountpoint)).ok()?;
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
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
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
