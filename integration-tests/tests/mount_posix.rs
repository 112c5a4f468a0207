//! POSIX where applications notice, on real mounts (issue 17): what `make`, rsync, `find`,
//! backup tools and other local users check, asserted the way they check it.
//!
//! - mtime is fresh after `open(O_TRUNC)` and `ftruncate(fd)` on the writing machine, and
//!   the kernel's attribute cache never shows an older one than the service keeps;
//! - a name longer than 255 bytes is `ENAMETOOLONG` wherever it is given, never `ENOENT`;
//! - a directory's link count is 2 + its subdirectories;
//! - ctime moves on every change of a node (chmod, utimens, rename, write); an atime set by
//!   `utimensat` reads back;
//! - `--allow-other` lets other local users in, with the stored modes enforced; without it
//!   they get `EACCES`; a user who may not ask for it is told why;
//! - FIFOs and sockets are refused (see `docs/SEMANTICS.md` for why) and leave nothing.
//!
//! Needs the binaries built (`cargo build --workspace --bins`), FUSE, root (to act as
//! another user, `nobody`, with `setpriv`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::*;

const SYNC: Duration = Duration::from_secs(15);

/// 2001-09-09: an mtime no clock of today confuses with "just now".
const OLD_MTIME: u64 = 1_000_000_000;
/// 1998-07-09: an atime distinct from [`OLD_MTIME`].
const OLD_ATIME: u64 = 900_000_000;

fn secs(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
}

fn set_old_times(path: &Path) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(secs(OLD_ATIME))
            .set_modified(secs(OLD_MTIME)),
    )
    .unwrap();
}

fn mtime_ns(m: &fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn ctime_ns(m: &fs::Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// Asserts `what`'s mtime is not older than `since` (ns): it moved with the change.
fn assert_fresh(what: &str, m: &fs::Metadata, since: i128) {
    assert!(
        mtime_ns(m) >= since,
        "{what}: mtime {} s is older than the change at {} s",
        m.mtime(),
        since / 1_000_000_000
    );
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap()
}

#[test]
fn mtime_is_fresh_after_truncation_on_the_writing_machine() {
    let (_server, a, b) = two_mounts();
    let path = a.p("built.o");
    fs::write(&path, b"old contents").unwrap();
    set_old_times(&path);
    assert_eq!(fs::metadata(&path).unwrap().mtime(), OLD_MTIME as i64);

    // open(O_TRUNC), as a compiler or `>` in a shell rewrites its output.
    let t0 = now_ns();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_fresh("fstat after open(O_TRUNC)", &f.metadata().unwrap(), t0);
    assert_fresh(
        "stat after open(O_TRUNC)",
        &fs::metadata(&path).unwrap(),
        t0,
    );
    f.write_all(b"new").unwrap();
    drop(f);
    assert_fresh(
        "stat after open(O_TRUNC) and close",
        &fs::metadata(&path).unwrap(),
        t0,
    );

    // ftruncate(fd) on a descriptor opened without O_TRUNC.
    set_old_times(&path);
    let t1 = now_ns();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(2).unwrap();
    assert_fresh("fstat after ftruncate", &f.metadata().unwrap(), t1);
    assert_fresh("stat after ftruncate", &fs::metadata(&path).unwrap(), t1);
    drop(f);
    assert_fresh(
        "stat after ftruncate and close",
        &fs::metadata(&path).unwrap(),
        t1,
    );

    // The kernel keeps attributes it was given for an hour: a stat between the truncate
    // and the close must not pin an mtime older than the one the close gives the file.
    set_old_times(&path);
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    f.write_all(b"rebuilt").unwrap();
    let _ = fs::metadata(&path).unwrap();
    drop(f);
    wait_content(&b.p("built.o"), b"rebuilt", SYNC);
    wait_for(
        "the writing machine to show the mtime the other machine shows",
        SYNC,
        || {
            let (ma, mb) = (
                fs::metadata(&path).unwrap(),
                fs::metadata(b.p("built.o")).unwrap(),
            );
            (mtime_ns(&ma) == mtime_ns(&mb)).then_some(())
        },
    );
}

#[test]
fn a_name_over_255_bytes_is_enametoolong_everywhere() {
    let (_server, a, _b) = two_mounts();
    let long = "n".repeat(256);
    fs::write(a.p("short"), b"x").unwrap();
    fs::create_dir(a.p("dir")).unwrap();

    let too_long = libc::ENAMETOOLONG;
    assert_eq!(errno_of(fs::metadata(a.p(&long))), too_long, "lookup");
    assert_eq!(
        errno_of(fs::metadata(a.p(&format!("dir/{long}")))),
        too_long,
        "lookup in a subfolder"
    );
    assert_eq!(errno_of(fs::write(a.p(&long), b"x")), too_long, "create");
    assert_eq!(errno_of(fs::create_dir(a.p(&long))), too_long, "mkdir");
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("short", a.p(&long))),
        too_long,
        "symlink"
    );
    assert_eq!(
        errno_of(fs::rename(a.p("short"), a.p(&long))),
        too_long,
        "rename"
    );
    assert_eq!(errno_of(fs::remove_file(a.p(&long))), too_long, "unlink");
    // Nothing changed, and 255 bytes is still a good name.
    assert_eq!(fs::read(a.p("short")).unwrap(), b"x");
    let longest = "n".repeat(255);
    fs::write(a.p(&longest), b"ok").unwrap();
    assert_eq!(fs::read(a.p(&longest)).unwrap(), b"ok");
}

