//! Hostile input against a real `jewel-server` process: what an attacker or a broken client
//! can send, beyond the plain bad-input cases of `api.rs`.
//!
//! - **Names**: Unicode NFC and NFD spellings are two distinct names and round-trip byte for
//!   byte; names differing only in case are distinct; control characters other than NUL are
//!   accepted as bytes (that is what `jewel_wire::check_name` documents: only empty, `.`,
//!   `..`, `/`, NUL and more than 255 bytes are refused); the 255-byte limit counts bytes, not
//!   characters; lone surrogates are refused as malformed JSON; very deep and very long paths
//!   work through `/lookup`, and a URI over the HTTP parser's limit is a 4xx.
//! - **Bodies and headers**: oversized bodies by `Content-Length`, by chunked streaming and
//!   on block URLs; huge headers; deeply nested JSON — each a 4xx, never a crash.
//! - **Slow clients** (slowloris): hundreds of connections that drip their headers or never
//!   finish a body do not stop a normal client being served, and the server sheds the
//!   drippers after its header-read timeout.
//! - **Tokens and block URLs**: odd `Authorization` headers, a removed user's token, tokens
//!   never stored in clear; block URLs with an expiry in the past (signed with the server's
//!   real key, so only the expiry is wrong), malformed signatures and expiries.
//! - **Isolation**: one table of every route in the API, called with user B's token and user
//!   A's ids; each answers 404 (or shows B only B's things), and A's tree, trash and change
//!   log are exactly as before.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::{sha256_hex, wait_for, Server};
use jewel_wire::*;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde_json::{json, Value};

/// One user's view of the API.
struct Api {
    http: Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &Server, token: &str) -> Api {
        Api {
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: server.url.clone(),
            token: token.to_string(),
        }
    }
    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }
    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }
    fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().unwrap()
    }
    fn post(&self, path: &str, body: Value) -> Response {
        self.req(Method::POST, path).json(&body).send().unwrap()
    }
    fn ok<T: serde::de::DeserializeOwned>(&self, resp: Response) -> T {
        let status = resp.status();
        let text = resp.text().unwrap();
        assert!(
            status.is_success(),
            "expected success, got {status}: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }
    fn mkdir(&self, parent: NodeId, name: &str) -> Node {
        self.ok(self.post(
            "/nodes",
            json!({"parent": parent, "name": name, "kind": "dir"}),
        ))
    }
    fn upload(&self, data: &[u8]) -> Content {
        let hash = sha256_hex(data);
        let missing: MissingBlocks =
            self.ok(self.post("/blocks/missing", json!({"hashes": [hash]})));
        for block in missing.missing {
            let resp = self
                .http
                .put(format!("{}{}", self.base, block.url))
                .body(data.to_vec())
                .send()
                .unwrap();
            assert!(resp.status().is_success(), "upload: {}", resp.status());
        }
        Content {
            inline: None,
            size: data.len() as u64,
            blocks: vec![hash],
        }
    }
    fn create_file(&self, parent: NodeId, name: &str, data: &[u8]) -> Node {
        let content = self.upload(data);
        self.ok(self.post(
            "/nodes",
            json!({"parent": parent, "name": name, "kind": "file", "content": content}),
        ))
    }
    fn read(&self, node: &Node) -> Vec<u8> {
        let urls: BlockUrls = self.ok(self.post("/blocks/urls", json!({"hashes": node.blocks})));
        let mut out = Vec::new();
        for u in urls.urls {
            let resp = self
                .http
                .get(format!("{}{}", self.base, u.url))
                .send()
                .unwrap();
            assert!(resp.status().is_success());
            out.extend_from_slice(&resp.bytes().unwrap());
        }
        out
    }
    fn children(&self, dir: NodeId) -> Vec<Node> {
        let page: ListPage = self.ok(self.get(&format!("/nodes/{dir}/children")));
        page.entries
    }
    fn names(&self, dir: NodeId) -> Vec<String> {
        self.children(dir).into_iter().map(|n| n.name).collect()
    }
    fn latest_seq(&self) -> Seq {
        let me: Me = self.ok(self.get("/me"));
        me.latest_seq
    }
    /// Everything this user has: every live node (recursively), the trash, the whole change
    /// log and the newest sequence number, as one comparable value.
    fn snapshot(&self) -> Value {
        let mut nodes = Vec::new();
        let mut dirs = vec![ROOT_ID];
        while let Some(dir) = dirs.pop() {
            for node in self.children(dir) {
                if node.is_dir() {
                    dirs.push(node.id);
                }
                nodes.push(node);
            }
        }
        nodes.sort_by_key(|n| n.id);
        let trash: TrashPage = self.ok(self.get("/trash"));
        let changes: ChangePage = self.ok(self.get("/changes?since=0"));
        json!({
            "nodes": nodes,
            "trash": trash.entries,
            "changes": changes.events,
            "latest_seq": changes.latest_seq,
        })
    }
}

/// Asserts a JSON error with the given status and code.
#[track_caller]
fn expect_error(resp: Response, status: u16, code: &str) -> ApiError {
    let got = resp.status().as_u16();
    let text = resp.text().unwrap();
    assert_eq!(got, status, "body: {text}");
    let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(err["code"], code, "body: {text}");
    assert!(!err["message"].as_str().unwrap_or("").is_empty());
    serde_json::from_value(err).unwrap()
}

/// Percent-encodes every byte but the unreserved ones, so a name reaches the server exactly.
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn unicode_forms_case_and_control_characters_are_distinct_exact_names() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("names"));
    let nfc = "caf\u{e9}.txt"; // é as one code point
    let nfd = "cafe\u{301}.txt"; // e + combining acute accent
    assert_ne!(nfc.as_bytes(), nfd.as_bytes());
    let control = "\u{1}\u{1b}[31mred\t\n\r\u{7f}\u{85}";
    let odd = [
        nfc,
        nfd,
        "README",
        "readme",
        "ReadMe",
        control,
        " leading and trailing ",
        "\u{202e}txt.exe",                     // right-to-left override
        "\u{feff}bom",                         // byte order mark
        "zero\u{200b}width",                   // zero-width space
        "\u{1f600}\u{1f468}\u{200d}\u{1f469}", // emoji, ZWJ sequence
        "...",
        ".hidden",
        "back\\slash",
        "%2F",
        "?#&=+",
    ];
    let mut made = Vec::new();
    for (i, name) in odd.iter().enumerate() {
        let data = format!("content {i}");
        let node = api.create_file(ROOT_ID, name, data.as_bytes());
        assert_eq!(node.name.as_bytes(), name.as_bytes(), "created {name:?}");
        made.push((name.to_string(), node, data));
    }
    // All are there, each once, byte-exact, in the listing.
    let listed = api.children(ROOT_ID);
    assert_eq!(listed.len(), odd.len());
    for (name, node, data) in &made {
        let found: Vec<&Node> = listed.iter().filter(|n| n.name == *name).collect();
        assert_eq!(found.len(), 1, "{name:?} listed once");
        assert_eq!(found[0].id, node.id);
        // By name (percent-encoded path segment) and by path.
        let by_name: Node = api.ok(api.get(&format!("/nodes/1/children/{}", pct(name))));
        assert_eq!(by_name.id, node.id, "child {name:?}");
        let by_path: Node = api.ok(api.get(&format!("/lookup?path=/{}", pct(name))));
        assert_eq!(by_path.id, node.id, "lookup {name:?}");
        assert_eq!(api.read(&by_name), data.as_bytes());
    }
    // The change log carries the exact names too.
    let changes: ChangePage = api.ok(api.get("/changes?since=0"));
    for (name, node, _) in &made {
        assert!(changes
            .events
            .iter()
            .any(|e| e.node.id == node.id && e.node.name == *name));
    }
    // Renaming NFC onto NFD replaces it (same name only when the bytes are the same): here
    // they differ, so NoReplace succeeds.
    let (_, nfc_node, _) = &made[0];
    let moved: MoveResult = api.ok(api.post(
        &format!("/nodes/{}/move", nfc_node.id),
        json!({"base_version": nfc_node.version, "new_parent": 1,
               "new_name": "CAF\u{c9}.txt", "mode": "no_replace"}),
    ));
    assert_eq!(moved.node.name, "CAF\u{c9}.txt");
    assert!(moved.other.is_none());
    // A slash smuggled in a path segment is still a slash.
    expect_error(api.get("/nodes/1/children/a%2Fb"), 400, "invalid_name");
    // Dot segments sent raw (an HTTP client library would resolve them before sending).
    for dots in ["%2E%2E", ".%2E", "%2e"] {
        let (status, body) = raw_get(
            &server,
            &format!("{API_PREFIX}/nodes/1/children/{dots}"),
            &api.token,
        );
        assert_eq!(status, 400, "{dots}: {body}");
        assert!(body.contains("invalid_name"), "{dots}: {body}");
    }
    expect_error(
        api.get("/lookup?path=/README/../secret"),
        400,
        "invalid_name",
    );
    expect_error(api.get("/lookup?path=/a%00b"), 400, "invalid_name");
    // Device names follow the same rules.
    let dev: Device = api.ok(api.post("/devices", json!({"name": control})));
    assert_eq!(dev.name, control);
    expect_error(
        api.post("/devices", json!({"name": "../x"})),
        400,
        "invalid_name",
    );
    // A lone surrogate is not a string: malformed JSON, nothing created.
    let before = api.latest_seq();
    let resp = api
        .req(Method::POST, "/nodes")
        .header("content-type", "application/json")
        .body(r#"{"parent":1,"name":"\ud800","kind":"dir"}"#)
        .send()
        .unwrap();
    expect_error(resp, 400, "bad_request");
    assert_eq!(api.latest_seq(), before);
}

