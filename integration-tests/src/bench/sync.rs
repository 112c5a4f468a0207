//! The original experiments: many users, each with two synchronized folders.
//!
//! - **independent**: N users; user i has two clients A_i and B_i. A_i creates 100 files of
//!   1 KiB in a fresh folder; the creation time is until every B_i lists all 100. Then A_i
//!   deletes them; the deletion time is until no B_i lists any.
//! - **dependent**: N clients of *one* user, files in one shared folder, each client's in a
//!   subfolder of its own. Client k writes 100 files into `c{k}/`, and client k+1 (mod the
//!   client count) waits for them there (N = 1 uses two clients: one writes, one watches).
//!   Every client sees every subfolder; it hears the changes in those it has listed (its
//!   own, and the one it watches), as a drive user hears the folders they have open. (The
//!   original experiment put every file in the one folder, so that every client received
//!   every change: 100 × N² files at N clients, which a drive that lists folders on demand
//!   need not do. Before 2026-12-03 the bench did the same: `c{k}-…` files side by side.)
//!
//! A reported time is from the common start until the *last* user is done (the per-user
//! median is reported too). N ≤ `fuse_max` runs real `jewelfs` FUSE mounts (one process per
//! client, files written and listed through the kernel); above that every client is the
//! same sync core (`jewelfs::core::Core`: tree cache, journal, uploader, long-poll
//! listener) without FUSE, thousands in this one process, driven by calling the core where
//! the FUSE adapter would (create_file / write / release, remove) and checking the core's
//! tree where the kernel would look.
//!
//! Request time: every request the service handled during the two phases, from its log
//! (handler time, server side), long-polls excluded; for core clients also as the clients
//! saw it (a timing wrapper around their `Api`, so it includes the network and queueing).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use jewel_wire::*;
use jewelfs::core::api::{Api, ApiResult, HttpApi};
use jewelfs::core::{Config, Core};
use serde::Serialize;

use super::env::{progress, BenchServer, FuseClient, RssSampler};
use super::stats::{pct, sorted};

pub const FILES: usize = 100;
pub const FILE_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Independent,
    Dependent,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Independent => "independent",
            Mode::Dependent => "dependent",
        }
    }
}

/// One run of one experiment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncRun {
    /// Until the last user's files all arrived (s); NaN when not finished.
    pub create_s: f64,
    pub delete_s: f64,
    pub create_user_median_s: f64,
    pub delete_user_median_s: f64,
    /// Users done within the deadline (creation, deletion).
    pub create_done: usize,
    pub delete_done: usize,
    /// Server-side request time (ms), polls excluded.
    pub server_p50_ms: f64,
    pub server_p99_ms: f64,
    /// Client-side request time (ms), core clients only.
    pub client_p50_ms: f64,
    pub client_p99_ms: f64,
    /// Requests (polls excluded) per synced file, over create + delete.
    pub requests_per_file: f64,
    pub polls: usize,
    pub requests: usize,
    /// Answers with status ≥ 500 (polls included).
    pub errors: usize,
    /// CPU seconds used during both phases by the server and by all the clients.
    pub server_cpu_s: f64,
    pub clients_cpu_s: f64,
    /// Wall seconds of both phases.
    pub wall_s: f64,
    /// CPU seconds of the whole machine (every process, other work too) during both phases.
    pub machine_cpu_s: f64,
    /// Seconds in which some task waited for the disk (PSI), during both phases.
    pub io_stall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncResult {
    pub mode: Mode,
    pub n: usize,
    pub fuse: bool,
    pub clients: usize,
    pub runs: Vec<SyncRun>,
    pub server_rss_idle: u64,
    pub server_rss_peak: u64,
    /// FUSE: mean RSS of one client process after the runs; core: this process's RSS growth
    /// per client.
    pub client_rss: u64,
    pub client_rss_idle: u64,
    pub note: String,
}