#[test]
fn a_directory_counts_two_links_plus_its_subdirectories() {
    let (_server, a, b) = two_mounts();
    fs::create_dir_all(a.p("d/one")).unwrap();
    fs::create_dir(a.p("d/two")).unwrap();
    fs::write(a.p("d/file"), b"x").unwrap();
    std::os::unix::fs::symlink("file", a.p("d/link")).unwrap();
    let nlink = |p: &Path| fs::metadata(p).unwrap().nlink();

    assert_eq!(nlink(&a.p("d")), 4, "d holds two subdirectories");
    assert_eq!(nlink(&a.p("d/one")), 2, "an empty directory");
    assert_eq!(nlink(&a.p("d/file")), 1);
    fs::create_dir(a.p("d/three")).unwrap();
    assert_eq!(nlink(&a.p("d")), 5, "after mkdir");
    fs::remove_dir(a.p("d/one")).unwrap();
    assert_eq!(nlink(&a.p("d")), 4, "after rmdir");
    fs::rename(a.p("d/two"), a.p("two")).unwrap();
    assert_eq!(nlink(&a.p("d")), 3, "after moving one out");

    // The other machine counts the same once it has the changes.
    wait_for("d on the other machine to show 3 links", SYNC, || {
        (b.p("d/three").exists() && !b.p("d/two").exists() && nlink(&b.p("d")) == 3).then_some(())
    });
}

#[test]
fn ctime_moves_with_every_change_and_atime_reads_back() {
    let (_server, a, _b) = two_mounts();
    let path = a.p("notes.txt");
    fs::write(&path, b"x").unwrap();

    // utimensat: both times read back; ctime is the time of the change, not the mtime.
    let t0 = now_ns();
    set_old_times(&path);
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.atime(), OLD_ATIME as i64, "atime set by utimensat");
    assert_eq!(m.mtime(), OLD_MTIME as i64, "mtime set by utimensat");
    assert!(ctime_ns(&m) >= t0, "ctime after utimensat: {}", m.ctime());
    let mut last = ctime_ns(&m);

    let mut changed = |what: &str, change: &dyn Fn()| {
        change();
        let m = fs::metadata(a.p("notes.txt")).unwrap();
        assert!(
            ctime_ns(&m) > last,
            "ctime after {what}: {} not after {}",
            ctime_ns(&m),
            last
        );
        last = ctime_ns(&m);
    };
    changed("chmod", &|| {
        fs::set_permissions(a.p("notes.txt"), fs::Permissions::from_mode(0o600)).unwrap()
    });
    changed("rename", &|| {
        fs::rename(a.p("notes.txt"), a.p("moved.txt")).unwrap();
        fs::rename(a.p("moved.txt"), a.p("notes.txt")).unwrap();
    });
    changed("write", &|| {
        let mut f = OpenOptions::new()
            .append(true)
            .open(a.p("notes.txt"))
            .unwrap();
        f.write_all(b"more").unwrap();
    });
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.atime(), OLD_ATIME as i64, "atime kept (noatime)");
    assert!(m.mtime() > OLD_MTIME as i64, "the write moved mtime");
}

/// Runs `args` as the user `nobody` (uid and gid 65534, no other groups).
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .env("HOME", "/")
        .output()
        .expect("run setpriv (util-linux)")
}

