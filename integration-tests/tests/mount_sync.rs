//! Two real mounts of one user (two machines) on a real `jewel-server`: what one mount does
//! reaches the other, as a user would check it with ordinary file tools.
//!
//! Needs the binaries built (`cargo build --workspace --bins`, which `make test` does) and
//! FUSE (`/dev/fuse`, fusermount3). The 1 GiB file case runs with `JEWEL_BIG_TESTS=1`
//! (or `cargo test -- --ignored`); the default suite uses 64 MiB.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::*;

const SYNC: Duration = Duration::from_secs(15);

#[test]
fn files_and_directories_reach_the_other_mount() {
    let (_server, a, b) = two_mounts();

    // create
    fs::write(a.p("note.txt"), b"first").unwrap();
    wait_content(&b.p("note.txt"), b"first", SYNC);
    // overwrite
    fs::write(a.p("note.txt"), b"second version").unwrap();
    wait_content(&b.p("note.txt"), b"second version", SYNC);
    // append
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(a.p("note.txt"))
            .unwrap();
        f.write_all(b" + more").unwrap();
    }
    wait_content(&b.p("note.txt"), b"second version + more", SYNC);
    // random write in the middle
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(a.p("note.txt"))
            .unwrap();
        f.write_all_at(b"SECOND", 0).unwrap();
    }
    wait_content(&b.p("note.txt"), b"SECOND version + more", SYNC);
    // truncate
    fs::OpenOptions::new()
        .write(true)
        .open(a.p("note.txt"))
        .unwrap()
        .set_len(6)
        .unwrap();
    wait_content(&b.p("note.txt"), b"SECOND", SYNC);
    // rename
    fs::rename(a.p("note.txt"), a.p("renamed.txt")).unwrap();
    wait_content(&b.p("renamed.txt"), b"SECOND", SYNC);
    wait_gone(&b.p("note.txt"), SYNC);
    // directories and moves between them
    fs::create_dir_all(a.p("docs/deep/er")).unwrap();
    fs::write(a.p("docs/deep/er/leaf.md"), b"# leaf").unwrap();
    wait_content(&b.p("docs/deep/er/leaf.md"), b"# leaf", SYNC);
    fs::create_dir(a.p("archive")).unwrap();
    fs::rename(a.p("renamed.txt"), a.p("archive/moved.txt")).unwrap();
    wait_content(&b.p("archive/moved.txt"), b"SECOND", SYNC);
    wait_gone(&b.p("renamed.txt"), SYNC);
    // rename a directory with content
    fs::rename(a.p("docs"), a.p("archive/docs")).unwrap();
    wait_content(&b.p("archive/docs/deep/er/leaf.md"), b"# leaf", SYNC);
    wait_gone(&b.p("docs"), SYNC);
    // rename over an existing file replaces it
    fs::write(a.p("archive/old.txt"), b"old").unwrap();
    fs::write(a.p("archive/new.txt"), b"new").unwrap();
    wait_content(&b.p("archive/old.txt"), b"old", SYNC);
    fs::rename(a.p("archive/new.txt"), a.p("archive/old.txt")).unwrap();
    wait_content(&b.p("archive/old.txt"), b"new", SYNC);
    wait_gone(&b.p("archive/new.txt"), SYNC);
    // delete a file, a directory tree
    fs::remove_file(a.p("archive/moved.txt")).unwrap();
    wait_gone(&b.p("archive/moved.txt"), SYNC);
    fs::remove_dir_all(a.p("archive/docs")).unwrap();
    wait_gone(&b.p("archive/docs"), SYNC);
    // and the other way round
    fs::write(b.p("from-b.txt"), b"hello from b").unwrap();
    wait_content(&a.p("from-b.txt"), b"hello from b", SYNC);
    fs::remove_dir(b.p("archive")).expect_err("not empty");
    fs::remove_file(b.p("archive/old.txt")).unwrap();
    fs::remove_dir(b.p("archive")).unwrap();
    wait_gone(&a.p("archive"), SYNC);

    let mut names: Vec<String> = fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["from-b.txt"]);
}

