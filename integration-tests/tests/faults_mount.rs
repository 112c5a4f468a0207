//! Faults with real processes: a client SIGKILLed right after closing files and while it
//! uploads, the server SIGKILLed in the middle of commits, a corrupted block in a client's
//! disk cache, an unmount with uploads pending. Each test checks what a user would: every
//! closed file arrives, exactly once, byte for byte — and, on the service side, that nothing
//! is half there (every file's blocks are stored, the change log has no holes).
//!
//! Needs the binaries (`cargo build --workspace --bins`) and FUSE, like `mount_*.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::seeded::bytes;
use integration_tests::*;
use jewel_wire::*;
use reqwest::blocking::Client;
use serde_json::json;

const SYNC: Duration = Duration::from_secs(30);

/// A file name and its content.
type NamedContent = (String, Vec<u8>);

/// The service's view of one user, through the API (not through a mount).
struct Remote {
    http: Client,
    base: String,
    token: String,
}

impl Remote {
    fn new(server: &Server, token: &str) -> Remote {
        Remote {
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: server.url.clone(),
            token: token.to_string(),
        }
    }
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = self
            .http
            .get(format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().unwrap()
    }
    fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> T {
        let resp = self
            .http
            .post(format!("{}{API_PREFIX}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
        resp.json().unwrap()
    }
    fn children(&self, dir: NodeId) -> Vec<Node> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/nodes/{dir}/children?after={}", url_escape(a)),
                None => format!("/nodes/{dir}/children"),
            };
            let page: ListPage = self.get(&q);
            out.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }
    /// The content of a file, checked against its hashes.
    fn read(&self, node: &Node) -> Vec<u8> {
        if node.blocks.is_empty() {
            return Vec::new();
        }
        let urls: BlockUrls = self.post("/blocks/urls", json!({ "hashes": node.blocks }));
        let mut out = Vec::new();
        for (u, want) in urls.urls.iter().zip(&node.blocks) {
            let bytes = self
                .http
                .get(format!("{}{}", self.base, u.url))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert_eq!(&sha256_hex(&bytes), want, "a stored block matches its hash");
            out.extend_from_slice(&bytes);
        }
        assert_eq!(
            out.len() as u64,
            node.size,
            "{}: size and blocks agree",
            node.name
        );
        out
    }
    /// Every live file and directory by path (directories as `None`).
    fn tree(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![(ROOT_ID, String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            for node in self.children(dir) {
                let path = format!("{prefix}/{}", node.name);
                match node.kind {
                    NodeKind::Dir => {
                        out.insert(path.clone(), None);
                        dirs.push((node.id, path));
                    }
                    NodeKind::File => {
                        out.insert(path, Some(self.read(&node)));
                    }
                    NodeKind::Symlink => {
                        out.insert(path, Some(node.target.unwrap_or_default().into_bytes()));
                    }
                }
            }
        }
        out
    }
    /// The whole change log, checked to be without holes.
    fn log(&self) -> Vec<ChangeEvent> {
        let mut events = Vec::new();
        let mut since = 0;
        loop {
            let page: ChangePage = self.get(&format!("/changes?since={since}"));
            if page.events.is_empty() {
                assert_eq!(since, page.latest_seq, "the log reaches latest_seq");
                break;
            }
            since = page.events.last().unwrap().seq;
            events.extend(page.events);
        }
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "the change log has a hole");
        }
        events
    }
}

fn url_escape(s: &str) -> String {
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

/// Files of assorted sizes: empty, tiny, one block, several blocks.
fn assorted(prefix: &str, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = match i % 7 {
                0 => 0,
                1 => 1,
                2 => 4096,
                3 => 100_000,
                4 => 1_000_000,
                5 => BLOCK_SIZE as usize + 123, // two blocks
                _ => 10 + i,
            };
            (format!("{prefix}-{i:03}.bin"), bytes(len, seed + i as u64))
        })
        .collect()
}

