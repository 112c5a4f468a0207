//! Faults at the HTTP layer, end to end: machine A mounts the drive through
//! [`FaultProxy`](integration_tests::fault_proxy) (a reverse proxy in front of the real
//! `jewel-server` that throttles, answers with HTML error pages, tears answers, drops
//! connections before and after the service did the work, and slows answers), machine B
//! mounts it directly. What is checked is the user's intent, not only that A and B agree:
//!
//! - every operation A made (40 new files, then 10 renames, then 10 edits, each phase
//!   uploaded before the next so that each is a request of its own, each with its own known
//!   content) is on B exactly: the new names with their final contents, the renamed files
//!   only under their new names, nothing else (no duplicates, no conflict copies);
//! - on A itself nothing is ever undone, also while it uploads: right after each rename the
//!   old name is gone and the new one holds the content, and A's tree equals what A did at
//!   every check until B has it all;
//! - on the service: every file is one node (a create retried after its answer was lost did
//!   not make a second one), the trash is empty, and nothing was refused for good (A's
//!   `refused/` folder is empty: an HTML 413 or a torn 200 is not the service's refusal);
//! - the faults did fire (the proxy's counters), on creates, moves and content commits
//!   alike, so a test cannot pass by the proxy being idle;
//! - a mount whose start is throttled waits and mounts; `jewelfs status` shows the retrying
//!   while the service throttles, and clears once traffic passes.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and FUSE, like `mount_*.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use integration_tests::fault_proxy::{Fault, FaultProxy, Plan, Scope, Stats};
use integration_tests::seeded::bytes;
use integration_tests::*;
use jewel_wire::*;

/// How long B may take to show everything A did (faults make A retry with backoff; the
/// scenarios converge in 10 to 30 s).
const SYNC: Duration = Duration::from_secs(90);

/// File name → content.
type Tree = BTreeMap<String, Vec<u8>>;

/// A server, a proxy in front of it, A mounted through the proxy and B directly. Fields drop
/// in order: the mounts first, the server last.
struct Setup {
    a: Mount,
    b: Mount,
    proxy: FaultProxy,
    token: String,
    server: Server,
}

impl Setup {
    fn new() -> Setup {
        let server = Server::start();
        let token = server.add_user("ann");
        let proxy = FaultProxy::start(&server.url);
        let a = Mount::with_url(&proxy.url, &token, "a");
        let b = Mount::new(&server, &token, "b");
        Setup {
            a,
            b,
            proxy,
            token,
            server,
        }
    }

    /// GET on the service directly (not through the proxy).
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}{API_PREFIX}{path}", self.server.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().unwrap()
    }

    /// The whole change log.
    fn log(&self) -> Vec<ChangeEvent> {
        let mut events = Vec::new();
        let mut since = 0;
        loop {
            let page: ChangePage = self.get(&format!("/changes?since={since}"));
            if page.events.is_empty() {
                return events;
            }
            since = page.events.last().unwrap().seq;
            events.extend(page.events);
        }
    }
}

/// The content of file `i` in its `version`: a readable first line, then bytes of assorted
/// sizes (a few bytes, one block, two blocks), all distinct.
fn content(i: usize, version: u64) -> Vec<u8> {
    let len = match (i + version as usize) % 8 {
        0 => 20,
        1 => 4096,
        2 => 70_000,
        3 => 1_000 + i * 13,
        4 => 333,
        5 => 150_000,
        6 => 9,
        _ => BLOCK_SIZE as usize + 17,
    };
    let mut out = format!("file {i} version {version}\n").into_bytes();
    out.extend(bytes(len, (i as u64) << 8 | version));
    out
}

/// Names and sizes of the files at the top of a mount (cheap to check often).
fn shape(dir: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().map(|m| m.len()).unwrap_or(u64::MAX))
        })
        .collect()
}

/// The files at the top of a mount with their contents.
fn tree(dir: &Path) -> Tree {
    shape(dir)
        .into_keys()
        .map(|name| {
            let content = fs::read(dir.join(&name)).unwrap_or_default();
            (name, content)
        })
        .collect()
}

fn shape_of(model: &Tree) -> BTreeMap<String, u64> {
    model
        .iter()
        .map(|(n, c)| (n.clone(), c.len() as u64))
        .collect()
}

/// What differs between a tree and what it should be, by name ("" when nothing).
fn diff<V: PartialEq>(got: &BTreeMap<String, V>, want: &BTreeMap<String, V>) -> String {
    let mut out = Vec::new();
    for name in want.keys().filter(|n| !got.contains_key(*n)) {
        out.push(format!("missing {name}"));
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        out.push(format!("extra {name}"));
    }
    for (name, v) in want {
        if got.get(name).is_some_and(|g| g != v) {
            out.push(format!("different {name}"));
        }
    }
    out.join(", ")
}

