//! Filesystem speed, the same operations on three targets in one run: the native disk (a
//! folder on the same filesystem everything else uses), a passthrough FUSE mount of such a
//! folder (`bindfs -o big_writes`, Debian's bindfs on libfuse 2), and a `jewelfs` mount
//! (with a second `jewelfs` mount of the same user for reads "cold from the server").
//!
//! Per run, in a fresh folder on each target:
//! - sequential write of the big file (1 MiB writes; open → last write → close, no fsync:
//!   what an application waits for; jewelfs' close journals the file, durable within 50 ms);
//! - sequential read, cached (second read right after a first one) and cold (after
//!   `drop_caches`); jewelfs cold twice: in the writing mount (its local block cache) and in
//!   the other mount, which never had it (every block from the server);
//! - random 4 KiB reads of the cached big file (pread at random aligned offsets);
//! - creating the small files (1 KiB each, one folder), `ls -l` of them cold (after
//!   `drop_caches`) and warm, `stat` of every one (warm), 1,000 small files written in a
//!   second folder and `ls -l` of it warm;
//! - untar of a source tree.
//!
//! jewelfs uploads in the background; before the next target or operation that would
//! compete with it, the bench waits until its journal is empty (the time that takes is
//! reported too, as "upload to server").

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::env::{drop_caches, progress, BenchServer, FuseClient};

#[derive(Debug, Clone, Copy)]
pub struct FsSettings {
    pub big_mib: u64,
    pub small_files: usize,
    pub random_reads: usize,
    pub runs: usize,
}

/// What is measured; `higher` says whether a larger value is better.
pub const OPS: &[(&str, &str, bool)] = &[
    ("seq_write", "sequential write (MiB/s)", true),
    ("seq_read_cold", "sequential read, cold (MiB/s)", true),
    (
        "seq_read_cold_server",
        "sequential read, cold from the server (MiB/s)",
        true,
    ),
    ("seq_read_cached", "sequential read, cached (MiB/s)", true),
    ("rand_read_4k", "random 4 KiB reads, cached (reads/s)", true),
    ("small_create", "create the small files (s)", false),
    ("ls_cold", "`ls -l` of the small files, cold (s)", false),
    ("ls_warm", "`ls -l` of the small files, warm (s)", false),
    ("stat_all", "`stat` of every small file, warm (s)", false),
    ("create_1000", "write 1,000 × 1 KiB files (s)", false),
    ("ls_1000_warm", "`ls -l` of 1,000 files, warm (s)", false),
    ("untar", "untar a source tree (s)", false),
    (
        "upload_big",
        "jewelfs: big file closed → complete in the other mount (s)",
        false,
    ),
    (
        "upload_100m",
        "jewelfs: 100 MiB file closed → complete in the other mount (s)",
        false,
    ),
    (
        "upload_small",
        "jewelfs: small files created → all listed in the other mount (s)",
        false,
    ),
];

#[derive(Debug, Clone, Default, Serialize)]
pub struct FsResult {
    /// target → op → values of the runs.
    pub values: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
    pub tarball: String,
    pub tar_files: usize,
    pub tar_bytes: u64,
    pub bindfs: String,
    pub drop_caches: bool,
}

impl FsResult {
    fn put(&mut self, target: &str, op: &str, v: f64) {
        self.values
            .entry(target.into())
            .or_default()
            .entry(op.into())
            .or_default()
            .push(v);
    }
}

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn write_big(path: &Path, mib: u64, seed: u64) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut r = rng(seed);
    for chunk in buf.chunks_mut(8) {
        chunk.copy_from_slice(&r().to_le_bytes());
    }
    let start = Instant::now();
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..mib {
        // Every MiB differs (no dedup of blocks inside the file or across runs).
        buf[..8].copy_from_slice(&(seed ^ i).to_le_bytes());
        f.write_all(&buf).unwrap();
    }
    drop(f);
    mib as f64 / start.elapsed().as_secs_f64()
}

fn read_all(path: &Path) -> f64 {
    let start = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    super::env::mib(total) / start.elapsed().as_secs_f64()
}

