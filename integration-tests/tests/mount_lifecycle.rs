//! A mount's life as a person meets it, with a real server and real FUSE mounts: stopped
//! right after a save (Ctrl-C, logout), unmounted by `jewelfs unmount` or by the system,
//! and left idle.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use integration_tests::*;

const SYNC: Duration = Duration::from_secs(20);

/// What a person would read as a failure in a client's log.
fn assert_quiet(log: &str) {
    for bad in ["WARN", "ERROR", "Failed to umount", "Invalid argument"] {
        assert!(!log.contains(bad), "the client logged {bad:?}:\n{log}");
    }
}

#[test]
fn ctrl_c_right_after_a_save_uploads_it_before_unmounting() {
    let server = Server::start();
    let token = server.add_user("alice");
    let mut a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    // Saved, then interrupted at once: the change is still in the journal's settle window.
    fs::write(a.p("essay.txt"), b"saved just before Ctrl-C").unwrap();
    let status = a.stop_with("INT", SYNC);
    assert!(status.success(), "the client exited with {status}");
    let log = a.log();
    assert!(!log.contains("still to upload"), "{log}");
    assert!(log.contains("unmounted"), "{log}");
    assert!(!is_mounted(a.path()));
    wait_content(&b.p("essay.txt"), b"saved just before Ctrl-C", SYNC);
    // The last status says so, for `jewelfs unmount` to report.
    let last = jewelfs::mount::read_status(a.path()).expect("the last status");
    assert!(!last.ready);
    assert_eq!(last.pending_uploads, 0);
}

#[test]
fn a_clean_unmount_logs_no_warning() {
    let server = Server::start();
    let token = server.add_user("alice");

    // By `jewelfs unmount`.
    let mut a = Mount::new(&server, &token, "laptop");
    fs::write(a.p("one.txt"), b"one").unwrap();
    let out = a.unmount();
    assert!(out.contains("everything uploaded"), "{out}");
    assert!(!is_mounted(a.path()));
    assert_quiet(&a.log());

    // By the system (`fusermount3 -u`, as at logout or from a file manager): the client
    // sees the session end and stops, without trying to unmount a second time.
    let b = Mount::new(&server, &token, "desktop");
    wait_content(&b.p("one.txt"), b"one", SYNC);
    let pid = b.pid();
    let done = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(b.path())
        .status()
        .unwrap();
    assert!(done.success());
    wait_for("the client to exit", SYNC, || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie (exited) that the test process has not reaped yet.
        (stat.is_empty() || stat.rsplit(')').next().is_some_and(|r| r.starts_with(" Z")))
            .then_some(())
    });
    let log = b.log();
    assert!(log.contains("unmounted"), "{log}");
    assert_quiet(&log);
}

/// The newest change in the user's log, as the service says.
fn latest_seq(server: &Server, token: &str) -> jewel_wire::Seq {
    let me: jewel_wire::Me = reqwest::blocking::Client::new()
        .get(format!("{}{}/me", server.url, jewel_wire::API_PREFIX))
        .bearer_auth(token)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("GET /me");
    me.latest_seq
}

#[test]
fn an_idle_mount_does_not_rewrite_its_status_file() {
    let server = Server::start();
    let token = server.add_user("alice");
    let a = Mount::new(&server, &token, "laptop");
    fs::write(a.p("warm-up.txt"), b"something happened").unwrap();
    a.wait_uploaded(SYNC);
    let file = a.status_file();
    let stamp = || {
        let m = fs::metadata(&file).expect("the status file");
        (m.ino(), m.mtime(), m.mtime_nsec(), m.len())
    };
    // Let what just happened reach the file (it lags by at most 10 s), then watch. Done
    // means uploaded and heard back: the mount's own changes come back as events (the
    // service may hold them up to a second), and the status file names the newest it heard.
    let latest = latest_seq(&server, &token);
    wait_for("the status file to say the upload is done", SYNC, || {
        jewelfs::mount::read_status(a.path())
            .filter(|s| s.pending_uploads == 0 && s.uploaded >= 1 && s.last_seq >= latest)
            .map(|_| ())
    });
    let before = stamp();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            stamp(),
            before,
            "the idle mount rewrote its status file after {:?}",
            watch.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still alive and current: the socket answers, and a change reaches the file.
    assert!(a.status().ready);
    fs::write(a.p("later.txt"), b"a change").unwrap();
    wait_for("the status file to count the new upload", SYNC, || {
        jewelfs::mount::read_status(a.path())
            .filter(|s| s.uploaded >= 2 && s.pending_uploads == 0)
            .map(|_| ())
    });
    assert_ne!(stamp(), before);
}