#[test]
fn a_hundred_new_files_reach_the_other_mount() {
    let (_server, a, b) = two_mounts();
    fs::create_dir(a.p("many")).unwrap();
    wait_for("the folder on b", SYNC, || {
        b.p("many").is_dir().then_some(())
    });
    let start = Instant::now();
    for i in 0..100 {
        fs::write(
            a.p(&format!("many/file-{i:03}.txt")),
            format!("content of file {i}\n"),
        )
        .unwrap();
    }
    let written = start.elapsed();
    wait_for("100 files complete on b", SYNC, || {
        (0..100)
            .all(|i| {
                fs::read(b.p(&format!("many/file-{i:03}.txt")))
                    .is_ok_and(|c| c == format!("content of file {i}\n").as_bytes())
            })
            .then_some(())
    });
    let arrived = start.elapsed();
    eprintln!(
        "100 small files: written in {written:?}, complete on the other mount after {arrived:?}"
    );

    let start = Instant::now();
    for i in 0..100 {
        fs::remove_file(a.p(&format!("many/file-{i:03}.txt"))).unwrap();
    }
    wait_for("100 files gone on b", SYNC, || {
        (fs::read_dir(b.p("many")).unwrap().count() == 0).then_some(())
    });
    eprintln!(
        "100 deletions reached the other mount after {:?}",
        start.elapsed()
    );
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn big_file_case(mib: usize) {
    let (_server, a, b) = two_mounts();
    let data = pseudo_random(mib << 20, 42);
    let want = sha256_hex(&data);
    let start = Instant::now();
    fs::write(a.p("big.bin"), &data).unwrap();
    let written = start.elapsed();
    drop(data);
    wait_for("the big file's size on b", Duration::from_secs(120), || {
        fs::metadata(b.p("big.bin"))
            .ok()
            .filter(|m| m.len() == (mib as u64) << 20)
            .map(|_| ())
    });
    let visible = start.elapsed();
    let read_start = Instant::now();
    let got = fs::read(b.p("big.bin")).unwrap();
    let read = read_start.elapsed();
    if sha256_hex(&got) != want {
        let data = pseudo_random(mib << 20, 42);
        let first = got.iter().zip(&data).position(|(x, y)| x != y);
        let _ = fs::write("/proc/sys/vm/drop_caches", "3");
        let local = sha256_hex(&fs::read(a.p("big.bin")).unwrap()) == want;
        let again = sha256_hex(&fs::read(b.p("big.bin")).unwrap()) == want;
        if let Some(f) = first {
            let end = got[f..]
                .iter()
                .zip(&data[f..])
                .position(|(x, y)| x == y)
                .map(|e| e + f);
            let zeros = got[f..end.unwrap_or(got.len())].iter().all(|x| *x == 0);
            eprintln!("wrong range {f}..{end:?}, all zeros: {zeros}");
        }
        panic!(
            "the other mount has different bytes: {} of {} bytes, first difference at {first:?}; \
             the writer's copy is {}; a second read there is {}",
            got.len(),
            data.len(),
            if local { "right" } else { "wrong" },
            if again { "right" } else { "wrong" }
        );
    }
    eprintln!(
        "{mib} MiB file: written in {written:?}, visible on the other mount after {visible:?}, \
         read cold there in {read:?} ({:.0} MiB/s)",
        mib as f64 / read.as_secs_f64()
    );
}

#[test]
fn a_one_gib_file_is_byte_identical_on_the_other_mount() {
    big_file_case(1024);
}

#[test]
fn editors_atomic_save_uploads_once_under_the_final_name() {
    let (_server, a, b) = two_mounts();
    fs::write(a.p("doc.txt"), b"draft 1").unwrap();
    wait_content(&b.p("doc.txt"), b"draft 1", SYNC);
    let ino_before = fs::metadata(b.p("doc.txt")).unwrap().ino();
    // What editors do: write a temporary file, fsync, close, rename over the original.
    {
        use std::io::Write;
        let mut f = fs::File::create(a.p(".doc.txt.swp")).unwrap();
        f.write_all(b"draft 2, saved atomically").unwrap();
        f.sync_all().unwrap();
    }
    fs::rename(a.p(".doc.txt.swp"), a.p("doc.txt")).unwrap();
    wait_content(&b.p("doc.txt"), b"draft 2, saved atomically", SYNC);
    assert!(!b.p(".doc.txt.swp").exists());
    assert_eq!(
        fs::read(a.p("doc.txt")).unwrap(),
        b"draft 2, saved atomically"
    );
    let ino_after = fs::metadata(b.p("doc.txt")).unwrap().ino();
    eprintln!("atomic save: inode on the other mount {ino_before} -> {ino_after}");
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Waits until the repository at `dir` (on the other mount) has `head` checked out.
fn wait_head(dir: &std::path::Path, head: &str) {
    wait_for("HEAD on the other mount", SYNC, || {
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success() && String::from_utf8_lossy(&o.stdout) == head)
            .map(|_| ())
    });
}

#[test]
fn a_git_repository_works_on_both_sides() {
    let (_server, a, b) = two_mounts();
    let repo = a.p("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for i in 0..5 {
        fs::write(repo.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", &format!("commit {i}")]);
    }
    let head = git(&repo, &["rev-parse", "HEAD"]);
    a.wait_uploaded(SYNC);
    let other = b.p("repo");
    wait_head(&other, &head);
    git(&other, &["fsck", "--strict"]);
    let log = git(&other, &["log", "--oneline"]);
    assert_eq!(log.lines().count(), 5, "{log}");
    // b may still be applying the changes that arrived with HEAD (seen once in ~7 runs under
    // load: status not yet clean right after HEAD matched); the tree must become clean.
    wait_for("a clean working tree on b", SYNC, || {
        git(&other, &["status", "--porcelain"])
            .trim()
            .is_empty()
            .then_some(())
    });
}

/// git's lock files in quick succession, while the uploader is still sending the previous
/// ones: each `index.lock` is created, renamed over `index` or removed within milliseconds,
/// and object folders are made while their parent gets its id from the service. Found: a
/// removed lock file came back (git: "index.lock: File exists"), and a new object folder
/// vanished for a moment ("unable to create temporary file").
#[test]
fn git_repositories_made_one_after_another_all_arrive() {
    let (_server, a, b) = two_mounts();
    let mut heads = Vec::new();
    for r in 0..8 {
        let repo = a.p(&format!("repo{r}"));
        fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        for i in 0..5 {
            fs::write(
                repo.join(format!("f{i}.txt")),
                format!("repo {r} file {i}\n"),
            )
            .unwrap();
            git(&repo, &["add", "."]);
            git(&repo, &["commit", "-q", "-m", &format!("commit {i}")]);
        }
        heads.push(git(&repo, &["rev-parse", "HEAD"]));
    }
    a.wait_uploaded(SYNC);
    for (r, head) in heads.iter().enumerate() {
        let other = b.p(&format!("repo{r}"));
        wait_head(&other, head);
        let log = git(&other, &["log", "--oneline"]);
        assert_eq!(log.lines().count(), 5, "repo{r}: {log}");
    }
    let stray: Vec<_> = fs::read_dir(a.p("repo7/.git"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("lock") || n.contains("conflicted"))
        .collect();
    assert!(stray.is_empty(), "left in .git: {stray:?}");
}

#[test]
fn symlinks_and_the_exec_bit_are_kept() {
    let (_server, a, b) = two_mounts();
    fs::write(a.p("run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(a.p("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("run.sh", a.p("link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", a.p("abs-link")).unwrap();
    wait_for("the link on b", SYNC, || {
        fs::read_link(b.p("link"))
            .ok()
            .filter(|t| t.to_str() == Some("run.sh"))
    });
    wait_for("the exec bit on b", SYNC, || {
        fs::metadata(b.p("run.sh"))
            .ok()
            .filter(|m| m.permissions().mode() & 0o777 == 0o755)
    });
    wait_for("the absolute link on b", SYNC, || {
        fs::read_link(b.p("abs-link"))
            .ok()
            .filter(|t| t.to_str() == Some("/etc/hostname"))
    });
    let out = Command::new(b.p("link"))
        .output()
        .expect("run the script through the link");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    fs::set_permissions(b.p("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    wait_for("the exec bit cleared on a", SYNC, || {
        fs::metadata(a.p("run.sh"))
            .ok()
            .filter(|m| m.permissions().mode() & 0o777 == 0o644)
    });
    // Hard links, device files and FIFOs are refused at once.
    assert!(fs::hard_link(a.p("run.sh"), a.p("hard")).is_err());
    let fifo = Command::new("mkfifo").arg(a.p("fifo")).status().unwrap();
    assert!(!fifo.success());
}

#[test]
fn an_sqlite_database_is_intact_on_the_other_side() {
    let (_server, a, b) = two_mounts();
    let db = a.p("app.db");
    let sql = "create table t(x integer, y text); \
               with recursive c(i) as (select 1 union all select i+1 from c where i < 2000) \
               insert into t select i, hex(randomblob(50)) from c; \
               update t set y = 'changed' where x % 7 = 0;";
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_uploaded(SYNC);
    let want = fs::read(&db).unwrap();
    wait_content(&b.p("app.db"), &want, SYNC);
    // In step once sqlite's rollback journal, which A deleted last, is gone on B too: B
    // applies A's changes in order, and a journal still there is "hot" (rolled back).
    wait_for("B without the rollback journal A deleted", SYNC, || {
        (!b.p("app.db-journal").exists()).then_some(())
    });
    let out = Command::new("sqlite3")
        .arg(b.p("app.db"))
        .arg("pragma integrity_check; select count(*), sum(y = 'changed') from t;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n2000|285\n");
}

#[test]
fn two_users_never_see_each_others_files() {
    let server = Server::start();
    let alice = server.add_user("alice");
    let bob = server.add_user("bob");
    let a = Mount::new(&server, &alice, "alice-laptop");
    let b = Mount::new(&server, &bob, "bob-laptop");
    let a2 = Mount::new(&server, &alice, "alice-desktop");
    fs::write(a.p("secret.txt"), b"alice only").unwrap();
    fs::create_dir(a.p("private")).unwrap();
    fs::write(b.p("bobs.txt"), b"bob only").unwrap();
    wait_content(&a2.p("secret.txt"), b"alice only", SYNC);
    a.wait_uploaded(SYNC);
    b.wait_uploaded(SYNC);
    let names = |m: &Mount| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(m.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&b), vec!["bobs.txt"]);
    assert_eq!(names(&a2), vec!["private", "secret.txt"]);
    assert!(!b.p("secret.txt").exists());
}

/// A folder made on this machine keeps, in the kernel, the inode number it was created with
/// (a local id) after it reaches the service under another id. Files another machine adds
/// and then deletes in it must vanish here too: the kernel's cached entries are invalidated
/// under the number the kernel knows (found by the bench: one mount kept `stat`-ing files
/// deleted elsewhere, for minutes).
#[test]
fn files_deleted_elsewhere_vanish_from_a_folder_made_here() {
    let (_server, a, b) = two_mounts();
    fs::create_dir(a.p("made-here")).unwrap();
    a.wait_uploaded(SYNC);
    wait_for("the folder on b", SYNC, || {
        b.p("made-here").is_dir().then_some(())
    });
    let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    for n in &names {
        fs::write(b.p(&format!("made-here/{n}")), n.as_bytes()).unwrap();
    }
    // a looks each file up by name, so the kernel caches the entries under a's folder inode.
    for n in &names {
        wait_content(&a.p(&format!("made-here/{n}")), n.as_bytes(), SYNC);
    }
    for n in &names {
        fs::remove_file(b.p(&format!("made-here/{n}"))).unwrap();
    }
    for n in &names {
        wait_gone(&a.p(&format!("made-here/{n}")), SYNC);
    }
    assert_eq!(fs::read_dir(a.p("made-here")).unwrap().count(), 0);
}