fn random_reads(path: &Path, count: usize, seed: u64) -> f64 {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let blocks = len / 4096;
    let mut r = rng(seed);
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    for _ in 0..count {
        let off = (r() % blocks) * 4096;
        f.read_exact_at(&mut buf, off).unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn create_small(dir: &Path, count: usize, tag: &str) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = vec![b'x'; 1024];
    let start = Instant::now();
    for i in 0..count {
        let head = format!("{tag} {i}\n");
        data[..head.len()].copy_from_slice(head.as_bytes());
        std::fs::write(dir.join(format!("file-{i:05}.txt")), &data).unwrap();
    }
    start.elapsed().as_secs_f64()
}

fn timed_cmd(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let st = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run command");
    assert!(st.success(), "{cmd:?} failed");
    start.elapsed().as_secs_f64()
}

fn ls(dir: &Path) -> f64 {
    timed_cmd(Command::new("ls").arg("-l").arg(dir))
}

fn stat_all(dir: &Path, count: usize) -> f64 {
    let start = Instant::now();
    for i in 0..count {
        std::fs::symlink_metadata(dir.join(format!("file-{i:05}.txt"))).unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// A source tree as a tarball: the tokio crate from the local cargo registry (no download),
/// else this repository's tracked files.
pub fn make_tarball(work: &Path) -> (PathBuf, String, usize, u64) {
    let out = work.join("tree.tar");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(format!("{home}/.cargo/registry/src"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|reg| {
            std::fs::read_dir(reg.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tokio-1."))
        })
        .collect();
    candidates.sort();
    let (what, st) = if let Some(src) = candidates.last() {
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(src.parent().unwrap())
            .arg(&name)
            .status();
        (format!("{name} crate source (local cargo registry)"), st)
    } else {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && git ls-files -z | tar --null -T - -cf {}",
                repo.display(),
                out.display()
            ))
            .status();
        ("this repository's tracked files".to_string(), st)
    };
    assert!(st.is_ok_and(|s| s.success()), "could not make the tarball");
    let listing = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
    let files = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .count();
    let bytes = std::fs::metadata(&out).unwrap().len();
    (out, what, files, bytes)
}

enum Target<'a> {
    Native(PathBuf),
    Bindfs(PathBuf),
    Jewel(&'a FuseClient, &'a FuseClient),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Native(_) => "native",
            Target::Bindfs(_) => "bindfs",
            Target::Jewel(..) => "jewelfs",
        }
    }
    fn root(&self) -> PathBuf {
        match self {
            Target::Native(p) | Target::Bindfs(p) => p.clone(),
            Target::Jewel(a, _) => a.mnt.clone(),
        }
    }
    /// jewelfs: waits until the journal is empty (the status file is rewritten every
    /// 200 ms, so first let it catch up).
    fn settle(&self) {
        if let Target::Jewel(a, _) = self {
            std::thread::sleep(Duration::from_millis(450));
            a.wait_uploaded(Duration::from_secs(900));
        }
    }

    /// jewelfs: the time from `since` until `check` holds in the other mount.
    fn other_sees(
        &self,
        res: &mut FsResult,
        op: &str,
        since: Instant,
        check: impl Fn(&Path) -> bool,
    ) {
        if let Target::Jewel(_, b) = self {
            integration_tests::wait_for(op, Duration::from_secs(900), || {
                if check(&b.mnt) {
                    Some(())
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                }
            });
            res.put("jewelfs", op, since.elapsed().as_secs_f64());
        }
    }
}

