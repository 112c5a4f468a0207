//! Conflicts, outages and crashes, with real mounts and a real server process that is killed
//! and restarted on the same data and port.

use std::fs;
use std::time::Duration;

use integration_tests::*;

const SYNC: Duration = Duration::from_secs(20);

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn wait_offline(m: &Mount) {
    wait_for("the mount to notice it is offline", SYNC, || {
        (!m.status().online).then_some(())
    });
}

#[test]
fn offline_writes_converge_when_the_server_returns() {
    let server = Server::start();
    let token = server.add_user("alice");
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    fs::write(a.p("before.txt"), b"written online").unwrap();
    wait_content(&b.p("before.txt"), b"written online", SYNC);

    let data = server.kill();
    wait_offline(&a);
    // Cached files stay readable; writes, new folders, renames and deletes are journaled.
    assert_eq!(fs::read(a.p("before.txt")).unwrap(), b"written online");
    fs::create_dir(a.p("offline-dir")).unwrap();
    for i in 0..10 {
        fs::write(
            a.p(&format!("offline-dir/f{i}.txt")),
            format!("offline {i}"),
        )
        .unwrap();
    }
    fs::write(a.p("before.txt"), b"edited offline").unwrap();
    fs::write(a.p("gone.txt"), b"short-lived").unwrap();
    fs::remove_file(a.p("gone.txt")).unwrap();
    fs::rename(a.p("offline-dir/f9.txt"), a.p("moved-offline.txt")).unwrap();
    wait_for("changes journaled while offline", SYNC, || {
        let s = a.status();
        (!s.online && s.pending_uploads > 0).then_some(())
    });

    let _server = Server::start_at(data, &server_addr(&a));
    wait_content(&b.p("before.txt"), b"edited offline", SYNC);
    for i in 0..9 {
        wait_content(
            &b.p(&format!("offline-dir/f{i}.txt")),
            format!("offline {i}").as_bytes(),
            SYNC,
        );
    }
    wait_content(&b.p("moved-offline.txt"), b"offline 9", SYNC);
    a.wait_uploaded(SYNC);
    assert!(!b.p("gone.txt").exists());
    assert_eq!(
        names(b.path()),
        vec!["before.txt", "moved-offline.txt", "offline-dir"]
    );
    assert!(a.status().online);
}

fn server_addr(m: &Mount) -> String {
    m.url.trim_start_matches("http://").to_string()
}

#[test]
fn a_conflict_keeps_both_versions() {
    let server = Server::start();
    let token = server.add_user("alice");
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    fs::write(a.p("report.txt"), b"original").unwrap();
    wait_content(&b.p("report.txt"), b"original", SYNC);
    fs::write(a.p("same.txt"), b"same base").unwrap();
    wait_content(&b.p("same.txt"), b"same base", SYNC);

    // Both machines edit the same files while the service is away.
    let data = server.kill();
    wait_offline(&a);
    wait_offline(&b);
    fs::write(a.p("report.txt"), b"laptop's edit").unwrap();
    fs::write(b.p("report.txt"), b"desktop's edit").unwrap();
    // The same edit on both sides is no conflict.
    fs::write(a.p("same.txt"), b"identical edit").unwrap();
    fs::write(b.p("same.txt"), b"identical edit").unwrap();
    let _server = Server::start_at(data, &server_addr(&a));

    a.wait_uploaded(SYNC);
    b.wait_uploaded(SYNC);
    // Both mounts end with the same two files: the winner under the name, the other as a copy.
    let copy_of = |m: &Mount| -> Option<String> {
        names(m.path())
            .into_iter()
            .find(|n| n.starts_with("report (conflicted copy "))
    };
    let copy = wait_for("a conflict copy on both mounts", SYNC, || {
        let (ca, cb) = (copy_of(&a)?, copy_of(&b)?);
        (ca == cb).then_some(ca)
    });
    assert!(copy.ends_with(".txt"), "the extension stays last: {copy}");
    let winner = fs::read(a.p("report.txt")).unwrap();
    let loser = fs::read(a.p(&copy)).unwrap();
    let mut both = vec![winner.clone(), loser.clone()];
    both.sort();
    assert_eq!(
        both,
        vec![b"desktop's edit".to_vec(), b"laptop's edit".to_vec()]
    );
    wait_content(&b.p("report.txt"), &winner, SYNC);
    wait_content(&b.p(&copy), &loser, SYNC);
    assert!(
        copy.contains("laptop") || copy.contains("desktop"),
        "the copy names the device that lost: {copy}"
    );
    assert_eq!(fs::read(a.p("same.txt")).unwrap(), b"identical edit");
    let all = names(a.path());
    assert_eq!(
        all.iter().filter(|n| n.contains("conflicted copy")).count(),
        1,
        "{all:?}"
    );
    wait_for("the conflict counted in status", SYNC, || {
        (a.status().conflicts + b.status().conflicts == 1).then_some(())
    });
}

