//! Reference-model tests of the FUSE-free core: two devices (two [`Core`]s with their own
//! caches, uploaders and listeners) on one in-memory service, driven by seeded random
//! operation sequences, with outages. The model is a plain map `path → content`.
//!
//! - **sequential**: operations go to a random device one at a time, each followed by sync;
//!   after every step both devices must show exactly the model.
//! - **concurrent with outages**: both devices change things while the service is away,
//!   then it comes back; both devices must converge to the same tree as the service, and
//!   every file's last content on each device must survive (under its name, as a conflict
//!   copy, or where the other device moved the file; or in the trash, where a rename over it
//!   on the other device puts it) unless that file was deleted or renamed away on the device
//!   that wrote it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jewel_wire::*;

use super::api::{Api, ApiErr, ApiResult};
use super::blocks::sha256_hex;
use super::{Config, Core, CoreErr};

#[derive(Default)]
struct State {
    nodes: HashMap<NodeId, Node>,
    /// The block lists of removed files (the real service keeps them in its trash).
    trash: Vec<Vec<BlockHash>>,
    blocks: HashMap<String, Vec<u8>>,
    log: Vec<ChangeEvent>,
    next_id: NodeId,
    next_device: DeviceId,
}

/// The service, in memory, with the same rules as the real one (conditional writes).
struct Service {
    state: Mutex<State>,
    online: AtomicBool,
    /// While set, a create waits at the door (a request on its way) until it is cleared.
    hold_creates: AtomicBool,
    /// Told when a create is held, and when the hold is lifted.
    create_held: tokio::sync::Notify,
    creates_go: tokio::sync::Notify,
    /// While set, registering a device is refused (a full device list).
    refuse_devices: AtomicBool,
    /// While set, the next conflict copy's create is done but its answer lost: the service
    /// goes away right after it commits (and stays away until the test brings it back).
    lose_copy_answer: AtomicBool,
}

/// Stores a small file's block that came inline with its commit, as the real service does
/// (after checking it is the block the content names).
fn store_inline(st: &mut State, content: &Content) {
    if let Some(inline) = &content.inline {
        let hash = sha256_hex(&inline.0);
        if content.blocks == [hash.clone()] {
            st.blocks.insert(hash, inline.0.clone());
        }
    }
}

fn err(code: ErrorCode, msg: &str) -> ApiErr {
    ApiErr::Api(ApiError::new(code, msg))
}

impl Service {
    fn new() -> Arc<Service> {
        let mut st = State {
            next_id: 2,
            next_device: 1,
            ..Default::default()
        };
        st.nodes.insert(
            ROOT_ID,
            Node {
                id: ROOT_ID,
                parent: ROOT_ID,
                name: String::new(),
                kind: NodeKind::Dir,
                size: 0,
                mode: 0o755,
                mtime_ns: 0,
                version: 1,
                blocks: vec![],
                target: None,
            },
        );
        Arc::new(Service {
            state: Mutex::new(st),
            online: AtomicBool::new(true),
            hold_creates: AtomicBool::new(false),
            create_held: tokio::sync::Notify::new(),
            creates_go: tokio::sync::Notify::new(),
            lose_copy_answer: AtomicBool::new(false),
            refuse_devices: AtomicBool::new(false),
        })
    }

    fn up(&self) -> ApiResult<()> {
        if self.online.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(ApiErr::Offline("outage".into()))
        }
    }

    fn latest(&self) -> Seq {
        self.state.lock().unwrap().log.len() as Seq
    }

    /// Lets held creates (and later ones) through.
    fn release_creates(&self) {
        self.hold_creates.store(false, Ordering::SeqCst);
        self.creates_go.notify_waiters();
    }
}

impl State {
    fn child(&self, parent: NodeId, name: &str) -> Option<Node> {
        self.nodes
            .values()
            .find(|n| n.parent == parent && n.name == name && n.id != ROOT_ID)
            .cloned()
    }
    fn event(&mut self, op: ChangeOp, node: Node, from: Option<Place>, device: DeviceId) {
        let seq = self.log.len() as Seq + 1;
        self.log.push(ChangeEvent {
            inline: None,
            seq,
            op,
            node,
            from,
            device: Some(device),
            at_ns: 0,
        });
    }
    fn remove_tree(&mut self, id: NodeId, device: DeviceId) {
        let kids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.parent == id && n.id != id)
            .map(|n| n.id)
            .collect();
        for k in kids {
            self.remove_tree(k, device);
        }
        if let Some(n) = self.nodes.remove(&id) {
            self.trash.push(n.blocks.clone());
            self.event(ChangeOp::Remove, n, None, device);
        }
    }
}

/// One device's view of the service (its own device header).
struct Client {
    svc: Arc<Service>,
    device: AtomicU64,
}

