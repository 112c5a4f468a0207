//! The randomized two-machine convergence test: a seeded generator of file operations on two
//! real mounts of one user, with random outages of each client (SIGKILL, restart) and of the
//! server (SIGKILL, restart on the same data and port).
//!
//! At the end, once everything is back and quiet:
//! - **convergence**: both mounts and the service hold the same tree, byte for byte;
//! - **nothing lost**: every content that was written and closed is in the final tree (under
//!   its name, another name, or as a conflict copy) or in the trash — unless the same machine
//!   later destroyed it knowingly (overwrote, appended to, truncated or deleted the file while
//!   it showed exactly that content). A machine that overwrites a version it has not seen yet
//!   destroys nothing: that version must survive as a conflict copy.
//!
//! Operations: create, write (overwrite), append, truncate, rename, move, delete, mkdir,
//! rmdir, over a small pool of names so the two machines collide often. Each is done through
//! ordinary file calls on a mount; an operation the mount refuses (e.g. the file was removed
//! by the other side a moment ago) is logged and skipped.
//!
//! A failure prints its seed; `JEWEL_SEED=n` replays it (the operations replay exactly; the
//! timing of the sync between them cannot). `make test` runs the fixed seeds 1 and 2 of 60
//! operations each with server outages only (the seeds where client SIGKILLs found bugs are
//! in `seeds_that_found_client_bugs`, with `make soak`); `JEWEL_SOAK_SEEDS=n` runs n random
//! seeds of 300 operations with client kills too (`make soak`); `JEWEL_CONVERGENCE_OPS` sets
//! the length, `JEWEL_CLIENT_KILLS=0|1` the kind of outages.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::seeded::Rng;
use integration_tests::*;
use jewel_wire::*;
use reqwest::blocking::Client;
use serde_json::json;

const FILE_NAMES: &[&str] = &["a.txt", "b.txt", "c.md", "d", "notes.txt"];
const DIR_NAMES: &[&str] = &["x", "y", "z"];
const SETTLE: Duration = Duration::from_secs(90);
/// The seeds `make test` runs (60 operations each). `make soak` runs random seeds instead.
// Seed 2 was out for a while after it diverged once in CI (a mount missing `x/notes.txt`,
// which the service had, nothing lost). Cause: the laptop renamed a file not yet uploaded over
// `x/notes.txt` while the server was down, then deleted it; the remove cancelled the pending
// create and move, and with them the replacement, so the service kept the old `x/notes.txt`.
// Fixed in the core (the replaced node gets its own delete); back after 9 passes in a row.
const MAKE_TEST_SEEDS: &[u64] = &[1, 2];

/// A version of a file's content that was written and closed, and whether the machine that
/// wrote it still stands by it.
struct Version {
    content: Vec<u8>,
    what: String,
    superseded: bool,
}

struct Machine {
    name: &'static str,
    mount: Mount,
    up: bool,
}

struct Run {
    seed: u64,
    rng: Rng,
    server: Option<Server>,
    addr: String,
    token: String,
    machines: Vec<Machine>,
    versions: Vec<Version>,
    log: Vec<String>,
    tag: u64,
    /// The server's data while it is down.
    down_data: Option<tempfile::TempDir>,
    /// Whether outages include SIGKILLs of the clients (else only of the server).
    client_kills: bool,
}

/// Files and directories under `root` as seen through a mount (paths relative, '/'-joined).
fn local_tree(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    dirs.push(path.clone());
                    todo.push(path);
                }
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// Path → content (files) or `None` (directories), through a mount.
fn mount_snapshot(root: &Path) -> Option<BTreeMap<String, Option<Vec<u8>>>> {
    let (files, dirs) = local_tree(root);
    let mut out = BTreeMap::new();
    for d in dirs.into_iter().filter(|d| !d.is_empty()) {
        out.insert(d, None);
    }
    for f in files {
        out.insert(f.clone(), Some(fs::read(root.join(&f)).ok()?));
    }
    Some(out)
}

/// The service's view, through the API.
struct Remote {
    http: Client,
    base: String,
    token: String,
}