#[test]
fn the_name_limit_counts_bytes_not_characters() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("lengths"));
    // (name, bytes) pairs at and just over the limit, in 1-, 2-, 3- and 4-byte characters.
    let cases = [
        ("x".repeat(255), true),
        ("x".repeat(256), false),
        (format!("{}x", "\u{e9}".repeat(127)), true), // 254 + 1
        ("\u{e9}".repeat(128), false),                // 256
        ("\u{20ac}".repeat(85), true),                // 255
        (format!("{}x", "\u{20ac}".repeat(85)), false), // 256
        (format!("{}abc", "\u{1f600}".repeat(63)), true), // 252 + 3
        ("\u{1f600}".repeat(64), false),              // 256
        (format!("{}xx", "e\u{301}".repeat(84)), true), // NFD: 84 * 3 + 2 = 254
    ];
    for (name, ok) in &cases {
        let len = name.len();
        let chars = name.chars().count();
        let resp = api.post("/nodes", json!({"parent": 1, "name": name, "kind": "dir"}));
        if *ok {
            let node: Node = api.ok(resp);
            assert_eq!(node.name, *name, "{len} bytes, {chars} chars");
            let by_name: Node = api.ok(api.get(&format!("/nodes/1/children/{}", pct(name))));
            assert_eq!(by_name.id, node.id);
        } else {
            let err = expect_error(resp, 400, "invalid_name");
            assert!(err.message.contains("256"), "{}", err.message);
            expect_error(
                api.get(&format!("/nodes/1/children/{}", pct(name))),
                400,
                "invalid_name",
            );
        }
    }
    // A rename to an over-long name is refused as well, and the file keeps its name.
    let f = api.create_file(ROOT_ID, "f", b"f");
    expect_error(
        api.post(
            &format!("/nodes/{}/move", f.id),
            json!({"base_version": f.version, "new_parent": 1, "new_name": "\u{e9}".repeat(128)}),
        ),
        400,
        "invalid_name",
    );
    assert!(api.names(ROOT_ID).contains(&"f".to_string()));
}

#[test]
fn deep_and_long_paths() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("deep"));
    // 200 levels.
    let mut parent = ROOT_ID;
    let mut path = String::new();
    let mut chain = Vec::new();
    for i in 0..200 {
        let name = format!("d{i}");
        let dir = api.mkdir(parent, &name);
        path.push('/');
        path.push_str(&name);
        parent = dir.id;
        chain.push(dir);
    }
    let leaf = api.create_file(parent, "leaf.txt", b"deep down");
    let found: Node = api.ok(api.get(&format!("/lookup?path={path}/leaf.txt")));
    assert_eq!(found.id, leaf.id);
    // Redundant slashes are ignored; a missing component is 404; a file in the middle is
    // not a directory.
    let doubled = path.replace('/', "//");
    let found: Node = api.ok(api.get(&format!("/lookup?path={doubled}//leaf.txt/")));
    assert_eq!(found.id, leaf.id);
    expect_error(
        api.get(&format!("/lookup?path={path}/nope/leaf.txt")),
        404,
        "not_found",
    );
    expect_error(
        api.get(&format!("/lookup?path={path}/leaf.txt/below")),
        400,
        "not_a_directory",
    );
    // The top cannot move below its own deepest descendant (a 200-step ancestor walk).
    let top: Node = api.ok(api.get(&format!("/nodes/{}", chain[0].id)));
    expect_error(
        api.post(
            &format!("/nodes/{}/move", top.id),
            json!({"base_version": top.version, "new_parent": parent, "new_name": "loop"}),
        ),
        400,
        "bad_request",
    );
    // The whole chain goes to the trash in one delete and comes back whole.
    let _: Node = api.ok(api
        .req(Method::DELETE, &format!("/nodes/{}?recursive=true", top.id))
        .send()
        .unwrap());
    expect_error(api.get(&format!("/nodes/{}", leaf.id)), 404, "not_found");
    let _: Node = api.ok(api.post(&format!("/trash/{}/restore", top.id), json!({})));
    let found: Node = api.ok(api.get(&format!("/lookup?path={path}/leaf.txt")));
    assert_eq!(api.read(&found), b"deep down");

    // Long: 40 levels of 255-byte names of 2-byte characters (about 30 KB percent-encoded).
    let long_name = format!("{}x", "\u{e9}".repeat(127));
    assert_eq!(long_name.len(), 255);
    let mut parent = ROOT_ID;
    let mut long_path = String::new();
    for i in 0..40 {
        let name = format!("{i:03}{}", "\u{e9}".repeat(126));
        assert_eq!(name.len(), 255);
        let dir = api.mkdir(parent, &name);
        long_path.push('/');
        long_path.push_str(&pct(&name));
        parent = dir.id;
    }
    let found: Node = api.ok(api.get(&format!("/lookup?path={long_path}")));
    assert_eq!(found.id, parent);
    // A URI beyond the HTTP parser's limit (64 KiB) is refused with a 4xx, not a crash.
    let huge = format!("{long_path}{long_path}{long_path}");
    assert!(huge.len() > 65_536);
    let (status, _) = raw_get(
        &server,
        &format!("{API_PREFIX}/lookup?path={huge}"),
        &api.token,
    );
    assert!((400..500).contains(&status), "{status}");
    assert!(api.get("/me").status().is_success());
}

// ---------------------------------------------------------------------------------------------
// Bodies and headers

