//! Data integrity on a real mount: a file reads back exactly what was written, after every
//! close and reopen, and the other machine ends byte-identical.
//!
//! - [`exerciser_keeps_every_byte_through_close_and_reopen`]: an exerciser in the manner of
//!   the kernel's `fsx` (written here: no registry serves fsx): random writes, reads,
//!   truncates up and down, holes, close and reopen, fsync, each checked against a model
//!   of the expected bytes on every read. `JEWEL_FSX_OPS` sets the number of operations
//!   (default 3000), `JEWEL_FSX_SEED` the seed (default: a few fixed seeds).
//! - [`close_reopen_loop_reads_back_every_round`]: open, 1–3 `pwrite`, sometimes
//!   `ftruncate` or `fsync`, close, pause 0–60 ms, reopen read-only, compare; the loop that
//!   found writes lost to a reopen racing the uploader. `JEWEL_LOOP_ROUNDS` (default 600).
//! - An unlinked file stays readable through a descriptor opened before the unlink, even
//!   when its upload is still on the way; a file's inode number survives the kernel
//!   forgetting it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use integration_tests::*;

const SYNC: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        // Runs of one byte and noise, so a shifted or stale range never matches by luck.
        let fill = self.next() as u8;
        if self.chance(30) {
            return vec![fill; n];
        }
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where `got` and `want` first differ, and how many bytes differ, for a failure message.
fn describe_diff(got: &[u8], want: &[u8]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
    format!(
        "length {} (want {}), first difference at byte {first}, {differ} bytes differ",
        got.len(),
        want.len()
    )
}

