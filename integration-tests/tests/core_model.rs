//! Reference-model property test of the client users run, without the kernel.
//!
//! Two devices of one user (three in [`core_model_on_three_devices`], or with
//! `JEWEL_MODEL_DEVICES=3`) run against one real `jewel-server` process, no FUSE. Each is the
//! production client started exactly as `jewelfs mount` starts it under its FUSE session
//! ([`jewelfs::mount::start`]: the core with its uploader, pre-uploader, journal syncer,
//! listener and tree saver; online, or offline from its cache when the service cannot be
//! reached), and is driven through the core's calls as the FUSE adapter would.
//! A seeded generator makes a sequence of operations (create with content, overwrite, append,
//! truncate, mkdir, rename/move of files and directories, unlink, rmdir) in a small name space,
//! so names collide, and applies each to a randomly chosen device.
//!
//! **Faults.** Each device's `HttpApi` talks to the service through a
//! [`FaultProxy`](integration_tests::fault_proxy) of its own, which answers a seeded share
//! (5 to 15 %, [`http_plan`]) of the device's changing requests and block uploads with every
//! fault it has, in a mix of weights the seed draws:
//! - the service never sees the request: the connection dropped before forwarding, API
//!   Gateway's `429 {"message":"Too Many Requests"}` and an HTML `503`, each with and
//!   without `Retry-After: 1`, API Gateway's `500 {"message":"Internal Server Error"}`, a
//!   proxy's HTML `413`;
//! - the service **did** the change and the device never hears so: the connection dropped
//!   after the service answered, API Gateway's `500` instead of the answer, a `200` with half
//!   its body (not JSON);
//! - slow answers (100 to 400 ms).
//!
//! A change retried after such a fault must happen once, not twice, and never be dropped:
//! the oracle below is not loosened for faults. On top of the proxy, [`FaultApi`] can cut a
//! device off (every call fails as unreachable, and an in-flight long-poll is cut too), so
//! the run has outages; and in [`core_model_with_crashes`] a device cut off may crash (its
//! running client dropped without draining) and start again on its cache, half the times
//! while still cut off (offline from its saved tree and journal: it must then
//! show its own model at once; `JEWEL_MODEL_OFFLINE_RESTARTS=0` turns that off).
//!
//! **Service restarts.** In the default, racing and crash tests, before each operation
//! there is a seeded chance ([`RESTART_PERCENT`]) that the `jewel-server` process is stopped
//! (SIGTERM, a third of the times SIGKILL) and started again on the same data and port 0.2
//! to 2 s later, while the devices keep working (`JEWEL_MODEL_RESTARTS=0` or `=1` turns them
//! off or on in every test). The oracle is unchanged: a settle waits for the devices to find
//! the service again by themselves. The faults are on for the whole run, in every test but the
//! replays of [`core_model_seeds_that_found_bugs`]. Which requests a plan hits is drawn per
//! request, in the order the device sends them, so a replay hits the same ones as long as
//! the device sends the same requests in the same order (not exactly in racing phases).
//!
//! The run is a series of phases:
//! - **connected**: every device online. After each operation the device that did it must
//!   show exactly the model's tree (read-your-writes), and once all settle (journals empty,
//!   cursors at the service's newest change) every device and the service must hold exactly
//!   the model's tree: with no concurrency there is nothing to merge, and no conflict copy.
//! - **split**: the devices fall into *sides* that hear nothing from each other, each with its
//!   own copy of the model, and after each operation the device that did it must show exactly
//!   its side's model (offline: from its caches and journal). With two devices at most one is
//!   online, and each device is a side. With three, the seed draws one of: one device cut off
//!   while the other two stay online and see each other (half the splits), one online alone,
//!   all three cut off ([`three_way_split`]); the devices online are one side, and after each
//!   operation one of them does, they and the service must hold exactly that side's model
//!   (settled, as when connected); each device cut off is a side of its own. At the end the
//!   devices online drain, the others come back one at a time (order chosen by the seed, so
//!   the merge is deterministic) and settle, and the merge is checked:
//!   1. convergence: every device lists the same tree with the same content as the service;
//!   2. nothing lost: every file content live on any side at the end of the split is in
//!      the merged tree (conflict copies included) or, failing that, in the service's trash
//!      (read from its database); content in neither fails the run. Content written during the
//!      split that survives only in the trash is reported as a note (it was deleted with a
//!      directory on a device that never saw it);
//!   3. untouched paths keep their content;
//!   4. when only one side changed anything (or none), the merged tree is exactly its model,
//!      and no conflict copy appears.
//!
//! The two-device runs draw exactly what they drew before three devices existed, so every
//! seed named below replays as it did; a three-device run draws its splits, the device of
//! each operation (one of three) and the order of return on a path of its own.
//!
//! Seeds: `JEWEL_MODEL_SEED=n` replays one seed, `JEWEL_MODEL_CASES=n` runs seeds 1..=n
//! (default 8; `JEWEL_MODEL_FROM=k` starts at k instead, to split a soak between processes), `JEWEL_MODEL_OPS=n` operations per seed (default 40),
//! `JEWEL_MODEL_HTTP_FAULTS=0` (or `=1`) turns the HTTP faults off (or on) in every test,
//! `JEWEL_MODEL_DEVICES=3` (or `=2`) runs every test with three devices (or two). A
//! failure prints its seed, the operation log, each device's fault plan and the requests it
//! hit (`JEWEL_MODEL_VERBOSE=1` prints them for passing seeds too). Replays are
//! deterministic up to conflict copy names (they carry the time) and the ordering they
//! bring, and up to the timing of retries after faults.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Scope, Stats};
use integration_tests::{Server, Stop};
use jewel_wire::*;
use jewelfs::core::api::{Api, ApiErr, ApiResult, HttpApi};
use jewelfs::core::{Config, Core, CoreErr};
use jewelfs::mount::{Running, Started};

// ------------------------------------------------------------------------------------------
// The fault-injecting API

/// The real HTTP API, with a switch that makes every call fail as "server unreachable".
struct FaultApi {
    inner: HttpApi,
    offline: tokio::sync::watch::Sender<bool>,
    failed: AtomicU64,
}

impl FaultApi {
    fn new(url: &str, token: &str) -> FaultApi {
        FaultApi {
            inner: HttpApi::new(url, token).unwrap(),
            offline: tokio::sync::watch::channel(false).0,
            failed: AtomicU64::new(0),
        }
    }

    fn set_offline(&self, off: bool) {
        self.offline.send_replace(off);
    }

    fn is_offline(&self) -> bool {
        *self.offline.borrow()
    }

    fn cut(&self) -> ApiErr {
        self.failed.fetch_add(1, Ordering::Relaxed);
        ApiErr::Offline("connection refused (injected outage)".into())
    }

    /// Runs `call` unless offline; a call still running when the switch flips is cut off, and
    /// an answer that arrives after it flipped is dropped (the device must not hear it).
    async fn guard<T>(&self, call: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        if self.is_offline() {
            return Err(self.cut());
        }
        let mut rx = self.offline.subscribe();
        tokio::select! {
            r = call => if self.is_offline() { Err(self.cut()) } else { r },
            _ = rx.wait_for(|off| *off) => Err(self.cut()),
        }
    }
}

#[async_trait]
impl Api for FaultApi {
    async fn me(&self) -> ApiResult<Me> {
        self.guard(self.inner.me()).await
    }
    async fn get_node(&self, id: NodeId) -> ApiResult<Node> {
        self.guard(self.inner.get_node(id)).await
    }
    async fn list_children(&self, id: NodeId, after: Option<String>) -> ApiResult<ListPage> {
        self.guard(self.inner.list_children(id, after)).await
    }
    async fn create(&self, req: &CreateNode) -> ApiResult<Node> {
        self.guard(self.inner.create(req)).await
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        self.guard(self.inner.commit(id, req)).await
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        self.guard(self.inner.move_node(id, req)).await
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.guard(self.inner.set_attr(id, req)).await
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        self.guard(self.inner.delete(id, base_version, recursive))
            .await
    }
    async fn register_device(&self, name: &str) -> ApiResult<Device> {
        self.guard(self.inner.register_device(name)).await
    }
    async fn renew_listen(&self, device: DeviceId) -> ApiResult<Device> {
        self.guard(self.inner.renew_listen(device)).await
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        self.guard(self.inner.changes(since, limit)).await
    }
    async fn poll(&self, device: DeviceId, since: Seq, timeout_ms: u64) -> ApiResult<ChangePage> {
        self.guard(self.inner.poll(device, since, timeout_ms)).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        self.guard(self.inner.missing_blocks(hashes)).await
    }
    async fn batch(&self, batch: &Batch) -> ApiResult<BatchAnswer> {
        self.guard(self.inner.batch(batch)).await
    }
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
        self.guard(self.inner.block_urls(hashes)).await
    }
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()> {
        self.guard(self.inner.put_block(url, bytes)).await
    }
    async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
        self.guard(self.inner.get_block(url)).await
    }
    fn set_device(&self, id: DeviceId) {
        self.inner.set_device(id)
    }
}

// ------------------------------------------------------------------------------------------
// Faults at the HTTP layer

/// Every fault the proxy has, with its weight in the mix before a seed scales it. A throttle
/// or 503 that names a wait (`Retry-After: 1`) is the rarest, as the client honours the wait.
fn fault_kinds(rng: &mut Rng) -> Vec<(Fault, u64)> {
    vec![
        (Fault::Throttle { retry_after: None }, 3),
        (
            Fault::Throttle {
                retry_after: Some(1),
            },
            1,
        ),
        (Fault::Unavailable { retry_after: None }, 2),
        (
            Fault::Unavailable {
                retry_after: Some(1),
            },
            1,
        ),
        (Fault::GatewayError, 2),
        (Fault::TooLarge, 1),
        (Fault::DropBefore, 2),
        (Fault::DropAfter, 3),
        (Fault::TornAnswer, 2),
        (Fault::AnswerOverflow, 2),
        (
            Fault::Slow(Duration::from_millis(100 + 50 * rng.below(7) as u64)),
            2,
        ),
    ]
}