fn content(tag: &str, j: usize) -> Vec<u8> {
    let head = format!("{tag} file {j}\n");
    let mut v = head.into_bytes();
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ (j as u64);
    while v.len() < FILE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Who writes and who watches: the client count, and per user (writer client, watcher
/// client, the subfolder of the run folder they share, empty for the run folder itself).
fn plan(mode: Mode, n: usize) -> (usize, Vec<(usize, usize, String)>) {
    match mode {
        Mode::Independent => (
            2 * n,
            (0..n).map(|i| (2 * i, 2 * i + 1, String::new())).collect(),
        ),
        Mode::Dependent => {
            let m = n.max(2);
            (
                m,
                (0..n).map(|k| (k, (k + 1) % m, format!("c{k}"))).collect(),
            )
        }
    }
}

/// The name of a user's `j`th file.
fn file_name(j: usize) -> String {
    format!("f{j:03}")
}

fn token_of(mode: Mode, client: usize) -> usize {
    match mode {
        Mode::Independent => client / 2,
        Mode::Dependent => 0,
    }
}

fn request_stats(server: &BenchServer, from: u64, to: u64, run: &mut SyncRun, files: usize) {
    let reqs = server.requests(from, to);
    let polls = reqs.iter().filter(|r| r.is_poll()).count();
    let ms = sorted(reqs.iter().filter(|r| !r.is_poll()).map(|r| r.ms).collect());
    run.server_p50_ms = pct(&ms, 0.5);
    run.server_p99_ms = pct(&ms, 0.99);
    run.requests = ms.len();
    run.polls = polls;
    run.errors = reqs.iter().filter(|r| r.status >= 500).count();
    run.requests_per_file = ms.len() as f64 / files.max(1) as f64;
}

fn finish_phase(times: &[Option<f64>], n: usize) -> (f64, f64, usize) {
    let done: Vec<f64> = times.iter().flatten().copied().collect();
    let all = if done.len() == n {
        done.iter().copied().fold(0.0, f64::max)
    } else {
        f64::NAN
    };
    let med = pct(&sorted(done.clone()), 0.5);
    (all, med, done.len())
}

// ------------------------------------------------------------------------------ FUSE

pub fn run_fuse(
    server: &BenchServer,
    tokens: &[String],
    mode: Mode,
    n: usize,
    runs: usize,
    deadline: Duration,
    root: &Path,
) -> SyncResult {
    let (count, pairs) = plan(mode, n);
    progress(&format!(
        "{} N={n}: mounting {count} jewelfs FUSE clients",
        mode.name()
    ));
    let clients: Vec<FuseClient> = (0..count)
        .map(|c| {
            FuseClient::mount(
                &root.join(format!("fuse-{}-{n}-{c}", mode.name())),
                &server.url,
                &tokens[token_of(mode, c)],
                &format!("bench-{c}"),
            )
        })
        .collect();
    let client_rss_idle = clients.iter().map(|c| c.rss()).sum::<u64>() / count as u64;
    let server_rss_idle = server.rss();
    let sampler = RssSampler::start(server.pid());
    let mut out = Vec::new();
    let mut note = String::new();
    for r in 0..runs {
        let dir = format!("{}-n{n}-r{r}", mode.name());
        // Set-up: the run's folder exists on every client.
        let creators: Vec<usize> = match mode {
            Mode::Independent => pairs.iter().map(|p| p.0).collect(),
            Mode::Dependent => vec![0],
        };
        for &c in &creators {
            std::fs::create_dir(clients[c].mnt.join(&dir)).unwrap();
            for (_, _, sub) in pairs.iter().filter(|p| !p.2.is_empty()) {
                std::fs::create_dir(clients[c].mnt.join(&dir).join(sub)).unwrap();
            }
        }
        for c in &clients {
            let p = c.mnt.join(&dir);
            integration_tests::wait_for("the run folder on every client", deadline, || {
                p.is_dir().then_some(())
            });
        }
        for (w, v, sub) in &pairs {
            for c in [w, v] {
                let p = clients[*c].mnt.join(&dir).join(sub);
                integration_tests::wait_for("a user's folder on its clients", deadline, || {
                    p.is_dir().then_some(())
                });
            }
        }
        for &c in &creators {
            clients[c].wait_uploaded(deadline);
        }
        let mark = server.mark();
        let mut run = SyncRun {
            create_s: f64::NAN,
            delete_s: f64::NAN,
            create_user_median_s: f64::NAN,
            delete_user_median_s: f64::NAN,
            ..Default::default()
        };
        let cpu0 = (
            super::env::cpu_s(server.pid()),
            clients
                .iter()
                .map(|c| super::env::cpu_s(c.pid()))
                .sum::<f64>(),
            Instant::now(),
            super::env::machine_busy_s(),
            super::env::io_stall_s(),
        );
        for phase in ["create", "delete"] {
            let start = Instant::now();
            let phase_done = std::sync::atomic::AtomicBool::new(false);
            let hung = std::sync::atomic::AtomicBool::new(false);
            let pids: Vec<u32> = clients.iter().map(|c| c.pid()).collect();
            let times: Vec<Option<f64>> = std::thread::scope(|s| {
                // Watchdog: a FUSE call that never returns would hang the bench; past the
                // deadline the clients are killed, which fails the blocked calls.
                s.spawn(|| {
                    while !phase_done.load(Ordering::Relaxed) {
                        if start.elapsed() > deadline + Duration::from_secs(30) {
                            hung.store(true, Ordering::Relaxed);
                            for p in &pids {
                                let _ = std::process::Command::new("kill")
                                    .args(["-9", &p.to_string()])
                                    .status();
                            }
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
                let handles: Vec<_> = pairs
                    .iter()
                    .enumerate()
                    .map(|(u, (w, v, sub))| {
                        let wdir = clients[*w].mnt.join(&dir).join(sub);
                        let vdir = clients[*v].mnt.join(&dir).join(sub);
                        let tag = format!("{dir}-{u}");
                        s.spawn(move || {
                            for j in 0..FILES {
                                let p = wdir.join(file_name(j));
                                let r = if phase == "create" {
                                    std::fs::write(&p, content(&tag, j))
                                } else {
                                    std::fs::remove_file(&p)
                                };
                                if let Err(e) = r {
                                    eprintln!("  (bench) {phase} {}: {e}", p.display());
                                    return None;
                                }
                            }
                            let mut next = 0;
                            loop {
                                while next < FILES {
                                    let p = vdir.join(file_name(next));
                                    let there = std::fs::symlink_metadata(&p).is_ok();
                                    if there == (phase == "create") {
                                        next += 1;
                                    } else {
                                        break;
                                    }
                                }
                                if next == FILES {
                                    return Some(start.elapsed().as_secs_f64());
                                }
                                if start.elapsed() > deadline {
                                    return None;
                                }
                                std::thread::sleep(Duration::from_millis(2));
                            }
                        })
                    })
                    .collect();
                let t = handles
                    .into_iter()
                    .map(|h| h.join().ok().flatten())
                    .collect();
                phase_done.store(true, Ordering::Relaxed);
                t
            });
            if hung.load(Ordering::Relaxed) {
                note = format!(
                    "run {}: a FUSE call hung past the deadline; clients killed",
                    r + 1
                );
            }
            let (all, med, done) = finish_phase(&times, n);
            if phase == "create" {
                (run.create_s, run.create_user_median_s, run.create_done) = (all, med, done);
            } else {
                (run.delete_s, run.delete_user_median_s, run.delete_done) = (all, med, done);
            }
            progress(&format!(
                "{} N={n} run {}: {phase} {:.3} s ({done}/{n} users)",
                mode.name(),
                r + 1,
                all
            ));
            if done < n {
                if note.is_empty() {
                    note = format!(
                        "run {}: {phase} not finished by all users within {} s ({done}/{n} done)",
                        r + 1,
                        deadline.as_secs()
                    );
                }
                break;
            }
        }
        run.server_cpu_s = super::env::cpu_s(server.pid()) - cpu0.0;
        run.clients_cpu_s = clients
            .iter()
            .map(|c| super::env::cpu_s(c.pid()))
            .sum::<f64>()
            - cpu0.1;
        run.wall_s = cpu0.2.elapsed().as_secs_f64();
        run.machine_cpu_s = super::env::machine_busy_s() - cpu0.3;
        run.io_stall_s = super::env::io_stall_s() - cpu0.4;
        let end = server.mark();
        request_stats(server, mark, end, &mut run, n * FILES);
        run.client_p50_ms = f64::NAN;
        run.client_p99_ms = f64::NAN;
        let unfinished = run.delete_done < n;
        out.push(run);
        if unfinished {
            break;
        }
    }
    let server_rss_peak = sampler.stop();
    let client_rss = clients.iter().map(|c| c.rss()).sum::<u64>() / count as u64;
    drop(clients);
    SyncResult {
        mode,
        n,
        fuse: true,
        clients: count,
        runs: out,
        server_rss_idle,
        server_rss_peak,
        client_rss,
        client_rss_idle,
        note,
    }
}

// ------------------------------------------------------------------------------ core

/// The client's HTTP API with every request timed (long-polls excluded).
pub struct TimedApi {
    inner: HttpApi,
    samples: Arc<Mutex<Vec<f64>>>,
}

impl TimedApi {
    async fn t<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let r = f.await;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        self.samples.lock().unwrap().push(ms);
        r
    }
}

#[async_trait]
impl Api for TimedApi {
    async fn me(&self) -> ApiResult<Me> {
        self.t(self.inner.me()).await
    }
    async fn get_node(&self, id: NodeId) -> ApiResult<Node> {
        self.t(self.inner.get_node(id)).await
    }
    async fn list_children(&self, id: NodeId, after: Option<String>) -> ApiResult<ListPage> {
        self.t(self.inner.list_children(id, after)).await
    }
    async fn create(&self, req: &CreateNode) -> ApiResult<Node> {
        self.t(self.inner.create(req)).await
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        self.t(self.inner.commit(id, req)).await
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        self.t(self.inner.move_node(id, req)).await
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.t(self.inner.set_attr(id, req)).await
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        self.t(self.inner.delete(id, base_version, recursive)).await
    }
    async fn register_device(&self, name: &str) -> ApiResult<Device> {
        self.t(self.inner.register_device(name)).await
    }
    async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
        self.t(self.inner.renew_listen(device)).await
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        self.t(self.inner.changes(since, limit)).await
    }
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage> {
        self.inner.poll(device, since, timeout_ms).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        self.t(self.inner.missing_blocks(hashes)).await
    }
    async fn batch(&self, batch: &Batch) -> ApiResult<BatchAnswer> {
        self.t(self.inner.batch(batch)).await
    }
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
        self.t(self.inner.block_urls(hashes)).await
    }
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()> {
        self.t(self.inner.put_block(url, bytes)).await
    }
    async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
        self.t(self.inner.get_block(url)).await
    }
    fn set_device(&self, id: DeviceId) {
        self.inner.set_device(id)
    }
}

struct CoreClient {
    core: Arc<Core>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: PathBuf,
}

async fn open_core(
    url: &str,
    token: &str,
    dir: PathBuf,
    device: String,
    samples: Arc<Mutex<Vec<f64>>>,
) -> CoreClient {
    let _ = std::fs::remove_dir_all(&dir);
    let api = Arc::new(TimedApi {
        inner: HttpApi::new(url, token).unwrap(),
        samples,
    });
    let core = Core::open(Config::new(dir.clone(), device), api.clone()).unwrap();
    let mut tries = 0;
    loop {
        match core.connect().await {
            Ok(_) => break,
            Err(e) if tries < 20 => {
                tries += 1;
                tracing_warn(&format!("connect: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("core client could not connect: {e}"),
        }
    }
    if let Ok(root) = api.get_node(ROOT_ID).await {
        core.tree.put(root);
    }
    core.readdir(ROOT_ID).await.unwrap();
    let tasks = vec![
        tokio::spawn(core.clone().run_uploader()),
        tokio::spawn(core.clone().run_listener()),
    ];
    CoreClient {
        core,
        _tasks: tasks,
        _dir: dir,
    }
}

fn tracing_warn(msg: &str) {
    eprintln!("  (bench) {msg}");
}

/// Waits until `core` knows `name` in the root; its id there (with a listing cached).
async fn core_dir(core: &Core, parent: NodeId, name: &str, deadline: Duration) -> Option<NodeId> {
    let start = Instant::now();
    loop {
        if let Some(Ok(node)) = core.lookup_cached(parent, name) {
            if core.readdir(node.id).await.is_ok() {
                return Some(node.id);
            }
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Clients per worker process: each sync core keeps the content of every file it has not
/// uploaded yet open, and this machine's open-file limit (20,000, not raisable here) must
/// hold them all.
const CLIENTS_PER_WORKER: usize = 150;

/// What one worker process hosts.
#[derive(Serialize, serde::Deserialize)]
pub struct WorkerSpec {
    pub url: String,
    pub tokens: Vec<String>,
    pub mode: String,
    pub n: usize,
    pub clients: Vec<usize>,
    pub base: PathBuf,
    pub deadline_s: u64,
}

fn mode_of(name: &str) -> Mode {
    if name == "dependent" {
        Mode::Dependent
    } else {
        Mode::Independent
    }
}

/// `bench --worker SPEC.json`: hosts some sync-core clients and obeys line commands on
/// stdin (`mkdir DIR`, `find DIR`, `phase create|delete DIR`, `samples FILE`, `quit`),
/// answering on stdout (`ok`, `fail`, `t USER SECONDS|none`, `end`).
pub fn worker_main(spec_path: &str) {
    use std::io::BufRead;
    let spec: WorkerSpec =
        serde_json::from_slice(&std::fs::read(spec_path).expect("worker spec")).unwrap();
    let mode = mode_of(&spec.mode);
    let deadline = Duration::from_secs(spec.deadline_s);
    let (_count, pairs) = plan(mode, spec.n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let hosted: std::collections::HashMap<usize, Arc<CoreClient>> = rt.block_on(async {
        let handles: Vec<_> = spec
            .clients
            .iter()
            .map(|&c| {
                let (url, token) = (spec.url.clone(), spec.tokens[token_of(mode, c)].clone());
                let dir = spec.base.join(c.to_string());
                let s = samples.clone();
                tokio::spawn(async move {
                    (
                        c,
                        Arc::new(open_core(&url, &token, dir, format!("core-{c}"), s).await),
                    )
                })
            })
            .collect();
        let mut m = std::collections::HashMap::new();
        for h in handles {
            let (c, cl) = h.await.unwrap();
            m.insert(c, cl);
        }
        m
    });
    fn say(line: String) {
        use std::io::Write;
        let out = std::io::stdout();
        let mut o = out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }
    say("ok".into());
    let creators: Vec<usize> = match mode {
        Mode::Independent => pairs.iter().map(|p| p.0).collect(),
        Mode::Dependent => vec![0],
    };
    let mut dir_ids: std::collections::HashMap<usize, NodeId> = Default::default();
    // Per (client, user): the folder where that user's files are written or watched.
    let mut user_dirs: std::collections::HashMap<(usize, usize), NodeId> = Default::default();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["mkdir", dir] => {
                dir_ids.clear();
                user_dirs.clear();
                rt.block_on(async {
                    for &c in creators.iter().filter(|c| hosted.contains_key(c)) {
                        let core = &hosted[&c].core;
                        let node = core.mkdir(ROOT_ID, dir, 0o755).await.unwrap();
                        dir_ids.insert(c, node.id);
                        for (_, _, sub) in pairs.iter().filter(|p| !p.2.is_empty()) {
                            core.mkdir(node.id, sub, 0o755).await.unwrap();
                        }
                    }
                    for &c in creators.iter().filter(|c| hosted.contains_key(c)) {
                        hosted[&c].core.drain(deadline).await;
                    }
                });
                say("ok".into());
            }
            ["find", dir] => {
                let found = rt.block_on(async {
                    let handles: Vec<_> = hosted
                        .iter()
                        .map(|(&c, cl)| {
                            let (cl, d) = (cl.clone(), dir.to_string());
                            let known = dir_ids.get(&c).copied();
                            // The users this client writes or watches for, and where.
                            let mine: Vec<(usize, String)> = pairs
                                .iter()
                                .enumerate()
                                .filter(|(_, (w, v, _))| *w == c || *v == c)
                                .map(|(u, (_, _, sub))| (u, sub.clone()))
                                .collect();
                            tokio::spawn(async move {
                                let core = &cl.core;
                                let Some(top) = (match known {
                                    Some(id) => Some(id),
                                    None => core_dir(core, ROOT_ID, &d, deadline).await,
                                }) else {
                                    return (c, None);
                                };
                                let mut found = Vec::new();
                                for (u, sub) in mine {
                                    let id = if sub.is_empty() {
                                        top
                                    } else {
                                        match core_dir(core, top, &sub, deadline).await {
                                            Some(id) => id,
                                            None => return (c, None),
                                        }
                                    };
                                    found.push((u, id));
                                }
                                (c, Some((top, found)))
                            })
                        })
                        .collect();
                    let mut ok = true;
                    for h in handles {
                        match h.await.unwrap() {
                            (c, Some((top, found))) => {
                                dir_ids.insert(c, top);
                                for (u, id) in found {
                                    user_dirs.insert((c, u), id);
                                }
                            }
                            _ => ok = false,
                        }
                    }
                    ok
                });
                say(if found { "ok" } else { "fail" }.into());
            }
            ["phase", phase, dir] => {
                let phase: &'static str = if *phase == "create" {
                    "create"
                } else {
                    "delete"
                };
                let start = Instant::now();
                // How often a watcher looks in its client's tree: every 5 ms while few watch
                // here, less often when many do, so that looking (the bench's own cost) stays
                // near a thousand lookups a second per worker and does not take the CPU the
                // clients measured need (at 150 watchers, 5 ms was a fifth of a worker's CPU).
                let watchers = pairs
                    .iter()
                    .filter(|(_, v, _)| hosted.contains_key(v))
                    .count();
                let look_every = Duration::from_millis(5 * (watchers as u64 / 5).max(1))
                    .min(Duration::from_millis(100));
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for (u, (w, v, _)) in pairs.iter().enumerate() {
                        if let Some(wc) = hosted.get(w) {
                            let (wc, wdir) = (wc.clone(), user_dirs[&(*w, u)]);
                            let tag = format!("{dir}-{u}");
                            tasks.push(tokio::spawn(async move {
                                for j in 0..FILES {
                                    let name = file_name(j);
                                    let r = if phase == "create" {
                                        match wc.core.create_file(wdir, &name, 0o644).await {
                                            Ok(node) => {
                                                let core = wc.core.clone();
                                                let data = content(&tag, j);
                                                tokio::task::spawn_blocking(move || {
                                                    core.write(node.id, 0, &data)?;
                                                    core.release(node.id, true)
                                                })
                                                .await
                                                .unwrap()
                                            }
                                            Err(e) => Err(e),
                                        }
                                    } else {
                                        wc.core.remove(wdir, &name, false).await
                                    };
                                    if let Err(e) = r {
                                        eprintln!("  (bench worker) {phase} {name}: {e}");
                                        return;
                                    }
                                }
                            }));
                        }
                        if let Some(vc) = hosted.get(v) {
                            let (vc, vdir) = (vc.clone(), user_dirs[&(*v, u)]);
                            tasks.push(tokio::spawn(async move {
                                let mut next = 0;
                                loop {
                                    while next < FILES {
                                        let name = file_name(next);
                                        let there = matches!(
                                            vc.core.tree.child(vdir, &name),
                                            Some(Some(_))
                                        );
                                        if there == (phase == "create") {
                                            next += 1;
                                        } else {
                                            break;
                                        }
                                    }
                                    if next == FILES {
                                        say(format!("t {u} {}", start.elapsed().as_secs_f64()));
                                        return;
                                    }
                                    if start.elapsed() > deadline {
                                        say(format!("t {u} none {next}"));
                                        return;
                                    }
                                    tokio::time::sleep(look_every).await;
                                }
                            }));
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                say("end".into());
            }
            ["samples", file] => {
                let v = std::mem::take(&mut *samples.lock().unwrap());
                let text: String = v.iter().map(|x| format!("{x:.4}\n")).collect();
                let _ = std::fs::write(file, text);
                say("ok".into());
            }
            ["quit"] => break,
            _ => say(format!("fail unknown command {line}")),
        }
    }
    // Leave without tearing thousands of tasks down one by one.
    std::process::exit(0);
}

struct Worker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
}

#[allow(clippy::too_many_arguments)]
pub fn run_core(
    server: &BenchServer,
    tokens: &[String],
    mode: Mode,
    n: usize,
    runs: usize,
    deadline: Duration,
    root: &Path,
) -> SyncResult {
    use std::io::{BufRead, Write};
    let (count, pairs) = plan(mode, n);
    let procs = count.div_ceil(CLIENTS_PER_WORKER);
    progress(&format!(
        "{} N={n}: starting {count} sync-core clients (no FUSE) in {procs} worker processes",
        mode.name()
    ));
    let base = root.join(format!("core-{}-{n}", mode.name()));
    std::fs::create_dir_all(&base).unwrap();
    let exe = std::env::current_exe().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    for k in 0..procs {
        let clients: Vec<usize> =
            (k * CLIENTS_PER_WORKER..((k + 1) * CLIENTS_PER_WORKER).min(count)).collect();
        let spec = WorkerSpec {
            url: server.url.clone(),
            tokens: tokens.to_vec(),
            mode: mode.name().into(),
            n,
            clients,
            base: base.clone(),
            deadline_s: deadline.as_secs(),
        };
        let spec_path = base.join(format!("worker-{k}.json"));
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let mut child = std::process::Command::new(&exe)
            .arg("--worker")
            .arg(&spec_path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a bench worker");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send((k, line)).is_err() {
                    break;
                }
            }
            let _ = tx.send((k, "eof".into()));
        });
        workers.push(Worker { child, stdin });
    }
    // Every reply of every worker until each has said `ok`/`fail`/`end` (`t` lines collected).
    let collect =
        |want: &str, ticker: Option<(Instant, &str)>| -> (bool, Vec<(usize, Option<f64>, usize)>) {
            let mut left = procs;
            let mut ok = true;
            let mut times = Vec::new();
            let mut last_tick = Instant::now();
            let mut last_msg = Instant::now();
            while left > 0 {
                // A worker that died (or hangs) must not hang the bench.
                if last_msg.elapsed() > deadline + Duration::from_secs(60) {
                    progress("  a worker stopped answering; giving up on this step");
                    return (false, times);
                }
                if let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(1)) {
                    last_msg = Instant::now();
                    let w: Vec<&str> = line.split_whitespace().collect();
                    match w.as_slice() {
                        ["t", u, v] => times.push((u.parse().unwrap_or(0), v.parse().ok(), FILES)),
                        ["t", u, _, k] => {
                            times.push((u.parse().unwrap_or(0), None, k.parse().unwrap_or(0)))
                        }
                        [x] if *x == want => left -= 1,
                        ["fail", ..] => {
                            ok = false;
                            left -= 1
                        }
                        ["eof"] => {
                            ok = false;
                            left -= 1
                        }
                        _ => {}
                    }
                }
                if let Some((start, phase)) = ticker {
                    if last_tick.elapsed() > Duration::from_secs(10) {
                        last_tick = Instant::now();
                        progress(&format!(
                            "  … {phase}: {}/{n} users done after {:.0} s",
                            times.iter().filter(|t| t.1.is_some()).count(),
                            start.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
            (ok, times)
        };
    let send_all = |workers: &mut Vec<Worker>, cmd: &str| {
        for w in workers.iter_mut() {
            let _ = writeln!(w.stdin, "{cmd}");
            let _ = w.stdin.flush();
        }
    };
    let (started, _) = collect("ok", None);
    assert!(started, "a bench worker failed to start its clients");
    let pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let rss_all = |pids: &[u32]| pids.iter().map(|p| super::env::rss(*p)).sum::<u64>();
    let cpu_all = |pids: &[u32]| pids.iter().map(|p| super::env::cpu_s(*p)).sum::<f64>();
    let server_rss_idle = server.rss();
    let client_rss_idle = rss_all(&pids) / count as u64;
    let sampler = RssSampler::start(server.pid());
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak_thread = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r: u64 = pids.iter().map(|p| super::env::rss(*p)).sum();
                peak.fetch_max(r, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut out = Vec::new();
    let mut note = String::new();
    let _ = &pairs;
    for r in 0..runs {
        let dir = format!("{}-n{n}-r{r}", mode.name());
        send_all(&mut workers, &format!("mkdir {dir}"));
        collect("ok", None);
        send_all(&mut workers, &format!("find {dir}"));
        let (found, _) = collect("ok", None);
        if !found {
            note = format!("run {}: the run folder did not reach every client", r + 1);
            break;
        }
        let mark = server.mark();
        let mut run = SyncRun {
            create_s: f64::NAN,
            delete_s: f64::NAN,
            create_user_median_s: f64::NAN,
            delete_user_median_s: f64::NAN,
            ..Default::default()
        };
        let cpu0 = (
            super::env::cpu_s(server.pid()),
            cpu_all(&pids),
            Instant::now(),
            super::env::machine_busy_s(),
            super::env::io_stall_s(),
        );
        for phase in ["create", "delete"] {
            let start = Instant::now();
            send_all(&mut workers, &format!("phase {phase} {dir}"));
            let (_, t) = collect("end", Some((start, phase)));
            let mut times = vec![None; n];
            let mut arrived = 0;
            for (u, v, k) in t {
                if u < n {
                    times[u] = v;
                    arrived += k;
                }
            }
            let (all, med, done) = finish_phase(&times, n);
            if phase == "create" {
                (run.create_s, run.create_user_median_s, run.create_done) = (all, med, done);
            } else {
                (run.delete_s, run.delete_user_median_s, run.delete_done) = (all, med, done);
            }
            progress(&format!(
                "{} N={n} run {}: {phase} {:.3} s ({done}/{n} users)",
                mode.name(),
                r + 1,
                all
            ));
            if done < n {
                note = format!(
                    "run {}: {phase} not finished by all users within {} s: {done}/{n} users \
                     done, {arrived} of {} files {}",
                    r + 1,
                    deadline.as_secs(),
                    n * FILES,
                    if phase == "create" { "arrived" } else { "gone" }
                );
                break;
            }
        }
        run.server_cpu_s = super::env::cpu_s(server.pid()) - cpu0.0;
        run.clients_cpu_s = cpu_all(&pids) - cpu0.1;
        run.wall_s = cpu0.2.elapsed().as_secs_f64();
        run.machine_cpu_s = super::env::machine_busy_s() - cpu0.3;
        run.io_stall_s = super::env::io_stall_s() - cpu0.4;
        progress(&format!(
            "{} N={n} run {}: CPU-s server {:.2}, clients {:.2}",
            mode.name(),
            r + 1,
            run.server_cpu_s,
            run.clients_cpu_s
        ));
        let end = server.mark();
        request_stats(server, mark, end, &mut run, n * FILES);
        let mut cs = Vec::new();
        for (k, w) in workers.iter_mut().enumerate() {
            let f = base.join(format!("samples-{k}.txt"));
            let _ = writeln!(w.stdin, "samples {}", f.display());
            let _ = w.stdin.flush();
        }
        collect("ok", None);
        for k in 0..procs {
            let f = base.join(format!("samples-{k}.txt"));
            cs.extend(
                std::fs::read_to_string(&f)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.parse::<f64>().ok()),
            );
        }
        let cs = sorted(cs);
        run.client_p50_ms = pct(&cs, 0.5);
        run.client_p99_ms = pct(&cs, 0.99);
        let unfinished = run.delete_done < n;
        out.push(run);
        if unfinished {
            break;
        }
    }
    let server_rss_peak = sampler.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = peak_thread.join();
    let client_rss = peak.load(Ordering::Relaxed) / count as u64;
    let t = Instant::now();
    send_all(&mut workers, "quit");
    for mut w in workers {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = w.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    progress(&format!(
        "  clients stopped in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    SyncResult {
        mode,
        n,
        fuse: false,
        clients: count,
        runs: out,
        server_rss_idle,
        server_rss_peak,
        client_rss,
        client_rss_idle,
        note,
    }
}

/// Bytes and requests per synced file: one pair of FUSE clients through a counting proxy,
/// 100 files of 1 KiB created and deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WireCost {
    pub files: usize,
    pub create_up: u64,
    pub create_down: u64,
    pub delete_up: u64,
    pub delete_down: u64,
    /// (route, count) per phase, polls included.
    pub create_routes: Vec<(String, usize)>,
    pub delete_routes: Vec<(String, usize)>,
    pub create_requests: usize,
    pub delete_requests: usize,
    pub create_polls: usize,
    pub delete_polls: usize,
    /// TCP connections the two clients opened through the proxy.
    pub connections: u64,
}

pub fn wire_cost(server: &BenchServer, token: &str, root: &Path) -> WireCost {
    let proxy = super::env::CountingProxy::start(&server.addr);
    let a = FuseClient::mount(&root.join("wire-a"), &proxy.url, token, "wire-a");
    let b = FuseClient::mount(&root.join("wire-b"), &proxy.url, token, "wire-b");
    let dir = "wire";
    std::fs::create_dir(a.mnt.join(dir)).unwrap();
    let bdir = b.mnt.join(dir);
    integration_tests::wait_for("wire dir", Duration::from_secs(30), || {
        bdir.is_dir().then_some(())
    });
    a.wait_uploaded(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let mut cost = WireCost {
        files: FILES,
        ..Default::default()
    };
    for phase in ["create", "delete"] {
        let (u0, d0) = proxy.totals();
        let mark = server.mark();
        for j in 0..FILES {
            let p = a.mnt.join(dir).join(format!("f{j:03}"));
            if phase == "create" {
                std::fs::write(&p, content("wire", j)).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        integration_tests::wait_for("files on the other side", Duration::from_secs(60), || {
            (0..FILES)
                .all(|j| bdir.join(format!("f{j:03}")).exists() == (phase == "create"))
                .then_some(())
        });
        a.wait_uploaded(Duration::from_secs(60));
        // Let the last long-poll answers land.
        std::thread::sleep(Duration::from_millis(500));
        let (u1, d1) = proxy.totals();
        let reqs = server.requests(mark, server.mark());
        let mut routes: std::collections::BTreeMap<String, usize> = Default::default();
        for r in &reqs {
            *routes
                .entry(format!("{} {}", r.method, r.route))
                .or_default() += 1;
        }
        let polls = reqs.iter().filter(|r| r.is_poll()).count();
        let routes: Vec<(String, usize)> = routes.into_iter().collect();
        if phase == "create" {
            cost.create_up = u1 - u0;
            cost.create_down = d1 - d0;
            cost.create_requests = reqs.len() - polls;
            cost.create_polls = polls;
            cost.create_routes = routes;
        } else {
            cost.delete_up = u1 - u0;
            cost.delete_down = d1 - d0;
            cost.delete_requests = reqs.len() - polls;
            cost.delete_polls = polls;
            cost.delete_routes = routes;
        }
    }
    cost.connections = proxy.connections.load(std::sync::atomic::Ordering::Relaxed);
    drop(a);
    drop(b);
    cost
}