/// Lets other users reach the mountpoint: temporary folders are private to their owner.
fn open_path_to_others(m: &Mount) {
    let parent = m.path().parent().unwrap();
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn allow_other_lets_other_users_in_with_the_modes_enforced() {
    let server = Server::start();
    let token = server.add_user("alice");
    let shared = Mount::with_args(&server.url, &token, "laptop", &["--allow-other"]);
    let private = Mount::new(&server, &token, "desktop");
    open_path_to_others(&shared);
    open_path_to_others(&private);

    fs::write(shared.p("readme.txt"), b"for everyone").unwrap();
    fs::set_permissions(shared.p("readme.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(shared.p("secret.txt"), b"mine").unwrap();
    fs::set_permissions(shared.p("secret.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    wait_content(&private.p("readme.txt"), b"for everyone", SYNC);

    let shared_readme = shared.p("readme.txt");
    let shared_readme = shared_readme.to_str().unwrap();
    let read = as_nobody(&["cat", shared_readme]);
    assert!(
        read.status.success(),
        "another user reads a 0644 file: {}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, b"for everyone");

    let write = as_nobody(&["sh", "-c", "echo more >> \"$1\"", "sh", shared_readme]);
    assert!(!write.status.success(), "another user wrote a 0644 file");
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    let secret = as_nobody(&["cat", shared.p("secret.txt").to_str().unwrap()]);
    assert!(!secret.status.success(), "another user read a 0600 file");
    let create = as_nobody(&["touch", shared.p("theirs.txt").to_str().unwrap()]);
    assert!(
        !create.status.success(),
        "another user made a file in the owner's 0755 folder"
    );
    assert_eq!(fs::read(shared.p("readme.txt")).unwrap(), b"for everyone");
    assert!(!shared.p("theirs.txt").exists());

    // Without --allow-other the kernel lets no other user in at all.
    let denied = as_nobody(&["cat", private.p("readme.txt").to_str().unwrap()]);
    assert!(
        !denied.status.success(),
        "other users reach a private mount"
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

#[test]
fn allow_other_without_user_allow_other_is_a_clear_error() {
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if conf.lines().any(|l| l.trim() == "user_allow_other") {
        eprintln!("/etc/fuse.conf allows it here: nothing to refuse");
        return;
    }
    let server = Server::start();
    let token = server.add_user("alice");
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(&[
        bin("jewelfs").to_str().unwrap(),
        "mount",
        mnt.to_str().unwrap(),
        "--allow-other",
        "--server",
        &server.url,
        "--token",
        &token,
        "--cache-dir",
        dir.path().join("cache").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted: {stderr}");
    assert!(
        stderr.contains("user_allow_other") && stderr.contains("/etc/fuse.conf"),
        "the error says what to change: {stderr}"
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn fifos_and_sockets_are_refused_and_leave_nothing() {
    let (_server, a, b) = two_mounts();
    let fifo = Command::new("mkfifo")
        .arg(a.p("pipe"))
        .output()
        .expect("run mkfifo");
    assert!(!fifo.status.success(), "mkfifo succeeded");
    assert!(
        String::from_utf8_lossy(&fifo.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&fifo.stderr)
    );
    let socket = std::os::unix::net::UnixListener::bind(a.p("app.sock"));
    assert_eq!(errno_of(socket), libc::EPERM, "bind a socket");
    assert!(fs::symlink_metadata(a.p("pipe")).is_err());
    assert!(fs::symlink_metadata(a.p("app.sock")).is_err());
    // The drive still works and the other machine sees only what was made.
    fs::write(a.p("after.txt"), b"fine").unwrap();
    wait_content(&b.p("after.txt"), b"fine", SYNC);
    let names: Vec<_> = fs::read_dir(b.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("after.txt")]);
}

/// `inotifywait -m` on a folder, its events as lines `EVENTS NAME` (Debian's inotify-tools).
struct Watcher {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    fn start(dir: &Path) -> Watcher {
        use std::io::BufRead;
        let mut child = Command::new("inotifywait")
            .args(["-m", "--format", "%e %f"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run inotifywait (Debian: inotify-tools; make setup installs it)");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut ready = stderr.lines();
        loop {
            match ready.next() {
                Some(Ok(l)) if l.contains("Watches established") => break,
                Some(Ok(_)) => continue,
                other => panic!("inotifywait did not start: {other:?}"),
            }
        }
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in stdout.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// Every event heard within `window`.
    fn heard(&self, window: Duration) -> Vec<String> {
        let end = std::time::Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the watcher has heard `want` (in order, nothing else in between), and
/// returns how long that took.
fn hear_exactly(w: &Watcher, what: &str, want: &[&str], deadline: Duration) -> Duration {
    let start = std::time::Instant::now();
    let mut got: Vec<String> = Vec::new();
    while got.len() < want.len() {
        let left = deadline.saturating_sub(start.elapsed());
        match w.lines.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    assert_eq!(
        got, want,
        "what a watcher on the other machine heard of the {what}"
    );
    let took = start.elapsed();
    let more = w.heard(Duration::from_millis(200));
    assert!(more.is_empty(), "after the {what}, also heard {more:?}");
    took
}

#[test]
fn a_watcher_hears_what_another_machine_changes() {
    // The replay is opt-in (`--inotify-replay`, see docs/SEMANTICS.md).
    let server = Server::start();
    let token = server.add_user("watched");
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::with_args(&server.url, &token, "desktop", &["--inotify-replay"]);
    let _ = fs::read_dir(b.path()).unwrap().count();
    let w = Watcher::start(b.path());
    // Only the other machine's changes happen on B: the watcher hears nothing but them.
    let deadline = Duration::from_secs(5);

    fs::write(a.p("new.txt"), b"one").unwrap();
    let create = hear_exactly(
        &w,
        "create",
        &[
            "CREATE new.txt",
            "OPEN new.txt",
            "MODIFY new.txt",
            "CLOSE_WRITE,CLOSE new.txt",
        ],
        deadline,
    );
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(a.p("new.txt"))
            .unwrap();
        f.write_all(b" two").unwrap();
    }
    let edit = hear_exactly(
        &w,
        "edit",
        &[
            "OPEN new.txt",
            "MODIFY new.txt",
            "CLOSE_WRITE,CLOSE new.txt",
        ],
        deadline,
    );
    fs::set_permissions(a.p("new.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let chmod = hear_exactly(&w, "chmod", &["ATTRIB new.txt"], deadline);
    set_old_times(&a.p("new.txt"));
    hear_exactly(&w, "utimens", &["ATTRIB new.txt"], deadline);
    fs::rename(a.p("new.txt"), a.p("renamed.txt")).unwrap();
    let rename = hear_exactly(
        &w,
        "rename",
        &["MOVED_FROM new.txt", "MOVED_TO renamed.txt"],
        deadline,
    );
    fs::remove_file(a.p("renamed.txt")).unwrap();
    let delete = hear_exactly(&w, "delete", &["DELETE renamed.txt"], deadline);
    fs::create_dir(a.p("folder")).unwrap();
    let mkdir = hear_exactly(&w, "new folder", &["CREATE,ISDIR folder"], deadline);
    // Inside a folder: heard by a watcher of that folder (paths below the top are walked).
    let inner = Watcher::start(&b.p("folder"));
    fs::write(a.p("folder/inner.txt"), b"").unwrap();
    let created = [
        "CREATE inner.txt",
        "OPEN inner.txt",
        "MODIFY inner.txt",
        "CLOSE_WRITE,CLOSE inner.txt",
    ];
    hear_exactly(&inner, "create in a folder", &created, deadline);
    fs::remove_file(a.p("folder/inner.txt")).unwrap();
    hear_exactly(
        &inner,
        "delete in a folder",
        &["DELETE inner.txt"],
        deadline,
    );
    drop(inner);
    assert!(w.heard(Duration::from_millis(100)).is_empty());
    fs::remove_dir(a.p("folder")).unwrap();
    let rmdir = hear_exactly(&w, "folder removal", &["DELETE,ISDIR folder"], deadline);
    eprintln!(
        "heard on B after A's call: create {create:?}, edit {edit:?}, chmod {chmod:?}, rename {rename:?}, \
         delete {delete:?}, mkdir {mkdir:?}, rmdir {rmdir:?}"
    );

    // What B's programs read once they hear it is the new state.
    assert!(!b.p("renamed.txt").exists() && !b.p("folder").exists());
    // And nothing B replayed went back to the service as a change of B's.
    fs::write(a.p("last.txt"), b"end").unwrap();
    wait_content(&b.p("last.txt"), b"end", SYNC);
    b.wait_uploaded(SYNC);
    let status = b.status();
    assert_eq!(
        (status.uploaded, status.conflicts),
        (0, 0),
        "B sent nothing of its own"
    );
    let names: Vec<_> = fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("last.txt")]);

    // The replays hold nothing open that keeps the drive from unmounting cleanly.
    drop(w);
    let mut b = b;
    let said = b.unmount();
    assert!(!is_mounted(b.path()), "{said}");
    let log = b.log();
    for bad in ["WARN", "ERROR", "detaching lazily"] {
        assert!(!log.contains(bad), "B's client logged {bad:?}:\n{log}");
    }
}