impl Client {
    fn dev(&self) -> DeviceId {
        self.device.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Api for Client {
    async fn me(&self) -> ApiResult<Me> {
        self.svc.up()?;
        Ok(Me {
            user: "u".into(),
            root: ROOT_ID,
            latest_seq: self.svc.latest(),
            inline_content: true,
        })
    }
    async fn get_node(&self, id: NodeId) -> ApiResult<Node> {
        self.svc.up()?;
        self.svc
            .state
            .lock()
            .unwrap()
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, "no node"))
    }
    async fn list_children(&self, id: NodeId, _after: Option<String>) -> ApiResult<ListPage> {
        self.svc.up()?;
        let st = self.svc.state.lock().unwrap();
        let mut entries: Vec<Node> = st
            .nodes
            .values()
            .filter(|n| n.parent == id && n.id != ROOT_ID)
            .cloned()
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListPage {
            entries,
            next: None,
        })
    }
    async fn create(&self, req: &CreateNode) -> ApiResult<Node> {
        while self.svc.hold_creates.load(Ordering::SeqCst) {
            let go = self.svc.creates_go.notified();
            self.svc.create_held.notify_one();
            if !self.svc.hold_creates.load(Ordering::SeqCst) {
                break;
            }
            go.await;
        }
        self.svc.up()?;
        let mut st = self.svc.state.lock().unwrap();
        match st.nodes.get(&req.parent) {
            Some(p) if p.is_dir() => {}
            _ => return Err(err(ErrorCode::NotFound, "no parent")),
        }
        if let Some(cur) = st.child(req.parent, &req.name) {
            return Err(ApiErr::Api(
                ApiError::new(ErrorCode::Exists, "exists").with_current(cur),
            ));
        }
        let (kind, size, blocks, target) = match &req.kind {
            NewKind::File { content } => {
                store_inline(&mut st, content);
                if content.blocks.iter().any(|b| !st.blocks.contains_key(b)) {
                    return Err(err(ErrorCode::MissingBlocks, "missing"));
                }
                (NodeKind::File, content.size, content.blocks.clone(), None)
            }
            NewKind::Dir => (NodeKind::Dir, 0, vec![], None),
            NewKind::Symlink { target } => (
                NodeKind::Symlink,
                target.len() as u64,
                vec![],
                Some(target.clone()),
            ),
        };
        let id = st.next_id;
        st.next_id += 1;
        let node = Node {
            id,
            parent: req.parent,
            name: req.name.clone(),
            kind,
            size,
            mode: req.mode.unwrap_or(0o644),
            mtime_ns: req.mtime_ns.unwrap_or(0),
            version: 1,
            blocks,
            target,
        };
        st.nodes.insert(id, node.clone());
        let dev = self.dev();
        st.event(ChangeOp::Upsert, node.clone(), None, dev);
        if node.name.contains("(conflicted copy ")
            && self.svc.lose_copy_answer.swap(false, Ordering::SeqCst)
        {
            self.svc.online.store(false, Ordering::SeqCst);
            return Err(ApiErr::Offline("the answer was lost".into()));
        }
        Ok(node)
    }
    async fn commit(&self, id: NodeId, req: &CommitContent) -> ApiResult<Node> {
        self.svc.up()?;
        let mut st = self.svc.state.lock().unwrap();
        let Some(cur) = st.nodes.get(&id).cloned() else {
            return Err(err(ErrorCode::NotFound, "gone"));
        };
        if cur.version != req.base_version {
            return Err(ApiErr::Api(
                ApiError::new(ErrorCode::Conflict, "stale").with_current(cur),
            ));
        }
        store_inline(&mut st, &req.content);
        if req
            .content
            .blocks
            .iter()
            .any(|b| !st.blocks.contains_key(b))
        {
            return Err(err(ErrorCode::MissingBlocks, "missing"));
        }
        let mut n = cur;
        n.blocks = req.content.blocks.clone();
        n.size = req.content.size;
        n.version += 1;
        st.nodes.insert(id, n.clone());
        let dev = self.dev();
        st.event(ChangeOp::Upsert, n.clone(), None, dev);
        Ok(n)
    }
    async fn move_node(&self, id: NodeId, req: &MoveNode) -> ApiResult<MoveResult> {
        self.svc.up()?;
        let mut st = self.svc.state.lock().unwrap();
        let Some(cur) = st.nodes.get(&id).cloned() else {
            return Err(err(ErrorCode::NotFound, "gone"));
        };
        if cur.version != req.base_version {
            return Err(ApiErr::Api(
                ApiError::new(ErrorCode::Conflict, "stale").with_current(cur),
            ));
        }
        if !st.nodes.contains_key(&req.new_parent) {
            return Err(err(ErrorCode::NotFound, "no parent"));
        }
        let dev = self.dev();
        let mut other = None;
        if let Some(t) = st.child(req.new_parent, &req.new_name) {
            if t.id != id {
                if req.mode == MoveMode::NoReplace {
                    return Err(ApiErr::Api(
                        ApiError::new(ErrorCode::Exists, "exists").with_current(t),
                    ));
                }
                st.remove_tree(t.id, dev);
                other = Some(t);
            }
        }
        let from = Place {
            parent: cur.parent,
            name: cur.name.clone(),
        };
        let mut n = cur;
        n.parent = req.new_parent;
        n.name = req.new_name.clone();
        n.version += 1;
        st.nodes.insert(id, n.clone());
        st.event(ChangeOp::Upsert, n.clone(), Some(from), dev);
        Ok(MoveResult { node: n, other })
    }
    async fn set_attr(&self, id: NodeId, req: &SetAttr) -> ApiResult<Node> {
        self.svc.up()?;
        let mut st = self.svc.state.lock().unwrap();
        let Some(mut n) = st.nodes.get(&id).cloned() else {
            return Err(err(ErrorCode::NotFound, "gone"));
        };
        if let Some(m) = req.mode {
            n.mode = m;
        }
        if let Some(t) = req.mtime_ns {
            n.mtime_ns = t;
        }
        n.version += 1;
        st.nodes.insert(id, n.clone());
        let dev = self.dev();
        st.event(ChangeOp::Upsert, n.clone(), None, dev);
        Ok(n)
    }
    async fn delete(&self, id: NodeId, base_version: Version, recursive: bool) -> ApiResult<Node> {
        self.svc.up()?;
        let mut st = self.svc.state.lock().unwrap();
        let Some(cur) = st.nodes.get(&id).cloned() else {
            return Err(err(ErrorCode::NotFound, "gone"));
        };
        if cur.version != base_version {
            return Err(ApiErr::Api(
                ApiError::new(ErrorCode::Conflict, "stale").with_current(cur),
            ));
        }
        if cur.is_dir() && !recursive && st.nodes.values().any(|n| n.parent == id && n.id != id) {
            return Err(err(ErrorCode::NotEmpty, "directory not empty"));
        }
        let dev = self.dev();
        st.remove_tree(id, dev);
        Ok(cur)
    }
    async fn register_device(&self, name: &str) -> ApiResult<Device> {
        self.svc.up()?;
        if self.svc.refuse_devices.load(Ordering::SeqCst) {
            return Err(err(ErrorCode::Forbidden, "too many devices"));
        }
        let mut st = self.svc.state.lock().unwrap();
        let id = st.next_device;
        st.next_device += 1;
        Ok(Device {
            id,
            name: name.into(),
            listen: Listen::Poll,
        })
    }
    async fn changes(&self, since: Seq, limit: u32) -> ApiResult<ChangePage> {
        self.svc.up()?;
        let st = self.svc.state.lock().unwrap();
        let events = st
            .log
            .iter()
            .skip(since as usize)
            .take(limit as usize)
            .cloned()
            .collect();
        Ok(ChangePage {
            events,
            latest_seq: st.log.len() as Seq,
            through: None,
        })
    }
    async fn poll(&self, _device: DeviceId, since: Seq, _timeout_ms: u64) -> ApiResult<ChangePage> {
        for _ in 0..50 {
            self.svc.up()?;
            if self.svc.latest() > since {
                return self.changes(since, MAX_PAGE).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.changes(since, MAX_PAGE).await
    }
    async fn missing_blocks(&self, hashes: Vec<BlockHash>) -> ApiResult<MissingBlocks> {
        self.svc.up()?;
        let st = self.svc.state.lock().unwrap();
        let missing = hashes
            .into_iter()
            .filter(|h| !st.blocks.contains_key(h))
            .map(|h| BlockUrl {
                url: format!("/blob/{h}"),
                hash: h,
            })
            .collect();
        Ok(MissingBlocks { missing })
    }
    async fn batch(&self, _batch: &Batch) -> ApiResult<BatchAnswer> {
        // A service of the days before batches: changes go one by one.
        Err(err(ErrorCode::NotFound, "no such route"))
    }
    async fn block_urls(&self, hashes: Vec<BlockHash>) -> ApiResult<BlockUrls> {
        self.svc.up()?;
        let st = self.svc.state.lock().unwrap();
        let urls = hashes
            .into_iter()
            .filter(|h| st.blocks.contains_key(h))
            .map(|h| BlockUrl {
                url: format!("/blob/{h}"),
                hash: h,
            })
            .collect();
        Ok(BlockUrls { urls })
    }
    async fn put_block(&self, url: &str, bytes: Bytes) -> ApiResult<()> {
        self.svc.up()?;
        let hash = url.trim_start_matches("/blob/").to_string();
        assert_eq!(
            sha256_hex(&bytes),
            hash,
            "client sent a block under the wrong hash"
        );
        self.svc
            .state
            .lock()
            .unwrap()
            .blocks
            .insert(hash, bytes.to_vec());
        Ok(())
    }
    async fn get_block(&self, url: &str) -> ApiResult<Bytes> {
        self.svc.up()?;
        let hash = url.trim_start_matches("/blob/");
        let st = self.svc.state.lock().unwrap();
        st.blocks
            .get(hash)
            .cloned()
            .map(Bytes::from)
            .ok_or_else(|| err(ErrorCode::NotFound, "no block"))
    }
    fn set_device(&self, id: DeviceId) {
        self.device.store(id, Ordering::SeqCst);
    }
}

struct Device_ {
    core: Arc<Core>,
    _dir: tempfile::TempDir,
    /// The uploader and listener, stopped when the device is dropped (a crash).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Device_ {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens a client's core on its cache `dir` (nothing attached, nothing running).
fn open_core(svc: &Arc<Service>, dir: &std::path::Path, name: &str) -> Arc<Core> {
    let api = Arc::new(Client {
        svc: svc.clone(),
        device: AtomicU64::new(0),
    });
    let mut cfg = Config::new(dir.to_path_buf(), name.to_string());
    cfg.settle_ms = 1;
    Core::open(cfg, api).unwrap()
}

/// Starts a client on `dir` as `jewelfs mount` starts one online: connects and lists the
/// top folder (the caller runs the uploader and the listener, [`run_tasks`]).
async fn start_online(svc: &Arc<Service>, dir: &std::path::Path, name: &str) -> Arc<Core> {
    let core = open_core(svc, dir, name);
    core.connect().await.unwrap();
    core.ensure_listing(ROOT_ID).await.unwrap();
    core
}

fn run_tasks(core: &Arc<Core>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(core.clone().run_uploader()),
        tokio::spawn(core.clone().run_listener()),
    ]
}

async fn device(svc: &Arc<Service>, name: &str) -> Device_ {
    let dir = tempfile::tempdir().unwrap();
    let core = start_online(svc, dir.path(), name).await;
    Device_ {
        tasks: run_tasks(&core),
        core,
        _dir: dir,
    }
}

/// What a device shows: path → file content (directories as `None`).
async fn view(core: &Core) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_ID, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for n in core.readdir(dir).await.unwrap() {
            let path = format!("{prefix}/{}", n.name);
            if n.is_dir() {
                out.insert(path.clone(), None);
                stack.push((n.id, path));
            } else {
                let data = core.read(n.id, 0, n.size as u32 + 1).await.unwrap();
                out.insert(path, Some(data));
            }
        }
    }
    out
}