/// The HTTP faults device `dev` meets in seed `seed`: 5 to 15 % of its changing requests
/// (creates, commits, moves, deletes, batches, registrations) and block uploads, split
/// between every kind of [`Fault`] by weights the seed draws (each kind's base weight times 1
/// to 3, so some seeds lean on one kind). Long-polls, listings and reads pass: a fault there
/// would test the listener's retries, not the journal.
fn http_plan(seed: u64, dev: usize) -> Plan {
    let mut rng = Rng(seed ^ 0xFA17_0000 ^ ((dev as u64 + 1) << 40));
    let total = (5 + rng.below(11)) as f64 / 100.0;
    let kinds: Vec<(Fault, u64)> = fault_kinds(&mut rng)
        .into_iter()
        .map(|(f, w)| (f, w * (1 + rng.below(3) as u64)))
        .collect();
    let sum: u64 = kinds.iter().map(|(_, w)| w).sum();
    kinds
        .into_iter()
        .fold(Plan::new(rng.next()), |plan, (f, w)| {
            plan.with(f, Scope::ChangesAndBlocks, total * w as f64 / sum as f64)
        })
}

/// A plan in one line per rule, for a failure's report.
fn show_plan(plan: &Plan) -> String {
    let total: f64 = plan.rules.iter().map(|r| r.rate).sum();
    let mut s = format!("{:.1} % of changes and block uploads:", total * 100.0);
    for r in &plan.rules {
        let _ = write!(s, " {:?} {:.2} %,", r.fault, r.rate * 100.0);
    }
    s.pop();
    s
}

/// What the proxy hit, in one line (`drop_after POST /api/v1/nodes: 2, ...`).
fn show_hits(stats: &Stats) -> String {
    let hits: Vec<String> = stats
        .routes
        .iter()
        .map(|(route, n)| format!("{route}: {n}"))
        .collect();
    format!(
        "{} changes, {} faulted [{}]",
        stats.changes,
        stats.faulted_total(),
        hits.join(", ")
    )
}

// ------------------------------------------------------------------------------------------
// The model

/// What a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
}

/// A tree as `path → entry` ("a", "a/b.txt"); the root is implicit.
type View = BTreeMap<String, Entry>;

fn parent_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[..i]).unwrap_or("")
}

fn name_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[i + 1..]).unwrap_or(path)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `anc` is `path` or one of its ancestors ("" is the root, everyone's ancestor).
fn is_prefix(anc: &str, path: &str) -> bool {
    anc.is_empty() || anc == path || path.starts_with(&format!("{anc}/"))
}

fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('/').count() + 1
    }
}

fn has_children(view: &View, dir: &str) -> bool {
    let pre = format!("{dir}/");
    view.range(pre.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&pre))
}

/// The errors the model predicts, matched against `CoreErr` variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    NotFound,
    Exists,
    NotEmpty,
    NotDir,
    IsDir,
    Invalid,
}

fn classify(e: &CoreErr) -> Option<Want> {
    Some(match e {
        CoreErr::NotFound => Want::NotFound,
        CoreErr::Exists => Want::Exists,
        CoreErr::NotEmpty => Want::NotEmpty,
        CoreErr::NotDir => Want::NotDir,
        CoreErr::IsDir => Want::IsDir,
        CoreErr::Invalid(_) => Want::Invalid,
        _ => return None,
    })
}

#[derive(Debug, Clone)]
enum Op {
    Create { path: String, data: Vec<u8> },
    Overwrite { path: String, data: Vec<u8> },
    Append { path: String, data: Vec<u8> },
    Truncate { path: String, len: u64 },
    Mkdir { path: String },
    Rename { from: String, to: String },
    Unlink { path: String },
    Rmdir { path: String },
}

fn show(data: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(data))
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Create { path, data } => write!(f, "create /{path} = {}", show(data)),
            Op::Overwrite { path, data } => write!(f, "overwrite /{path} = {}", show(data)),
            Op::Append { path, data } => write!(f, "append /{path} += {}", show(data)),
            Op::Truncate { path, len } => write!(f, "truncate /{path} to {len}"),
            Op::Mkdir { path } => write!(f, "mkdir /{path}"),
            Op::Rename { from, to } => write!(f, "rename /{from} -> /{to}"),
            Op::Unlink { path } => write!(f, "unlink /{path}"),
            Op::Rmdir { path } => write!(f, "rmdir /{path}"),
        }
    }
}