#[test]
fn huge_bodies_and_headers_are_refused_and_the_server_stays_up() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("huge"));
    let before = api.snapshot();
    let fresh = || {
        Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };

    // A streamed (chunked) body with no Content-Length, far over the JSON limit.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 256 * 1024]));
    let body = reqwest::blocking::Body::new(ChunkReader::new(chunks));
    let resp = fresh()
        .post(api.url("/nodes"))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(body)
        .send();
    // (The server may also close the connection while the client still sends.)
    if let Ok(resp) = resp {
        expect_error(resp, 413, "payload_too_large");
    }
    // A Content-Length that claims 10 GiB: the server reads up to its limit, then refuses.
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        raw,
        "POST {API_PREFIX}/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n",
        api.token
    )
    .unwrap();
    for _ in 0..20 {
        if raw.write_all(&[b' '; 256 * 1024]).is_err() {
            break;
        }
    }
    let head = read_head(&mut raw);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A block body over 4 MiB through a valid upload URL.
    let big = vec![7u8; BLOCK_SIZE as usize + 1];
    let missing: MissingBlocks =
        api.ok(api.post("/blocks/missing", json!({"hashes": [sha256_hex(&big)]})));
    let resp = fresh()
        .put(format!("{}{}", server.url, missing.missing[0].url))
        .body(big)
        .send();
    if let Ok(resp) = resp {
        expect_error(resp, 413, "payload_too_large");
    }
    // A JSON body nested 100,000 levels deep (small, but a stack bomb for a naive parser).
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = fresh()
        .post(api.url("/nodes"))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(nested)
        .send()
        .unwrap();
    expect_error(resp, 400, "bad_request");
    // A commit naming a million (bogus) blocks within the body limit: past the blocks cap.
    let file = api.create_file(ROOT_ID, "f", b"f");
    let many: Vec<&str> = vec!["0"; 1_000_000];
    let resp = api
        .req(Method::PUT, &format!("/nodes/{}/content", file.id))
        .json(&json!({"base_version": file.version, "content": {"size": 1, "blocks": many}}))
        .send()
        .unwrap();
    expect_error(resp, 413, "payload_too_large");
    // A 1 MiB header, and 10,000 headers.
    let resp = fresh()
        .get(api.url("/me"))
        .bearer_auth(&api.token)
        .header("x-junk", "j".repeat(1024 * 1024))
        .send();
    if let Ok(resp) = resp {
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {API_PREFIX}/me HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let _ = raw.write_all(req.as_bytes());
    let head = read_head(&mut raw);
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    // Garbage instead of HTTP.
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
    let head = read_head(&mut raw);
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");

    // Nothing changed but the one file, and the server still serves.
    api.ok::<Node>(
        api.req(Method::DELETE, &format!("/nodes/{}", file.id))
            .send()
            .unwrap(),
    );
    let after = api.snapshot();
    assert_eq!(after["nodes"], before["nodes"]);
    assert_eq!(api.names(ROOT_ID), Vec::<String>::new());
}