#[test]
fn an_edit_beats_a_delete() {
    let server = Server::start();
    let token = server.add_user("alice");
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    fs::write(a.p("keep.txt"), b"v1").unwrap();
    wait_content(&b.p("keep.txt"), b"v1", SYNC);
    let data = server.kill();
    wait_offline(&a);
    wait_offline(&b);
    fs::remove_file(b.p("keep.txt")).unwrap();
    fs::write(
        a.p("keep.txt"),
        b"v2 edited while the other side deleted it",
    )
    .unwrap();
    let _server = Server::start_at(data, &server_addr(&a));
    a.wait_uploaded(SYNC);
    b.wait_uploaded(SYNC);
    wait_content(
        &b.p("keep.txt"),
        b"v2 edited while the other side deleted it",
        SYNC,
    );
    wait_content(
        &a.p("keep.txt"),
        b"v2 edited while the other side deleted it",
        SYNC,
    );
}

#[test]
fn sigkill_after_close_loses_nothing_and_duplicates_nothing() {
    let server = Server::start();
    let token = server.add_user("alice");
    let mut a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");

    // Case 1: the server is away, so nothing can be uploaded before the kill.
    let data = server.kill();
    wait_offline(&a);
    for i in 0..20 {
        fs::write(a.p(&format!("crash-{i:02}.txt")), format!("journaled {i}")).unwrap();
    }
    a.kill();
    let server = Server::start_at(data, &server_addr(&a));
    a.start();
    for i in 0..20 {
        wait_content(
            &b.p(&format!("crash-{i:02}.txt")),
            format!("journaled {i}").as_bytes(),
            SYNC,
        );
    }

    // Case 2: online, killed right after close (uploads may be half done).
    for i in 0..20 {
        fs::write(a.p(&format!("fast-{i:02}.txt")), format!("fast {i}")).unwrap();
    }
    a.kill();
    a.start();
    for i in 0..20 {
        wait_content(
            &b.p(&format!("fast-{i:02}.txt")),
            format!("fast {i}").as_bytes(),
            SYNC,
        );
    }
    a.wait_uploaded(SYNC);
    b.wait_uploaded(SYNC);
    let all = names(b.path());
    assert_eq!(all.len(), 40, "each file once, no conflict copies: {all:?}");
    assert_eq!(names(a.path()), all);
    drop(server);
}

#[test]
fn unmount_waits_for_uploads_and_status_reports() {
    let server = Server::start();
    let token = server.add_user("alice");
    let mut a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    for i in 0..30 {
        fs::write(a.p(&format!("u{i}.txt")), vec![b'x'; 10_000]).unwrap();
    }
    let out = a.unmount();
    assert!(out.contains("unmounted"), "{out}");
    assert!(!is_mounted(a.path()));
    for i in 0..30 {
        wait_content(&b.p(&format!("u{i}.txt")), &[b'x'; 10_000], SYNC);
    }
    let s = wait_for("b's status to show the 30 changes", SYNC, || {
        let s = b.status();
        (s.last_seq >= 30).then_some(s)
    });
    assert!(s.online);
    assert_eq!(s.device, "desktop");
    let json = std::process::Command::new(bin("jewelfs"))
        .args(["status", "--json"])
        .arg(b.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["online"], true);
}