impl Remote {
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let mut req = self
            .http
            .request(method, format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().ok()
    }
    fn read(&self, node: &Node) -> Vec<u8> {
        if node.blocks.is_empty() {
            return Vec::new();
        }
        let urls: BlockUrls = serde_json::from_value(
            self.call(
                reqwest::Method::POST,
                "/blocks/urls",
                Some(json!({"hashes": node.blocks})),
            )
            .expect("block urls"),
        )
        .unwrap();
        let mut out = Vec::new();
        for u in urls.urls {
            let b = self
                .http
                .get(format!("{}{}", self.base, u.url))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert_eq!(sha256_hex(&b), u.hash);
            out.extend_from_slice(&b);
        }
        out
    }
    fn snapshot(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![(ROOT_ID, String::new())];
        while let Some((dir, rel)) = todo.pop() {
            let mut after: Option<String> = None;
            loop {
                let q = match &after {
                    Some(a) => format!("/nodes/{dir}/children?after={}", esc(a)),
                    None => format!("/nodes/{dir}/children"),
                };
                let page: ListPage = serde_json::from_value(
                    self.call(reqwest::Method::GET, &q, None).expect("list"),
                )
                .unwrap();
                for node in page.entries {
                    let path = if rel.is_empty() {
                        node.name.clone()
                    } else {
                        format!("{rel}/{}", node.name)
                    };
                    match node.kind {
                        NodeKind::Dir => {
                            out.insert(path.clone(), None);
                            todo.push((node.id, path));
                        }
                        NodeKind::File => {
                            out.insert(path, Some(self.read(&node)));
                        }
                        NodeKind::Symlink => {}
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        out
    }
    fn trash(&self) -> Vec<TrashEntry> {
        let page: TrashPage =
            serde_json::from_value(self.call(reqwest::Method::GET, "/trash", None).unwrap())
                .unwrap();
        page.entries
    }
}

fn esc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Run {
    fn note(&mut self, line: String) {
        self.log.push(line);
    }

    /// Content nobody wrote before: a tag, then some bytes.
    fn fresh(&mut self, m: usize) -> Vec<u8> {
        self.tag += 1;
        let mut out = format!(
            "<{} op{} seed{}>",
            self.machines[m].name, self.tag, self.seed
        )
        .into_bytes();
        let len = match self.rng.below(10) {
            0 => 0,
            1..=7 => self.rng.below(2000),
            8 => 20_000 + self.rng.below(50_000),
            _ => BLOCK_SIZE as usize + self.rng.below(100_000), // two blocks
        };
        let x = self.rng.next_u64();
        out.extend((0..len).map(|i| (x.wrapping_add(i as u64 * 31) % 251) as u8));
        out
    }

    /// Marks every live version with exactly this content as knowingly destroyed.
    fn supersede(&mut self, content: &[u8]) {
        for v in self.versions.iter_mut() {
            if v.content == content {
                v.superseded = true;
            }
        }
    }

    /// Records content that machine `m` just wrote and closed (an empty file proves
    /// nothing, so it is not recorded).
    fn record(&mut self, m: usize, path: &str, what: &str, content: Vec<u8>) {
        let what = format!("{} {what} {path} (op {})", self.machines[m].name, self.tag);
        if !content.is_empty() {
            self.versions.push(Version {
                content,
                what,
                superseded: false,
            });
        }
    }

    /// One random operation on machine `m`.
    fn step(&mut self, m: usize) {
        let root = self.machines[m].mount.path().to_path_buf();
        let (files, dirs) = local_tree(&root);
        let name = self.machines[m].name;
        let op = match self.rng.below(100) {
            0..=24 => "create",
            25..=39 => "write",
            40..=49 => "append",
            50..=54 => "truncate",
            55..=64 => "rename",
            65..=72 => "move",
            73..=82 => "delete",
            83..=92 => "mkdir",
            _ => "rmdir",
        };
        let file = self.rng.pick(&files).cloned();
        let op = match (op, &file) {
            ("write" | "append" | "truncate" | "rename" | "move" | "delete", None) => "create",
            _ => op,
        };
        let file = file.unwrap_or_default();
        let dir = self.rng.pick(&dirs).cloned().unwrap_or_default();
        let join = |d: &str, n: &str| {
            if d.is_empty() {
                n.to_string()
            } else {
                format!("{d}/{n}")
            }
        };
        match op {
            "create" => {
                let path = join(&dir, FILE_NAMES[self.rng.below(FILE_NAMES.len())]);
                let full = root.join(&path);
                if full.is_dir() {
                    return;
                }
                let old = if full.exists() {
                    match fs::read(&full) {
                        Ok(old) => Some(old),
                        Err(_) => return,
                    }
                } else {
                    None
                };
                let data = self.fresh(m);
                self.note(format!("{name}: create {path} ({} bytes)", data.len()));
                match fs::write(&full, &data) {
                    Ok(()) => {
                        if let Some(old) = old {
                            self.supersede(&old);
                        }
                        self.record(m, &path, "create", data);
                    }
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "write" => {
                let path = file;
                let full = root.join(&path);
                let Ok(old) = fs::read(&full) else { return };
                let data = self.fresh(m);
                self.note(format!("{name}: write {path} ({} bytes)", data.len()));
                match fs::write(&full, &data) {
                    Ok(()) => {
                        self.supersede(&old);
                        self.record(m, &path, "write", data);
                    }
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "append" => {
                let path = file;
                let full = root.join(&path);
                let Ok(old) = fs::read(&full) else { return };
                let data = self.fresh(m);
                self.note(format!("{name}: append {} bytes to {path}", data.len()));
                let res = fs::OpenOptions::new()
                    .append(true)
                    .open(&full)
                    .and_then(|mut f| f.write_all(&data));
                match res {
                    Ok(()) => {
                        self.supersede(&old);
                        let mut now = old;
                        now.extend_from_slice(&data);
                        self.record(m, &path, "append", now);
                    }
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "truncate" => {
                let path = file;
                let full = root.join(&path);
                let Ok(old) = fs::read(&full) else { return };
                let len = self.rng.below(old.len() + 1);
                self.note(format!("{name}: truncate {path} to {len}"));
                let res = fs::OpenOptions::new()
                    .write(true)
                    .open(&full)
                    .and_then(|f| f.set_len(len as u64));
                match res {
                    Ok(()) => {
                        self.supersede(&old);
                        self.record(m, &path, "truncate", old[..len].to_vec());
                    }
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "rename" | "move" => {
                // rename in place, or move to another directory
                let path = file;
                let parent = path
                    .rsplit_once('/')
                    .map(|p| p.0.to_string())
                    .unwrap_or_default();
                let to_dir = if op == "rename" { parent } else { dir.clone() };
                let to = join(&to_dir, FILE_NAMES[self.rng.below(FILE_NAMES.len())]);
                if to == path {
                    return;
                }
                let target = root.join(&to);
                if target.is_dir() {
                    return;
                }
                let old = if target.exists() {
                    match fs::read(&target) {
                        Ok(old) => Some(old),
                        Err(_) => return,
                    }
                } else {
                    None
                };
                self.note(format!("{name}: {op} {path} -> {to}"));
                match fs::rename(root.join(&path), &target) {
                    Ok(()) => {
                        if let Some(old) = old {
                            self.supersede(&old);
                        }
                    }
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "delete" => {
                let path = file;
                let full = root.join(&path);
                let Ok(old) = fs::read(&full) else { return };
                self.note(format!("{name}: delete {path}"));
                match fs::remove_file(&full) {
                    Ok(()) => self.supersede(&old),
                    Err(e) => self.note(format!("  refused: {e}")),
                }
            }
            "mkdir" => {
                if dir.matches('/').count() >= 1 {
                    return;
                }
                let path = join(&dir, DIR_NAMES[self.rng.below(DIR_NAMES.len())]);
                if root.join(&path).exists() {
                    return;
                }
                self.note(format!("{name}: mkdir {path}"));
                if let Err(e) = fs::create_dir(root.join(&path)) {
                    self.note(format!("  refused: {e}"));
                }
            }
            _ => {
                if dir.is_empty() {
                    return;
                }
                self.note(format!("{name}: rmdir {dir}"));
                if let Err(e) = fs::remove_dir(root.join(&dir)) {
                    self.note(format!("  refused: {e}"));
                }
            }
        }
    }

    fn outage(&mut self) {
        match self.rng.below(10) {
            // A client goes down (SIGKILL) or comes back.
            0..=5 if self.client_kills => {
                let m = self.rng.below(2);
                let machine = &mut self.machines[m];
                if machine.up {
                    machine.mount.kill();
                    machine.up = false;
                    self.log.push(format!("{}: KILLED", machine.name));
                } else {
                    machine.mount.start();
                    machine.up = true;
                    self.log.push(format!("{}: restarted", machine.name));
                }
            }
            // The server goes down or comes back.
            _ => {
                if let Some(server) = self.server.take() {
                    let data = server.kill();
                    self.log.push("server: KILLED".into());
                    // Keep the data folder for the restart.
                    self.down_data = Some(data);
                } else if let Some(data) = self.down_data.take() {
                    self.server = Some(Server::start_at(data, &self.addr));
                    self.log.push("server: restarted".into());
                }
            }
        }
    }
}

impl Run {
    fn start(seed: u64, client_kills: bool) -> Run {
        let server = Server::start();
        let token = server.add_user("converge");
        let addr = server.addr.clone();
        let machines = vec![
            Machine {
                name: "laptop",
                mount: Mount::new(&server, &token, "laptop"),
                up: true,
            },
            Machine {
                name: "desktop",
                mount: Mount::new(&server, &token, "desktop"),
                up: true,
            },
        ];
        Run {
            seed,
            rng: Rng::new(seed),
            server: Some(server),
            addr,
            token,
            machines,
            versions: Vec::new(),
            log: Vec::new(),
            tag: 0,
            down_data: None,
            client_kills,
        }
    }

    fn ops(&mut self, n: usize) {
        for _ in 0..n {
            if self.rng.chance(6) {
                self.outage();
            }
            let up: Vec<usize> = (0..2).filter(|m| self.machines[*m].up).collect();
            let Some(&m) = self.rng.pick(&up) else {
                continue;
            };
            self.step(m);
            let pause = if self.rng.chance(10) {
                300 + self.rng.below(1200)
            } else {
                self.rng.below(120)
            };
            std::thread::sleep(Duration::from_millis(pause as u64));
        }
    }

    fn remote(&self) -> Remote {
        Remote {
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://{}", self.addr),
            token: self.token.clone(),
        }
    }

    /// Everything back up; waits until both mounts have uploaded everything and both show
    /// what the service holds.
    fn settle(&mut self) -> Result<BTreeMap<String, Option<Vec<u8>>>, String> {
        if let Some(data) = self.down_data.take() {
            self.server = Some(Server::start_at(data, &self.addr));
            self.log.push("server: restarted (end)".into());
        }
        for machine in self.machines.iter_mut() {
            if !machine.up {
                machine.mount.start();
                machine.up = true;
                self.log.push(format!("{}: restarted (end)", machine.name));
            }
        }
        let remote = self.remote();
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < SETTLE {
            std::thread::sleep(Duration::from_millis(500));
            let pending: Vec<usize> = self
                .machines
                .iter()
                .map(|m| m.mount.status().pending_uploads)
                .collect();
            if pending.iter().any(|p| *p > 0) {
                last = format!("uploads still pending: {pending:?}");
                continue;
            }
            let server = remote.snapshot();
            let a = mount_snapshot(self.machines[0].mount.path());
            let b = mount_snapshot(self.machines[1].mount.path());
            if a.as_ref() == Some(&server) && b.as_ref() == Some(&server) {
                return Ok(server);
            }
            last = format!(
                "not converged:\n  service: {}\n  laptop:  {}\n  desktop: {}",
                describe(Some(&server)),
                describe(a.as_ref()),
                describe(b.as_ref())
            );
        }
        Err(format!("no convergence after {SETTLE:?}: {last}"))
    }

    /// Every content the service still holds: the tree, and the trash (restored for the
    /// purpose, after the convergence check).
    fn everything_kept(&self, tree: &BTreeMap<String, Option<Vec<u8>>>) -> BTreeSet<Vec<u8>> {
        let remote = self.remote();
        let mut kept: BTreeSet<Vec<u8>> = tree.values().flatten().cloned().collect();
        for _ in 0..5 {
            let trash = remote.trash();
            if trash.is_empty() {
                break;
            }
            let mut restored = 0;
            for entry in trash {
                if remote
                    .call(
                        reqwest::Method::POST,
                        &format!("/trash/{}/restore", entry.node.id),
                        Some(json!({})),
                    )
                    .is_some()
                {
                    restored += 1;
                }
            }
            if restored == 0 {
                break;
            }
        }
        kept.extend(remote.snapshot().into_values().flatten());
        kept
    }

    fn check(&mut self) -> Result<(), String> {
        // Without convergence the loss check still runs, on what the service holds.
        let (tree, diverged) = match self.settle() {
            Ok(tree) => (tree, None),
            Err(why) => (self.remote().snapshot(), Some(why)),
        };
        let kept = self.everything_kept(&tree);
        let lost: Vec<&Version> = self
            .versions
            .iter()
            .filter(|v| !v.superseded && !kept.contains(&v.content))
            .collect();
        if lost.is_empty() {
            return match diverged {
                None => Ok(()),
                Some(why) => Err(format!("{why}\n(no closed version was lost)")),
            };
        }
        Err(format!(
            "{}{} closed version(s) are neither in the tree, a conflict copy nor the trash:\n{}",
            diverged.map(|d| d + "\n").unwrap_or_default(),
            lost.len(),
            lost.iter()
                .map(|v| format!(
                    "  - {} ({} bytes, starts {:?})",
                    v.what,
                    v.content.len(),
                    String::from_utf8_lossy(&v.content[..v.content.len().min(40)])
                ))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

fn describe(tree: Option<&BTreeMap<String, Option<Vec<u8>>>>) -> String {
    match tree {
        None => "(unreadable)".into(),
        Some(t) => t
            .iter()
            .map(|(p, c)| match c {
                None => format!("{p}/"),
                Some(c) => format!("{p}[{}:{}]", c.len(), &sha256_hex(c)[..6]),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Runs one seed; on failure returns everything needed to understand it.
fn run_seed(seed: u64, ops: usize, client_kills: bool) -> Result<(), String> {
    let kills = client_kills as u8;
    eprintln!(
        "convergence: seed {seed}, {ops} operations, client kills {} (replay with \
         JEWEL_SEED={seed} JEWEL_CONVERGENCE_OPS={ops} JEWEL_CLIENT_KILLS={kills})",
        if client_kills { "on" } else { "off" }
    );
    let mut run = Run::start(seed, client_kills);
    run.ops(ops);
    if let Err(why) = run.check() {
        let logs: Vec<String> = run
            .machines
            .iter()
            .map(|m| {
                let log = m.mount.log();
                if let Ok(dir) = std::env::var("JEWEL_KEEP_LOGS") {
                    let _ = fs::write(format!("{dir}/{seed}-{}.log", m.name), &log);
                }
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- {} client log (last lines) ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect();
        eprintln!("convergence: seed {seed} FAILED");
        return Err(format!(
            "convergence failed for seed {seed} (replay: JEWEL_SEED={seed} \
             JEWEL_CONVERGENCE_OPS={ops} JEWEL_CLIENT_KILLS={kills} cargo test -p \
             integration-tests --test convergence)\n\
             {why}\n--- operations ---\n{}\n{}",
            run.log.join("\n"),
            logs.join("\n")
        ));
    }
    eprintln!(
        "convergence: seed {seed} ok ({} versions written, {} knowingly destroyed, {} outages)",
        run.versions.len(),
        run.versions.iter().filter(|v| v.superseded).count(),
        run.log.iter().filter(|l| l.ends_with("KILLED")).count()
    );
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs the seeds and reports every failure together.
fn run_all(runs: &[(u64, usize, bool)]) {
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|(seed, ops, kills)| run_seed(*seed, *ops, *kills).err())
        .collect();
    if !failures.is_empty() {
        let seeds: Vec<&str> = failures
            .iter()
            .filter_map(|f| f.split_whitespace().nth(4))
            .collect();
        panic!(
            "{} of {} seeds failed ({}):\n\n{}",
            failures.len(),
            runs.len(),
            seeds.join(", "),
            failures.join("\n\n")
        );
    }
}

/// `make test`: fixed seeds with server outages; `JEWEL_SEED` replays one seed,
/// `JEWEL_SOAK_SEEDS=n` runs n random seeds (`make soak`), both with client kills too unless
/// `JEWEL_CLIENT_KILLS=0`.
#[test]
fn two_machines_with_outages_converge_and_lose_nothing() {
    let ops = env_u64("JEWEL_CONVERGENCE_OPS").map(|n| n as usize);
    let kills = env_u64("JEWEL_CLIENT_KILLS").map(|k| k != 0);
    let fresh = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007
    };
    let runs: Vec<(u64, usize, bool)> = if let Some(seed) = env_u64("JEWEL_SEED") {
        vec![(seed, ops.unwrap_or(60), kills.unwrap_or(true))]
    } else if let Some(n) = env_u64("JEWEL_SOAK_SEEDS") {
        (0..n)
            .map(|_| (fresh(), ops.unwrap_or(300), kills.unwrap_or(true)))
            .collect()
    } else {
        // Short fixed seeds with server outages; the longer seeds with client kills that
        // found bugs are in `seeds_that_found_client_bugs` (`make soak`).
        MAKE_TEST_SEEDS
            .iter()
            .map(|s| (*s, ops.unwrap_or(60), kills.unwrap_or(false)))
            .collect()
    };
    run_all(&runs);
}

/// Seeds that found client bugs with client SIGKILLs (2026-11-25); timing-dependent, so each
/// failed often but not always. All pass now (see below); they stay out of `make test` for
/// their length (~85 s), and `make soak` runs them (`cargo test -p integration-tests --test
/// convergence -- --ignored`).
///
/// After the core's convergence fixes (branch `core`, same day), one run: 3 with client
/// kills and 562112594 passed; 3 without kills lost the desktop's 19-byte `c.md` written
/// while the server was down (still a loss), and 215556163 still ended with the restarted
/// desktop showing only `d` (its creates right after the restart got `EIO`), never
/// converging. Later the same day all four passed three runs in a row, after: the tree is
/// saved for offline starts about a second after it changes (the desktop, killed within 10 s
/// of mounting, restarted offline with no tree), cursor 0 counts as a position, and the
/// listing and move fixes of the core's model test. Seed 3 without kills passed 28 runs in
/// a row (its loss was seen once in 3 runs before those fixes, not traced). They stay here,
/// with `make soak`, until they have passed there for a while.
/// - 6780351 (300 ops), found by that soak: failed 2 of its first 6 replays. Once the
///   desktop's truncated `b.txt` (written and closed while the server was down, then renamed
///   over `a.txt`, then the desktop SIGKILLed and restarted) was nowhere afterwards (data
///   loss); once the laptop kept a file at `x/y/d` that the service has at the top as `d`
///   (made and moved there while the server was down, the laptop killed after), never
///   converging. Not traced yet; debug logging hides both. A third replay (with the
///   uploader's debug log) showed the truncated version *was* uploaded (`a.txt`'s version
///   3, folded into `a.txt` by the rename, as editors' atomic saves are) and then
///   overwritten by the restarted desktop's own next write on that base — while the test's
///   read of `a.txt` on the desktop just before did not show it. So the content is in the
///   file's earlier versions on the service; what is wrong is what the restarted desktop
///   showed, offline, between its restart and that write. A fourth lost `d`'s appended
///   version the same way, early in the run. Cause found and fixed: the rename of the new
///   file over `a.txt` was folded into a content change queued *before* `a.txt`'s own
///   pending append, which then went up over it (unit test
///   `a_new_file_renamed_over_a_file_changed_offline_wins`); after the fix the loss did not
///   recur in 8 replays. The divergence did once in those 8: the laptop's log says "the
///   folder of a new file is gone: kept at the top" — at upload, the new file's folder
///   (`x/y`, made just before the server went down) still had only its local id. Cause
///   found and fixed: the file's create (made before that folder) was rewritten to name the
///   folder, so it went up before the folder existed (unit test
///   `a_new_file_moved_into_a_newer_folder_arrives_there`); then 8 replays in a row passed,
///   and 8 new random soak seeds (300 operations with kills).
/// - 3 (60 ops) without client kills, only server outages: after the server's restarts the
///   laptop misses `y/c.md` and `y/d`, which the service and the desktop have; nothing
///   pending, never converges (a change lost by the listener across a server restart).
/// - 3 (60 ops) with client kills: a version the desktop wrote and closed just before its SIGKILL, while the
///   laptop renamed, edited and deleted the file, is nowhere afterwards: not in the tree, not
///   as a conflict copy, not in the trash (data loss).
/// - 215556163 (80 ops): after restarts the desktop shows a conflict copy and misses a file
///   that the service has, with nothing pending: it never converges.
/// - 562112594 (120 ops): the laptop, restarted after a SIGKILL, shows `a.txt` that it had
///   deleted before the kill (and `notes.txt`), which the service does not have; nothing
///   pending, never converges.
#[test]
#[ignore = "long (~85 s): make soak runs it; see the doc comment"]
fn seeds_that_found_client_bugs() {
    run_all(&[
        (3, 60, false),
        (3, 60, true),
        (215556163, 80, true),
        (562112594, 120, true),
        (6780351, 300, true),
    ]);
}