impl Op {
    /// The paths this operation may change (everything below them too).
    fn touches(&self) -> Vec<String> {
        match self {
            Op::Rename { from, to } => vec![from.clone(), to.clone()],
            Op::Create { path, .. }
            | Op::Overwrite { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::Mkdir { path }
            | Op::Unlink { path }
            | Op::Rmdir { path } => vec![path.clone()],
        }
    }
}

/// Applies `op` to the model with POSIX semantics; the error the core must give otherwise.
fn model_apply(view: &mut View, op: &Op) -> Result<(), Want> {
    let need_parent = |view: &View, path: &str| -> Result<(), Want> {
        let p = parent_of(path);
        match view.get(p) {
            _ if p.is_empty() => Ok(()),
            Some(Entry::Dir) => Ok(()),
            Some(Entry::File(_)) => Err(Want::NotDir),
            None => Err(Want::NotFound),
        }
    };
    let need_file = |view: &View, path: &str| -> Result<Vec<u8>, Want> {
        need_parent(view, path)?;
        match view.get(path) {
            Some(Entry::File(d)) => Ok(d.clone()),
            Some(Entry::Dir) => Err(Want::IsDir),
            None => Err(Want::NotFound),
        }
    };
    match op {
        Op::Create { path, data } => {
            need_parent(view, path)?;
            if view.contains_key(path) {
                return Err(Want::Exists);
            }
            view.insert(path.clone(), Entry::File(data.clone()));
        }
        Op::Overwrite { path, data } => {
            need_file(view, path)?;
            view.insert(path.clone(), Entry::File(data.clone()));
        }
        Op::Append { path, data } => {
            let mut d = need_file(view, path)?;
            d.extend_from_slice(data);
            view.insert(path.clone(), Entry::File(d));
        }
        Op::Truncate { path, len } => {
            let mut d = need_file(view, path)?;
            d.resize(*len as usize, 0);
            view.insert(path.clone(), Entry::File(d));
        }
        Op::Mkdir { path } => {
            need_parent(view, path)?;
            if view.contains_key(path) {
                return Err(Want::Exists);
            }
            view.insert(path.clone(), Entry::Dir);
        }
        Op::Unlink { path } => {
            need_file(view, path)?;
            view.remove(path);
        }
        Op::Rmdir { path } => {
            need_parent(view, path)?;
            match view.get(path) {
                None => return Err(Want::NotFound),
                Some(Entry::File(_)) => return Err(Want::NotDir),
                Some(Entry::Dir) if has_children(view, path) => return Err(Want::NotEmpty),
                Some(Entry::Dir) => {
                    view.remove(path);
                }
            }
        }
        Op::Rename { from, to } => {
            need_parent(view, from)?;
            let Some(src) = view.get(from).cloned() else {
                return Err(Want::NotFound);
            };
            need_parent(view, to)?;
            if from == to {
                return Ok(());
            }
            if src == Entry::Dir && is_prefix(from, to) {
                return Err(Want::Invalid);
            }
            match (&src, view.get(to)) {
                (_, None) => {}
                (Entry::File(_), Some(Entry::File(_))) => {}
                (Entry::File(_), Some(Entry::Dir)) => return Err(Want::IsDir),
                (Entry::Dir, Some(Entry::File(_))) => return Err(Want::NotDir),
                (Entry::Dir, Some(Entry::Dir)) => {
                    if has_children(view, to) {
                        return Err(Want::NotEmpty);
                    }
                }
            }
            view.remove(to);
            let moved: Vec<(String, Entry)> = view
                .iter()
                .filter(|(k, _)| is_prefix(from, k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, _) in &moved {
                view.remove(k);
            }
            for (k, v) in moved {
                let rest = &k[from.len()..];
                view.insert(format!("{to}{rest}"), v);
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The generator

/// SplitMix64: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

/// A small name space, files and directories alike, so names collide.
const NAMES: [&str; 5] = ["a", "b", "c.txt", "d.txt", "e"];
/// Contents shared between operations (identical content must never conflict).
const COMMON: [&str; 3] = ["same", "hello world\n", "x"];

struct Gen {
    rng: Rng,
    counter: u64,
}

impl Gen {
    fn data(&mut self, dev: usize) -> Vec<u8> {
        self.counter += 1;
        if self.rng.chance(15) {
            return COMMON[self.rng.below(COMMON.len())].as_bytes().to_vec();
        }
        let tag = ["A", "B", "C"][dev];
        let len = self.rng.below(40);
        let mut s = format!("{tag}{}:", self.counter);
        for _ in 0..len {
            s.push((b'a' + self.rng.below(26) as u8) as char);
        }
        s.into_bytes()
    }

    fn op(&mut self, view: &View, dev: usize) -> Op {
        let files: Vec<String> = view
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let dirs: Vec<String> = view
            .iter()
            .filter(|(_, e)| **e == Entry::Dir)
            .map(|(k, _)| k.clone())
            .collect();
        let mut parents = vec![String::new()];
        parents.extend(dirs.iter().filter(|d| depth(d) < 3).cloned());
        let all: Vec<String> = view.keys().cloned().collect();
        let new_path = |rng: &mut Rng| {
            let dir = rng.pick(&parents).unwrap().clone();
            join(&dir, NAMES[rng.below(NAMES.len())])
        };
        loop {
            let roll = self.rng.below(100);
            let op = match roll {
                0..=21 => Op::Create {
                    path: new_path(&mut self.rng),
                    data: self.data(dev),
                },
                22..=33 => match self.rng.pick(&files) {
                    Some(p) => Op::Overwrite {
                        path: p.clone(),
                        data: self.data(dev),
                    },
                    None => continue,
                },
                34..=43 => match self.rng.pick(&files) {
                    Some(p) => Op::Append {
                        path: p.clone(),
                        data: self.data(dev),
                    },
                    None => continue,
                },
                44..=49 => match self.rng.pick(&files) {
                    Some(p) => {
                        let size = match &view[p] {
                            Entry::File(d) => d.len(),
                            Entry::Dir => 0,
                        };
                        Op::Truncate {
                            path: p.clone(),
                            len: self.rng.below(size + 4) as u64,
                        }
                    }
                    None => continue,
                },
                50..=61 => {
                    let dir = self.rng.pick(&parents).unwrap().clone();
                    if depth(&dir) >= 2 {
                        continue;
                    }
                    Op::Mkdir {
                        path: join(&dir, NAMES[self.rng.below(NAMES.len())]),
                    }
                }
                62..=79 => match self.rng.pick(&all) {
                    Some(p) => Op::Rename {
                        from: p.clone(),
                        to: new_path(&mut self.rng),
                    },
                    None => continue,
                },
                80..=90 => {
                    // Mostly files; sometimes anything (IsDir).
                    let pool = if self.rng.chance(85) { &files } else { &all };
                    match self.rng.pick(pool) {
                        Some(p) => Op::Unlink { path: p.clone() },
                        None => continue,
                    }
                }
                _ => {
                    let pool = if self.rng.chance(85) { &dirs } else { &all };
                    match self.rng.pick(pool) {
                        Some(p) => Op::Rmdir { path: p.clone() },
                        None => continue,
                    }
                }
            };
            return op;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Driving the real core

/// The devices' names, in the order a run starts them.
const DEVICE_NAMES: [&str; 3] = ["devA", "devB", "devC"];

struct Dev {
    name: &'static str,
    /// The client as `jewelfs mount` runs it under its FUSE session ([`jewelfs::mount::start`]:
    /// uploader, pre-uploader, journal syncer, listener, tree saver); `None` only for the
    /// moment of a crash.
    running: Option<Running>,
    core: Arc<Core>,
    api: Arc<FaultApi>,
    /// The device's way to the service (it outlives a crash of the device).
    proxy: Arc<FaultProxy>,
}

/// Starts a device's client on its cache in `dir` exactly as `jewelfs mount` does
/// ([`jewelfs::mount::start`]), talking to the service through `proxy`. With `cut_off`, the
/// device is cut off while it starts (so it starts offline from its saved tree and journal)
/// and stays so until the caller lets it back. The very first start, with no cache yet, is
/// tried again while the service is unreachable (a dropped registration, say): `jewelfs
/// mount` says why it cannot start then, and the user runs it again.
async fn open_device(
    proxy: Arc<FaultProxy>,
    token: &str,
    dir: &std::path::Path,
    name: &'static str,
    cut_off: bool,
) -> Dev {
    let api = Arc::new(FaultApi::new(&proxy.url, token));
    api.set_offline(cut_off);
    let mut cfg = Config::new(dir.join(name), name.to_string());
    cfg.server = proxy.url.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        match jewelfs::mount::start(cfg.clone(), api.clone() as Arc<dyn Api>).await {
            Ok(running) => break running,
            Err(jewelfs::mount::StartErr::Unreachable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{name}: start: {e}"),
        }
    };
    assert!(
        !cut_off || matches!(running.started, Started::Offline(_)),
        "{name} started online while cut off"
    );
    Dev {
        name,
        core: running.core().clone(),
        running: Some(running),
        api,
        proxy,
    }
}

async fn resolve(core: &Core, path: &str) -> Result<NodeId, CoreErr> {
    let mut id = ROOT_ID;
    if path.is_empty() {
        return Ok(id);
    }
    for part in path.split('/') {
        id = core.lookup(id, part).await?.id;
    }
    Ok(id)
}

/// Runs `op` on a device's core, as the FUSE adapter would (open, write, close).
async fn run_op(core: &Core, op: &Op) -> Result<(), CoreErr> {
    match op {
        Op::Create { path, data } => {
            let parent = resolve(core, parent_of(path)).await?;
            let node = core.create_file(parent, name_of(path), 0o644).await?;
            core.write(node.id, 0, data)?;
            core.release(node.id, true)
        }
        Op::Overwrite { path, data } => {
            let id = resolve(core, path).await?;
            core.open_file(id, true, true).await?;
            let r = core.write(id, 0, data);
            core.release(id, true)?;
            r.map(|_| ())
        }
        Op::Append { path, data } => {
            let id = resolve(core, path).await?;
            let size = core.node(id).await?.size;
            core.open_file(id, true, false).await?;
            let r = core.write(id, size, data);
            core.release(id, true)?;
            r.map(|_| ())
        }
        Op::Truncate { path, len } => {
            let id = resolve(core, path).await?;
            core.setattr(id, None, None, Some(*len)).await.map(|_| ())
        }
        Op::Mkdir { path } => {
            let parent = resolve(core, parent_of(path)).await?;
            core.mkdir(parent, name_of(path), 0o755).await.map(|_| ())
        }
        Op::Rename { from, to } => {
            let p = resolve(core, parent_of(from)).await?;
            let np = resolve(core, parent_of(to)).await?;
            core.rename(p, name_of(from), np, name_of(to), MoveMode::Replace)
                .await
        }
        Op::Unlink { path } => {
            let parent = resolve(core, parent_of(path)).await?;
            core.remove(parent, name_of(path), false).await
        }
        Op::Rmdir { path } => {
            let parent = resolve(core, parent_of(path)).await?;
            core.remove(parent, name_of(path), true).await
        }
    }
}

/// The tree as a device shows it (listings and content through the core).
async fn walk_core(core: &Core) -> Result<View, String> {
    let mut out = View::new();
    let mut stack = vec![(ROOT_ID, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let nodes = core
            .readdir(dir)
            .await
            .map_err(|e| format!("readdir /{prefix}: {e}"))?;
        for n in nodes {
            let path = join(&prefix, &n.name);
            match n.kind {
                NodeKind::Dir => {
                    out.insert(path.clone(), Entry::Dir);
                    stack.push((n.id, path));
                }
                NodeKind::File => {
                    let data = core
                        .read(n.id, 0, n.size as u32 + 64)
                        .await
                        .map_err(|e| format!("read /{path}: {e}"))?;
                    if data.len() as u64 != n.size {
                        return Err(format!(
                            "/{path}: size {} but {} bytes read",
                            n.size,
                            data.len()
                        ));
                    }
                    out.insert(path, Entry::File(data));
                }
                NodeKind::Symlink => return Err(format!("unexpected symlink /{path}")),
            }
        }
    }
    Ok(out)
}

/// [`walk_core`] while the other devices' changes arrive: a listing or a file may change
/// between reading it and reading into it (a file grows, a directory goes), so a walk that
/// saw such a change is read again. While the service cannot be reached (a restart), a
/// folder or file the device heard of but never read cannot be read ([`CoreErr::Offline`],
/// `EIO`, as docs/SEMANTICS.md "Offline" says; the device may not know yet that it is
/// offline), so such a walk waits for the service to answer again (up to 30 s).
async fn walk_racing(core: &Core) -> Result<View, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let unreachable = CoreErr::Offline.to_string();
    let mut last = String::new();
    let mut tries = 0;
    while tries < 50 && Instant::now() < deadline {
        match walk_core(core).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        if core.status().online && !last.ends_with(&unreachable) {
            tries += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("the walk never saw a steady tree: {last}"))
}

/// What the service holds: directories, and files as their block hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Dir,
    File(Vec<BlockHash>),
}

fn hashes_of(data: &[u8]) -> Vec<BlockHash> {
    if data.is_empty() {
        vec![]
    } else {
        vec![integration_tests::sha256_hex(data)]
    }
}

fn held(view: &View) -> BTreeMap<String, Held> {
    view.iter()
        .map(|(k, v)| {
            let h = match v {
                Entry::Dir => Held::Dir,
                Entry::File(d) => Held::File(hashes_of(d)),
            };
            (k.clone(), h)
        })
        .collect()
}

async fn walk_server(api: &HttpApi) -> Result<BTreeMap<String, Held>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_ID, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut after = None;
        loop {
            let page = api
                .list_children(dir, after)
                .await
                .map_err(|e| format!("server listing of /{prefix}: {e}"))?;
            for n in page.entries {
                let path = join(&prefix, &n.name);
                match n.kind {
                    NodeKind::Dir => {
                        out.insert(path.clone(), Held::Dir);
                        stack.push((n.id, path));
                    }
                    _ => {
                        out.insert(path, Held::File(n.blocks.clone()));
                    }
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    Ok(out)
}

/// Every file content the service still has for `user`, live or in the trash (whole deleted
/// subtrees included), read from its SQLite database with the `sqlite3` tool. `None` when the
/// tool is missing.
fn server_contents(service: &Service, user: &str) -> Option<BTreeSet<Vec<BlockHash>>> {
    let db = service.data.join("meta.db");
    let out = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(&db)
        .arg(format!(
            "SELECT n.blocks FROM nodes n JOIN users u ON u.id = n.user \
             WHERE u.name = '{user}' AND n.kind = 'file';"
        ))
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "core_model: sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Vec<BlockHash>>(l.trim()).ok())
            .collect(),
    )
}

fn diff(a_name: &str, a: &View, b_name: &str, b: &View) -> String {
    let mut s = String::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let fmt = |e: Option<&Entry>| match e {
            None => "-".to_string(),
            Some(Entry::Dir) => "dir".to_string(),
            Some(Entry::File(d)) => format!("file {}", show(d)),
        };
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let _ = writeln!(s, "    /{k}: {a_name} {} | {b_name} {}", fmt(x), fmt(y));
        }
    }
    s
}

fn dump(view: &View) -> String {
    let mut s = String::new();
    for (k, v) in view {
        match v {
            Entry::Dir => {
                let _ = writeln!(s, "    /{k}/");
            }
            Entry::File(d) => {
                let _ = writeln!(s, "    /{k} = {}", show(d));
            }
        }
    }
    if s.is_empty() {
        s.push_str("    (empty)\n");
    }
    s
}

fn is_conflict_copy(path: &str) -> bool {
    name_of(path).contains("(conflicted copy ")
}

// ------------------------------------------------------------------------------------------
// The service, restarted

/// The run's `jewel-server` process, which a run stops and starts again on the same data and
/// port ([`Service::restart`]), so the devices' proxies and the observer find it again.
struct Service {
    url: String,
    addr: String,
    /// Its data folder (the SQLite database the trash is read from).
    data: std::path::PathBuf,
    /// The process; `None` while a restart has it down.
    process: std::sync::Mutex<Option<Server>>,
}

impl Service {
    fn start() -> Arc<Service> {
        let server = Server::start();
        Arc::new(Service {
            url: server.url.clone(),
            addr: server.addr.clone(),
            data: server.data.path().to_path_buf(),
            process: std::sync::Mutex::new(Some(server)),
        })
    }

    fn add_user(&self, name: &str) -> String {
        let process = self.process.lock().unwrap();
        process.as_ref().expect("the service is up").add_user(name)
    }

    /// Stops the process (`how`), keeps it down for `down`, and starts it again on the same
    /// data and port; returns once it answers. Blocking: run it beside the devices.
    fn restart(&self, how: Stop, down: Duration) {
        let server = self.process.lock().unwrap().take();
        let data = server.expect("the service is up").stop(how);
        // The outage itself (the devices work on meanwhile), not a wait for a condition.
        std::thread::sleep(down);
        let server = Server::start_at(data, &self.addr);
        *self.process.lock().unwrap() = Some(server);
    }
}

/// The chance, before each operation, that the service is restarted (when no restart is
/// under way): some 3 restarts in a run of 80 operations.
const RESTART_PERCENT: u64 = 4;

// ------------------------------------------------------------------------------------------
// One seed

/// One side of a split: devices that see each other (the ones online) or a device cut off
/// alone, with the model they share and the paths they changed.
struct Side {
    devs: Vec<usize>,
    view: View,
    touched: Vec<String>,
}

/// Which of three devices stay online in a split (they see each other and share a model;
/// the others are cut off, each alone): half the times two stay online and one is cut off,
/// three times in ten one stays online, twice in ten all three are cut off. Only three-device
/// runs draw it, so the two-device seeds keep their draws.
fn three_way_split(rng: &mut Rng) -> Vec<usize> {
    let roll = rng.below(10);
    let d = rng.below(3);
    match roll {
        0..=4 => (0..3).filter(|&i| i != d).collect(),
        5..=7 => vec![d],
        _ => vec![],
    }
}

struct Run {
    seed: u64,
    service: Arc<Service>,
    user: String,
    observer: HttpApi,
    /// Two devices, or three ([`Variant::three`]).
    devs: Vec<Dev>,
    log: Vec<String>,
    ops_done: usize,
    notes: Vec<String>,
    /// Whether phases of racing operations (both online, no waiting) are drawn too.
    race: bool,
    /// Whether a device cut off may crash and restart before it comes back.
    crash: bool,
    /// Each device's HTTP faults (on its proxy for the whole run), if any.
    plans: Vec<Option<Plan>>,
    token: String,
    /// The devices' caches live in `dir/<device name>`.
    dir: std::path::PathBuf,
    /// Whether the service is restarted at seeded points ([`Run::maybe_restart_service`]).
    restarts: bool,
    /// Draws the service restarts and how a crashed device starts again (its own generator,
    /// so the operations and crashes of a seed stay those of a run without them).
    restart_rng: Rng,
    /// The service restart under way (stopped, down, starting again), if any.
    restarting: Option<tokio::task::JoinHandle<()>>,
    /// Service restarts begun in this run.
    restarted: u64,
}

impl Run {
    fn fail(&self, what: String) -> String {
        let three = self.devs.len() == 3;
        let test = if self.race {
            "core_converges_when_devices_race"
        } else if self.crash && three {
            "core_model_on_three_devices"
        } else if self.crash {
            "core_model_with_crashes"
        } else {
            "core_matches_model_on_two_devices_with_outages"
        };
        let http = if self.plans.iter().any(Option::is_some) {
            ""
        } else {
            "JEWEL_MODEL_HTTP_FAULTS=0 "
        };
        let devices = if three { "JEWEL_MODEL_DEVICES=3 " } else { "" };
        let mut s = format!(
            "core model: seed {} failed (replay: {http}{devices}JEWEL_MODEL_SEED={} cargo test -p integration-tests --test core_model {test})\n  {what}\n  operations so far:\n",
            self.seed, self.seed
        );
        for l in &self.log {
            let _ = writeln!(s, "    {l}");
        }
        for (i, d) in self.devs.iter().enumerate() {
            let st = d.core.status();
            let _ = writeln!(
                s,
                "  device {} ({i}): online {} pending {} {:?} cursor {} conflicts {} last error {:?}",
                d.name, st.online, st.pending_uploads, st.pending, st.last_seq, st.conflicts, st.last_error
            );
            let _ = writeln!(
                s,
                "    HTTP faults: {}\n    hit: {}",
                self.plans[i]
                    .as_ref()
                    .map(show_plan)
                    .unwrap_or_else(|| "none".into()),
                show_hits(&d.proxy.stats())
            );
        }
        s
    }

    /// Applies one operation to device `dev` and its model; checks the result and the tree.
    async fn step(
        &mut self,
        dev: usize,
        op: &Op,
        view: &mut View,
        phase: &str,
    ) -> Result<(), String> {
        self.maybe_restart_service();
        let want = model_apply(view, op);
        let got = run_op(&self.devs[dev].core, op).await;
        let got_s = match &got {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e}"),
        };
        self.ops_done += 1;
        self.log.push(format!(
            "#{} [{phase}] {}: {op} => {got_s}",
            self.ops_done, self.devs[dev].name
        ));
        match (&want, &got) {
            (Ok(()), Ok(())) => {}
            (Err(w), Err(e)) if classify(e) == Some(*w) => {}
            _ => {
                return Err(self.fail(format!(
                    "{} {op}: model says {want:?}, core says {got_s}",
                    self.devs[dev].name
                )))
            }
        }
        // Read-your-writes: the device shows exactly its model, at once.
        let seen = walk_core(&self.devs[dev].core)
            .await
            .map_err(|e| self.fail(format!("{} after {op}: {e}", self.devs[dev].name)))?;
        if &seen != view {
            return Err(self.fail(format!(
                "{} after {op}: the device does not show its own change (model | device):\n{}",
                self.devs[dev].name,
                diff("model", view, "device", &seen)
            )));
        }
        Ok(())
    }

    /// Waits until every device is online, has uploaded everything, heard every change, and
    /// shows the same tree as the service; returns that tree.
    async fn settle(&self, what: &str) -> Result<View, String> {
        let all: Vec<usize> = (0..self.devs.len()).collect();
        self.settle_among(&all, what).await
    }

    /// [`Run::settle`] for the devices `devs` only (the ones online in a split; the others,
    /// cut off, hold changes the service has not seen).
    async fn settle_among(&self, devs: &[usize], what: &str) -> Result<View, String> {
        // A service restart takes a good part of it (SIGTERM's stop about 2 s, down up to
        // 2 s), and then a client waits out its backoff (up to 5 s, ±25 %) before each try,
        // several times when HTTP faults hit the tries after it: seed 141 of three devices
        // needed 15 s once its journal had met a restart, a 500 and throttles in a row.
        let deadline = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            let last = match self.settled_once(devs).await {
                Ok(v) => return Ok(v),
                Err(why) => why,
            };
            if start.elapsed() > deadline {
                return Err(self.fail(format!("{what}: not settled after {deadline:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn settled_once(&self, devs: &[usize]) -> Result<View, String> {
        let latest = self
            .observer
            .me()
            .await
            .map_err(|e| format!("me: {e}"))?
            .latest_seq;
        for d in devs.iter().map(|&i| &self.devs[i]) {
            let st = d.core.status();
            if !st.online || st.pending_uploads > 0 {
                return Err(format!(
                    "{}: online {} pending {} cursor {}",
                    d.name, st.online, st.pending_uploads, st.last_seq
                ));
            }
            if st.last_seq < latest {
                // The service sends a device only the changes in folders it listed: its
                // cursor passes the others with its next page. Heard all it needs when the
                // log holds nothing more for it but its own echoes, which the service holds
                // back up to a second (`OWN_ECHO_DELAY`). Were one of them still needed (an
                // echo repairs a name), the views below would differ and the wait go on.
                let device = d.core.device.load(std::sync::atomic::Ordering::Relaxed);
                let probe = HttpApi::new(&self.service.url, &self.token).unwrap();
                probe.set_device(device);
                let page = probe
                    .changes(st.last_seq, 500)
                    .await
                    .map_err(|e| format!("{}: changes: {e}", d.name))?;
                let others = page.events.iter().any(|e| e.device != Some(device));
                let cut = page.through.is_none_or(|t| t < page.latest_seq);
                if others || cut {
                    return Err(format!(
                        "{}: cursor {} < {latest}, {} changes for it waiting",
                        d.name,
                        st.last_seq,
                        page.events.len()
                    ));
                }
            }
        }
        let mut shown = Vec::with_capacity(devs.len());
        for &i in devs {
            shown.push(walk_core(&self.devs[i].core).await?);
        }
        let s = walk_server(&self.observer).await?;
        if shown.iter().any(|v| v != &shown[0] || held(v) != s) {
            let names: Vec<&str> = devs.iter().map(|&i| self.devs[i].name).collect();
            let mut msg = format!(
                "the devices and the service differ (path: {} | service):\n",
                names.join(" | ")
            );
            let helds: Vec<BTreeMap<String, Held>> = shown.iter().map(held).collect();
            let keys: BTreeSet<&String> = shown
                .iter()
                .flat_map(|v| v.keys())
                .chain(s.keys())
                .collect();
            for k in keys {
                let z = s.get(k);
                if helds.iter().all(|h| h.get(k) == z) {
                    continue;
                }
                let f = |e: Option<&Entry>| match e {
                    None => "-".to_string(),
                    Some(Entry::Dir) => "dir".to_string(),
                    Some(Entry::File(d)) => format!("file {}", show(d)),
                };
                let g = match z {
                    None => "-".to_string(),
                    Some(Held::Dir) => "dir".to_string(),
                    Some(h) => match helds.iter().position(|x| x.get(k) == Some(h)) {
                        Some(j) => format!("file (as {})", names[j]),
                        None => format!("{h:?}"),
                    },
                };
                let cols: Vec<String> = shown.iter().map(|v| f(v.get(k))).collect();
                let _ = writeln!(msg, "    /{k}: {} | {g}", cols.join(" | "));
            }
            return Err(msg);
        }
        // Still nothing pending (a change may have landed while we walked).
        for d in devs.iter().map(|&i| &self.devs[i]) {
            if d.core.status().pending_uploads > 0 {
                return Err(format!("{}: uploads pending again", d.name));
            }
        }
        if self
            .observer
            .me()
            .await
            .map_err(|e| e.to_string())?
            .latest_seq
            != latest
        {
            return Err("the service changed while we looked".into());
        }
        Ok(shown.swap_remove(0))
    }

    async fn wait_offline(&self, dev: usize) -> Result<(), String> {
        let start = Instant::now();
        while self.devs[dev].core.status().online {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(self.fail(format!(
                    "{} cut off but its status still says online",
                    self.devs[dev].name
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// At a seeded share of operations ([`RESTART_PERCENT`]), when no restart is under way,
    /// begins one beside the devices: the service is stopped (SIGTERM, a third of the times
    /// SIGKILL), stays down 0.2 to 2 s, and starts again on the same data and port. The
    /// devices keep working meanwhile; the oracle is unchanged (a settle waits for them to
    /// come back by themselves). Drawn before every operation, under way or not, so the
    /// points are the seed's.
    fn maybe_restart_service(&mut self) {
        let go = self.restart_rng.chance(RESTART_PERCENT);
        let how = if self.restart_rng.chance(33) {
            Stop::Kill
        } else {
            Stop::Term
        };
        let down = Duration::from_millis(200 + self.restart_rng.below(1801) as u64);
        let busy = self.restarting.as_ref().is_some_and(|r| !r.is_finished());
        if !self.restarts || !go || busy {
            return;
        }
        self.restarted += 1;
        self.log.push(format!(
            "-- the service restarts ({how:?}, down {} ms)",
            down.as_millis()
        ));
        let service = self.service.clone();
        self.restarting = Some(tokio::task::spawn_blocking(move || {
            service.restart(how, down)
        }));
    }

    /// Waits until a restart under way has the service answering again.
    async fn service_up(&mut self) -> Result<(), String> {
        if let Some(restart) = self.restarting.take() {
            if let Err(e) = restart.await {
                return Err(self.fail(format!("the service did not start again: {e}")));
            }
        }
        Ok(())
    }

    async fn go(&mut self, ops: usize) -> Result<(), String> {
        let mut crash_rng = Rng(self.seed ^ 0x5EED_C4A5);
        let mut gen = Gen {
            rng: Rng(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF),
            counter: 0,
        };
        let n = self.devs.len();
        let mut common = View::new();
        let mut done = 0;
        let mut phase_no = 0;
        while done < ops {
            phase_no += 1;
            let len = (3 + gen.rng.below(8)).min(ops - done);
            if self.race && gen.rng.chance(35) {
                // Racing: both online, no waiting between operations, so uploads and change
                // events cross. What each device sees meanwhile depends on timing, so the
                // operations are drawn from what the device shows, their results are not
                // checked, and only convergence is (replays are not exact here).
                let tag = format!("p{phase_no} racing");
                self.log.push(format!("-- {tag}"));
                for _ in 0..len {
                    let dev = gen.rng.below(n);
                    let shown = walk_racing(&self.devs[dev].core)
                        .await
                        .map_err(|e| self.fail(format!("{tag}: {e}")))?;
                    let op = gen.op(&shown, dev);
                    self.maybe_restart_service();
                    let got = run_op(&self.devs[dev].core, &op).await;
                    self.ops_done += 1;
                    self.log.push(format!(
                        "#{} [{tag}] {}: {op} => {}",
                        self.ops_done,
                        self.devs[dev].name,
                        match &got {
                            Ok(()) => "ok".to_string(),
                            Err(e) => e.to_string(),
                        }
                    ));
                    if let Err(e) = &got {
                        if classify(e).is_none() {
                            return Err(self.fail(format!("{tag}: {op} failed: {e}")));
                        }
                    }
                    let pause = gen.rng.below(40) as u64;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                done += len;
                for i in 0..n {
                    self.wait_drained(i).await?;
                }
                common = self.settle(&format!("after {tag}")).await?;
                self.log
                    .push(format!("-- settled: {} entries", common.len()));
            } else if gen.rng.chance(40) {
                // Connected: every change reaches the other device and the service, exactly.
                let tag = format!("p{phase_no} connected");
                for _ in 0..len {
                    let dev = gen.rng.below(n);
                    let op = gen.op(&common, dev);
                    self.step(dev, &op, &mut common, &tag).await?;
                    let merged = self.settle(&format!("after {op}")).await?;
                    if merged != common {
                        return Err(self.fail(format!(
                            "after {op} (connected): the devices and service do not hold the model (model | synced):\n{}",
                            diff("model", &common, "synced", &merged)
                        )));
                    }
                }
                done += len;
            } else {
                // Split: some devices cut off, each with its own model; the others online,
                // seeing each other, with one model they share.
                let online = if n == 2 {
                    // At most one online (the draws of every two-device seed so far).
                    match gen.rng.below(3) {
                        0 => vec![],
                        k => vec![k - 1],
                    }
                } else {
                    three_way_split(&mut gen.rng)
                };
                let cut_off: Vec<usize> = (0..n).filter(|i| !online.contains(i)).collect();
                let tag = self.split_tag(phase_no, &online);
                self.log.push(format!("-- {tag}"));
                for &i in &cut_off {
                    self.devs[i].api.set_offline(true);
                }
                for &i in &cut_off {
                    self.wait_offline(i).await?;
                }
                // Two devices: each its own side (the one online does not settle after each
                // operation). Three: the online ones are one side, each cut-off one another.
                let groups: Vec<Vec<usize>> = if n == 2 || online.is_empty() {
                    (0..n).map(|i| vec![i]).collect()
                } else {
                    std::iter::once(online.clone())
                        .chain(cut_off.iter().map(|&i| vec![i]))
                        .collect()
                };
                let start = common.clone();
                let mut sides: Vec<Side> = groups
                    .into_iter()
                    .map(|devs| Side {
                        devs,
                        view: common.clone(),
                        touched: vec![],
                    })
                    .collect();
                let side_of =
                    |dev: usize, sides: &[Side]| sides.iter().position(|s| s.devs.contains(&dev));
                for _ in 0..len {
                    let dev = gen.rng.below(n);
                    let side = side_of(dev, &sides).expect("every device is on a side");
                    let op = gen.op(&sides[side].view, dev);
                    let mut v = sides[side].view.clone();
                    self.step(dev, &op, &mut v, &tag).await?;
                    if n > 2 && online.contains(&dev) {
                        // The devices online see each other's changes: each of them, and
                        // the service, shows exactly the model they share.
                        let shared = self
                            .settle_among(&online, &format!("after {op} ({tag})"))
                            .await?;
                        if shared != v {
                            return Err(self.fail(format!(
                                "after {op} ({tag}): the devices online and the service do not hold their model (model | synced):\n{}",
                                diff("model", &v, "synced", &shared)
                            )));
                        }
                    }
                    sides[side].view = v;
                    sides[side].touched.extend(op.touches());
                }
                done += len;
                // The online devices finish their uploads first; then the others come back
                // one at a time, so which change reaches the service first is the seed's.
                for &i in &online {
                    self.wait_drained(i).await?;
                }
                let order: Vec<usize> = if n == 2 {
                    let first = gen.rng.below(2);
                    self.log
                        .push(format!("-- reconnect {} first", self.devs[first].name));
                    vec![first, 1 - first]
                } else {
                    let mut back = cut_off.clone();
                    for i in (1..back.len()).rev() {
                        back.swap(i, gen.rng.below(i + 1));
                    }
                    let names: Vec<&str> = back.iter().map(|&i| self.devs[i].name).collect();
                    self.log
                        .push(format!("-- reconnect {}", names.join(", then ")));
                    online.iter().chain(&back).copied().collect()
                };
                // Sometimes a device that was cut off and changed things crashes before it is
                // back: its core is dropped without a word and opened again on the same cache
                // (its journal is replayed). Drawn from its own generator, so the operations
                // of a seed stay the same.
                let crash = Some(crash_rng.below(n)).filter(|c| {
                    self.crash
                        && crash_rng.chance(35)
                        && !online.contains(c)
                        && side_of(*c, &sides).is_some_and(|s| !sides[s].touched.is_empty())
                });
                for i in order {
                    if crash == Some(i) {
                        let side = side_of(i, &sides).expect("every device is on a side");
                        let model = sides[side].view.clone();
                        self.restart(i, &model).await?;
                    } else {
                        self.devs[i].api.set_offline(false);
                    }
                    self.wait_drained(i).await?;
                }
                let merged = match self.settle(&format!("merge after {tag}")).await {
                    Ok(m) => m,
                    Err(e) => return Err(e + &self.lost_anywhere(&start, &sides)),
                };
                self.check_merge(&tag, &start, &sides, &merged)?;
                common = merged;
            }
        }
        Ok(())
    }

    /// A split's name in the log: "p3 both offline", "p4 only devA online", "p5 devA, devC
    /// online, devB cut off".
    fn split_tag(&self, phase_no: usize, online: &[usize]) -> String {
        let names = |pick: &dyn Fn(usize) -> bool| -> String {
            let n: Vec<&str> = (0..self.devs.len())
                .filter(|&i| pick(i))
                .map(|i| self.devs[i].name)
                .collect();
            n.join(", ")
        };
        match online {
            [] if self.devs.len() == 2 => format!("p{phase_no} both offline"),
            [] => format!("p{phase_no} all offline"),
            [d] if self.devs.len() == 2 => {
                format!("p{phase_no} only {} online", self.devs[*d].name)
            }
            _ => format!(
                "p{phase_no} {} online, {} cut off",
                names(&|i| online.contains(&i)),
                names(&|i| !online.contains(&i))
            ),
        }
    }

    /// Crashes device `dev`'s client (dropped: no drain, no goodbye, its tasks stopped where
    /// they are) and starts a new one on its cache as `jewelfs mount` would. Half the times
    /// (the seed's) the new client starts while the device is still cut off, from its saved
    /// tree and journal, and must show its own model at once before it is let back
    /// (`JEWEL_MODEL_OFFLINE_RESTARTS=0` starts it online every time).
    async fn restart(&mut self, dev: usize, model: &View) -> Result<(), String> {
        drop(self.devs[dev].running.take());
        let cut_off =
            self.restart_rng.chance(50) && env_num("JEWEL_MODEL_OFFLINE_RESTARTS") != Some(0);
        let name = self.devs[dev].name;
        self.log.push(format!(
            "-- {name} crashes and restarts{}",
            if cut_off {
                " (cut off: offline from its cache)"
            } else {
                ""
            }
        ));
        let proxy = self.devs[dev].proxy.clone();
        let fresh = open_device(proxy, &self.token, &self.dir, name, cut_off).await;
        drop(std::mem::replace(&mut self.devs[dev], fresh));
        if cut_off {
            let seen = walk_core(&self.devs[dev].core)
                .await
                .map_err(|e| self.fail(format!("{name} restarted offline: {e}")))?;
            if &seen != model {
                return Err(self.fail(format!(
                    "{name} restarted offline does not show what it had (model | device):\n{}",
                    diff("model", model, "device", &seen)
                )));
            }
            self.devs[dev].api.set_offline(false);
        }
        Ok(())
    }

    async fn wait_drained(&self, dev: usize) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let st = self.devs[dev].core.status();
            if st.online && st.pending_uploads == 0 {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(self.fail(format!(
                    "{} back online but its journal does not drain",
                    self.devs[dev].name
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After a failed merge: new content of the split that the service has nowhere at all
    /// (neither in the tree nor in the trash).
    fn lost_anywhere(&self, start: &View, sides: &[Side]) -> String {
        let Some(stored) = server_contents(&self.service, &self.user) else {
            return String::new();
        };
        let old: BTreeSet<&Vec<u8>> = start
            .values()
            .filter_map(|e| match e {
                Entry::File(d) => Some(d),
                Entry::Dir => None,
            })
            .collect();
        let mut s = String::new();
        for side in sides {
            for (path, e) in &side.view {
                if let Entry::File(d) = e {
                    if !d.is_empty() && !old.contains(d) && !stored.contains(&hashes_of(d)) {
                        let _ = writeln!(
                            s,
                            "  and LOST: {}'s new content of /{path} ({}) is nowhere on the service, not even in the trash",
                            self.side_name(side),
                            show(d)
                        );
                    }
                }
            }
        }
        s
    }

    /// The devices of a side, by name ("devA" or "devA+devC").
    fn side_name(&self, side: &Side) -> String {
        let names: Vec<&str> = side.devs.iter().map(|&i| self.devs[i].name).collect();
        names.join("+")
    }

    fn check_merge(
        &mut self,
        tag: &str,
        start: &View,
        sides: &[Side],
        merged: &View,
    ) -> Result<(), String> {
        let contents = |v: &View| -> BTreeSet<Vec<u8>> {
            v.values()
                .filter_map(|e| match e {
                    Entry::File(d) if !d.is_empty() => Some(d.clone()),
                    _ => None,
                })
                .collect()
        };
        let old = contents(start);
        let in_merged = contents(merged);
        let mut stored: Option<Option<BTreeSet<Vec<BlockHash>>>> = None;
        // 2. Nothing lost.
        for side in sides {
            for (path, e) in &side.view {
                let Entry::File(d) = e else { continue };
                // Old content may be overwritten or deleted by another device for good
                // (the service keeps no old versions); check 3 covers what nobody touched.
                if d.is_empty() || in_merged.contains(d) || old.contains(d) {
                    continue;
                }
                let on_server = stored
                    .get_or_insert_with(|| server_contents(&self.service, &self.user))
                    .as_ref()
                    .map(|s| s.contains(&hashes_of(d)));
                let (dev, shown) = (self.side_name(side), show(d));
                match on_server {
                    Some(true) => self.notes.push(format!(
                        "seed {}: {tag}: {dev}'s new content of /{path} ({shown}) survives only in the trash",
                        self.seed
                    )),
                    Some(false) => {
                        return Err(self.fail(format!(
                            "{tag}: {dev}'s new content of /{path} ({shown}) is lost: not in the merged tree, not in the trash\n  merged tree:\n{}",
                            dump(merged)
                        )))
                    }
                    None => {
                        return Err(self.fail(format!(
                            "{tag}: {dev}'s new content of /{path} ({shown}) is not in the merged tree (and sqlite3 is missing to look in the trash)\n  merged tree:\n{}",
                            dump(merged)
                        )))
                    }
                }
            }
        }
        // 3. Untouched paths keep what they held.
        let all_touched: Vec<&String> = sides.iter().flat_map(|s| &s.touched).collect();
        for (path, e) in start {
            if all_touched.iter().any(|t| is_prefix(t, path)) {
                continue;
            }
            if merged.get(path) != Some(e) {
                return Err(self.fail(format!(
                    "{tag}: /{path} was touched by no device but changed (before | merged):\n{}",
                    diff("before", start, "merged", merged)
                )));
            }
        }
        // 4. One writer: its model is the result.
        let writers: Vec<&Side> = sides.iter().filter(|s| !s.touched.is_empty()).collect();
        if writers.len() < 2 {
            let (who, model) = match writers.first() {
                Some(only) => (format!("only {}", self.side_name(only)), &only.view),
                None => ("no device".to_string(), start),
            };
            if model != merged {
                return Err(self.fail(format!(
                    "{tag}: {who} changed anything, yet the merge differs from its model (model | merged):\n{}",
                    diff("model", model, "merged", merged)
                )));
            }
        }
        // A conflict copy is new when no model holds it: one that was there before and a
        // device moved (with a directory above it) is in that device's model at its new
        // path, and is not new.
        let new_copy = |p: &&String| {
            is_conflict_copy(p)
                && !start.contains_key(*p)
                && !sides.iter().any(|s| s.view.contains_key(*p))
        };
        if writers.len() < 2 {
            if let Some(p) = merged.keys().find(new_copy) {
                return Err(self.fail(format!(
                    "{tag}: conflict copy /{p} although only one device changed anything"
                )));
            }
        }
        let copies = merged.keys().filter(new_copy).count();
        self.log.push(format!(
            "-- merged: {} entries, {copies} new conflict copies",
            merged.len()
        ));
        Ok(())
    }
}

impl Run {
    /// A run of `seed` for `user` on `service`, with a device per plan (two or three) started
    /// on caches in `dir` (through proxies with `plans`' HTTP faults).
    async fn new(
        seed: u64,
        service: Arc<Service>,
        user: String,
        token: String,
        dir: &std::path::Path,
        plans: Vec<Option<Plan>>,
        v: Variant,
    ) -> Run {
        assert!((2..=3).contains(&plans.len()), "two or three devices");
        let mut devs = Vec::with_capacity(plans.len());
        for (plan, name) in plans.iter().zip(DEVICE_NAMES) {
            let proxy = Arc::new(FaultProxy::start(&service.url));
            if let Some(plan) = plan {
                proxy.set(plan.clone());
            }
            devs.push(open_device(proxy, &token, dir, name, false).await);
        }
        Run {
            seed,
            observer: HttpApi::new(&service.url, &token).unwrap(),
            service,
            user,
            devs,
            log: vec![],
            ops_done: 0,
            notes: vec![],
            race: v.race,
            crash: v.crash,
            plans,
            token,
            dir: dir.to_path_buf(),
            restarts: v.restarts,
            restart_rng: Rng(seed ^ 0x0005_E4F1_CE00),
            restarting: None,
            restarted: 0,
        }
    }
}

async fn run_seed(
    service: Arc<Service>,
    user: String,
    token: String,
    seed: u64,
    ops: usize,
    v: Variant,
) -> Result<(Vec<String>, Vec<Stats>, u64), String> {
    let dir = tempfile::tempdir().unwrap();
    let devices = if v.three { 3 } else { 2 };
    let plans = (0..devices)
        .map(|dev| v.http.then(|| http_plan(seed, dev)))
        .collect();
    let mut run = Run::new(seed, service, user, token, dir.path(), plans, v).await;
    let result = run.go(ops).await;
    // Whatever happened, the service is up again for the next seed.
    run.service_up().await?;
    result?;
    // The end: everyone online, settled, and the same everywhere.
    for d in &run.devs {
        d.api.set_offline(false);
    }
    run.settle("at the end").await?;
    if std::env::var_os("JEWEL_MODEL_VERBOSE").is_some() {
        eprintln!("core model: seed {seed}:\n  {}", run.log.join("\n  "));
        for (d, plan) in run.devs.iter().zip(&run.plans) {
            if let Some(plan) = plan {
                eprintln!("  {} HTTP faults: {}", d.name, show_plan(plan));
            }
            eprintln!("  {} hit: {}", d.name, show_hits(&d.proxy.stats()));
        }
    }
    let stats = run.devs.iter().map(|d| d.proxy.stats()).collect();
    Ok((run.notes, stats, run.restarted))
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What a test adds to the connected and split phases of the default run.
#[derive(Debug, Clone, Copy, Default)]
struct Variant {
    /// Phases of racing operations too.
    race: bool,
    /// Devices cut off may crash and restart.
    crash: bool,
    /// HTTP faults on each device's proxy ([`http_plan`]); `JEWEL_MODEL_HTTP_FAULTS=0` turns
    /// them off (to tell a fault's part in a failure from the operations'), `=1` on.
    http: bool,
    /// Service restarts at seeded points ([`Run::maybe_restart_service`]);
    /// `JEWEL_MODEL_RESTARTS=0` turns them off, `=1` on.
    restarts: bool,
    /// Operations per seed, unless `JEWEL_MODEL_OPS` says (default 40).
    ops: Option<usize>,
    /// A third device (devC); `JEWEL_MODEL_DEVICES=3` turns it on in every test, `=2` off.
    three: bool,
}

/// Runs `seeds` (or the seeds the environment names) and fails with every failing seed.
fn run_seeds(default: &[u64], mut v: Variant) {
    // The clients' logs, when asked for (`RUST_LOG=jewelfs=debug`) to trace a failing seed.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match env_num("JEWEL_MODEL_HTTP_FAULTS") {
        Some(0) => v.http = false,
        Some(_) => v.http = true,
        None => {}
    }
    match env_num("JEWEL_MODEL_RESTARTS") {
        Some(0) => v.restarts = false,
        Some(_) => v.restarts = true,
        None => {}
    }
    match env_num("JEWEL_MODEL_DEVICES") {
        Some(3) => v.three = true,
        Some(2) => v.three = false,
        Some(n) => panic!("JEWEL_MODEL_DEVICES={n}: two or three devices"),
        None => {}
    }
    let seeds: Vec<u64> = match (env_num("JEWEL_MODEL_SEED"), env_num("JEWEL_MODEL_CASES")) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => {
            let from = env_num("JEWEL_MODEL_FROM").unwrap_or(1);
            (from..from + n).collect()
        }
        (None, None) => default.to_vec(),
    };
    let ops = env_num("JEWEL_MODEL_OPS").map_or(v.ops.unwrap_or(40), |n| n as usize);
    let faults = v.http;
    let count = seeds.len() as u64;
    let service = Service::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let mut hits: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut restarts = 0;
    for seed in seeds {
        let t = Instant::now();
        let user = format!("model{seed}x{}", std::process::id());
        let token = service.add_user(&user);
        match rt.block_on(run_seed(service.clone(), user, token, seed, ops, v)) {
            Ok((n, stats, restarted)) => {
                let faulted: u64 = stats.iter().map(Stats::faulted_total).sum();
                eprintln!(
                    "core model: seed {seed}: ok ({ops} ops, {faulted} HTTP faults, {restarted} service restarts, {:?})",
                    t.elapsed()
                );
                restarts += restarted;
                notes.extend(n);
                for (kind, n) in stats.iter().flat_map(|s| s.faulted.iter()) {
                    *hits.entry(kind).or_default() += n;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failures.push(seed);
            }
        }
    }
    for n in &notes {
        eprintln!("core model note: {n}");
    }
    if faults {
        eprintln!("core model: HTTP faults injected: {hits:?}");
    }
    if v.restarts {
        eprintln!("core model: service restarts: {restarts}");
    }
    assert!(
        failures.is_empty(),
        "core model: failing seeds {failures:?} (details above; replay one with JEWEL_MODEL_SEED=n)"
    );
    // A run with faults must have met them, or it proves less than it claims: a fault a
    // seed on average, and every kind of fault in a long run (a few seeds of 40 operations
    // meet some 30 faults, not always every kind).
    if faults {
        let total: u64 = hits.values().sum();
        assert!(
            total >= count,
            "core model: only {total} HTTP faults in {count} seeds: {hits:?}"
        );
    }
    // Likewise restarts: some 3 a seed of 80 operations, fewer in short runs.
    if v.restarts && count >= 10 {
        assert!(
            restarts > 0,
            "core model: no service restart in {count} seeds"
        );
    }
    if faults && count >= 50 {
        let kinds = fault_kinds(&mut Rng(0));
        let missing: Vec<&str> = kinds
            .iter()
            .map(|(f, _)| f.name())
            .filter(|name| !hits.contains_key(name))
            .collect();
        assert!(
            missing.is_empty(),
            "core model: no request met {missing:?} in these seeds: {hits:?}"
        );
    }
}

/// The default run (with the seeds below that once found bugs). `JEWEL_MODEL_SEED=n` /
/// `JEWEL_MODEL_CASES=n` choose other seeds.
#[test]
fn core_matches_model_on_two_devices_with_outages() {
    run_seeds(
        &[1, 2, 4, 7, 9, 10, 12, 14],
        Variant {
            http: true,
            restarts: true,
            ..Variant::default()
        },
    );
}

/// Seeds that found convergence bugs in the core (jewelfs/src/core), kept as regression
/// tests. In each, after both devices were back online with empty journals and their cursors
/// at the service's newest change, the two devices kept showing different trees (or lost an
/// edit):
/// - seed 11: **ghost after our own delete**. A deletes `/b` offline while B moved it to
///   `/e`; A's listener then caught up on B's older move event and linked it again at `/e`,
///   and skipped the `Remove` echo of its own delete. Fixed: our own `Remove` echo is applied
///   (a delete is final), and a successful delete forgets the node wherever it is listed.
/// - seed 3: **ghost after a conflicting create**. `upload_delete` only forgot a node that
///   was *not* linked at its place, so after `rename_local` had placed B's directory there,
///   A kept listing a directory the service had trashed. Fixed as seed 11.
/// - seeds 5, 6, 13, 23, 26: **"edit beats delete" copy invisible on the editing device**:
///   `recreate` + `adopt` kept the node's old local place, whose listing entry now named
///   another node. Fixed: a recreated file shows where the service put it. Seed 6 also found
///   a local node created and removed offline that stayed pinned and came back in the next
///   listing of its parent; fixed: a removed local node is forgotten.
/// - seed 16: **a refused move was never undone locally** (B kept showing its own move).
///   Fixed by reconciliation (`jewelfs/src/core/reconcile.rs`): a refusal marks every cached
///   listing, which is re-listed from the service once the journal is drained.
/// - seeds 8, 20, 21, 29: further stale places or names after a replace/move the device did
///   not see; fixed by the above and reconciliation.
/// - seed 34: **a lost edit**. A moved `/e` and appended to it offline, B appended to `/e`
///   online; A's move was retried on B's version and its answer was remembered as A's own
///   version, so A's content commit overwrote B's edit. Fixed: an answer that may carry
///   another device's content is not remembered as ours.
///
/// Seed 2 of the default run used to note that an `rmdir` of a directory that was empty on
/// one device deleted, on the service, a file the other device had created in it meanwhile
/// (the core always deleted with `recursive=true`). The core now deletes non-recursively; the
/// service refuses, and the directory comes back with its new content.
///
/// These replay the runs that found the bugs, without HTTP faults (those were found
/// without them; with them the set takes twice as long, and `make soak` runs these seeds
/// with faults among its thousand).
#[test]
fn core_model_seeds_that_found_bugs() {
    run_seeds(
        &[3, 5, 6, 8, 11, 13, 16, 20, 21, 23, 26, 29, 34],
        Variant::default(),
    );
}

/// Soak seeds (80 operations each, as `make soak` runs them) that found convergence bugs,
/// replayed without HTTP faults (they fail without them). In each, once both devices had
/// settled, one device never showed a node that the service and the other device held: the
/// data was safe on the service, but the user on that device did not see it.
/// - seeds 20, 162, 273, 308, 356, 391, 430, 527, 593: **a move that did not happen left
///   its node unlisted**. A device, cut off, moved a node into a folder that the other
///   device removed first (or replaced a file with a folder: 593); the service answered
///   "not found" (or refused), the uploader re-listed the move's target and the node's
///   place in the tree cache, which was the local place the app moved it to, and the place
///   where the service still held the node was listed again nowhere. Fixed: a move that
///   does not happen asks the service where the node lives and re-lists that folder.
/// - seed 472: **a folder hidden behind a local file that left its name**. B, cut off,
///   edited file `/b`; A moved it to `/d.txt`, made a folder `/b` and moved the file into it.
///   B's pending edit kept its file at `/b`, over A's folder (the name marked shadowed), and
///   when B's edit went up the answer placed the file in the folder: nothing listed the
///   root again, so B never showed the folder. Only a local rename or remove re-listed a
///   shadowed name; now `Tree::unlink`, the one way off a name, marks the folder for it.
///
/// The racing seeds 164 and 188 of [`core_converges_when_devices_race`] (80 operations) were
/// reported failing the same way; racing does not replay exactly, and each passed once both
/// before and after these fixes, so they are not kept here.
#[test]
fn core_model_soak_seeds_that_found_bugs() {
    run_seeds(
        &[20, 162, 273, 308, 356, 391, 430, 472, 527, 593],
        Variant {
            ops: Some(80),
            ..Variant::default()
        },
    );
}

/// Racing phases too: both devices online and changing things without waiting for each other
/// (uploads and change events cross), then convergence is checked. Timing decides what each
/// device sees, so a seed does not replay exactly. (Seed 4 once found a file kept at its
/// old place after a content conflict; seed 18 a directory merged with one created elsewhere
/// that stayed empty: its local listing was taken as complete. Both fixed; 20 seeds passed
/// repeatedly.)
#[test]
fn core_converges_when_devices_race() {
    run_seeds(
        &[1, 2, 3, 4, 18],
        Variant {
            race: true,
            http: true,
            restarts: true,
            ..Variant::default()
        },
    );
}

/// Outages as in the default run, and sometimes a device that was cut off crashes (its core
/// dropped without draining) and is opened again on the same cache before it comes back, so
/// its journal is replayed by a fresh core. The operations of a seed are those of the default
/// run; only the crashes are added.
///
/// Bugs these seeds found, now fixed:
/// - seed 2: an edit brought back as `/recovered file <id>` (a fresh core had forgotten the
///   deleted file's place) was not listed on the device that brought it back: a recreated
///   file now shows where the service put it.
/// - seed 7: **a journaled move did not show after a restart, and never landed**:
///   `replay_local_state` re-applies only creates and content, and when the move was
///   uploaded `apply_own` kept the tree's place because the journal still held a move of that
///   node (the very entry being uploaded). Fixed: only *later* moves keep the local place, and
///   pending moves and deletes are laid over every listing read from the service.
/// - seed 12: a ghost of the kind of seed 11 above.
#[test]
fn core_model_with_crashes() {
    run_seeds(
        &[2, 7, 12],
        Variant {
            crash: true,
            http: true,
            restarts: true,
            ..Variant::default()
        },
    );
}

/// Three devices (devA, devB, devC) with HTTP faults, service restarts and crashes. Their
/// splits are three-way: most often one device is cut off while the other two stay online and
/// see each other (both, and the service, must show exactly the model they share after each
/// operation), or one stays online alone, or all three are cut off; then the cut-off ones come
/// back one at a time, in the seed's order, and the merge is checked as with two (every
/// device's content kept, untouched paths unchanged, a lone writer's model exactly).
/// `JEWEL_MODEL_DEVICES=3` runs any other test with three devices; `make soak` runs this one
/// over many seeds.
#[test]
fn core_model_on_three_devices() {
    run_seeds(
        &[1, 2, 3],
        Variant {
            three: true,
            crash: true,
            http: true,
            restarts: true,
            ..Variant::default()
        },
    );
}

/// Three-device crash seeds that found bugs (`core_model_on_three_devices`' variant, its
/// first 30 operations), replayed with their HTTP faults and service restarts:
/// - seed 207: **a folder made offline showed empty after a crash**. devA, cut off, made
///   `/d.txt`, `/d.txt/e` and `/d.txt/a` and crashed before they went up; started again
///   online, it put the journaled nodes back but linked none into `/d.txt` (made here, so
///   its listing is complete from the start), and `/d.txt` stayed empty. Fixed in
///   `Core::replay_local_state` (`link_pinned`).
/// - seed 276: **a folder's later changes never reached the device that made it**. devC
///   made `/a/a` offline, crashed, and started again from its cache; the uploader sent the
///   folder as soon as the service answered, before the listener had attached the device,
///   so the service credited the folder to nobody and devC did not watch it: it never heard
///   of another machine's delete and conflict copy in it. Fixed: the uploader waits for the
///   device (`run_uploader`).
/// - seed 410: **a file moved offline into a folder made offline vanished after a crash**.
///   devB, cut off, made `/d.txt` and moved `/b` to `/d.txt/c.txt`, then crashed and
///   started offline from its cache. The saved tree holds `/b`'s node where it was moved to
///   and leaves out the folder made here, so no listing held the node and the start placed
///   it nowhere. Fixed in `Core::overlay_pending_in` (a pending move places its node even
///   when no listing holds it). Seed 397 and the crash variant's seed 96 each failed once on
///   the same check (a node moved offline not where its move put it after an offline
///   start) and passed on every replay, before and after the fix: timing decides what the
///   saved tree holds, and the fix places a pending move's node whatever it holds.
#[test]
fn core_model_three_device_crash_seeds_that_found_bugs() {
    run_seeds(
        &[207, 276, 410],
        Variant {
            three: true,
            crash: true,
            http: true,
            restarts: true,
            ops: Some(30),
            ..Variant::default()
        },
    );
}

/// Three-device seeds that found bugs, replayed with their HTTP faults (the faults a device
/// meets are drawn in the order it sends its requests, so a replay of operations that do not
/// race meets the same ones):
/// - racing seed 61 (its first 10 operations, a split, before any racing phase): **a conflict
///   copy never shown on the device that made it**. devA, cut off, renamed a new file onto
///   `/b`, a name the others filled meanwhile. Back online its move was refused (`exists`),
///   and it moved their file aside under a conflict name; the service did that move but its
///   answer came back torn. The rename, tried again, went ahead, and as the listener skips
///   our own echoes, devA never listed the conflict copy (and at times showed their file at
///   `/b` instead of its own). Fixed: a move aside whose answer is lost has its folder
///   re-listed once the journal drains (`keep_displaced` in `jewelfs/src/core/uploader.rs`).
#[test]
fn core_model_three_device_seeds_that_found_bugs() {
    run_seeds(
        &[61],
        Variant {
            three: true,
            race: true,
            http: true,
            ops: Some(10),
            ..Variant::default()
        },
    );
}

/// Seeds whose crashed device, started again offline, showed a tree from before its last
/// uploads (before the journal kept uploaded entries until a saved tree included them, see
/// `jewelfs/src/core/journal.rs`, and the listener saved the tree when the service went
/// away): seed 5 a file another device had moved in missing (the saved tree lagged the
/// feed), seed 29 a folder it had renamed another over and deleted back at its place (both
/// fail on the code before that fix).
#[test]
fn core_model_offline_starts_after_crashes() {
    run_seeds(
        &[5, 29],
        Variant {
            crash: true,
            http: true,
            restarts: true,
            ..Variant::default()
        },
    );
}

/// Soak seed 332 (80 operations, with or without HTTP faults): B, cut off, edits `d.txt`
/// and renames `a` over it, while A moves `d.txt` to `b`. On the service the rename replaces
/// nothing (`d.txt` was free by then) and the file lives on at `b` with B's edit; B, which
/// unlinked it when the app renamed, never listed it again, so the devices never converged.
#[test]
fn a_file_replaced_here_but_moved_away_there_is_listed_where_it_lives() {
    let service = Service::start();
    let token = service.add_user("mover");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result: Result<(), String> = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let run = Run::new(
            0,
            service.clone(),
            "mover".into(),
            token.clone(),
            dir.path(),
            vec![None, None],
            Variant::default(),
        )
        .await;
        let (a, b) = (&run.devs[0], &run.devs[1]);
        let op = |core: &Arc<Core>, op: Op| {
            let core = core.clone();
            async move { run_op(&core, &op).await.map_err(|e| format!("{op}: {e}")) }
        };
        op(
            &a.core,
            Op::Create {
                path: "d.txt".into(),
                data: b"first".to_vec(),
            },
        )
        .await?;
        op(
            &a.core,
            Op::Create {
                path: "a".into(),
                data: b"other".to_vec(),
            },
        )
        .await?;
        run.settle("both files on both devices").await?;

        b.api.set_offline(true);
        run.wait_offline(1).await?;
        op(
            &a.core,
            Op::Rename {
                from: "d.txt".into(),
                to: "b".into(),
            },
        )
        .await?;
        a.core.drain(Duration::from_secs(10)).await;
        op(
            &b.core,
            Op::Overwrite {
                path: "d.txt".into(),
                data: b"edited on B".to_vec(),
            },
        )
        .await?;
        op(
            &b.core,
            Op::Rename {
                from: "a".into(),
                to: "d.txt".into(),
            },
        )
        .await?;
        b.api.set_offline(false);
        let end = run.settle("after B comes back").await?;
        let want: View = [
            ("b".to_string(), Entry::File(b"edited on B".to_vec())),
            ("d.txt".to_string(), Entry::File(b"other".to_vec())),
        ]
        .into();
        if end != want {
            return Err(format!("merged tree:\n{}", dump(&end)));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A rename over a file that another device edited meanwhile keeps that edit as a conflict
/// copy beside the renamed file (before, the service sent the edit to the trash): B renames
/// `new.txt` over `doc.txt` while cut off, after A edited `doc.txt`.
#[test]
fn a_rename_over_a_file_edited_elsewhere_keeps_the_edit() {
    let service = Service::start();
    let token = service.add_user("renamer");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result: Result<(), String> = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let run = Run::new(
            0,
            service.clone(),
            "renamer".into(),
            token.clone(),
            dir.path(),
            vec![None, None],
            Variant::default(),
        )
        .await;
        let (a, b) = (&run.devs[0], &run.devs[1]);
        let create = |path: &str, data: &[u8]| Op::Create {
            path: path.into(),
            data: data.to_vec(),
        };
        run_op(&a.core, &create("doc.txt", b"first draft"))
            .await
            .map_err(|e| e.to_string())?;
        run_op(&a.core, &create("new.txt", b"the replacement"))
            .await
            .map_err(|e| e.to_string())?;
        run.settle("both files on both devices").await?;

        b.api.set_offline(true);
        run.wait_offline(1).await?;
        let edit = Op::Overwrite {
            path: "doc.txt".into(),
            data: b"edited on A".to_vec(),
        };
        run_op(&a.core, &edit).await.map_err(|e| e.to_string())?;
        a.core.drain(Duration::from_secs(10)).await;
        let rename = Op::Rename {
            from: "new.txt".into(),
            to: "doc.txt".into(),
        };
        run_op(&b.core, &rename).await.map_err(|e| e.to_string())?;
        b.api.set_offline(false);
        let end = run.settle("after B's rename").await?;

        let file = |p: &str| match end.get(p) {
            Some(Entry::File(d)) => Some(d.clone()),
            _ => None,
        };
        if file("doc.txt").as_deref() != Some(&b"the replacement"[..]) {
            return Err(format!("doc.txt is not B's renamed file: {}", dump(&end)));
        }
        if end.contains_key("new.txt") {
            return Err(format!("new.txt still there: {}", dump(&end)));
        }
        let kept = end.iter().any(|(p, e)| {
            is_conflict_copy(p) && matches!(e, Entry::File(d) if d == b"edited on A")
        });
        if !kept {
            return Err(format!(
                "A's edit is not kept as a conflict copy: {}",
                dump(&end)
            ));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