#[test]
fn clear_errors_at_mount() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("jewelfs"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let mnt = dir.path().join("mnt");
    let mnt_s = mnt.to_str().unwrap();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let err = run(&[
        "mount",
        mnt_s,
        "--server",
        &server.url,
        "--token",
        "x",
        "--cache-dir",
        cache_s,
    ]);
    assert!(err.contains("not usable") && err.contains("mkdir"), "{err}");
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("file"), b"x").unwrap();
    let err = run(&[
        "mount",
        mnt_s,
        "--server",
        &server.url,
        "--token",
        "x",
        "--cache-dir",
        cache_s,
    ]);
    assert!(err.contains("not empty"), "{err}");
    fs::remove_file(mnt.join("file")).unwrap();
    let err = run(&[
        "mount",
        mnt_s,
        "--server",
        &server.url,
        "--token",
        "wrong",
        "--cache-dir",
        cache_s,
    ]);
    assert!(err.contains("refused the token"), "{err}");
    let err = run(&[
        "mount",
        mnt_s,
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "x",
        "--cache-dir",
        cache_s,
    ]);
    assert!(
        err.contains("cannot reach") && err.contains("no cache"),
        "{err}"
    );
}

#[test]
fn a_mount_with_a_cache_starts_offline_and_catches_up() {
    let t = std::time::Instant::now();
    let server = Server::start();
    let token = server.add_user("alice");
    let mut a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    fs::create_dir(a.p("docs")).unwrap();
    fs::write(a.p("docs/cached.txt"), b"read me offline").unwrap();
    wait_content(&b.p("docs/cached.txt"), b"read me offline", SYNC);
    assert_eq!(
        fs::read(a.p("docs/cached.txt")).unwrap(),
        b"read me offline"
    );
    eprintln!("synced {:?}", t.elapsed());
    let out = a.unmount();
    eprintln!("unmounted {:?}", t.elapsed());
    assert!(out.contains("unmounted"), "{out}");

    // The service goes away; the mount starts anyway from its cache.
    let data = server.kill();
    a.start();
    eprintln!("started offline {:?}", t.elapsed());
    assert!(!a.status().online);
    assert_eq!(
        fs::read(a.p("docs/cached.txt")).unwrap(),
        b"read me offline"
    );
    fs::write(a.p("docs/new-offline.txt"), b"made while offline").unwrap();

    let _server = Server::start_at(data, &server_addr(&a));
    wait_content(&b.p("docs/new-offline.txt"), b"made while offline", SYNC);
    eprintln!("uploaded {:?}", t.elapsed());
    // And what happened elsewhere meanwhile reaches the restarted mount.
    fs::write(b.p("docs/from-b.txt"), b"hello").unwrap();
    wait_content(&a.p("docs/from-b.txt"), b"hello", SYNC);
}

/// A machine that crashed (SIGKILL, no clean unmount) and starts again while the server is
/// down: it mounts offline from what it had, files written meanwhile are journaled, and once
/// the server is back it shows what the other machine did and the other machine shows its
/// files.
#[test]
fn a_machine_restarted_after_a_crash_while_the_server_is_down_catches_up() {
    let server = Server::start();
    let token = server.add_user("alice");
    let mut desktop = Mount::new(&server, &token, "desktop");
    let laptop = Mount::new(&server, &token, "laptop");
    fs::write(desktop.p("d"), b"first").unwrap();
    wait_content(&laptop.p("d"), b"first", SYNC);
    desktop.wait_uploaded(SYNC);
    let saved = desktop.cache_dir().join("tree.json");
    wait_for("the desktop to save its tree for offline use", SYNC, || {
        fs::read_to_string(&saved)
            .ok()
            .filter(|t| t.contains("\"d\""))
            .map(|_| ())
    });

    desktop.kill();
    let data = server.kill();
    desktop.start();
    assert_eq!(names(desktop.path()), vec!["d"], "the tree it had");
    fs::write(desktop.p("d"), b"edited while both were down").unwrap();
    fs::write(desktop.p("new.txt"), b"made while both were down").unwrap();

    let _server = Server::start_at(data, &server_addr(&laptop));
    wait_content(&laptop.p("new.txt"), b"made while both were down", SYNC);
    wait_content(&laptop.p("d"), b"edited while both were down", SYNC);
    fs::rename(laptop.p("d"), laptop.p("b.txt")).unwrap();
    fs::write(laptop.p("from-laptop.txt"), b"hello").unwrap();
    wait_content(&desktop.p("from-laptop.txt"), b"hello", SYNC);
    wait_content(&desktop.p("b.txt"), b"edited while both were down", SYNC);
    wait_gone(&desktop.p("d"), SYNC);
    assert_eq!(
        names(desktop.path()),
        vec!["b.txt", "from-laptop.txt", "new.txt"]
    );
}