pub struct Bindfs {
    pub mnt: PathBuf,
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount").arg("-u").arg(&self.mnt).status();
        if integration_tests::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

pub fn run_fs(server: &BenchServer, token: &str, work: &Path, s: FsSettings) -> FsResult {
    let mut res = FsResult::default();
    let (tar, what, files, bytes) = make_tarball(work);
    res.tarball = what;
    res.tar_files = files;
    res.tar_bytes = bytes;
    res.bindfs = super::env::sh("bindfs --version 2>&1 | head -1");
    let native = work.join("native");
    let bsrc = work.join("bindfs-src");
    let bmnt = work.join("bindfs-mnt");
    for d in [&native, &bsrc, &bmnt] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let st = Command::new("bindfs")
        .args(["-o", "big_writes"])
        .arg(&bsrc)
        .arg(&bmnt)
        .status()
        .expect("bindfs (make bench installs Debian's bindfs)");
    assert!(st.success(), "bindfs -o big_writes failed");
    let _bindfs = Bindfs { mnt: bmnt.clone() };
    let a = FuseClient::mount(&work.join("jewel-a"), &server.url, token, "fs-a");
    let b = FuseClient::mount(&work.join("jewel-b"), &server.url, token, "fs-b");
    res.drop_caches = drop_caches();
    let targets = [
        Target::Native(native.clone()),
        Target::Bindfs(bmnt.clone()),
        Target::Jewel(&a, &b),
    ];
    for r in 0..s.runs {
        for t in &targets {
            let name = t.name();
            progress(&format!("fs run {}/{}: {name}", r + 1, s.runs));
            let dir = t.root().join(format!("fs-r{r}"));
            std::fs::create_dir_all(&dir).unwrap();
            t.settle();
            let big = dir.join("big.bin");
            let seed = 0x5eed_0000 + r as u64 * 7 + name.len() as u64;
            res.put(name, "seq_write", write_big(&big, s.big_mib, seed));
            let closed = Instant::now();
            let want = s.big_mib << 20;
            let rel = format!("fs-r{r}/big.bin");
            t.other_sees(&mut res, "upload_big", closed, |m| {
                std::fs::metadata(m.join(&rel)).is_ok_and(|md| md.len() == want)
            });
            t.settle();
            if let Target::Jewel(..) = t {
                // Issue 3's measure: a 100 MiB file, closed → complete in the other mount.
                let mid = dir.join("mid.bin");
                write_big(&mid, 100, seed ^ 0x100);
                let closed = Instant::now();
                let rel = format!("fs-r{r}/mid.bin");
                t.other_sees(&mut res, "upload_100m", closed, |m| {
                    std::fs::metadata(m.join(&rel)).is_ok_and(|md| md.len() == 100 << 20)
                });
                std::fs::remove_file(&mid).unwrap();
                t.settle();
            }
            // Cached: read once to warm, then measure.
            read_all(&big);
            res.put(name, "seq_read_cached", read_all(&big));
            res.put(
                name,
                "rand_read_4k",
                random_reads(&big, s.random_reads, seed),
            );
            drop_caches();
            res.put(name, "seq_read_cold", read_all(&big));
            if let Target::Jewel(_, b) = t {
                let other = b.mnt.join(&rel);
                drop_caches();
                res.put(name, "seq_read_cold_server", read_all(&other));
            }
            std::fs::remove_file(&big).unwrap();
            t.settle();
            let small = dir.join("small");
            res.put(
                name,
                "small_create",
                create_small(&small, s.small_files, name),
            );
            let created = Instant::now();
            let (rel, count) = (format!("fs-r{r}/small"), s.small_files);
            t.other_sees(&mut res, "upload_small", created, |m| {
                std::fs::read_dir(m.join(&rel)).is_ok_and(|d| d.count() == count)
            });
            t.settle();
            drop_caches();
            res.put(name, "ls_cold", ls(&small));
            ls(&small);
            res.put(name, "ls_warm", ls(&small));
            res.put(name, "stat_all", stat_all(&small, s.small_files));
            let k = dir.join("k1");
            res.put(name, "create_1000", create_small(&k, 1000, name));
            ls(&k);
            res.put(name, "ls_1000_warm", ls(&k));
            t.settle();
            let u = dir.join("untar");
            std::fs::create_dir_all(&u).unwrap();
            res.put(
                name,
                "untar",
                timed_cmd(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&u)),
            );
            t.settle();
            // Clean up (jewelfs: deletes uploaded before the next target runs).
            let _ = std::fs::remove_dir_all(&dir);
            t.settle();
        }
    }
    drop(a);
    drop(b);
    res
}