/// A's work, in three phases: 40 new files, then 10 renames, then 10 edits (5 of them on
/// renamed files), each checked on A at once. A phase starts once the one before is
/// uploaded (the renames one by one), so renames and edits go to the service as moves and
/// commits of their own
/// (pending ones would be folded into the creates), and the plan starts again from its seed
/// at each phase, so which of a phase's requests are hit does not depend on the timing of
/// the one before. Returns what A's tree must be.
fn workload(s: &Setup, plan: &Plan) -> Tree {
    let a = &s.a;
    let mut model = Tree::new();
    s.proxy.set(plan.clone());
    // In waves of five, as an app saves now and then: each wave is a batch or a few of its
    // own (one burst would go up in one or two requests, too few for the faults to hit).
    for wave in 0..8 {
        for i in wave * 5..wave * 5 + 5 {
            let name = format!("f-{i:02}.bin");
            let data = content(i, 1);
            fs::write(a.p(&name), &data).unwrap();
            model.insert(name, data);
        }
        drain(s, &model, "the creates");
    }
    assert_eq!(diff(&tree(a.path()), &model), "", "A after its creates");

    s.proxy.set(plan.clone());
    for i in 0..10 {
        let (old, new) = (format!("f-{i:02}.bin"), format!("r-{i:02}.bin"));
        fs::rename(a.p(&old), a.p(&new)).unwrap();
        let data = model.remove(&old).unwrap();
        assert!(
            !a.p(&old).exists(),
            "A still shows {old} right after renaming it"
        );
        assert_eq!(
            fs::read(a.p(&new)).ok().as_ref(),
            Some(&data),
            "A's {new} right after renaming {old} to it"
        );
        model.insert(new, data);
        // One at a time, as a user renames now and then: each goes up as a move of its own
        // (renames ready together ride in one batch, which the creates already fault).
        drain(s, &model, "the renames");
    }

    s.proxy.set(plan.clone());
    let edited = (5..10)
        .map(|i| (i, format!("r-{i:02}.bin")))
        .chain((10..15).map(|i| (i, format!("f-{i:02}.bin"))));
    for (n, (i, name)) in edited.enumerate() {
        let data = content(i, 2);
        fs::write(a.p(&name), &data).unwrap();
        assert_eq!(
            fs::read(a.p(&name)).unwrap(),
            data,
            "A's {name} right after editing it"
        );
        model.insert(name, data);
        if n % 2 == 1 {
            drain(s, &model, "the edits");
        }
    }
    assert_eq!(
        diff(&tree(a.path()), &model),
        "",
        "A after all its operations"
    );
    model
}

/// Checks A's tree against `model` (names and sizes; contents every 20th round).
fn check_a(s: &Setup, model: &Tree, round: u64, when: &str) {
    let on_a = diff(&shape(s.a.path()), &shape_of(model));
    assert_eq!(on_a, "", "A's tree changed under it while uploading {when}");
    if round.is_multiple_of(20) {
        let on_a = diff(&tree(s.a.path()), model);
        assert_eq!(
            on_a, "",
            "A's contents changed under it while uploading {when}"
        );
    }
}