/// Reads an HTTP response head (or whatever arrives before EOF or the read timeout).
fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    loop {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&byte[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// A `Read` over an iterator of chunks, for a streamed request body of unknown length.
struct ChunkReader<I> {
    chunks: I,
    current: Vec<u8>,
    pos: usize,
}

impl<I> ChunkReader<I> {
    fn new(chunks: I) -> Self {
        ChunkReader {
            chunks,
            current: Vec::new(),
            pos: 0,
        }
    }
}

impl<I: Iterator<Item = std::io::Result<Vec<u8>>>> Read for ChunkReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.next() {
                Some(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients

/// How long the server gives a client to send a request head (`server.rs`), plus slack for a
/// loaded test machine.
const HEADER_TIMEOUT_BOUND: Duration = Duration::from_secs(20 + 15);

#[test]
fn slow_clients_do_not_stop_normal_clients() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("patient"));
    let missing: MissingBlocks = api.ok(api.post(
        "/blocks/missing",
        json!({"hashes": [sha256_hex(b"never sent")]}),
    ));
    let upload_url = missing.missing[0].url.clone();

    // 200 connections that send their request head one byte at a time and never finish it.
    let head = format!(
        "GET {API_PREFIX}/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nX-Slow: ",
        api.token
    );
    let mut drippers: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    // 50 that send a whole head but only a sliver of the JSON body they announced, and 50
    // that do the same with a block upload.
    let mut stalled = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        let req = if i % 2 == 0 {
            format!(
                "POST {API_PREFIX}/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"parent\":",
                api.token
            )
        } else {
            format!(
                "PUT {upload_url} HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n{}",
                "z".repeat(1000)
            )
        };
        s.write_all(req.as_bytes()).unwrap();
        stalled.push(s);
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicUsize::new(0));
    let drip = {
        let (stop, shed) = (stop.clone(), shed.clone());
        let bytes = head.into_bytes();
        std::thread::spawn(move || {
            // One byte per connection per round; after the head, an endless header value. A
            // connection the server closed fails a write soon after (reset by the peer).
            let mut pos = 0;
            let mut alive = vec![true; drippers.len()];
            while !stop.load(Ordering::Relaxed) {
                let byte = bytes.get(pos).copied().unwrap_or(b'a');
                for (s, alive) in drippers.iter_mut().zip(alive.iter_mut()) {
                    if *alive && s.write_all(&[byte]).is_err() {
                        *alive = false;
                        shed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                pos += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // A normal client is served promptly all along.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        assert!(api.get("/me").status().is_success());
        api.mkdir(ROOT_ID, &format!("while-attacked-{i}"));
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worst < Duration::from_secs(2),
        "a normal request took {worst:?} under attack"
    );
    // So is a client on a fresh connection.
    let t = Instant::now();
    let resp = Client::new()
        .get(api.url("/me"))
        .bearer_auth(&api.token)
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    assert!(t.elapsed() < Duration::from_secs(2));

    // The server sheds the drippers within its header timeout, although they keep sending.
    let left = HEADER_TIMEOUT_BOUND.saturating_sub(start.elapsed());
    let result = std::panic::catch_unwind(|| {
        wait_for("the server to shed 200 dripping connections", left, || {
            (shed.load(Ordering::Relaxed) == 200).then_some(())
        })
    });
    stop.store(true, Ordering::Relaxed);
    drip.join().unwrap();
    if result.is_err() {
        panic!(
            "only {} of 200 connections that never finished their request head were closed \
             after {:?}: the server has no header-read timeout",
            shed.load(Ordering::Relaxed),
            start.elapsed()
        );
    }
    drop(stalled);
    assert!(api.get("/me").status().is_success());
}

/// Sends one GET with a raw request target (no client-side normalisation) and returns the
/// status and body.
fn raw_get(server: &Server, target: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Tokens and block URLs

#[test]
fn odd_authorization_headers_and_removed_users() {
    let server = Server::start();
    let token = server.add_user("tokens");
    let api = Api::new(&server, &token);
    assert!(api.get("/me").status().is_success());
    let http = Client::new();
    let me = api.url("/me");
    let with = |value: &[u8]| {
        http.get(&me)
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            )
            .send()
            .unwrap()
    };
    let upper = token.to_uppercase();
    let cases: Vec<Vec<u8>> = vec![
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        format!("bearer {token}").into_bytes(), // the scheme is matched exactly
        format!("Bearer {upper}").into_bytes(),
        format!("Bearer {}", &token[..token.len() - 1]).into_bytes(),
        format!("Bearer {token}x").into_bytes(),
        format!("Bearer {token} {token}").into_bytes(),
        format!("Bearer {}", sha256_hex(token.as_bytes())).into_bytes(), // the stored hash
        [b"Bearer ".as_slice(), token.as_bytes(), b"\xff"].concat(),
        format!("Bearer {}", "a".repeat(60_000)).into_bytes(),
        format!("Token {token}").into_bytes(),
    ];
    for value in &cases {
        expect_error(with(value), 401, "unauthorized");
    }
    // Two Authorization headers: the first one counts; a wrong first one fails.
    let resp = http
        .get(&me)
        .header("authorization", "Bearer jwl_wrong")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .unwrap();
    expect_error(resp, 401, "unauthorized");
    // The token is not stored in clear anywhere in the data folder.
    for entry in walk(server.data.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is stored in clear in {}",
            entry.display()
        );
    }
    // A removed user's token stops working, and a new user of the same name gets a new token
    // and an empty tree (nothing of the old one).
    api.mkdir(ROOT_ID, "old-life");
    server.admin(&["user", "remove", "tokens"]);
    // Within AUTH_CACHE_TTL (1 s) the service may still believe the token it checked.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    expect_error(api.get("/me"), 401, "unauthorized");
    let again = Api::new(&server, &server.add_user("tokens"));
    assert_ne!(again.token, token);
    assert!(again.names(ROOT_ID).is_empty());
    expect_error(api.get("/me"), 401, "unauthorized");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// HMAC-SHA256, written out (RFC 2104) so the test signs URLs exactly as the server does.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), msg].concat());
    hex::encode(Sha256::digest([opad.as_slice(), inner.as_slice()].concat()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn block_urls_expire_and_malformed_signatures_are_refused() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("urls"));
    let data = b"signed block".to_vec();
    let content = api.upload(&data);
    let hash = &content.blocks[0];
    let urls: BlockUrls = api.ok(api.post("/blocks/urls", json!({"hashes": [hash]})));
    let url = urls.urls[0].url.clone();
    let user = url.split('/').nth(2).unwrap().to_string();
    let http = Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.url)).send().unwrap();
    assert!(get(&url).status().is_success());

    // Sign with the server's own key (the test may read its data folder): a fresh URL
    // works, so the same signing with an expiry in the past fails only for being expired.
    let key = std::fs::read(server.data.path().join("blocks/.key")).unwrap();
    let sign = |op: &str, exp: u64| {
        let sig = hmac_sha256(&key, format!("{op}\n{user}\n{hash}\n{exp}").as_bytes());
        format!("/blob/{user}/{hash}?exp={exp}&sig={sig}")
    };
    assert!(get(&sign("GET", unix_now() + 60)).status().is_success());
    expect_error(get(&sign("GET", unix_now() - 2)), 403, "forbidden");
    expect_error(get(&sign("GET", 0)), 403, "forbidden");
    // A far-future expiry only works with the key: the holder of the key is the authority.
    assert!(get(&sign("GET", u64::MAX)).status().is_success());
    // An expired upload URL does not store.
    let other = b"late upload".to_vec();
    let other_hash = sha256_hex(&other);
    let exp = unix_now() - 2;
    let sig = hmac_sha256(&key, format!("PUT\n{user}\n{other_hash}\n{exp}").as_bytes());
    let resp = http
        .put(format!(
            "{}/blob/{user}/{other_hash}?exp={exp}&sig={sig}",
            server.url
        ))
        .body(other)
        .send()
        .unwrap();
    expect_error(resp, 403, "forbidden");
    let missing: MissingBlocks =
        api.ok(api.post("/blocks/missing", json!({"hashes": [other_hash]})));
    assert_eq!(missing.missing.len(), 1);

    // Malformed signatures and expiries, none of which may be a 5xx or a success.
    let (path, query) = url.split_once('?').unwrap();
    let sig = query.split("sig=").nth(1).unwrap();
    let exp = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap();
    let bad = [
        path.to_string(),
        format!("{path}?exp={exp}"),
        format!("{path}?sig={sig}"),
        format!("{path}?exp={exp}&sig="),
        format!("{path}?exp={exp}&sig=zz{}", &sig[2..]),
        format!("{path}?exp={exp}&sig={}", &sig[..sig.len() - 2]),
        format!("{path}?exp={exp}&sig={sig}00"),
        format!("{path}?exp={exp}&sig={}", "0".repeat(64)),
        format!("{path}?exp=-1&sig={sig}"),
        format!("{path}?exp=18446744073709551616&sig={sig}"),
        format!("{path}?exp={exp}.0&sig={sig}"),
        format!("{path}?exp={exp}&sig={sig}&sig=00"),
        format!("/blob/{user}/{}?exp={exp}&sig={sig}", hash.to_uppercase()),
        format!("/blob/{user}/..%2F..%2F.key?exp={exp}&sig={sig}"),
        format!("/blob/..%2F{user}/{hash}?exp={exp}&sig={sig}"),
        format!("/blob/{user}/{hash}/extra?exp={exp}&sig={sig}"),
        format!("/blob/%00/{hash}?exp={exp}&sig={sig}"),
    ];
    for b in &bad {
        let resp = get(b);
        let status = resp.status();
        assert!(
            status.is_client_error(),
            "{b}: expected a 4xx, got {status}"
        );
    }
    // The download URL is not an upload URL, even for the same bytes.
    let resp = http
        .put(format!("{}{url}", server.url))
        .body(data.clone())
        .send()
        .unwrap();
    expect_error(resp, 403, "forbidden");
}

// ---------------------------------------------------------------------------------------------
// Isolation

/// One route of the API, called by B with A's ids.
struct Probe {
    method: Method,
    path: String,
    body: Option<Value>,
    /// Extra header (name, value).
    header: Option<(&'static str, String)>,
    expect: Expect,
}

enum Expect {
    /// A JSON 404 `not_found`.
    NotFound,
    /// Success, and the answer mentions none of A's ids, names or hashes.
    Blind,
}

fn probe(method: Method, path: String, body: Option<Value>, expect: Expect) -> Probe {
    Probe {
        method,
        path,
        body,
        header: None,
        expect,
    }
}

#[test]
fn a_user_reaches_nothing_of_another_user_by_any_route() {
    let server = Server::start();
    let a = Api::new(&server, &server.add_user("alice"));
    let b = Api::new(&server, &server.add_user("bob"));

    // Alice's things: a directory, a file in it (with an earlier version), a symlink, a
    // subdirectory, a trashed file, a device.
    let dir = a.mkdir(ROOT_ID, "private");
    let first = a.create_file(dir.id, "secret.txt", b"alice's first secret");
    // Edited once, so it has an earlier version (number 1) to steal or restore.
    let content = a.upload(b"alice's secret");
    let file: Node = a.ok(a
        .req(Method::PUT, &format!("/nodes/{}/content", first.id))
        .json(&json!({"base_version": first.version, "content": content}))
        .send()
        .unwrap());
    let link: Node = a.ok(a.post(
        "/nodes",
        json!({"parent": dir.id, "name": "link", "kind": "symlink", "target": "secret.txt"}),
    ));
    let sub = a.mkdir(dir.id, "sub");
    let gone = a.create_file(ROOT_ID, "gone.txt", b"deleted by alice");
    a.ok::<Node>(
        a.req(Method::DELETE, &format!("/nodes/{}", gone.id))
            .send()
            .unwrap(),
    );
    let a_dev: Device = a.ok(a.post("/devices", json!({"name": "alice-laptop"})));
    // Bob's own things, to use as the "source" side of cross-user requests.
    let b_file = b.create_file(ROOT_ID, "mine.txt", b"bob's own");
    let b_dev: Device = b.ok(b.post("/devices", json!({"name": "bob-laptop"})));
    let b_content = b.upload(b"bob's new content");

    let before = a.snapshot();
    let b_before = b.snapshot();
    let a_ids: Vec<NodeId> = [dir.id, file.id, link.id, sub.id, gone.id].to_vec();

    use Expect::*;
    let mut probes = Vec::new();
    // Every route that takes an id, with each of Alice's ids where it fits.
    for id in &a_ids {
        let id = *id;
        probes.push(probe(Method::GET, format!("/nodes/{id}"), None, NotFound));
        probes.push(probe(
            Method::GET,
            format!("/nodes/{id}/children"),
            None,
            NotFound,
        ));
        probes.push(probe(
            Method::GET,
            format!("/nodes/{id}/children/secret.txt"),
            None,
            NotFound,
        ));
        probes.push(probe(
            Method::PATCH,
            format!("/nodes/{id}"),
            Some(json!({"mode": 0o777})),
            NotFound,
        ));
        probes.push(probe(
            Method::PUT,
            format!("/nodes/{id}/content"),
            Some(json!({"base_version": 1, "content": b_content})),
            NotFound,
        ));
        for version in [1, 2, 3] {
            probes.push(probe(
                Method::PUT,
                format!("/nodes/{id}/content"),
                Some(json!({"base_version": version, "content": b_content})),
                NotFound,
            ));
        }
        for mode in ["replace", "no_replace", "exchange"] {
            probes.push(probe(
                Method::POST,
                format!("/nodes/{id}/move"),
                Some(
                    json!({"base_version": 1, "new_parent": 1, "new_name": "stolen", "mode": mode}),
                ),
                NotFound,
            ));
            // Bob's own node into Alice's directory.
            probes.push(probe(
                Method::POST,
                format!("/nodes/{}/move", b_file.id),
                Some(json!({"base_version": b_file.version, "new_parent": id,
                            "new_name": "planted", "mode": mode})),
                NotFound,
            ));
            // Bob's node onto Alice's names (exchange would swap with hers).
            probes.push(probe(
                Method::POST,
                format!("/nodes/{}/move", b_file.id),
                Some(json!({"base_version": b_file.version, "new_parent": id,
                            "new_name": "secret.txt", "mode": mode})),
                NotFound,
            ));
        }
        probes.push(probe(
            Method::DELETE,
            format!("/nodes/{id}?recursive=true"),
            None,
            NotFound,
        ));
        probes.push(probe(
            Method::DELETE,
            format!("/nodes/{id}?recursive=false&base_version=1"),
            None,
            NotFound,
        ));
        probes.push(probe(
            Method::POST,
            format!("/trash/{id}/restore"),
            Some(json!({})),
            NotFound,
        ));
        probes.push(probe(
            Method::GET,
            format!("/nodes/{id}/versions"),
            None,
            NotFound,
        ));
        for version in [1, 2] {
            probes.push(probe(
                Method::POST,
                format!("/nodes/{id}/versions/{version}/restore"),
                Some(json!({})),
                NotFound,
            ));
        }
        probes.push(probe(
            Method::POST,
            "/nodes".to_string(),
            Some(json!({"parent": id, "name": "planted", "kind": "dir"})),
            NotFound,
        ));
        probes.push(probe(
            Method::POST,
            "/nodes".to_string(),
            Some(
                json!({"parent": id, "name": "planted.txt", "kind": "file", "content": b_content}),
            ),
            NotFound,
        ));
    }
    // Devices: Alice's device for polling, and as the device header of Bob's own changes.
    probes.push(probe(
        Method::GET,
        format!("/devices/{}/poll?since=0&timeout_ms=10", a_dev.id),
        None,
        NotFound,
    ));
    probes.push(probe(
        Method::POST,
        format!("/devices/{}/listen", a_dev.id),
        Some(json!({})),
        NotFound,
    ));
    probes.push(probe(
        Method::DELETE,
        format!("/devices/{}", a_dev.id),
        None,
        NotFound,
    ));
    let mut tagged = probe(
        Method::POST,
        "/nodes".to_string(),
        Some(json!({"parent": 1, "name": "tagged-as-alice", "kind": "dir"})),
        NotFound,
    );
    tagged.header = Some((DEVICE_HEADER, a_dev.id.to_string()));
    probes.push(tagged);
    // Paths: Alice's names from Bob's root.
    for path in [
        "/private",
        "/private/secret.txt",
        "/gone.txt",
        "/private/sub",
    ] {
        probes.push(probe(
            Method::GET,
            format!("/lookup?path={path}"),
            None,
            NotFound,
        ));
        probes.push(probe(
            Method::GET,
            format!("/nodes/1/children/{}", path.rsplit('/').next().unwrap()),
            None,
            NotFound,
        ));
    }
    // Routes without ids: Bob sees only his own world.
    for path in [
        "/me",
        "/trash",
        "/changes?since=0",
        "/nodes/1",
        "/nodes/1/children",
        "/lookup?path=/",
    ] {
        probes.push(probe(Method::GET, path.to_string(), None, Blind));
    }
    probes.push(probe(
        Method::GET,
        format!("/devices/{}/poll?since=0&timeout_ms=10", b_dev.id),
        None,
        Blind,
    ));
    probes.push(probe(Method::GET, "/devices".to_string(), None, Blind));
    probes.push(probe(
        Method::POST,
        "/blocks/missing".to_string(),
        Some(json!({"hashes": file.blocks})),
        Blind,
    ));
    probes.push(probe(
        Method::POST,
        "/blocks/urls".to_string(),
        Some(json!({"hashes": file.blocks})),
        Blind,
    ));

    // Every route of the table is covered.
    let routes = [
        (Method::GET, "/me"),
        (Method::GET, "/nodes/{id}"),
        (Method::GET, "/nodes/{id}/children"),
        (Method::GET, "/nodes/{id}/children/{name}"),
        (Method::GET, "/lookup"),
        (Method::POST, "/nodes"),
        (Method::PUT, "/nodes/{id}/content"),
        (Method::POST, "/nodes/{id}/move"),
        (Method::GET, "/nodes/{id}/versions"),
        (Method::POST, "/nodes/{id}/versions/{id}/restore"),
        (Method::PATCH, "/nodes/{id}"),
        (Method::DELETE, "/nodes/{id}"),
        (Method::GET, "/trash"),
        (Method::POST, "/trash/{id}/restore"),
        (Method::POST, "/devices"),
        (Method::GET, "/changes"),
        (Method::GET, "/devices/{id}/poll"),
        (Method::POST, "/devices/{id}/listen"),
        (Method::GET, "/devices"),
        (Method::DELETE, "/devices/{id}"),
        (Method::POST, "/blocks/missing"),
        (Method::POST, "/blocks/urls"),
    ];
    let shape = |p: &str| -> String {
        let p = p.split('?').next().unwrap();
        let parts: Vec<String> = p
            .split('/')
            .enumerate()
            .map(|(i, s)| {
                let prev = p.split('/').nth(i.wrapping_sub(1)).unwrap_or("");
                if s.parse::<u64>().is_ok() {
                    "{id}".to_string()
                } else if prev == "children" {
                    "{name}".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        parts.join("/")
    };
    // (POST /devices has no id to misuse: Bob registering a device gives him his own; it is
    // probed below for the answer's content.)
    for (method, route) in &routes {
        let covered = probes
            .iter()
            .any(|p| p.method == *method && shape(&p.path) == *route)
            || (*method == Method::POST && *route == "/devices");
        assert!(covered, "no isolation probe for {method} {route}");
    }

    let secrets: Vec<String> = a_ids
        .iter()
        .map(|id| id.to_string())
        .chain([a_dev.id.to_string()])
        .chain(["private".into(), "secret.txt".into(), "gone.txt".into()])
        .chain(["alice".into()])
        .collect();
    for p in &probes {
        let mut req = b.req(p.method.clone(), &p.path);
        if let Some(body) = &p.body {
            req = req.json(body);
        }
        if let Some((name, value)) = &p.header {
            req = req.header(*name, value);
        }
        let resp = req.send().unwrap();
        let what = format!("{} {} {:?}", p.method, p.path, p.body);
        match p.expect {
            NotFound => {
                let status = resp.status().as_u16();
                let text = resp.text().unwrap();
                assert_eq!(status, 404, "{what}: {text}");
                let err: ApiError = serde_json::from_str(&text).unwrap();
                assert_eq!(err.code, ErrorCode::NotFound, "{what}");
                assert!(err.current.is_none(), "{what} leaked a node: {text}");
            }
            Blind => {
                let status = resp.status();
                let text = resp.text().unwrap();
                assert!(status.is_success(), "{what}: {status} {text}");
                for s in &secrets {
                    // Ids are numbers: match them as whole JSON numbers.
                    let hit = if s.bytes().all(|c| c.is_ascii_digit()) {
                        text.contains(&format!(":{s},")) || text.contains(&format!(":{s}}}"))
                    } else {
                        text.contains(s.as_str())
                    };
                    assert!(!hit, "{what} shows Bob {s:?}: {text}");
                }
            }
        }
    }
    // Alice's block is missing for Bob (he must upload it himself), and his download URL for
    // her hash points into his own namespace, which lacks it.
    let missing: MissingBlocks = b.ok(b.post("/blocks/missing", json!({"hashes": file.blocks})));
    assert_eq!(missing.missing.len(), 1);
    let urls: BlockUrls = b.ok(b.post("/blocks/urls", json!({"hashes": file.blocks})));
    for u in &urls.urls {
        let resp = b
            .http
            .get(format!("{}{}", server.url, u.url))
            .send()
            .unwrap();
        expect_error(resp, 404, "not_found");
    }
    // Bob's device registration answers only Bob's device.
    let dev: Device = b.ok(b.post("/devices", json!({"name": "alice-laptop"})));
    assert_ne!(dev.id, a_dev.id);
    // Bob's unlink of Alice's device left it hers.
    let a_devices: jewel_wire::DeviceList = a.ok(a.get("/devices"));
    assert!(a_devices.devices.iter().any(|d| d.id == a_dev.id));

    // Alice's world is exactly as it was; Bob's changed only by what he did to his own.
    assert_eq!(a.snapshot(), before, "Alice's tree, trash or log changed");
    let b_after = b.snapshot();
    assert_eq!(b_after["nodes"], b_before["nodes"], "Bob's tree changed");
    assert_eq!(
        b_after["latest_seq"], b_before["latest_seq"],
        "a refused request wrote to Bob's log"
    );
    assert_eq!(a.read(&file), b"alice's secret");
    // And the server still serves both.
    wait_for("both users served", Duration::from_secs(5), || {
        (a.get("/me").status().is_success() && b.get("/me").status().is_success()).then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// Hardening (issue 14): bounded answers, bounded devices, block uploads checked before their
// body, private files, nothing left of a removed user, answers no cache keeps.

/// The body of an answer, with its status.
fn body_of(resp: Response) -> (u16, Vec<u8>) {
    let status = resp.status().as_u16();
    (status, resp.bytes().unwrap().to_vec())
}

/// The most one page may hold: `MAX_PAGE_BYTES`, one entry beyond it, and the page's frame.
const PAGE_BOUND: usize = MAX_PAGE_BYTES + MAX_NODE_JSON_BYTES + 4096;

#[test]
fn huge_nodes_are_refused_and_every_answer_is_bounded_in_bytes() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("hoarder"));
    let one = api.upload(b"x");
    let h = one.blocks[0].clone();

    // The reported attack: one 1-byte block named 61,500 times, with a size to match the
    // count. Refused, and nothing is created.
    let before = api.snapshot();
    let n = 61_500u64;
    let attack = json!({"parent": ROOT_ID, "name": "huge", "kind": "file",
        "content": {"size": (n - 1) * BLOCK_SIZE + 1, "blocks": vec![h.clone(); n as usize]}});
    expect_error(api.post("/nodes", attack), 413, "payload_too_large");
    // One block past the cap, and a size past the cap, likewise.
    let over = MAX_FILE_BLOCKS as u64 + 1;
    let attack = json!({"parent": ROOT_ID, "name": "huge", "kind": "file",
        "content": {"size": over * BLOCK_SIZE, "blocks": vec![h.clone(); over as usize]}});
    expect_error(api.post("/nodes", attack), 413, "payload_too_large");
    assert_eq!(api.snapshot(), before, "a refused commit changed something");

    // At the cap a file is accepted: its node is about 1.1 MB of JSON.
    let full = json!({"size": MAX_FILE_SIZE, "blocks": vec![h.clone(); MAX_FILE_BLOCKS]});
    let d = api.mkdir(ROOT_ID, "big");
    let mut files = Vec::new();
    for i in 0..4 {
        let node: Node = api.ok(api.post(
            "/nodes",
            json!({"parent": d.id, "name": format!("f{i}"), "kind": "file", "content": full}),
        ));
        files.push(node);
    }
    let entry = serde_json::to_vec(&files[0]).unwrap().len();
    assert!(entry > 1_000_000 && entry <= MAX_NODE_JSON_BYTES, "{entry}");

    // A listing: every page bounded, `next` followed to every entry (as the client does).
    let (mut after, mut names, mut pages) = (None::<String>, Vec::new(), 0);
    loop {
        let path = match &after {
            None => format!("/nodes/{}/children", d.id),
            Some(a) => format!("/nodes/{}/children?after={}", d.id, pct(a)),
        };
        let (status, body) = body_of(api.get(&path));
        assert_eq!(status, 200);
        assert!(
            body.len() <= PAGE_BOUND,
            "a listing page of {} bytes",
            body.len()
        );
        let page: ListPage = serde_json::from_slice(&body).unwrap();
        pages += 1;
        names.extend(page.entries.iter().map(|n| n.name.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(names, ["f0", "f1", "f2", "f3"]);
    assert!(pages >= 2, "four 1.1 MB nodes in {pages} page(s)");

    // Earlier versions: four big ones, paged by `before`.
    let f = files[0].clone();
    let mut version = f.version;
    for i in 0..4 {
        let other = api.upload(format!("v{i}").as_bytes()).blocks[0].clone();
        let mut blocks = vec![h.clone(); MAX_FILE_BLOCKS];
        blocks[0] = other;
        let node: Node = api.ok(api
            .req(Method::PUT, &format!("/nodes/{}/content", f.id))
            .json(&json!({"base_version": version,
                    "content": {"size": MAX_FILE_SIZE, "blocks": blocks}}))
            .send()
            .unwrap());
        version = node.version;
    }
    let (mut before, mut versions) = (None::<Version>, Vec::new());
    loop {
        let path = match before {
            None => format!("/nodes/{}/versions", f.id),
            Some(b) => format!("/nodes/{}/versions?before={b}", f.id),
        };
        let (status, body) = body_of(api.get(&path));
        assert_eq!(status, 200);
        assert!(
            body.len() <= PAGE_BOUND,
            "a versions page of {} bytes",
            body.len()
        );
        let list: VersionList = serde_json::from_slice(&body).unwrap();
        versions.extend(list.versions.iter().map(|v| v.version));
        match list.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(versions.len(), 4, "{versions:?}");

    // The trash, paged by count and by bytes.
    for f in &files[1..] {
        api.ok::<Node>(
            api.req(Method::DELETE, &format!("/nodes/{}", f.id))
                .send()
                .unwrap(),
        );
    }
    let trash_pages = |limit: Option<u32>| {
        let (mut after, mut names, mut pages) = (None::<String>, Vec::new(), 0);
        loop {
            let mut q = Vec::new();
            if let Some(a) = &after {
                q.push(format!("after={}", pct(a)));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let (status, body) = body_of(api.get(&format!("/trash?{}", q.join("&"))));
            assert_eq!(status, 200);
            assert!(
                body.len() <= PAGE_BOUND,
                "a trash page of {} bytes",
                body.len()
            );
            let page: TrashPage = serde_json::from_slice(&body).unwrap();
            if let Some(l) = limit {
                assert!(page.entries.len() <= l as usize);
            }
            pages += 1;
            names.extend(page.entries.iter().map(|e| e.node.name.clone()));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        (names, pages)
    };
    let (trashed, pages) = trash_pages(None);
    assert_eq!(trashed, ["f3", "f2", "f1"]);
    assert!(pages >= 2);
    let small = api.create_file(ROOT_ID, "small", b"s");
    api.ok::<Node>(
        api.req(Method::DELETE, &format!("/nodes/{}", small.id))
            .send()
            .unwrap(),
    );
    let (trashed, pages) = trash_pages(Some(1));
    assert_eq!((trashed.len(), pages), (4, 4));
    expect_error(api.get("/trash?after=nonsense"), 400, "bad_request");

    // The change feed and a long-poll: bounded pages; following `latest_seq` reads all.
    let latest = api.latest_seq();
    let mut cursor = 0;
    while cursor < latest {
        let (status, body) = body_of(api.get(&format!("/changes?since={cursor}")));
        assert_eq!(status, 200);
        assert!(
            body.len() <= PAGE_BOUND,
            "a /changes page of {} bytes",
            body.len()
        );
        let page: ChangePage = serde_json::from_slice(&body).unwrap();
        assert!(!page.events.is_empty());
        cursor = page.events.last().unwrap().seq;
    }
    let dev: Device = api.ok(api.post("/devices", json!({"name": "poller"})));
    let (status, body) =
        body_of(api.get(&format!("/devices/{}/poll?since=0&timeout_ms=0", dev.id)));
    assert_eq!(status, 200);
    assert!(
        body.len() <= PAGE_BOUND,
        "a poll answer of {} bytes",
        body.len()
    );
}

#[test]
fn devices_per_user_are_capped_and_an_admin_frees_them() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("collector"));
    let other = Api::new(&server, &server.add_user("neighbour"));
    for i in 0..100 {
        api.ok::<Device>(api.post("/devices", json!({"name": format!("d{i}")})));
    }
    let before = api.snapshot();
    let err = expect_error(
        api.post("/devices", json!({"name": "d100"})),
        403,
        "forbidden",
    );
    assert!(err.message.contains("100 devices"), "{}", err.message);
    assert!(err.message.contains("forget-devices"), "{}", err.message);
    assert_eq!(api.snapshot(), before);
    // Another user is not affected.
    other.ok::<Device>(other.post("/devices", json!({"name": "laptop"})));
    // The admin frees the slots; registering works again.
    let out = server.admin(&["user", "forget-devices", "collector"]);
    assert!(out.contains("forgot 100 device"), "{out}");
    api.ok::<Device>(api.post("/devices", json!({"name": "again"})));
}

/// Sends a request head by hand and reads the answer's status line, waiting at most `wait`.
fn status_without_body(server: &Server, head: &str, wait: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn block_uploads_are_checked_before_their_body_is_read() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("uploader"));
    let data = b"a block to upload".to_vec();
    let hash = sha256_hex(&data);
    let missing: MissingBlocks = api.ok(api.post("/blocks/missing", json!({"hashes": [hash]})));
    let url = missing.missing[0].url.clone();
    let (path, query) = url.split_once('?').unwrap();
    let exp = query
        .split('&')
        .find_map(|p| p.strip_prefix("exp="))
        .unwrap();
    let forged = format!("{path}?exp={exp}&sig={}", "0".repeat(64));
    let head = |target: &str, length: u64| {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };
    // A forged signature announcing a whole block, whose bytes never come: refused at once
    // (the server used to wait for, and buffer, 4 MiB first).
    let wait = Duration::from_secs(3);
    assert_eq!(
        status_without_body(&server, &head(&forged, BLOCK_SIZE), wait),
        Some(403)
    );
    // A genuine URL announcing more than a block: refused at once too.
    assert_eq!(
        status_without_body(&server, &head(&url, BLOCK_SIZE + 1), wait),
        Some(413)
    );
    // Sixty strangers announcing 4 MiB each cost the server no memory to speak of.
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let start = rss();
    let chunk = vec![b'x'; BLOCK_SIZE as usize - 1];
    let mut streams = Vec::new();
    for _ in 0..60 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.write_all(head(&forged, BLOCK_SIZE).as_bytes()).unwrap();
        let _ = s.write_all(&chunk); // the server may close before taking it all
        streams.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss().saturating_sub(start);
    eprintln!("server RSS grew by {grown} KiB under 60 forged 4 MiB uploads");
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB");
    drop(streams);
    // The genuine upload still works, and nothing forged was stored.
    let resp = Client::new()
        .put(format!("{}{url}", server.url))
        .body(data)
        .send()
        .unwrap();
    assert!(resp.status().is_success());
    assert!(api
        .ok::<MissingBlocks>(api.post("/blocks/missing", json!({"hashes": [hash]})))
        .missing
        .is_empty());
}

#[test]
fn api_answers_are_neither_cached_nor_sniffed() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("browser"));
    let check = |resp: &Response, what: &str| {
        let h = resp.headers();
        assert_eq!(h["cache-control"], "no-store", "{what}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    };
    check(&api.get("/me"), "GET /me");
    check(&api.get("/nodes/1/children"), "a listing");
    check(&api.get("/nodes/424242"), "a 404");
    let anonymous = Client::new().get(api.url("/me")).send().unwrap();
    check(&anonymous, "a 401");
    // A block, as the portal downloads it: never kept by the browser.
    let node = api.create_file(ROOT_ID, "secret.txt", b"for my eyes only");
    let urls: BlockUrls = api.ok(api.post("/blocks/urls", json!({"hashes": node.blocks})));
    let resp = Client::new()
        .get(format!("{}{}", server.url, urls.urls[0].url))
        .send()
        .unwrap();
    let cache = resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cache.contains("no-store") && !cache.contains("max-age"),
        "{cache}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

#[test]
fn the_server_keeps_its_data_folder_private() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    // As an older version left it: open to every local user.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start_in(data);
    let api = Api::new(&server, &server.add_user("private"));
    api.create_file(ROOT_ID, "names-are-secret.txt", b"content too");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = server.data.path();
    assert_eq!(mode(root), 0o700, "the data folder");
    let mut checked = 0;
    for path in walk(root) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(mode(&path) & 0o077, 0, "{name} is {:o}", mode(&path));
        checked += 1;
        let mut dir = path.parent().unwrap();
        while dir != root {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            dir = dir.parent().unwrap();
        }
    }
    assert!(checked >= 3, "meta.db, the key, a block");
    assert_eq!(mode(&root.join("meta.db")), 0o600);
}

#[test]
fn a_removed_user_leaves_nothing_and_its_urls_stop_at_once() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("leaver"));
    let stays = Api::new(&server, &server.add_user("stayer"));
    let kept = stays.create_file(ROOT_ID, "kept", b"kept");
    let f = api.create_file(ROOT_ID, "f", b"one");
    let c2 = api.upload(b"two");
    api.ok::<Node>(
        api.req(Method::PUT, &format!("/nodes/{}/content", f.id))
            .json(&json!({"base_version": f.version, "content": c2}))
            .send()
            .unwrap(),
    );
    api.ok::<Device>(api.post("/devices", json!({"name": "laptop"})));
    // A small file, its bytes inline (kept in the database).
    let tiny = b"tiny".to_vec();
    let inline = serde_json::to_value(InlineBytes(tiny.clone())).unwrap();
    api.ok::<Node>(api.post(
        "/nodes",
        json!({"parent": ROOT_ID, "name": "tiny", "kind": "file",
            "content": {"size": tiny.len(), "blocks": [sha256_hex(&tiny)], "inline": inline}}),
    ));
    // An upload URL issued before the removal.
    let late = b"uploaded after the removal".to_vec();
    let missing: MissingBlocks =
        api.ok(api.post("/blocks/missing", json!({"hashes": [sha256_hex(&late)]})));
    let url = missing.missing[0].url.clone();
    let uid = server
        .admin(&["user", "list"])
        .lines()
        .find_map(|l| l.strip_prefix("leaver\t").map(str::to_string))
        .unwrap();

    server.admin(&["user", "remove", "leaver"]);
    let resp = Client::new()
        .put(format!("{}{url}", server.url))
        .body(late)
        .send()
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "a removed user's URL still writes"
    );
    let blocks = server.data.path().join("blocks").join(&uid);
    assert!(!blocks.exists(), "{} is still there", blocks.display());
    let db = rusqlite::Connection::open_with_flags(
        server.data.path().join("meta.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for table in ["nodes", "versions", "devices", "changes", "small_blocks"] {
        let n: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE user = ?1"),
                [&uid],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{table} keeps {n} row(s) of the removed user");
    }
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM users WHERE id = ?1", [&uid], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);
    // The other user keeps everything.
    assert_eq!(stays.read(&kept), b"kept");
}

/// Inline content (a small file's bytes in its commit): bytes that are not the block the
/// content names, a size that does not match, too many bytes, bad base64 — each refused with
/// a clear error, and nothing is created or stored. Good inline content is stored and reads
/// back, through a create and through a commit, and its change event carries the bytes.
#[test]
fn inline_content_must_be_the_block_it_names() {
    let b64 = |b: &[u8]| serde_json::to_value(InlineBytes(b.to_vec())).unwrap();
    let server = Server::start();
    let token = server.add_user("inline");
    let api = Api::new(&server, &token);
    let me: Me = api.ok(api.get("/me"));
    assert!(
        me.inline_content,
        "the service says it takes inline content"
    );
    let dir = api.mkdir(ROOT_ID, "d");
    let data = b"hello, inline world".to_vec();
    let hash = sha256_hex(&data);
    let other = sha256_hex(b"something else");
    let create = |name: &str, content: Value| {
        api.post(
            "/nodes",
            json!({"parent": dir.id, "name": name, "kind": "file", "content": content}),
        )
    };
    let too_long = vec![7u8; MAX_INLINE_BYTES + 1];
    let bad: [(&str, Value); 5] = [
        (
            "wrong hash",
            json!({"size": data.len(), "blocks": [other], "inline": b64(&data)}),
        ),
        (
            "wrong size",
            json!({"size": data.len() + 1, "blocks": [hash], "inline": b64(&data)}),
        ),
        (
            "two blocks",
            json!({"size": data.len(), "blocks": [hash, hash], "inline": b64(&data)}),
        ),
        (
            "too long",
            json!({"size": too_long.len(), "blocks": [sha256_hex(&too_long)], "inline": b64(&too_long)}),
        ),
        (
            "not base64",
            json!({"size": 3, "blocks": [hash], "inline": "%%%%"}),
        ),
    ];
    for (case, content) in bad {
        let resp = create(case, content);
        assert!(
            resp.status().is_client_error(),
            "{case}: {} {}",
            resp.status(),
            resp.text().unwrap()
        );
    }
    let listing: ListPage = api.ok(api.get(&format!("/nodes/{}/children", dir.id)));
    assert!(
        listing.entries.is_empty(),
        "nothing was created: {:?}",
        listing.entries
    );
    let missing: MissingBlocks = api.ok(api.post("/blocks/missing", json!({"hashes": [hash]})));
    assert_eq!(
        missing.missing.len(),
        1,
        "no refused inline block was stored"
    );

    let since = api.ok::<Me>(api.get("/me")).latest_seq;
    let node: Node = api.ok(create(
        "ok",
        json!({"size": data.len(), "blocks": [hash], "inline": b64(&data)}),
    ));
    assert_eq!(
        api.read(&node),
        data,
        "inline content reads back as a block"
    );
    let edit = b"edited inline".to_vec();
    let edited: Node = api.ok(
        api.req(Method::PUT, &format!("/nodes/{}/content", node.id))
            .json(&json!({"base_version": node.version,
                "content": {"size": edit.len(), "blocks": [sha256_hex(&edit)], "inline": b64(&edit)}}))
            .send()
            .unwrap(),
    );
    assert_eq!(api.read(&edited), edit);
    let page: ChangePage = api.ok(api.get(&format!("/changes?since={since}")));
    let carried: Vec<Option<Vec<u8>>> = page
        .events
        .iter()
        .map(|e| e.inline.as_ref().map(|b| b.0.clone()))
        .collect();
    assert_eq!(
        carried,
        [Some(data), Some(edit)],
        "each event carries its bytes"
    );
}

/// A small file's bytes, sent inline, are kept in the database with the node that names them
/// (no block file on disk, no flush of their own), alone or in a batch; they read back exactly
/// through the block URLs (the route every client uses to fetch a block) and count as stored,
/// and all of that still holds after the server is killed and started again.
#[test]
fn small_files_live_in_the_database_and_survive_a_restart() {
    let b64 = |b: &[u8]| serde_json::to_value(InlineBytes(b.to_vec())).unwrap();
    let small = |b: &[u8]| json!({"size": b.len(), "blocks": [sha256_hex(b)], "inline": b64(b)});
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("smallfiles"));
    let uid = server
        .admin(&["user", "list"])
        .lines()
        .find_map(|l| l.strip_prefix("smallfiles\t").map(str::to_string))
        .unwrap();
    let alone = b"a small file, alone".to_vec();
    let node: Node = api.ok(api.post(
        "/nodes",
        json!({"parent": ROOT_ID, "name": "alone", "kind": "file", "content": small(&alone)}),
    ));
    let batched: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("small file {i} of a batch").into_bytes())
        .collect();
    let changes: Vec<Value> = batched
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({"create": {"parent": ROOT_ID, "name": format!("b{i}"), "kind": "file",
                "content": small(b)}})
        })
        .collect();
    let answer: BatchAnswer = api.ok(api.post("/batch", json!({ "changes": changes })));
    assert!(answer.failed.is_none(), "{:?}", answer.failed);
    let mut files = vec![(node, alone)];
    files.extend(answer.done.into_iter().zip(batched));

    let user_blocks = server.data.path().join("blocks").join(&uid);
    let block_files = match user_blocks.exists() {
        true => walk(&user_blocks),
        false => Vec::new(),
    };
    assert!(
        block_files.is_empty(),
        "block files written: {block_files:?}"
    );
    {
        let db = rusqlite::Connection::open_with_flags(
            server.data.path().join("meta.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        for (node, data) in &files {
            let kept: Vec<u8> = db
                .query_row(
                    "SELECT bytes FROM small_blocks WHERE user = ?1 AND hash = ?2",
                    [&uid, &node.blocks[0]],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(&kept, data, "{} in the database", node.name);
        }
    }
    let check = |api: &Api, when: &str| {
        for (node, data) in &files {
            assert_eq!(&api.read(node), data, "{} reads back {when}", node.name);
        }
        let hashes: Vec<&String> = files.iter().map(|(n, _)| &n.blocks[0]).collect();
        let missing: MissingBlocks =
            api.ok(api.post("/blocks/missing", json!({ "hashes": hashes })));
        assert!(
            missing.missing.is_empty(),
            "kept blocks count as stored {when}: {:?}",
            missing.missing
        );
    };
    check(&api, "at once");
    let server = server.restart();
    let api = Api {
        base: server.url.clone(),
        ..api
    };
    check(&api, "after a restart");
}