async fn settle(svc: &Service, devices: &[&Device_]) {
    // A deadline in time, not in rounds: under a loaded machine (the whole test suite at
    // once) each round's short sleep takes much longer than asked.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let latest = svc.latest();
        let idle = devices.iter().all(|d| {
            d.core.journal.pending() == 0
                && d.core.cursor.load(Ordering::SeqCst) >= latest
                && !d.core.has_suspects()
        });
        if idle && svc.latest() == latest {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let state: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                "pending {}, cursor {} of {}, suspects {}",
                d.core.journal.pending(),
                d.core.cursor.load(Ordering::SeqCst),
                svc.latest(),
                d.core.has_suspects()
            )
        })
        .collect();
    panic!("devices did not settle in 30 s: {state:?}");
}

/// The service's change log, one line per change, with each file's content as text.
fn service_history(svc: &Service) -> String {
    let st = svc.state.lock().unwrap();
    st.log
        .iter()
        .map(|e| {
            let content: Vec<String> = e
                .node
                .blocks
                .iter()
                .map(|b| {
                    st.blocks
                        .get(b)
                        .map(|c| String::from_utf8_lossy(c).to_string())
                        .unwrap_or_default()
                })
                .collect();
            format!(
                "seq {} dev {:?} {:?} node {} v{} {}/{} {:?} from {:?}",
                e.seq,
                e.device,
                e.op,
                e.node.id,
                e.node.version,
                e.node.parent,
                e.node.name,
                content,
                e.from.as_ref().map(|f| f.name.clone())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NAMES: [&str; 4] = ["a.txt", "b.txt", "c", "d.md"];

async fn write(core: &Core, parent: NodeId, name: &str, data: &[u8]) {
    assert!(
        try_write(core, parent, name, data).await,
        "{name} vanished while written"
    );
}

/// Writes a file as an editor would (open or create, truncate, write, close); false when
/// the other device's change raced it (the file vanished, or the name was just taken): the
/// errors a program sees then, and nothing was written.
async fn try_write(core: &Core, parent: NodeId, name: &str, data: &[u8]) -> bool {
    let id = match core.lookup(parent, name).await {
        Ok(n) => {
            if matches!(
                core.open_file(n.id, true, true).await,
                Err(CoreErr::NotFound)
            ) {
                return false;
            }
            n.id
        }
        Err(_) => match core.create_file(parent, name, 0o644).await {
            Ok(n) => n.id,
            // The other device's create of this name arrived since the lookup.
            Err(CoreErr::Exists) => return false,
            Err(e) => panic!("create {name}: {e}"),
        },
    };
    let id = core.resolve(id);
    match core.setattr(id, None, None, Some(0)).await {
        Err(CoreErr::NotFound) => {
            let _ = core.release(id, true);
            return false;
        }
        r => {
            r.unwrap();
        }
    }
    core.write(id, 0, data).unwrap();
    core.release(id, true).unwrap();
    true
}

async fn dir_id(core: &Core, create: bool) -> NodeId {
    match core.lookup(ROOT_ID, "dir").await {
        Ok(n) if n.is_dir() => n.id,
        _ if create => core.mkdir(ROOT_ID, "dir", 0o755).await.unwrap().id,
        _ => ROOT_ID,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_operations_match_the_model() {
    for seed in 1..=12u64 {
        let svc = Service::new();
        let a = device(&svc, "a").await;
        let b = device(&svc, "b").await;
        let mut model: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut rng = Rng(seed * 7919);
        let mut log = Vec::new();
        for step in 0..30 {
            let which = rng.below(2);
            let dev = if which == 0 { &a } else { &b };
            let core = &dev.core;
            let name = NAMES[rng.below(4) as usize];
            let in_dir = model.contains_key("/dir") && rng.below(2) == 0;
            let (parent, prefix) = if in_dir {
                (dir_id(core, false).await, "/dir")
            } else {
                (ROOT_ID, "")
            };
            let path = format!("{prefix}/{name}");
            let op = rng.below(5);
            log.push(format!("step {step}: device {which} op {op} on {path}"));
            match op {
                0 | 1 => {
                    let data = format!("seed {seed} step {step}").into_bytes();
                    write(core, parent, name, &data).await;
                    model.insert(path, Some(data));
                }
                2 => {
                    if model.get(&path).is_some_and(|c| c.is_some()) {
                        core.remove(parent, name, false).await.unwrap();
                        model.remove(&path);
                    }
                }
                3 => {
                    let to = NAMES[rng.below(4) as usize];
                    let to_path = format!("{prefix}/{to}");
                    if model.get(&path).is_some_and(|c| c.is_some()) && to != name {
                        core.rename(parent, name, parent, to, MoveMode::Replace)
                            .await
                            .unwrap();
                        let c = model.remove(&path).unwrap();
                        model.insert(to_path, c);
                    }
                }
                _ => {
                    if !model.contains_key("/dir") {
                        dir_id(core, true).await;
                        model.insert("/dir".into(), None);
                    }
                }
            }
            settle(&svc, &[&a, &b]).await;
            assert_eq!(
                view(&a.core).await,
                model,
                "device a, seed {seed} step {step}\n{}",
                log.join("\n")
            );
            assert_eq!(
                view(&b.core).await,
                model,
                "device b, seed {seed} step {step}\n{}",
                log.join("\n")
            );
        }
    }
}

/// Concurrent changes of the same names on both devices, online (no waiting between them)
/// and during outages. `JEWEL_ONLY_SEED=n` runs one seed.
///
/// It used to fail about one run in two (2026-11-25), from three causes, all fixed: the
/// answer to a move linked the node at its new name although a later journal entry deleted
/// it here (overwriting the entry of a new file of that name); an older event of another
/// node that held a name meanwhile took the entry of a node this device already knew newer,
/// then left the name empty (`keep_listed`); and a move's answer counted another device's
/// edit as ours, so our pending edit overwrote it without a conflict copy (seed 11, a lost
/// write). 26 runs in a row passed after the last fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_with_outages_converge() {
    let only: Option<u64> = std::env::var("JEWEL_ONLY_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("JEWEL_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    for seed in 1..=12u64 {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let svc = Service::new();
        let a = device(&svc, "a").await;
        let b = device(&svc, "b").await;
        let mut rng = Rng(seed * 104_729);
        // Last content each device wrote per name in the last round (deleted or renamed-away
        // names are dropped: a delete or a rename over the name may remove it).
        let mut last: Vec<HashMap<&str, Vec<u8>>> = vec![HashMap::new(), HashMap::new()];
        let mut log = Vec::new();
        for round in 0..4 {
            // The last round is always an outage: what both devices write then, unseen by
            // the other, must all survive.
            let outage = round == 3 || rng.below(2) == 0;
            if round == 3 {
                last = vec![HashMap::new(), HashMap::new()];
            }
            svc.online.store(!outage, Ordering::SeqCst);
            for step in 0..10 {
                let which = rng.below(2) as usize;
                let core = if which == 0 { &a.core } else { &b.core };
                let name = NAMES[rng.below(4) as usize];
                let op = rng.below(4);
                log.push(format!(
                    "round {round} (outage {outage}) step {step}: dev {which} op {op} {name}"
                ));
                match op {
                    0 | 1 => {
                        let data = format!("dev {which} round {round} step {step}").into_bytes();
                        if try_write(core, ROOT_ID, name, &data).await {
                            last[which].insert(name, data);
                        }
                    }
                    2 => {
                        if core.remove(ROOT_ID, name, false).await.is_ok() {
                            last[0].remove(name);
                            last[1].remove(name);
                        }
                    }
                    _ => {
                        let to = NAMES[rng.below(4) as usize];
                        log.push(format!("  (rename to {to})"));
                        if to != name
                            && core
                                .rename(ROOT_ID, name, ROOT_ID, to, MoveMode::Replace)
                                .await
                                .is_ok()
                        {
                            for l in last.iter_mut() {
                                l.remove(name);
                                l.remove(to);
                            }
                        }
                    }
                }
            }
            svc.online.store(true, Ordering::SeqCst);
            settle(&svc, &[&a, &b]).await;
        }
        // Settled means nothing pending; give a last listing a moment to land too.
        let (mut va, mut vb) = (view(&a.core).await, view(&b.core).await);
        for _ in 0..100 {
            if va == vb {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            settle(&svc, &[&a, &b]).await;
            (va, vb) = (view(&a.core).await, view(&b.core).await);
        }
        if va != vb {
            let show = |v: &BTreeMap<String, Option<Vec<u8>>>| -> Vec<String> {
                v.iter()
                    .map(|(k, c)| format!("{k} = {:?}", c.as_deref().map(String::from_utf8_lossy)))
                    .collect()
            };
            let mut why = String::new();
            for k in va.keys().chain(vb.keys()) {
                if va.get(k) == vb.get(k) {
                    continue;
                }
                let name = k.trim_start_matches('/');
                let on_service: Vec<Node> = svc
                    .state
                    .lock()
                    .unwrap()
                    .nodes
                    .values()
                    .filter(|n| n.parent == ROOT_ID && n.name == name)
                    .cloned()
                    .collect();
                for (d, core) in [("a", &a.core), ("b", &b.core)] {
                    let here = core.tree.child(ROOT_ID, name);
                    let sid = on_service.first().map(|n| n.id);
                    let node = sid.and_then(|i| core.tree.get(i));
                    why += &format!(
                        "  {k} on {d}: listed {here:?}, service {:?}, tree {:?}, pinned {:?}, local changes {:?}\n",
                        on_service.first().map(|n| (n.id, n.version)),
                        node.map(|n| (n.parent, n.name.clone(), n.version)),
                        sid.map(|i| core.tree.is_pinned(i)),
                        sid.map(|i| core.has_local_changes(i)),
                    );
                }
            }
            panic!(
                "seed {seed}: the devices did not converge\na: {:#?}\nb: {:#?}\n{why}{}",
                show(&va),
                show(&vb),
                log.join("\n")
            );
        }
        let server: Vec<String> = {
            let st = svc.state.lock().unwrap();
            let mut v: Vec<String> = st
                .nodes
                .values()
                .filter(|n| n.parent == ROOT_ID && n.id != ROOT_ID)
                .map(|n| format!("/{}", n.name))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            va.keys().cloned().collect::<Vec<_>>(),
            server,
            "devices differ from the service (seed {seed})"
        );
        for l in &last {
            for (name, data) in l {
                // Under its name, as a conflict copy, or wherever the other device moved the
                // file meanwhile (the edit follows the file, possibly into a conflict copy of
                // its new name).
                let kept = va.values().any(|c| c.as_deref() == Some(data.as_slice()))
                    || svc
                        .state
                        .lock()
                        .unwrap()
                        .trash
                        .contains(&vec![sha256_hex(data)]);
                assert!(
                    kept,
                    "seed {seed}: the last write of {name} ({}) was lost: {va:?}\n{}\n{}",
                    String::from_utf8_lossy(data),
                    log.join("\n"),
                    service_history(&svc)
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_delete_on_one_device() {
    for _ in 0..20 {
        let svc = Service::new();
        let a = device(&svc, "a").await;
        let b = device(&svc, "b").await;
        write(&a.core, ROOT_ID, "c", b"x").await;
        settle(&svc, &[&a, &b]).await;
        let listing = a.core.tree.listing(ROOT_ID);
        let id = a.core.tree.child(ROOT_ID, "c").flatten().unwrap();
        let local_view = a.core.view(id);
        let server_view = svc.state.lock().unwrap().nodes.get(&id).cloned();
        let listing = format!("{listing:?}\nlocal {local_view:?}\nserver {server_view:?}");
        a.core.remove(ROOT_ID, "c", false).await.unwrap();
        let after = a.core.tree.listing(ROOT_ID);
        settle(&svc, &[&a, &b]).await;
        let v = view(&a.core).await;
        assert!(
            v.is_empty(),
            "{v:?} listing before {listing:?} after remove {after:?} now {:?}",
            a.core.tree.listing(ROOT_ID)
        );
    }
}

/// A file removed while its create is on its way to the service stays removed (git does
/// this with its `index.lock`): the delete, journaled against the version this device knew
/// then, used to be taken for the delete of a file another device had edited meanwhile, so
/// the file came back and git found its lock still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_while_its_create_is_on_its_way_stays_removed() {
    let svc = Service::new();
    let a = device(&svc, "a").await;
    svc.hold_creates.store(true, Ordering::SeqCst);
    let held = svc.create_held.notified();
    write(&a.core, ROOT_ID, "index.lock", b"the new index").await;
    tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the uploader sends the create");
    a.core.remove(ROOT_ID, "index.lock", false).await.unwrap();
    svc.release_creates();
    settle(&svc, &[&a]).await;
    assert!(view(&a.core).await.is_empty(), "the removed file came back");
    let st = svc.state.lock().unwrap();
    assert!(
        st.nodes.values().all(|n| n.id == ROOT_ID),
        "the service keeps the removed file"
    );
}

/// A device whose saved tree says "seq 0" (saved before the user's first change) and that
/// starts again from it catches up from there: 0 is a position, not "unknown" (it used to
/// jump to the newest change, and the folders it had saved never showed what came since).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_tree_saved_at_seq_0_catches_up() {
    let svc = Service::new();
    let a = device(&svc, "a").await;
    assert_eq!(a.core.cursor.load(Ordering::SeqCst), 0);
    a.core.save_snapshot().unwrap();
    let b = device(&svc, "b").await;
    write(&b.core, ROOT_ID, "x", b"made while a was away").await;
    settle(&svc, &[&b]).await;

    let again = open_core(&svc, a._dir.path(), "a");
    assert!(again.load_snapshot().unwrap());
    again.connect().await.unwrap();
    // As a mount starts it: the uploader too (it also reads the cached listings again as the
    // device this test service registers anew).
    tokio::spawn(again.clone().run_uploader());
    tokio::spawn(again.clone().run_listener());
    let restarted = Device_ {
        tasks: vec![],
        core: again,
        _dir: tempfile::tempdir().unwrap(),
    };
    settle(&svc, &[&restarted]).await;
    let v = view(&restarted.core).await;
    assert_eq!(
        v.get("/x"),
        Some(&Some(b"made while a was away".to_vec())),
        "{v:?}"
    );
}

/// Folders and a file made inside a folder made here, all while the service was away, show
/// where the app left them after a crash and an online start, before and after they upload.
/// The start pinned each journaled node but linked none into a folder made here (whose
/// listing is complete and empty): the folder showed empty for good (three-device model
/// seed 207).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_made_in_a_new_folder_offline_shows_after_a_crash_and_an_online_start() {
    let svc = Service::new();
    let dir = tempfile::tempdir().unwrap();
    let a = start_online(&svc, dir.path(), "a").await;
    let tasks = run_tasks(&a);
    svc.online.store(false, Ordering::SeqCst);
    let d = a.mkdir(ROOT_ID, "d", 0o755).await.unwrap();
    a.mkdir(d.id, "e", 0o755).await.unwrap();
    write(&a, d.id, "f", b"made offline").await;
    let before = view(&a).await;
    for t in &tasks {
        t.abort(); // the crash: nothing drains, nothing is saved
    }
    drop(a);
    svc.online.store(true, Ordering::SeqCst);

    let again = start_online(&svc, dir.path(), "a").await;
    assert_eq!(view(&again).await, before, "at once after the start");
    let restarted = Device_ {
        tasks: run_tasks(&again),
        core: again,
        _dir: dir,
    };
    settle(&svc, &[&restarted]).await;
    assert_eq!(view(&restarted.core).await, before, "once uploaded");
}

/// A file of the service's moved into a folder made here, both while the service was
/// away, shows there after a crash and an offline start from the saved tree. The saved tree
/// holds the file where it was moved to and leaves out the folder made here, so no listing
/// held the file and the start placed it nowhere: it was gone from the view
/// (three-device model seed 410).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_offline_into_a_new_folder_shows_after_an_offline_start() {
    let svc = Service::new();
    let dir = tempfile::tempdir().unwrap();
    let core = start_online(&svc, dir.path(), "a").await;
    let device = Device_ {
        tasks: run_tasks(&core),
        core,
        _dir: tempfile::tempdir().unwrap(),
    };
    let a = device.core.clone();
    write(&a, ROOT_ID, "b", b"the service's file").await;
    settle(&svc, &[&device]).await;
    svc.online.store(false, Ordering::SeqCst);
    let d = a.mkdir(ROOT_ID, "d", 0o755).await.unwrap();
    a.rename(ROOT_ID, "b", d.id, "c", MoveMode::Replace)
        .await
        .unwrap();
    let before = view(&a).await;
    assert_eq!(
        before.get("/d/c"),
        Some(&Some(b"the service's file".to_vec()))
    );
    a.save_snapshot().unwrap();
    for t in &device.tasks {
        t.abort(); // the crash
    }
    drop((a, device));

    let again = open_core(&svc, dir.path(), "a");
    assert!(again.load_snapshot().unwrap());
    assert_eq!(view(&again).await, before, "started offline from the cache");
}

/// A mount that starts offline from its cache sends nothing before it is attached as a
/// device, so the service credits its changes to it: a folder it made is then one it
/// watches, and hears of (the real service sends a device only the changes in folders it
/// listed or made). The uploader used to send the journal as soon as the service answered,
/// before the listener had attached the device: the folder went up as nobody's, and the
/// device never heard of another machine's changes in it (three-device seed 276).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_an_offline_start_go_up_as_this_device() {
    let svc = Service::new();
    let dir = tempfile::tempdir().unwrap();
    let a = start_online(&svc, dir.path(), "a").await;
    let tasks = run_tasks(&a);
    a.save_snapshot().unwrap();
    svc.online.store(false, Ordering::SeqCst);
    a.mkdir(ROOT_ID, "made offline", 0o755).await.unwrap();
    for t in &tasks {
        t.abort(); // the crash
    }
    drop(a);

    // Started offline from the cache (as `jewelfs mount` does when the service is away),
    // then the service is back, but the listener (which attaches the device) is not running.
    let again = open_core(&svc, dir.path(), "a");
    assert!(again.load_snapshot().unwrap());
    svc.online.store(true, Ordering::SeqCst);
    let uploader = tokio::spawn(again.clone().run_uploader());
    let made = || {
        let st = svc.state.lock().unwrap();
        st.log
            .iter()
            .find(|e| e.node.name == "made offline")
            .map(|e| e.device)
    };
    // A window for the uploader to send it, which it must not take: nothing else can tell
    // that it is waiting.
    let window = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < window {
        assert_eq!(made(), None, "sent before the device was attached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarted = Device_ {
        tasks: vec![uploader, tokio::spawn(again.clone().run_listener())],
        core: again,
        _dir: dir,
    };
    settle(&svc, &[&restarted]).await;
    let device = restarted.core.device.load(Ordering::SeqCst);
    assert_ne!(device, 0);
    assert_eq!(
        made(),
        Some(Some(device)),
        "the folder went up as this device"
    );
}

/// A mount the service will not take as a device (its device list is full) uploads
/// nothing, keeps its changes and says why in `status`; once the service takes it, the
/// changes go up and the message goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_refused_as_a_device_keeps_its_changes_and_says_why() {
    let svc = Service::new();
    svc.refuse_devices.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let core = open_core(&svc, dir.path(), "a");
    assert!(core.connect().await.is_err());
    let a = Device_ {
        tasks: run_tasks(&core),
        core,
        _dir: dir,
    };
    write(&a.core, ROOT_ID, "kept.txt", b"made while refused").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = a.core.status();
        if st
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(super::listener::NOT_A_DEVICE))
        {
            assert_eq!(st.pending_uploads, 1, "the change waits");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never said why: {:?}",
            st.last_error
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    svc.refuse_devices.store(false, Ordering::SeqCst);
    settle(&svc, &[&a]).await;
    assert_eq!(a.core.status().last_error, None);
    let st = svc.state.lock().unwrap();
    assert!(st.nodes.values().any(|n| n.name == "kept.txt"));
}

/// A conflict copy whose create answer was lost is made once: the retry names it as the
/// first try did (after the edit's time, not the clock's), so the service answers "exists,
/// with this content" and the copy that is there counts. It used to be named after the
/// clock: a retry in a later second made a second copy, and the first one, announced only by
/// this device's own (skipped) echo, stayed unlisted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_copy_whose_answer_is_lost_is_made_once() {
    let svc = Service::new();
    let a = device(&svc, "a").await;
    let b = device(&svc, "b").await;
    write(&a.core, ROOT_ID, "f.txt", b"first").await;
    settle(&svc, &[&a, &b]).await;
    svc.online.store(false, Ordering::SeqCst);
    write(&a.core, ROOT_ID, "f.txt", b"a's edit").await;
    write(&b.core, ROOT_ID, "f.txt", b"b's edit").await;
    svc.lose_copy_answer.store(true, Ordering::SeqCst);
    svc.online.store(true, Ordering::SeqCst);
    // The copy is made and its answer lost (the service goes away with it): wait for that,
    // then for the clock's next second, before the retry may go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while svc.lose_copy_answer.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "no conflict copy was made"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second =
        |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let lost_at = second(std::time::SystemTime::now());
    while second(std::time::SystemTime::now()) == lost_at {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    svc.online.store(true, Ordering::SeqCst);
    settle(&svc, &[&a, &b]).await;
    let copies = |v: &BTreeMap<String, Option<Vec<u8>>>| {
        v.keys().filter(|k| k.contains("(conflicted copy ")).count()
    };
    let on_service = svc
        .state
        .lock()
        .unwrap()
        .nodes
        .values()
        .filter(|n| n.name.contains("(conflicted copy "))
        .count();
    assert_eq!(on_service, 1, "conflict copies on the service");
    for d in [&a, &b] {
        let v = view(&d.core).await;
        assert_eq!(copies(&v), 1, "{v:?}");
        assert_eq!(v.len(), 2, "{v:?}");
    }
}

/// A new file renamed over one whose own change is still journaled (both made while the
/// service was away): the rename wins on the service and here, and the replaced file's last
/// content goes to the trash. The rename used to be folded into a content change queued
/// *before* the replaced file's change, which then went up over it: the new content was
/// gone from the tree (convergence seed 6780351).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_renamed_over_a_file_changed_offline_wins() {
    let svc = Service::new();
    let a = device(&svc, "a").await;
    write(&a.core, ROOT_ID, "a.txt", b"first").await;
    settle(&svc, &[&a]).await;
    svc.online.store(false, Ordering::SeqCst);
    write(&a.core, ROOT_ID, "b.txt", b"the new content").await;
    write(&a.core, ROOT_ID, "a.txt", b"first, edited offline").await;
    a.core
        .rename(ROOT_ID, "b.txt", ROOT_ID, "a.txt", MoveMode::Replace)
        .await
        .unwrap();
    svc.online.store(true, Ordering::SeqCst);
    settle(&svc, &[&a]).await;
    let v = view(&a.core).await;
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        v.get("/a.txt"),
        Some(&Some(b"the new content".to_vec())),
        "{v:?}"
    );
    let st = svc.state.lock().unwrap();
    let on_service = st
        .nodes
        .values()
        .find(|n| n.name == "a.txt")
        .map(|n| n.blocks.clone());
    assert_eq!(on_service, Some(vec![sha256_hex(b"the new content")]));
    assert!(
        st.trash
            .contains(&vec![sha256_hex(b"first, edited offline")]),
        "the replaced content is in the trash"
    );
}

/// A file made while the service was away, then moved into a folder made after it: both
/// arrive, the file in its folder. Its pending create used to be rewritten to name that
/// folder, went up before the folder existed and was kept at the top instead (convergence
/// seed 6780351: a machine that showed the file in its folder, a service that had it at
/// the top, never converging).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_moved_into_a_newer_folder_arrives_there() {
    let svc = Service::new();
    let a = device(&svc, "a").await;
    let b = device(&svc, "b").await;
    svc.online.store(false, Ordering::SeqCst);
    write(&a.core, ROOT_ID, "notes.txt", b"made first").await;
    let dir = a.core.mkdir(ROOT_ID, "later", 0o755).await.unwrap();
    a.core
        .rename(ROOT_ID, "notes.txt", dir.id, "notes.txt", MoveMode::Replace)
        .await
        .unwrap();
    svc.online.store(true, Ordering::SeqCst);
    settle(&svc, &[&a, &b]).await;
    let want: BTreeMap<String, Option<Vec<u8>>> = [
        ("/later".to_string(), None),
        ("/later/notes.txt".to_string(), Some(b"made first".to_vec())),
    ]
    .into_iter()
    .collect();
    assert_eq!(view(&a.core).await, want);
    assert_eq!(view(&b.core).await, want);
}