/// Asserts that `dir` on the service holds exactly `files` (no extra names: no duplicates, no
/// conflict copies), byte for byte, and that each was created exactly once in the log.
fn assert_exactly_once(remote: &Remote, dir: &str, files: &[(String, Vec<u8>)]) {
    let tree = remote.tree();
    let here: BTreeMap<&str, &Option<Vec<u8>>> = tree
        .iter()
        .filter_map(|(p, c)| {
            let rest = p.strip_prefix(dir)?.strip_prefix('/')?;
            (!rest.contains('/')).then_some((rest, c))
        })
        .collect();
    let want: BTreeMap<&str, &Vec<u8>> = files.iter().map(|(n, c)| (n.as_str(), c)).collect();
    let extra: Vec<&&str> = here.keys().filter(|n| !want.contains_key(**n)).collect();
    let missing: Vec<&&str> = want.keys().filter(|n| !here.contains_key(**n)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{dir}: extra {extra:?}, missing {missing:?}"
    );
    for (name, content) in &want {
        let got = here[name].as_ref().expect("a file, not a directory");
        if got != *content {
            let first = got.iter().zip(content.iter()).position(|(a, b)| a != b);
            let blocks = |c: &[u8]| -> Vec<String> {
                c.chunks(BLOCK_SIZE as usize)
                    .map(|b| sha256_hex(b)[..8].to_string())
                    .collect()
            };
            panic!(
                "{dir}/{name}: {} bytes on the service, {} written, first difference at byte \
                 {first:?}; blocks on the service {:?}, written {:?}",
                got.len(),
                content.len(),
                blocks(got),
                blocks(content)
            );
        }
    }
    let dir_id = if dir.is_empty() {
        ROOT_ID
    } else {
        remote
            .get::<Node>(&format!("/lookup?path={}", url_escape(dir)))
            .id
    };
    let log = remote.log();
    for (name, _) in files {
        let creates = log
            .iter()
            .filter(|e| e.op == ChangeOp::Upsert && e.node.name == *name)
            .filter(|e| e.node.parent == dir_id && e.from.is_none())
            .map(|e| e.node.id)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(creates.len(), 1, "{name} was created as {creates:?}");
    }
}