/// Waits until A has uploaded everything journaled so far, checking A's tree all the while.
fn drain(s: &Setup, model: &Tree, what: &str) {
    // Only a status written after this call began counts the changes made just before it.
    let since = SystemTime::now();
    let status = jewelfs::mount::status_path(s.a.path());
    let start = Instant::now();
    for round in 1.. {
        check_a(s, model, round, what);
        let fresh = fs::metadata(&status)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > since);
        let st = s.a.status();
        if fresh && st.pending_uploads == 0 {
            // Only changing requests are faulted: the service is reachable, and A, which
            // has just had its answers, must not say it is offline.
            assert!(
                st.online,
                "A says it is offline after uploading {what}: {st:?}"
            );
            return;
        }
        if start.elapsed() > SYNC {
            panic!(
                "A has not uploaded {what} after {SYNC:?}: {:?}\nproxy: {:?}",
                s.a.status(),
                s.proxy.stats()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until B shows exactly `model`, checking all the while that A still does (names and
/// sizes at every round, contents every 20th round).
fn converge(s: &Setup, model: &Tree) {
    let want_shape = shape_of(model);
    let start = Instant::now();
    for round in 1.. {
        check_a(s, model, round, "the edits");
        let on_b = diff(&shape(s.b.path()), &want_shape);
        let on_b = if on_b.is_empty() {
            diff(&tree(s.b.path()), model)
        } else {
            on_b
        };
        if on_b.is_empty() {
            return;
        }
        if start.elapsed() > SYNC {
            panic!(
                "B does not show A's operations after {SYNC:?}: {on_b}\nproxy: {:?}",
                s.proxy.stats()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What must hold once B shows everything: A and B both equal to `model`, A's journal
/// drained, nothing refused, no conflict copies, one node per file on the service and an
/// empty trash.
fn check_end_state(s: &Setup, model: &Tree) {
    s.a.wait_uploaded(SYNC);
    assert_eq!(diff(&tree(s.a.path()), model), "", "A at the end");
    assert_eq!(diff(&tree(s.b.path()), model), "", "B at the end");
    let refused = s.a.cache_dir().join("refused");
    let kept: Vec<_> = fs::read_dir(&refused)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        kept.is_empty(),
        "A kept changes as refused although only the proxy failed: {kept:?}\n{:?}",
        s.a.status().last_error
    );
    assert_eq!(s.a.status().conflicts, 0, "conflict copies on A");
    assert_eq!(s.b.status().conflicts, 0, "conflict copies on B");
    let trash: TrashPage = s.get("/trash");
    assert!(
        trash.entries.is_empty(),
        "the trash holds {} entries although A deleted nothing (a duplicate removed again?)",
        trash.entries.len()
    );
    let files: BTreeSet<NodeId> = s
        .log()
        .iter()
        .filter(|e| e.node.kind == NodeKind::File)
        .map(|e| e.node.id)
        .collect();
    assert_eq!(
        files.len(),
        40,
        "the service made {} file nodes for A's 40 files",
        files.len()
    );
}

/// Runs the workload on A through `plan` and checks the intent; returns the proxy's stats.
fn run(plan: Plan) -> Stats {
    let t = Instant::now();
    let s = Setup::new();
    let model = workload(&s, &plan);
    converge(&s, &model);
    let stats = s.proxy.stats();
    check_end_state(&s, &model);
    // The other way, through the proxy's long-polls (passed through, not faulted): a file
    // made on B shows on A.
    fs::write(s.b.p("from-b.txt"), b"made on B").unwrap();
    wait_content(&s.a.p("from-b.txt"), b"made on B", SYNC);
    assert!(
        s.proxy.stats().polls >= 1,
        "A's long-polls bypassed the proxy"
    );
    eprintln!(
        "converged in {:?}; proxy saw {} requests ({} changes), faulted {:?}",
        t.elapsed(),
        stats.seen,
        stats.changes,
        stats.routes
    );
    // Each kind of request that carries changes was hit: batches (creates, content
    // commits and removes ready together go up as one) and renames.
    for route in ["POST /api/v1/batch", "POST /api/v1/nodes/{id}/move"] {
        assert!(
            stats.faulted_route(route) >= 1,
            "no {route} was hit: {:?}",
            stats.routes
        );
    }
    stats
}

#[test]
fn throttled_changes_all_arrive_and_none_is_undone() {
    // A third of A's changing requests answered like API Gateway's throttling; a few name a
    // wait of a second.
    let plan = Plan::new(11)
        .with(
            Fault::Throttle { retry_after: None },
            Scope::Changes,
            1.0 / 3.0 - 0.04,
        )
        .with(
            Fault::Throttle {
                retry_after: Some(1),
            },
            Scope::Changes,
            0.04,
        );
    let stats = run(plan);
    assert!(
        stats.faulted("throttle") >= 15,
        "too few throttled requests to prove anything: {stats:?}"
    );
}

#[test]
fn html_error_pages_and_torn_answers_lose_nothing() {
    // A quarter of A's changing requests hit, a quarter of those each way; a few more slowed.
    // (A torn answer or a 413 after the service did the work costs a retry that finds the
    // work done: more requests per change than a throttled one, so a smaller share keeps
    // the run short while each kind still fires several times.)
    let share = 1.0 / 16.0;
    let plan = Plan::new(23)
        .with(Fault::Throttle { retry_after: None }, Scope::Changes, share)
        .with(
            Fault::Unavailable { retry_after: None },
            Scope::Changes,
            share,
        )
        .with(Fault::TooLarge, Scope::Changes, share)
        .with(Fault::TornAnswer, Scope::Changes, share)
        .with(
            Fault::Slow(Duration::from_millis(300)),
            Scope::Changes,
            0.05,
        );
    let stats = run(plan);
    for kind in [
        "throttle",
        "unavailable",
        "too_large",
        "torn_answer",
        "slow",
    ] {
        assert!(
            stats.faulted(kind) >= 3,
            "too few {kind} faults to prove anything: {stats:?}"
        );
    }
    // Creates the service made whose answer came back torn (a batch of them, or one on
    // its own): retried, they must not make second files.
    assert!(
        ["POST /api/v1/nodes", "POST /api/v1/batch"]
            .iter()
            .any(|r| stats.routes.contains_key(&format!("torn_answer {r}"))),
        "no create's answer was torn: {:?}",
        stats.routes
    );
}

#[test]
fn answers_lost_after_the_service_committed_do_not_repeat_changes() {
    // The service does the change and the answer is lost (and now and then the request is
    // lost before it): creates and renames must still happen exactly once.
    let plan = Plan::new(37)
        .with(Fault::DropAfter, Scope::Changes, 0.3)
        .with(Fault::DropBefore, Scope::Changes, 0.05);
    let stats = run(plan);
    assert!(
        stats.faulted("drop_after") >= 15,
        "too few lost answers to prove anything: {stats:?}"
    );
    assert!(stats.faulted("drop_before") >= 1, "{stats:?}");
    // Batches (of creates, commits, removes) and renames whose answers were lost: the
    // cases where repeating is harmful.
    for route in ["POST /api/v1/batch", "POST /api/v1/nodes/{id}/move"] {
        let lost = stats.routes.get(&format!("drop_after {route}"));
        assert!(
            lost.is_some_and(|n| *n >= 1),
            "no answer to {route} was lost: {:?}",
            stats.routes
        );
    }
}

/// What a real AWS deployment answers when the function fails: API Gateway's `500
/// {"message":"Internal Server Error"}`, before the service acted (a crash) or after it
/// committed (an answer over Lambda's 6 MB, a timeout after the commit). Every change must
/// arrive, once, and none be undone.
#[test]
fn api_gateway_500s_before_and_after_the_commit_lose_and_repeat_nothing() {
    let plan = Plan::new(41)
        .with(Fault::GatewayError, Scope::Changes, 0.1)
        .with(Fault::AnswerOverflow, Scope::Changes, 0.1);
    let stats = run(plan);
    for kind in ["gateway_error", "answer_overflow"] {
        assert!(
            stats.faulted(kind) >= 5,
            "too few {kind} faults to prove anything: {stats:?}"
        );
    }
    assert!(
        stats
            .routes
            .get("answer_overflow POST /api/v1/nodes")
            .is_some_and(|n| *n >= 1),
        "no committed create was answered with a 500: {:?}",
        stats.routes
    );
}

#[test]
fn a_mount_throttled_at_start_waits_and_mounts() {
    let server = Server::start();
    let token = server.add_user("ann");
    let proxy = FaultProxy::start(&server.url);
    let throttled = Duration::from_secs(2);
    proxy.set_for(
        Plan::new(5).with(Fault::Throttle { retry_after: None }, Scope::All, 1.0),
        throttled,
    );
    let start = Instant::now();
    // Panics if the client exits instead of mounting.
    let a = Mount::with_url(&proxy.url, &token, "a");
    let took = start.elapsed();
    let stats = proxy.stats();
    assert!(
        stats.faulted("throttle") >= 1,
        "the start was not throttled: {stats:?}"
    );
    assert!(
        took >= throttled,
        "mounted after {took:?}, before the throttling ended"
    );
    assert!(
        a.log().contains("busy"),
        "the client did not say why it waits:\n{}",
        a.log()
    );
    // And it works: a file made on A reaches B.
    let b = Mount::new(&server, &token, "b");
    fs::write(a.p("after-start.txt"), b"mounted through a busy service").unwrap();
    wait_content(
        &b.p("after-start.txt"),
        b"mounted through a busy service",
        SYNC,
    );
}

#[test]
fn status_shows_the_retrying_while_throttled_and_clears_after() {
    let s = Setup::new();
    fs::write(s.a.p("before.txt"), b"before").unwrap();
    wait_content(&s.b.p("before.txt"), b"before", SYNC);
    assert_eq!(s.a.status().last_error, None, "an error before any fault");

    s.proxy
        .set(Plan::new(9).with(Fault::Throttle { retry_after: None }, Scope::All, 1.0));
    fs::write(s.a.p("during.txt"), b"written while throttled").unwrap();
    let shown = wait_for(
        "A's status to show the retrying",
        Duration::from_secs(20),
        || {
            let st = s.a.status();
            st.last_error
                .filter(|e| e.contains("429") && e.contains("retrying"))
        },
    );
    let st = s.a.status();
    assert!(
        st.pending_uploads >= 1,
        "status shows no pending change while throttled: {st:?}"
    );
    assert!(
        !s.b.p("during.txt").exists(),
        "B has the file although everything was throttled: {shown}"
    );

    s.proxy.clear();
    wait_content(&s.b.p("during.txt"), b"written while throttled", SYNC);
    wait_for(
        "A's status to clear once traffic passes",
        Duration::from_secs(20),
        || {
            let st = s.a.status();
            (st.last_error.is_none() && st.pending_uploads == 0).then_some(())
        },
    );
    assert!(s.proxy.stats().faulted("throttle") >= 1);
}
