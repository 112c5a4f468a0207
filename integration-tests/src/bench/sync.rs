//! The original experiments: many users, each with two synchronized folders.
//!
//! - **independent**: N users; user i has two clients A_i and B_i. A_i creates 100 files of
//!   1 KiB in a fresh folder; the creation time is until every B_i lists all 100. Then A_i
//!   deletes them; the deletion time is until no B_i lists any.
//! - **dependent**: N clients of *one* user, files in one shared subfolder. Client k writes
//!   100 files `c{k}-…`, and client k+1 (mod the client count) waits for them, so every
//!   client receives every other client's changes (N = 1 uses two clients: one writes, one
//!   watches).
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
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Who writes and who watches: (writer client, watcher client, file prefix, token index).
fn plan(mode: Mode, n: usize) -> (usize, Vec<(usize, usize, String)>) {
    match mode {
        Mode::Independent => (
            2 * n,
            (0..n).map(|i| (2 * i, 2 * i + 1, "f".to_string())).collect(),
        ),
        Mode::Dependent => {
            let m = n.max(2);
            (m, (0..n).map(|k| (k, (k + 1) % m, format!("c{k}-"))).collect())
        }
    }
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
        }
        for c in &clients {
            let p = c.mnt.join(&dir);
            integration_tests::wait_for("the run folder on every client", deadline, || {
                p.is_dir().then_some(())
            });
        }
        for &c in &creators {
            clients[c].wait_uploaded(deadline);
        }
        let mark = server.mark();
        let mut run = SyncRun::default();
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
                    .map(|(u, (w, v, prefix))| {
                        let wdir = clients[*w].mnt.join(&dir);
                        let vdir = clients[*v].mnt.join(&dir);
                        let tag = format!("{dir}-{u}");
                        s.spawn(move || {
                            for j in 0..FILES {
                                let p = wdir.join(format!("{prefix}{j:03}"));
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
                                    let p = vdir.join(format!("{prefix}{next:03}"));
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
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        self.t(self.inner.changes(since, limit)).await
    }
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage> {
        self.inner.poll(device, since, timeout_ms).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        self.t(self.inner.missing_blocks(hashes)).await
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        tasks,
        _dir: dir,
    }
}

fn tracing_warn(msg: &str) {
    eprintln!("  (bench) {msg}");
}

/// Waits until `core` knows `name` in the root; its id there (with a listing cached).
async fn core_dir(core: &Core, name: &str, deadline: Duration) -> Option<NodeId> {
    let start = Instant::now();
    loop {
        if let Some(Ok(node)) = core.lookup_cached(ROOT_ID, name) {
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
    let (count, pairs) = plan(mode, n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(256)
        .enable_all()
        .build()
        .unwrap();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let me = std::process::id();
    let rss_before = super::env::rss(me);
    progress(&format!(
        "{} N={n}: starting {count} sync-core clients (no FUSE) in this process",
        mode.name()
    ));
    let base = root.join(format!("core-{}-{n}", mode.name()));
    let clients: Vec<Arc<CoreClient>> = rt.block_on(async {
        let mut out = Vec::new();
        // A few hundred at a time, so connecting does not look like a storm.
        for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&c| {
                    let (url, token) = (server.url.clone(), tokens[token_of(mode, c)].clone());
                    let dir = base.join(c.to_string());
                    let s = samples.clone();
                    tokio::spawn(async move {
                        Arc::new(open_core(&url, &token, dir, format!("core-{c}"), s).await)
                    })
                })
                .collect();
            for h in handles {
                out.push(h.await.unwrap());
            }
        }
        out
    });
    let server_rss_idle = server.rss();
    let client_rss_idle = super::env::rss(me).saturating_sub(rss_before) / count as u64;
    let sampler = RssSampler::start(server.pid());
    let self_sampler = RssSampler::start(me);
    let mut out = Vec::new();
    let mut note = String::new();
    for r in 0..runs {
        let dir = format!("{}-n{n}-r{r}", mode.name());
        let creators: Vec<usize> = match mode {
            Mode::Independent => pairs.iter().map(|p| p.0).collect(),
            Mode::Dependent => vec![0],
        };
        // Set-up: the folder, known (with its listing) on every client.
        let dir_ids: Option<Vec<NodeId>> = rt.block_on(async {
            let mut ids = vec![0; count];
            for &c in &creators {
                let node = clients[c].core.mkdir(ROOT_ID, &dir, 0o755).await.unwrap();
                ids[c] = node.id;
            }
            for &c in &creators {
                clients[c].core.drain(deadline).await;
            }
            let handles: Vec<_> = (0..count)
                .filter(|c| !creators.contains(c))
                .map(|c| {
                    let cl = clients[c].clone();
                    let d = dir.clone();
                    tokio::spawn(async move { (c, core_dir(&cl.core, &d, deadline).await) })
                })
                .collect();
            for h in handles {
                let (c, id) = h.await.unwrap();
                ids[c] = id?;
            }
            Some(ids)
        });
        let Some(dir_ids) = dir_ids else {
            note = format!("run {}: the run folder did not reach every client", r + 1);
            break;
        };
        let mark = server.mark();
        samples.lock().unwrap().clear();
        let mut run = SyncRun::default();
        for phase in ["create", "delete"] {
            let start = Instant::now();
            let done_count = Arc::new(AtomicUsize::new(0));
            let times: Vec<Option<f64>> = rt.block_on(async {
                let handles: Vec<_> = pairs
                    .iter()
                    .enumerate()
                    .map(|(u, (w, v, prefix))| {
                        let (wc, vc) = (clients[*w].clone(), clients[*v].clone());
                        let (wdir, vdir) = (dir_ids[*w], dir_ids[*v]);
                        let prefix = prefix.clone();
                        let tag = format!("{dir}-{u}");
                        let done_count = done_count.clone();
                        tokio::spawn(async move {
                            for j in 0..FILES {
                                let name = format!("{prefix}{j:03}");
                                if phase == "create" {
                                    let node = wc.core.create_file(wdir, &name, 0o644).await.unwrap();
                                    let core = wc.core.clone();
                                    let data = content(&tag, j);
                                    tokio::task::spawn_blocking(move || {
                                        core.write(node.id, 0, &data).unwrap();
                                        core.release(node.id, true).unwrap();
                                    })
                                    .await
                                    .unwrap();
                                } else {
                                    wc.core.remove(wdir, &name, false).await.unwrap();
                                }
                            }
                            let mut next = 0;
                            loop {
                                while next < FILES {
                                    let name = format!("{prefix}{next:03}");
                                    let there = matches!(vc.core.tree.child(vdir, &name), Some(Some(_)));
                                    if there == (phase == "create") {
                                        next += 1;
                                    } else {
                                        break;
                                    }
                                }
                                if next == FILES {
                                    done_count.fetch_add(1, Ordering::Relaxed);
                                    return Some(start.elapsed().as_secs_f64());
                                }
                                if start.elapsed() > deadline {
                                    return None;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        })
                    })
                    .collect();
                // Progress every 10 s for long phases.
                let dc = done_count.clone();
                let ticker = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        progress(&format!(
                            "  … {phase}: {}/{n} users done after {:.0} s",
                            dc.load(Ordering::Relaxed),
                            start.elapsed().as_secs_f64()
                        ));
                    }
                });
                let mut t = Vec::new();
                for h in handles {
                    t.push(h.await.unwrap());
                }
                ticker.abort();
                t
            });
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
                    "run {}: {phase} not finished by all users within {} s ({done}/{n} done)",
                    r + 1,
                    deadline.as_secs()
                );
                break;
            }
        }
        let end = server.mark();
        request_stats(server, mark, end, &mut run, n * FILES);
        let cs = sorted(std::mem::take(&mut *samples.lock().unwrap()));
        run.client_p50_ms = pct(&cs, 0.5);
        run.client_p99_ms = pct(&cs, 0.99);
        let unfinished = run.delete_done < n;
        out.push(run);
        if unfinished {
            break;
        }
    }
    let server_rss_peak = sampler.stop();
    let self_peak = self_sampler.stop();
    let client_rss = self_peak.saturating_sub(rss_before) / count as u64;
    for c in &clients {
        for t in &c.tasks {
            t.abort();
        }
    }
    drop(clients);
    rt.shutdown_timeout(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&base);
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
            *routes.entry(format!("{} {}", r.method, r.route)).or_default() += 1;
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