fn read_all(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One exerciser run on `path`; returns the expected final content.
fn exercise(path: &Path, seed: u64, ops: u64) -> Vec<u8> {
    const MAX_LEN: u64 = 600_000;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut model: Vec<u8> = Vec::new();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let mut log: Vec<String> = Vec::new();
    for op in 0..ops {
        let what = rng.below(100);
        let step = if what < 35 {
            // write, possibly past the end (a hole in between)
            let off = rng.below(MAX_LEN);
            let len = 1 + rng.below(70_000);
            let data = rng.bytes(len as usize);
            file.write_all_at(&data, off).unwrap();
            let end = (off + len) as usize;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            format!("write {off}+{len}")
        } else if what < 55 {
            // read a range and check it
            let off = rng.below(model.len() as u64 + 10_000);
            let len = 1 + rng.below(100_000);
            let mut buf = vec![0u8; len as usize];
            let mut got = 0;
            while got < buf.len() {
                let n = file.read_at(&mut buf[got..], off + got as u64).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let start = (off as usize).min(model.len());
            let end = ((off + len) as usize).min(model.len());
            let want = &model[start..end];
            if &buf[..got] != want {
                panic!(
                    "seed {seed}, op {op}: read {off}+{len}: {}\nlast operations: {:?}",
                    describe_diff(&buf[..got], want),
                    &log[log.len().saturating_sub(12)..]
                );
            }
            format!("read {off}+{len}")
        } else if what < 65 {
            // truncate up or down
            let len = rng.below(MAX_LEN);
            file.set_len(len).unwrap();
            model.resize(len as usize, 0);
            format!("truncate {len}")
        } else if what < 90 {
            // close and reopen (sometimes read-only for a check of the whole file first)
            drop(file);
            if rng.chance(50) {
                let got = read_all(path);
                if got != model {
                    panic!(
                        "seed {seed}, op {op}: whole file after close: {}\nlast operations: {:?}",
                        describe_diff(&got, &model),
                        &log[log.len().saturating_sub(12)..]
                    );
                }
            }
            if rng.chance(20) {
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            }
            file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            "close+reopen".to_string()
        } else if what < 95 {
            file.sync_all().unwrap();
            "fsync".to_string()
        } else {
            // reopen with O_TRUNC and write a fresh start
            drop(file);
            file = OpenOptions::new()
                .read(true)
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap();
            let len = 1 + rng.below(5000) as usize;
            let data = rng.bytes(len);
            file.write_all_at(&data, 0).unwrap();
            model = data;
            "open(O_TRUNC)+write".to_string()
        };
        log.push(step);
        let size = file.metadata().unwrap().len();
        assert_eq!(
            size,
            model.len() as u64,
            "seed {seed}, op {op}: fstat size after {:?}",
            log.last()
        );
    }
    drop(file);
    let got = read_all(path);
    assert!(
        got == model,
        "seed {seed}: final content: {}",
        describe_diff(&got, &model)
    );
    model
}

#[test]
fn exerciser_keeps_every_byte_through_close_and_reopen() {
    let (_server, a, b) = two_mounts();
    let ops = env_num("JEWEL_FSX_OPS", 3000);
    let seeds: Vec<u64> = match std::env::var("JEWEL_FSX_SEED") {
        Ok(s) => vec![s.parse().expect("JEWEL_FSX_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        let name = format!("fsx-{seed}.bin");
        let want = exercise(&a.p(&name), seed, ops);
        a.wait_uploaded(SYNC);
        wait_content(&b.p(&name), &want, SYNC);
        // And still on the writing machine once everything settled.
        assert!(
            read_all(&a.p(&name)) == want,
            "seed {seed}: changed after upload"
        );
    }
}

#[test]
fn close_reopen_loop_reads_back_every_round() {
    let (_server, a, b) = two_mounts();
    let rounds = env_num("JEWEL_LOOP_ROUNDS", 600);
    let path = a.p("loop.bin");
    let mut rng = Rng(0x5EED);
    let mut model: Vec<u8> = Vec::new();
    // The last few rounds' expected contents and operations, to say what a bad read holds.
    let mut history: Vec<(Vec<u8>, String)> = Vec::new();
    File::create(&path).unwrap();
    for round in 0..rounds {
        let mut ops = String::new();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        for _ in 0..1 + rng.below(3) {
            let off = rng.below(200_000);
            let len = 1 + rng.below(70_000) as usize;
            let data = rng.bytes(len);
            file.write_all_at(&data, off).unwrap();
            let end = off as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            ops.push_str(&format!("pwrite {off}+{len}; "));
        }
        if rng.chance(30) {
            let len = rng.below(250_000);
            file.set_len(len).unwrap();
            model.resize(len as usize, 0);
            ops.push_str(&format!("ftruncate {len}; "));
        }
        if rng.chance(20) {
            file.sync_all().unwrap();
            ops.push_str("fsync; ");
        }
        drop(file);
        let pause = rng.below(60);
        std::thread::sleep(Duration::from_millis(pause));
        ops.push_str(&format!("close, pause {pause} ms"));
        let got = read_all(&path);
        if got != model {
            let mut why = format!(
                "round {round} ({ops}): read after reopen: {}",
                describe_diff(&got, &model)
            );
            for (back, (earlier, what)) in history.iter().rev().enumerate() {
                let same = got.len() == earlier.len() && got == *earlier;
                why.push_str(&format!(
                    "\n  {} round(s) earlier ({what}): {}",
                    back + 1,
                    if same {
                        "the read equals this version".into()
                    } else {
                        describe_diff(&got, earlier)
                    }
                ));
            }
            panic!("{why}");
        }
        history.push((model.clone(), ops));
        if history.len() > 4 {
            history.remove(0);
        }
    }
    a.wait_uploaded(SYNC);
    wait_content(&b.p("loop.bin"), &model, SYNC);
    assert!(read_all(&path) == model, "changed after upload");
}

#[test]
fn an_unlinked_file_stays_readable_through_an_open_descriptor() {
    let (_server, a, _b) = two_mounts();
    for round in 0..20 {
        // Written, closed and unlinked at once: the upload is still on its way.
        let path = a.p(&format!("short-lived-{round}.txt"));
        let content = format!("round {round}: still here after the unlink\n").repeat(100);
        fs::write(&path, &content).unwrap();
        let held = File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert!(!path.exists(), "round {round}: the name is gone");
        let size = held
            .metadata()
            .unwrap_or_else(|e| panic!("round {round}: fstat of an unlinked open file: {e}"))
            .len();
        assert_eq!(size, content.len() as u64, "round {round}: fstat size");
        let mut buf = vec![0u8; content.len()];
        held.read_exact_at(&mut buf, 0)
            .unwrap_or_else(|e| panic!("round {round}: read of an unlinked open file: {e}"));
        assert!(buf == content.as_bytes(), "round {round}: content");
    }
    // And one that reached the service first.
    let path = a.p("uploaded.txt");
    fs::write(&path, b"uploaded, then unlinked while open").unwrap();
    a.wait_uploaded(SYNC);
    let held = File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    a.wait_uploaded(SYNC);
    let mut buf = vec![0u8; 34];
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"uploaded, then unlinked while open");
}

#[test]
fn a_new_files_inode_number_survives_the_kernel_forgetting_it() {
    let (_server, a, _b) = two_mounts();
    fs::create_dir(a.p("dir")).unwrap();
    fs::write(a.p("dir/new.txt"), b"made here").unwrap();
    let before = (
        fs::metadata(a.p("dir")).unwrap().ino(),
        fs::metadata(a.p("dir/new.txt")).unwrap().ino(),
    );
    a.wait_uploaded(SYNC);
    // Ask the kernel to drop every unused dentry and inode: it sends FORGET for them, and
    // the next lookup gets its inode number from the client again.
    fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches (needs root)");
    let after = (
        fs::metadata(a.p("dir")).unwrap().ino(),
        fs::metadata(a.p("dir/new.txt")).unwrap().ino(),
    );
    assert_eq!(
        before, after,
        "inode numbers of a folder and file made here"
    );
}

#[test]
fn the_cache_folder_is_closed_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let token = server.add_user("private");
    let a = Mount::new(&server, &token, "laptop");
    fs::write(a.p("secret.txt"), b"cached here").unwrap();
    a.wait_uploaded(SYNC);
    let mode = fs::metadata(a.cache_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "cache folder mode {mode:o}");
}