fn write_all(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_client_killed_right_after_close_delivers_every_file_exactly_once() {
    let server = Server::start();
    let token = server.add_user("alice");
    let remote = Remote::new(&server, &token);
    let mut a = Mount::new(&server, &token, "laptop");
    // Three rounds: killed at once after the last close, a little later (uploads under way),
    // and later still; each round's files must all arrive once the client is back.
    let mut all = Vec::new();
    for (round, delay_ms) in [0u64, 150, 600].into_iter().enumerate() {
        let dir = format!("round{round}");
        fs::create_dir(a.p(&dir)).unwrap();
        let files = assorted("f", 21, round as u64 * 1000);
        write_all(&a.p(&dir), &files);
        std::thread::sleep(Duration::from_millis(delay_ms));
        a.kill();
        a.start();
        a.wait_uploaded(SYNC);
        // The restarted client still shows every file, with its content.
        for (name, content) in &files {
            assert_eq!(&fs::read(a.p(&format!("{dir}/{name}"))).unwrap(), content);
        }
        assert_exactly_once(&remote, &format!("/{dir}"), &files);
        all.push((dir, files));
    }
    // A second machine sees exactly the same.
    let b = Mount::new(&server, &token, "desktop");
    for (dir, files) in &all {
        for (name, content) in files {
            wait_content(&b.p(&format!("{dir}/{name}")), content, SYNC);
        }
    }
}

#[test]
fn a_client_killed_while_uploading_a_large_file_finishes_it_after_restart() {
    let server = Server::start();
    let token = server.add_user("bob");
    let remote = Remote::new(&server, &token);
    let mut a = Mount::new(&server, &token, "laptop");
    let big = bytes(6 * BLOCK_SIZE as usize + 777, 42);
    // Written by a child process: a descriptor of this (multi-threaded) test process would be
    // inherited, and closed, by every process other tests start meanwhile — and each such
    // close is a flush that commits the file as it is at that moment (docs/SEMANTICS.md),
    // which would make a half-written version legitimately visible.
    let source = tempfile::NamedTempFile::new().unwrap();
    fs::write(source.path(), &big).unwrap();
    let copied = std::process::Command::new("cp")
        .arg(source.path())
        .arg(a.p("big.bin"))
        .status()
        .unwrap();
    assert!(copied.success());
    // Kill once the upload has visibly started (the first blocks are on the service) but
    // before it is committed, if the machine is slow enough to let us see that moment.
    let hashes: Vec<String> = big.chunks(BLOCK_SIZE as usize).map(sha256_hex).collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let missing: MissingBlocks = remote.post("/blocks/missing", json!({ "hashes": hashes }));
        if missing.missing.len() < hashes.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill();
    // Nothing half there: either no big.bin, or the whole of it.
    if let Some(Some(content)) = remote.tree().get("/big.bin") {
        assert_eq!(content.len(), big.len());
    }
    a.start();
    a.wait_uploaded(SYNC);
    assert_exactly_once(&remote, "", &[("big.bin".to_string(), big.clone())]);
    assert_eq!(fs::read(a.p("big.bin")).unwrap(), big);
}

#[test]
fn the_server_killed_mid_commits_loses_nothing_a_client_journaled() {
    let server = Server::start();
    let token = server.add_user("carol");
    let remote_token = token.clone();
    let a = Mount::new(&server, &token, "laptop");
    fs::create_dir(a.p("work")).unwrap();
    let files = assorted("w", 60, 7);
    // A writer keeps closing files while the server is killed and restarted twice.
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let dir = a.p("work");
        let files = files.clone();
        let written = written.clone();
        std::thread::spawn(move || {
            for (name, content) in &files {
                fs::write(dir.join(name), content).unwrap();
                written.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let mut server = server;
    for at in [15, 35] {
        wait_for("the writer to get on", Duration::from_secs(60), || {
            (written.load(Ordering::SeqCst) >= at).then_some(())
        });
        let addr = server.addr.clone();
        let data = server.kill();
        std::thread::sleep(Duration::from_millis(700));
        server = Server::start_at(data, &addr);
    }
    writer.join().unwrap();
    a.wait_uploaded(Duration::from_secs(60));
    let remote = Remote::new(&server, &remote_token);
    assert_exactly_once(&remote, "/work", &files);
    // And the service is whole after its crashes: every file's blocks stored, a log without
    // holes (both checked by `tree` and `log`), and every live node's last event matches it.
    let log = remote.log();
    let mut last: BTreeMap<NodeId, &ChangeEvent> = BTreeMap::new();
    for e in &log {
        last.insert(e.node.id, e);
    }
    for node in remote.children(ROOT_ID) {
        let e = last.get(&node.id).expect("every live node is in the log");
        assert_eq!(e.op, ChangeOp::Upsert);
        assert_eq!(e.node.version, node.version, "{}", node.name);
    }
}

#[test]
fn acknowledged_commits_survive_a_server_kill() {
    // Without a client: eight writers commit through the API as fast as they can while the
    // server is SIGKILLed. Every commit the server answered 2xx must be there afterwards, and
    // nothing it did not acknowledge may be half there.
    let server = Server::start();
    let token = server.add_user("dave");
    let addr = server.addr.clone();
    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<NamedContent>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, token, stop, acked) =
                (url.clone(), token.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let http = Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let name = format!("w{w}-{i:05}");
                    let data = bytes(100 + i * 37 % 5000, (w * 100_000 + i) as u64);
                    let hash = sha256_hex(&data);
                    let api = |p: &str| format!("{url}{API_PREFIX}{p}");
                    let step = || -> Option<()> {
                        let missing: MissingBlocks = http
                            .post(api("/blocks/missing"))
                            .bearer_auth(&token)
                            .json(&json!({ "hashes": [hash] }))
                            .send()
                            .ok()?
                            .json()
                            .ok()?;
                        for m in missing.missing {
                            let r = http
                                .put(format!("{url}{}", m.url))
                                .body(data.clone())
                                .send()
                                .ok()?;
                            if !r.status().is_success() {
                                return None;
                            }
                        }
                        let r = http
                            .post(api("/nodes"))
                            .bearer_auth(&token)
                            .json(&json!({"parent": 1, "name": name, "kind": "file",
                                          "content": {"size": data.len(), "blocks": [hash]}}))
                            .send()
                            .ok()?;
                        r.status().is_success().then_some(())
                    };
                    if step().is_some() {
                        acked.lock().unwrap().push((name, data));
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect();
    let mut server = server;
    for _ in 0..3 {
        wait_for("some commits", Duration::from_secs(30), || {
            (acked.lock().unwrap().len() > 30).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        let data = server.kill();
        std::thread::sleep(Duration::from_millis(300));
        server = Server::start_at(data, &addr);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let remote = Remote::new(&server, &token);
    let tree = remote.tree();
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 90, "only {} commits", acked.len());
    for (name, data) in acked.iter() {
        let got = tree.get(&format!("/{name}"));
        assert!(
            got == Some(&Some(data.clone())),
            "acknowledged {name} is {}",
            if got.is_some() {
                "different"
            } else {
                "missing"
            }
        );
    }
    // Whatever else is there (commits whose answer was lost in the kill) is whole: `tree`
    // read and hash-checked every file; `log` checked there are no holes.
    remote.log();
}

#[test]
fn a_corrupted_cached_block_is_refetched_and_reads_stay_correct() {
    let server = Server::start();
    let token = server.add_user("erin");
    let writer = Mount::new(&server, &token, "desktop");
    let content = bytes(2 * BLOCK_SIZE as usize + 5000, 9);
    let small = bytes(3000, 10);
    fs::write(writer.p("data.bin"), &content).unwrap();
    fs::write(writer.p("small.txt"), &small).unwrap();
    writer.wait_uploaded(SYNC);

    let mut reader = Mount::new(&server, &token, "laptop");
    wait_content(&reader.p("data.bin"), &content, SYNC);
    wait_content(&reader.p("small.txt"), &small, SYNC);
    // The reader's cache now holds the blocks; stop it and damage them on disk three ways.
    let blocks = cached_blocks(&reader.cache_dir());
    let hashes: Vec<String> = content
        .chunks(BLOCK_SIZE as usize)
        .map(sha256_hex)
        .chain([sha256_hex(&small)])
        .collect();
    let paths: Vec<PathBuf> = hashes
        .iter()
        .map(|h| {
            blocks
                .iter()
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .contains(h.as_str())
                })
                .unwrap_or_else(|| panic!("block {h} is not in the cache: {blocks:?}"))
                .clone()
        })
        .collect();
    reader.kill();
    // Same length, flipped bytes.
    let mut b0 = fs::read(&paths[0]).unwrap();
    for i in (0..b0.len()).step_by(4096) {
        b0[i] ^= 0xff;
    }
    fs::write(&paths[0], &b0).unwrap();
    // Truncated.
    fs::OpenOptions::new()
        .write(true)
        .open(&paths[1])
        .unwrap()
        .set_len(1000)
        .unwrap();
    // Another block's bytes under this name.
    fs::write(&paths[3], b"not the small file").unwrap();
    reader.start();
    assert_eq!(fs::read(reader.p("data.bin")).unwrap(), content);
    assert_eq!(fs::read(reader.p("small.txt")).unwrap(), small);
    // The damaged blocks were replaced by good ones (or dropped).
    for (path, hash) in paths.iter().zip(&hashes) {
        if let Ok(bytes) = fs::read(path) {
            assert_eq!(
                &sha256_hex(&bytes),
                hash,
                "{} still corrupt",
                path.display()
            );
        }
    }
}

/// Every file under the client's block cache folder.
fn cached_blocks(cache: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&cache.join("blocks"), &mut out);
    out
}

#[test]
fn unmount_with_pending_uploads_says_so_and_the_next_mount_delivers_them() {
    let server = Server::start();
    let token = server.add_user("frank");
    let addr = server.addr.clone();
    let mut a = Mount::new(&server, &token, "laptop");
    // Online: unmount waits for the uploads, and they are on the service when it returns.
    let first = assorted("online", 8, 1);
    write_all(a.path(), &first);
    let out = a.unmount();
    let remote = Remote::new(&server, &token);
    let tree = remote.tree();
    for (name, content) in &first {
        assert_eq!(
            tree.get(&format!("/{name}")),
            Some(&Some(content.clone())),
            "{name} after unmount ({out})"
        );
    }
    // Offline: the server is down; unmount gives up after its wait and says what is pending.
    a.start();
    let data = server.kill();
    let second = assorted("offline", 5, 2);
    write_all(a.path(), &second);
    let out = Command::new(bin("jewelfs"))
        .arg("unmount")
        .arg(a.path())
        .args(["--wait", "2"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("pending") || said.contains("not uploaded") || said.contains("offline"),
        "unmount with pending uploads said: {said}"
    );
    a.kill();
    // The next mount, with the server back, delivers them.
    let server = Server::start_at(data, &addr);
    a.start();
    a.wait_uploaded(SYNC);
    let remote = Remote::new(&server, &token);
    let mut all = first.clone();
    all.extend(second);
    assert_exactly_once(&remote, "", &all);
}

#[test]
fn both_machines_write_while_the_server_is_down_and_everything_converges() {
    let server = Server::start();
    let token = server.add_user("gina");
    let addr = server.addr.clone();
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    fs::write(a.p("shared.txt"), b"the version both start from").unwrap();
    wait_content(&b.p("shared.txt"), b"the version both start from", SYNC);
    fs::create_dir(a.p("docs")).unwrap();
    wait_for("docs on the other machine", SYNC, || {
        b.p("docs").is_dir().then_some(())
    });

    // Both have listed the folder (a folder never listed is EIO offline, as documented).
    for m in [&a, &b] {
        assert_eq!(fs::read_dir(m.p("docs")).unwrap().count(), 0);
    }

    let data = server.kill();
    // Both edit the same file and add their own files to the shared folder.
    fs::write(a.p("shared.txt"), b"laptop's offline edit").unwrap();
    fs::write(b.p("shared.txt"), b"desktop's offline edit").unwrap();
    let mine_a = assorted("laptop", 6, 100);
    let mine_b = assorted("desktop", 6, 200);
    for (m, files) in [(&a, &mine_a), (&b, &mine_b)] {
        for (name, content) in files {
            if let Err(e) = fs::write(m.p("docs").join(name), content) {
                panic!("{}: writing docs/{name} offline: {e}", m.device);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    let server = Server::start_at(data, &addr);
    a.wait_uploaded(SYNC);
    b.wait_uploaded(SYNC);
    let remote = Remote::new(&server, &token);
    // Every file of both is there once, and both edits of shared.txt are kept: one under the
    // name, the other as a conflict copy.
    let mut all = mine_a.clone();
    all.extend(mine_b.clone());
    assert_exactly_once(&remote, "/docs", &all);
    let tree = remote.tree();
    let shared: Vec<&Vec<u8>> = tree
        .iter()
        .filter(|(p, _)| p.starts_with("/shared"))
        .filter_map(|(_, c)| c.as_ref())
        .collect();
    assert!(
        shared.contains(&&b"laptop's offline edit".to_vec())
            && shared.contains(&&b"desktop's offline edit".to_vec()),
        "both offline edits kept: {:?}",
        tree.keys().collect::<Vec<_>>()
    );
    assert_eq!(shared.len(), 2, "{:?}", tree.keys().collect::<Vec<_>>());
    // Both machines show exactly what the service holds.
    let want: Vec<(String, Vec<u8>)> = tree
        .iter()
        .filter_map(|(p, c)| Some((p.trim_start_matches('/').to_string(), c.clone()?)))
        .collect();
    for m in [&a, &b] {
        for (path, content) in &want {
            wait_content(&m.p(path), content, SYNC);
        }
    }
}
