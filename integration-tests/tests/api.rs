//! The service API over HTTP against a real `jewel-server` process on loopback: every route,
//! version conflicts, rename over existing names, the change feed and its cursor, the
//! long-poll, earlier versions of a file, two users isolated, and every kind of bad input — which must get a 4xx with a
//! JSON error, change nothing, and leave the server serving.

use std::time::{Duration, Instant};

use integration_tests::{sha256_hex, Server};
use jewel_wire::*;
use reqwest::blocking::{Client, RequestBuilder, Response};
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
            http: Client::new(),
            base: server.url.clone(),
            token: token.to_string(),
        }
    }
    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }
    fn auth(&self, req: RequestBuilder) -> RequestBuilder {
        req.bearer_auth(&self.token)
    }
    fn get(&self, path: &str) -> Response {
        self.auth(self.http.get(self.url(path))).send().unwrap()
    }
    fn post(&self, path: &str, body: Value) -> Response {
        self.auth(self.http.post(self.url(path)))
            .json(&body)
            .send()
            .unwrap()
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
    /// Uploads `data` as one block through the signed URL and returns the content.
    fn upload(&self, data: &[u8]) -> Content {
        if data.is_empty() {
            return Content::default();
        }
        let hash = sha256_hex(data);
        let missing: MissingBlocks =
            self.ok(self.post("/blocks/missing", json!({"hashes": [hash]})));
        for block in missing.missing {
            let resp = self
                .http
                .put(format!("{}{}", self.base, block.url))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec())
                .send()
                .unwrap();
            assert!(
                resp.status().is_success(),
                "block upload: {}",
                resp.status()
            );
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
    fn names(&self, dir: NodeId) -> Vec<String> {
        let page: ListPage = self.ok(self.get(&format!("/nodes/{dir}/children")));
        page.entries.into_iter().map(|n| n.name).collect()
    }
    /// The request made as `device` (with its header).
    fn as_device(&self, device: DeviceId, req: RequestBuilder) -> Response {
        self.auth(req)
            .header(DEVICE_HEADER, device.to_string())
            .send()
            .unwrap()
    }
    fn latest_seq(&self) -> Seq {
        let me: Me = self.ok(self.get("/me"));
        me.latest_seq
    }
}

/// Asserts a JSON error with the given status and code.
fn expect_error(resp: Response, status: u16, code: &str) -> ApiError {
    let got = resp.status().as_u16();
    let text = resp.text().unwrap();
    assert_eq!(got, status, "body: {text}");
    let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(err["code"], code, "body: {text}");
    assert!(!err["message"].as_str().unwrap_or("").is_empty());
    serde_json::from_value(err).unwrap()
}

#[test]
fn files_directories_and_symlinks_round_trip() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("alice"));
    let docs = api.mkdir(ROOT_ID, "docs");
    let file = api.create_file(docs.id, "hello.txt", b"hello world");
    assert_eq!(file.size, 11);
    assert_eq!(file.version, 1);
    assert_eq!(api.read(&file), b"hello world");

    let link: Node = api.ok(api.post(
        "/nodes",
        json!({"parent": docs.id, "name": "link", "kind": "symlink", "target": "hello.txt"}),
    ));
    assert_eq!(link.kind, NodeKind::Symlink);
    assert_eq!(link.target.as_deref(), Some("hello.txt"));

    let by_id: Node = api.ok(api.get(&format!("/nodes/{}", file.id)));
    assert_eq!(by_id, file);
    let by_name: Node = api.ok(api.get(&format!("/nodes/{}/children/hello.txt", docs.id)));
    assert_eq!(by_name.id, file.id);
    let by_path: Node = api.ok(api.get("/lookup?path=/docs/hello.txt"));
    assert_eq!(by_path.id, file.id);
    expect_error(api.get("/lookup?path=/docs/nope"), 404, "not_found");
    assert_eq!(api.names(docs.id), vec!["hello.txt", "link"]);

    // Attributes.
    let chmod: Node = api.ok(api
        .auth(api.http.patch(api.url(&format!("/nodes/{}", file.id))))
        .json(&json!({"mode": 0o755, "mtime_ns": 1_000_000_000i64}))
        .send()
        .unwrap());
    assert_eq!((chmod.mode, chmod.mtime_ns), (0o755, 1_000_000_000));
    assert!(chmod.version > file.version);
}

#[test]
fn listings_are_paginated() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("pager"));
    for i in 0..25 {
        api.mkdir(ROOT_ID, &format!("d{i:02}"));
    }
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &after {
            Some(a) => format!("/nodes/1/children?limit=10&after={a}"),
            None => "/nodes/1/children?limit=10".to_string(),
        };
        let page: ListPage = api.ok(api.get(&q));
        pages += 1;
        names.extend(page.entries.into_iter().map(|n| n.name));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(names.len(), 25);
    assert!(pages >= 3);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn content_commits_check_the_base_version() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("bob"));
    let file = api.create_file(ROOT_ID, "notes.txt", b"v1");
    let v2 = api.upload(b"version two");
    let committed: Node = api.ok(api
        .auth(
            api.http
                .put(api.url(&format!("/nodes/{}/content", file.id))),
        )
        .json(&json!({"base_version": file.version, "content": v2}))
        .send()
        .unwrap());
    assert!(committed.version > file.version);
    assert_eq!(api.read(&committed), b"version two");

    // A second writer on the old base loses, and learns the current node.
    let v3 = api.upload(b"stale writer");
    let err = expect_error(
        api.auth(
            api.http
                .put(api.url(&format!("/nodes/{}/content", file.id))),
        )
        .json(&json!({"base_version": file.version, "content": v3}))
        .send()
        .unwrap(),
        409,
        "conflict",
    );
    assert_eq!(err.current.unwrap().version, committed.version);
    let now: Node = api.ok(api.get(&format!("/nodes/{}", file.id)));
    assert_eq!(api.read(&now), b"version two");

    // A commit naming a block that was never uploaded is refused.
    let ghost = sha256_hex(b"never uploaded");
    let err = expect_error(
        api.auth(
            api.http
                .put(api.url(&format!("/nodes/{}/content", file.id))),
        )
        .json(&json!({"base_version": now.version, "content": {"size": 14, "blocks": [ghost]}}))
        .send()
        .unwrap(),
        400,
        "missing_blocks",
    );
    assert_eq!(err.missing, vec![ghost]);
    // Size and block count must agree.
    let v4 = api.upload(b"abc");
    expect_error(
        api.auth(api.http.put(api.url(&format!("/nodes/{}/content", file.id))))
            .json(&json!({"base_version": now.version, "content": {"size": 5_000_000, "blocks": v4.blocks}}))
            .send()
            .unwrap(),
        400,
        "bad_request",
    );
}

#[test]
fn earlier_versions_are_kept_and_restored() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("vera"));
    let eve = Api::new(&server, &server.add_user("eve"));
    let file = api.create_file(ROOT_ID, "draft.txt", b"first draft");
    let commit = |base: Version, data: &[u8]| -> Node {
        let content = api.upload(data);
        api.ok(api
            .auth(
                api.http
                    .put(api.url(&format!("/nodes/{}/content", file.id))),
            )
            .json(&json!({"base_version": base, "content": content}))
            .send()
            .unwrap())
    };
    let second = commit(file.version, b"second draft");
    let third = commit(second.version, b"final text");

    let list: VersionList = api.ok(api.get(&format!("/nodes/{}/versions", file.id)));
    let kept: Vec<Version> = list.versions.iter().map(|v| v.version).collect();
    assert_eq!(kept, [second.version, file.version], "newest first");
    assert_eq!(list.versions[1].content.size, b"first draft".len() as u64);

    // Restoring the first draft makes it the newest content; what it replaced is kept too.
    let seq = api.latest_seq();
    let restored: Node = api.ok(api.post(
        &format!("/nodes/{}/versions/{}/restore", file.id, file.version),
        json!({}),
    ));
    assert!(restored.version > third.version);
    assert_eq!(api.read(&restored), b"first draft");
    assert_eq!(
        api.latest_seq(),
        seq + 1,
        "a restore is one change other devices see"
    );
    let list: VersionList = api.ok(api.get(&format!("/nodes/{}/versions", file.id)));
    assert_eq!(list.versions[0].version, third.version);

    // A version that is not kept, a directory, another user: clear 404s, nothing changes.
    expect_error(
        api.post(
            &format!("/nodes/{}/versions/999/restore", file.id),
            json!({}),
        ),
        404,
        "not_found",
    );
    expect_error(
        api.get(&format!("/nodes/{ROOT_ID}/versions")),
        404,
        "not_found",
    );
    expect_error(
        eve.get(&format!("/nodes/{}/versions", file.id)),
        404,
        "not_found",
    );
    expect_error(
        eve.post(
            &format!("/nodes/{}/versions/{}/restore", file.id, file.version),
            json!({}),
        ),
        404,
        "not_found",
    );
    let now: Node = api.ok(api.get(&format!("/nodes/{}", file.id)));
    assert_eq!(now.version, restored.version);
    assert_eq!(api.latest_seq(), seq + 1);
}

#[test]
fn rename_move_replace_and_trash() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("carol"));
    let a = api.create_file(ROOT_ID, "a.txt", b"A");
    let b = api.create_file(ROOT_ID, "b.txt", b"B");
    let sub = api.mkdir(ROOT_ID, "sub");

    // NoReplace refuses when the name is taken.
    expect_error(
        api.post(&format!("/nodes/{}/move", a.id), json!({"base_version": a.version, "new_parent": 1, "new_name": "b.txt", "mode": "no_replace"})),
        409,
        "exists",
    );
    // POSIX rename replaces b.txt; b goes to the trash.
    let moved: MoveResult = api.ok(api.post(
        &format!("/nodes/{}/move", a.id),
        json!({"base_version": a.version, "new_parent": 1, "new_name": "b.txt"}),
    ));
    assert_eq!(moved.node.id, a.id);
    assert_eq!(moved.other.as_ref().map(|n| n.id), Some(b.id));
    assert_eq!(api.names(ROOT_ID), vec!["b.txt", "sub"]);
    let trash: TrashPage = api.ok(api.get("/trash"));
    assert!(trash.entries.iter().any(|e| e.node.id == b.id));

    // A move on a stale base is a conflict.
    expect_error(
        api.post(
            &format!("/nodes/{}/move", a.id),
            json!({"base_version": a.version, "new_parent": sub.id, "new_name": "x"}),
        ),
        409,
        "conflict",
    );
    // Move between directories.
    let moved: MoveResult = api.ok(api.post(
        &format!("/nodes/{}/move", a.id),
        json!({"base_version": moved.node.version, "new_parent": sub.id, "new_name": "a.txt"}),
    ));
    assert_eq!(moved.node.parent, sub.id);
    assert_eq!(api.names(sub.id), vec!["a.txt"]);
    // A directory cannot move below itself.
    let sub_now: Node = api.ok(api.get(&format!("/nodes/{}", sub.id)));
    let inner = api.mkdir(sub.id, "inner");
    expect_error(
        api.post(
            &format!("/nodes/{}/move", sub.id),
            json!({"base_version": sub_now.version, "new_parent": inner.id, "new_name": "loop"}),
        ),
        400,
        "bad_request",
    );

    // Delete: a non-empty directory needs recursive; then restore brings it back whole.
    let del = |path: &str| api.auth(api.http.delete(api.url(path))).send().unwrap();
    expect_error(del(&format!("/nodes/{}", sub.id)), 409, "not_empty");
    let _: Node = api.ok(del(&format!("/nodes/{}?recursive=true", sub.id)));
    assert!(api.names(ROOT_ID).is_empty());
    expect_error(api.get(&format!("/nodes/{}", a.id)), 404, "not_found");
    let restored: Node = api.ok(api.post(&format!("/trash/{}/restore", sub.id), json!({})));
    assert_eq!(restored.name, "sub");
    assert_eq!(api.names(sub.id), vec!["a.txt", "inner"]);
}

#[test]
fn the_change_feed_and_long_poll() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("dave"));
    let device: Device = api.ok(api.post("/devices", json!({"name": "laptop"})));
    assert_eq!(device.listen, Listen::Poll);
    // Renewing how a device listens keeps the device.
    let renewed: Device = api.ok(api.post(&format!("/devices/{}/listen", device.id), json!({})));
    assert_eq!((renewed.id, renewed.name.as_str()), (device.id, "laptop"));
    expect_error(
        api.post("/devices/12345/listen", json!({})),
        404,
        "not_found",
    );
    let start_seq = api.latest_seq();

    let d = api.mkdir(ROOT_ID, "d");
    let f = api.create_file(d.id, "f", b"x");
    let page: ChangePage = api.ok(api.get(&format!("/changes?since={start_seq}")));
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.events[0].node.id, d.id);
    assert_eq!(page.events[1].node.id, f.id);
    assert!(page.events[0].seq < page.events[1].seq);
    assert_eq!(page.latest_seq, page.events[1].seq);
    let limited: ChangePage = api.ok(api.get(&format!("/changes?since={start_seq}&limit=1")));
    assert_eq!(limited.events.len(), 1);
    assert_eq!(limited.latest_seq, page.latest_seq);

    // Events name the device that caused them.
    let tagged: Node = api.ok(api
        .auth(api.http.post(api.url("/nodes")))
        .header(DEVICE_HEADER, device.id.to_string())
        .json(&json!({"parent": 1, "name": "tagged", "kind": "dir"}))
        .send()
        .unwrap());
    let page: ChangePage = api.ok(api.get(&format!("/changes?since={}", page.latest_seq)));
    assert_eq!(page.events[0].node.id, tagged.id);
    assert_eq!(page.events[0].device, Some(device.id));

    // A long-poll answers as soon as something changes in a folder the device listed.
    api.ok::<ListPage>(api.as_device(device.id, api.http.get(api.url("/nodes/1/children"))));
    let cursor = page.latest_seq;
    let poll_api = Api::new(&server, &api.token);
    let poller = std::thread::spawn(move || {
        let start = Instant::now();
        let page: ChangePage = poll_api.ok(poll_api.get(&format!(
            "/devices/{}/poll?since={cursor}&timeout_ms=20000",
            device.id
        )));
        (page, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let late = api.mkdir(ROOT_ID, "late");
    let (page, waited) = poller.join().unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].node.id, late.id);
    assert!(waited < Duration::from_secs(10));
    // With nothing new it answers empty at its timeout.
    let empty: ChangePage = api.ok(api.get(&format!(
        "/devices/{}/poll?since={}&timeout_ms=100",
        device.id, page.latest_seq
    )));
    assert!(empty.events.is_empty());
}

/// A device's own changes (its echoes) are not worth a long-poll answer of their own: a page
/// of only those waits up to a second for another device's change, so a writing client is
/// not answered once per commit. They still arrive, and another device's change goes out
/// with them.
#[test]
fn a_devices_own_changes_wait_for_company_but_not_long() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("olga"));
    let me: Device = api.ok(api.post("/devices", json!({"name": "laptop"})));
    let other: Device = api.ok(api.post("/devices", json!({"name": "desk"})));
    api.ok::<ListPage>(api.as_device(me.id, api.http.get(api.url("/nodes/1/children"))));
    let mkdir_as = |device: DeviceId, name: &str| -> Node {
        api.ok(api.as_device(
            device,
            api.http
                .post(api.url("/nodes"))
                .json(&json!({"parent": 1, "name": name, "kind": "dir"})),
        ))
    };
    let poll = |since: Seq| -> (ChangePage, Duration) {
        let begun = Instant::now();
        let page: ChangePage = api.ok(api.get(&format!(
            "/devices/{}/poll?since={since}&timeout_ms=20000",
            me.id
        )));
        (page, begun.elapsed())
    };

    // Only its own change: held back, then answered well before the poll's timeout.
    let cursor = api.latest_seq();
    let mine = mkdir_as(me.id, "mine");
    let (page, waited) = poll(cursor);
    let ids: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(ids, vec![mine.id], "its own change still arrives");
    assert!(
        waited >= Duration::from_millis(900),
        "a page of its own changes was answered at once ({waited:?})"
    );
    assert!(waited < Duration::from_secs(10), "held {waited:?}");

    // Its own change and then another device's: both, in order, in one answer.
    let cursor = page.through.unwrap();
    let mine = mkdir_as(me.id, "mine2");
    let poll_thread = {
        let api = Api::new(&server, &api.token);
        let id = me.id;
        std::thread::spawn(move || -> ChangePage {
            api.ok(api.get(&format!(
                "/devices/{id}/poll?since={cursor}&timeout_ms=20000"
            )))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let theirs = mkdir_as(other.id, "theirs");
    let page = poll_thread.join().unwrap();
    let ids: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(ids, vec![mine.id, theirs.id]);

    // Another device's change alone is answered as before (the test above waits on it).
    let (page, _) = {
        let cursor = page.through.unwrap();
        let theirs = mkdir_as(other.id, "theirs2");
        let (page, waited) = poll(cursor);
        assert_eq!(page.events[0].node.id, theirs.id);
        (page, waited)
    };
    assert_eq!(page.events.len(), 1);
}

/// A device hears the folders it listed (or made), from when it listed them: not a folder it
/// never opened, whose changes it sees whole when it lists it, and a long-poll already
/// waiting wakes for a change in a folder listed while it waited.
#[test]
fn a_device_hears_the_folders_it_listed() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("erin"));
    let device: Device = api.ok(api.post("/devices", json!({"name": "laptop"})));
    let page_as_device = |path: &str| -> ChangePage {
        api.ok(api.as_device(device.id, api.http.get(api.url(path))))
    };
    let list_as_device = |dir: NodeId| -> Vec<String> {
        let page: ListPage = api.ok(api.as_device(
            device.id,
            api.http.get(api.url(&format!("/nodes/{dir}/children"))),
        ));
        page.entries.into_iter().map(|n| n.name).collect()
    };
    list_as_device(ROOT_ID);
    let start = api.latest_seq();
    let a = api.mkdir(ROOT_ID, "a");
    api.create_file(a.id, "f", b"unseen");
    let page = page_as_device(&format!("/changes?since={start}"));
    let ids: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(
        ids,
        vec![a.id],
        "the new folder in the root, not the file in it"
    );
    assert_eq!(page.through, Some(api.latest_seq()));
    // Anyone without a device reads the whole log.
    let all: ChangePage = api.ok(api.get(&format!("/changes?since={start}")));
    assert_eq!(all.events.len(), 2);
    assert_eq!(all.through, None);
    // The poll covers the file it was not sent: an empty page that moves the cursor.
    let polled = page_as_device(&format!(
        "/devices/{}/poll?since={start}&timeout_ms=20000",
        device.id
    ));
    assert_eq!(polled.events.len(), 1);
    let cursor = polled.through.unwrap();
    let quiet = page_as_device(&format!(
        "/devices/{}/poll?since={cursor}&timeout_ms=300",
        device.id
    ));
    assert!(quiet.events.is_empty());
    assert_eq!(quiet.through, Some(cursor));
    // A poll waits; meanwhile the device lists `a` (seeing `f`), then `a` changes.
    let poll_api = Api::new(&server, &api.token);
    let id = device.id;
    let poller = std::thread::spawn(move || {
        let begun = Instant::now();
        let page: ChangePage = poll_api.ok(poll_api.as_device(
            id,
            poll_api.http.get(poll_api.url(&format!(
                "/devices/{id}/poll?since={cursor}&timeout_ms=20000"
            ))),
        ));
        (page, begun.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(list_as_device(a.id), vec!["f"]);
    std::thread::sleep(Duration::from_millis(200));
    let g = api.create_file(a.id, "g", b"seen");
    let (page, waited) = poller.join().unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.node.id).collect::<Vec<_>>(),
        vec![g.id]
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken, not timed out: {waited:?}"
    );
    // A folder the device makes is its from the start.
    let made: Node = api.ok(api
        .auth(api.http.post(api.url("/nodes")))
        .header(DEVICE_HEADER, device.id.to_string())
        .json(&json!({"parent": a.id, "name": "made", "kind": "dir"}))
        .send()
        .unwrap());
    let cursor = page.through.unwrap();
    let inside = api.create_file(made.id, "inside", b"x");
    let page = page_as_device(&format!("/changes?since={cursor}"));
    let ids: Vec<NodeId> = page.events.iter().map(|e| e.node.id).collect();
    assert_eq!(ids, vec![made.id, inside.id]);
}

#[test]
fn users_are_isolated_and_tokens_are_checked() {
    let server = Server::start();
    let alice = Api::new(&server, &server.add_user("alice"));
    let eve = Api::new(&server, &server.add_user("eve"));
    let secret = alice.create_file(ROOT_ID, "secret.txt", b"top secret");
    let dir = alice.mkdir(ROOT_ID, "private");

    // Eve sees none of it, by any route: another user's id is "not found", like a missing one.
    assert!(eve.names(ROOT_ID).is_empty());
    expect_error(eve.get(&format!("/nodes/{}", secret.id)), 404, "not_found");
    expect_error(
        eve.get(&format!("/nodes/{}/children", dir.id)),
        404,
        "not_found",
    );
    expect_error(eve.get("/lookup?path=/secret.txt"), 404, "not_found");
    expect_error(
        eve.post(
            &format!("/nodes/{}/move", secret.id),
            json!({"base_version": 1, "new_parent": 1, "new_name": "mine"}),
        ),
        404,
        "not_found",
    );
    expect_error(
        eve.auth(eve.http.delete(eve.url(&format!("/nodes/{}", secret.id))))
            .send()
            .unwrap(),
        404,
        "not_found",
    );
    expect_error(
        eve.post(
            "/nodes",
            json!({"parent": dir.id, "name": "x", "kind": "dir"}),
        ),
        404,
        "not_found",
    );
    expect_error(
        eve.post(&format!("/trash/{}/restore", secret.id), json!({})),
        404,
        "not_found",
    );
    let eve_changes: ChangePage = eve.ok(eve.get("/changes?since=0"));
    assert!(eve_changes
        .events
        .iter()
        .all(|e| e.node.id != secret.id && e.node.id != dir.id));
    // Eve's block namespace does not hold Alice's block.
    let missing: MissingBlocks =
        eve.ok(eve.post("/blocks/missing", json!({"hashes": secret.blocks})));
    assert_eq!(missing.missing.len(), 1);
    // Alice's device id cannot be used by Eve.
    let dev: Device = alice.ok(alice.post("/devices", json!({"name": "a-laptop"})));
    expect_error(
        eve.get(&format!("/devices/{}/poll?since=0&timeout_ms=10", dev.id)),
        404,
        "not_found",
    );

    // Tokens: missing, wrong, revoked.
    let anon = Client::new();
    expect_error(
        anon.get(alice.url("/me")).send().unwrap(),
        401,
        "unauthorized",
    );
    expect_error(
        anon.get(alice.url("/me"))
            .bearer_auth("jwl_wrong")
            .send()
            .unwrap(),
        401,
        "unauthorized",
    );
    expect_error(
        anon.get(alice.url("/me"))
            .header("authorization", "Basic abc")
            .send()
            .unwrap(),
        401,
        "unauthorized",
    );
    let new_token = server
        .admin(&["user", "token", "alice"])
        .lines()
        .last()
        .unwrap()
        .to_string();
    // The service believes a checked token for up to 1 s (AUTH_CACHE_TTL): refused within it.
    std::thread::sleep(Duration::from_millis(1100));
    expect_error(alice.get("/me"), 401, "unauthorized");
    let alice2 = Api::new(&server, &new_token);
    assert_eq!(alice2.names(ROOT_ID), vec!["private", "secret.txt"]);

    // Admin: list and remove.
    let users = server.admin(&["user", "list"]);
    assert!(users.contains("alice") && users.contains("eve"));
    server.admin(&["user", "remove", "eve"]);
    std::thread::sleep(Duration::from_millis(1100));
    expect_error(eve.get("/me"), 401, "unauthorized");
}

#[test]
fn block_urls_are_signed_scoped_and_verified() {
    let server = Server::start();
    let alice = Api::new(&server, &server.add_user("alice"));
    let data = b"block bytes".to_vec();
    let hash = sha256_hex(&data);
    let missing: MissingBlocks = alice.ok(alice.post("/blocks/missing", json!({"hashes": [hash]})));
    let url = format!("{}{}", server.url, missing.missing[0].url);
    let http = Client::new();
    let put = |url: &str, body: &[u8]| {
        http.put(url)
            .header("content-type", "application/octet-stream")
            .body(body.to_vec())
            .send()
            .unwrap()
    };
    // Wrong content for the hash: refused, nothing stored.
    expect_error(put(&url, b"other bytes"), 400, "bad_request");
    let still: MissingBlocks = alice.ok(alice.post("/blocks/missing", json!({"hashes": [hash]})));
    assert_eq!(still.missing.len(), 1);
    // Tampered signature, tampered expiry, another block: refused.
    let tampered = format!("{}0", &url[..url.len() - 1]);
    let tampered = if tampered == url {
        format!("{}1", &url[..url.len() - 1])
    } else {
        tampered
    };
    expect_error(put(&tampered, &data), 403, "forbidden");
    let exp_changed = url.replace("exp=", "exp=1");
    expect_error(put(&exp_changed, &data), 403, "forbidden");
    let other_hash = sha256_hex(b"x");
    expect_error(
        put(&url.replace(&hash, &other_hash), b"x"),
        403,
        "forbidden",
    );
    // An upload URL does not download.
    expect_error(http.get(&url).send().unwrap(), 403, "forbidden");
    // The right bytes go in.
    assert!(put(&url, &data).status().is_success());
    let urls: BlockUrls = alice.ok(alice.post("/blocks/urls", json!({"hashes": [hash]})));
    let get_url = format!("{}{}", server.url, urls.urls[0].url);
    let got = http.get(&get_url).send().unwrap();
    // A block never renders as a page on the portal's origin.
    assert_eq!(got.headers()["content-disposition"], "attachment");
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    assert_eq!(got.bytes().unwrap().to_vec(), data);
    // Eve gets a URL for the same hash, but her namespace does not hold Alice's block; and
    // pointing her signed URL at Alice's namespace breaks the signature.
    let eve = Api::new(&server, &server.add_user("eve"));
    let eve_urls: BlockUrls = eve.ok(eve.post("/blocks/urls", json!({"hashes": [hash]})));
    let eve_get = format!("{}{}", server.url, eve_urls.urls[0].url);
    expect_error(http.get(&eve_get).send().unwrap(), 404, "not_found");
    let user_of = |u: &str| u.split('/').nth(2).unwrap().to_string();
    let (alice_id, eve_id) = (user_of(&urls.urls[0].url), user_of(&eve_urls.urls[0].url));
    assert_ne!(alice_id, eve_id);
    expect_error(
        http.get(eve_get.replace(&eve_id, &alice_id))
            .send()
            .unwrap(),
        403,
        "forbidden",
    );
    // Bad hashes in requests.
    expect_error(
        alice.post("/blocks/missing", json!({"hashes": ["../etc"]})),
        400,
        "bad_request",
    );
    let too_many: Vec<String> = (0..(MAX_HASHES_PER_REQUEST + 1))
        .map(|i| sha256_hex(&i.to_le_bytes()))
        .collect();
    expect_error(
        alice.post("/blocks/missing", json!({"hashes": too_many})),
        400,
        "bad_request",
    );
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("mallory"));
    let file = api.create_file(ROOT_ID, "keep.txt", b"keep");
    let seq_before = api.latest_seq();
    let names_before = api.names(ROOT_ID);

    let long = "x".repeat(256);
    for name in ["", ".", "..", "a/b", "nul\0byte", long.as_str()] {
        expect_error(
            api.post("/nodes", json!({"parent": 1, "name": name, "kind": "dir"})),
            400,
            "invalid_name",
        );
        expect_error(
            api.post(
                &format!("/nodes/{}/move", file.id),
                json!({"base_version": file.version, "new_parent": 1, "new_name": name}),
            ),
            400,
            "invalid_name",
        );
    }
    // Invalid UTF-8 and malformed JSON bodies.
    let raw = |body: Vec<u8>| {
        api.auth(api.http.post(api.url("/nodes")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let mut invalid_utf8 = br#"{"parent":1,"name":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8.extend_from_slice(br#"","kind":"dir"}"#);
    expect_error(raw(invalid_utf8), 400, "bad_request");
    expect_error(raw(b"{not json".to_vec()), 400, "bad_request");
    expect_error(
        raw(br#"{"parent":1,"name":"x","kind":"sofa"}"#.to_vec()),
        400,
        "bad_request",
    );
    expect_error(
        raw(br#"{"parent":-1,"name":"x","kind":"dir"}"#.to_vec()),
        400,
        "bad_request",
    );
    // Bodies over the limit.
    // (on a client of its own: the server may close that connection after answering)
    let oversized = Client::new()
        .post(api.url("/nodes"))
        .bearer_auth(&api.token)
        .header("content-type", "application/json")
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .unwrap();
    expect_error(oversized, 413, "payload_too_large");
    // Unknown ids, ids that are not numbers, unknown routes.
    expect_error(api.get("/nodes/987654321"), 404, "not_found");
    expect_error(api.get("/nodes/abc"), 400, "bad_request");
    expect_error(
        api.post(
            "/nodes",
            json!({"parent": 987654321, "name": "x", "kind": "dir"}),
        ),
        404,
        "not_found",
    );
    expect_error(api.get("/no/such/route"), 404, "not_found");
    // Creating under a file, bad modes, bad symlinks, bad cursors.
    expect_error(
        api.post(
            "/nodes",
            json!({"parent": file.id, "name": "x", "kind": "dir"}),
        ),
        400,
        "not_a_directory",
    );
    expect_error(
        api.post(
            "/nodes",
            json!({"parent": 1, "name": "m", "kind": "dir", "mode": 0o77777}),
        ),
        400,
        "bad_request",
    );
    expect_error(
        api.post(
            "/nodes",
            json!({"parent": 1, "name": "l", "kind": "symlink", "target": ""}),
        ),
        400,
        "bad_request",
    );
    expect_error(api.get("/changes?since=-3"), 400, "bad_request");
    // The name is taken.
    let err = expect_error(
        api.post(
            "/nodes",
            json!({"parent": 1, "name": "keep.txt", "kind": "dir"}),
        ),
        409,
        "exists",
    );
    assert_eq!(err.current.unwrap().id, file.id);
    // The root cannot be deleted or moved.
    expect_error(
        api.auth(api.http.delete(api.url("/nodes/1?recursive=true")))
            .send()
            .unwrap(),
        400,
        "bad_request",
    );

    // Nothing changed, and the server still serves.
    assert_eq!(api.latest_seq(), seq_before);
    assert_eq!(api.names(ROOT_ID), names_before);
    let still: Node = api.ok(api.get(&format!("/nodes/{}", file.id)));
    assert_eq!(still, file);
}

#[test]
fn a_batch_applies_its_changes_in_order_and_stops_at_the_first_that_fails() {
    let server = Server::start();
    let api = Api::new(&server, &server.add_user("batcher"));
    let d = api.mkdir(ROOT_ID, "d");
    let old = api.create_file(d.id, "old", b"old bytes");
    let kept = api.create_file(d.id, "kept", b"kept");
    let content = api.upload(b"new bytes");
    let start_seq = api.latest_seq();

    let answer: BatchAnswer = api.ok(api.post(
        "/batch",
        json!({"changes": [
            {"create": {"parent": d.id, "name": "a", "kind": "file", "content": content}},
            {"create": {"parent": d.id, "name": "sub", "kind": "dir"}},
            {"commit": {"id": old.id, "commit": {"base_version": old.version, "content": content}}},
            {"remove": {"id": kept.id, "base_version": kept.version}},
        ]}),
    ));
    assert!(answer.failed.is_none(), "{:?}", answer.failed);
    assert_eq!(answer.done.len(), 4);
    assert_eq!(answer.done[0].name, "a");
    assert_eq!(answer.done[2].version, old.version + 1);
    assert_eq!(api.names(d.id), ["a", "old", "sub"]);
    let new_old: Node = api.ok(api.get(&format!("/nodes/{}", old.id)));
    assert_eq!(api.read(&new_old), b"new bytes");
    // One change event per change, as if each had been sent on its own.
    let page: ChangePage = api.ok(api.get(&format!("/changes?since={start_seq}")));
    assert_eq!(page.events.len(), 4);

    // The second change fails (the name is taken): the first stays done, the third never runs.
    let answer: BatchAnswer = api.ok(api.post(
        "/batch",
        json!({"changes": [
            {"create": {"parent": d.id, "name": "b", "kind": "dir"}},
            {"create": {"parent": d.id, "name": "a", "kind": "dir"}},
            {"create": {"parent": d.id, "name": "c", "kind": "dir"}},
        ]}),
    ));
    assert_eq!(answer.done.len(), 1);
    let failed = answer.failed.expect("the second change failed");
    assert_eq!(failed.code, ErrorCode::Exists);
    let a: Node = api.ok(api.get(&format!("/nodes/{}/children/a", d.id)));
    assert_eq!(failed.current.map(|n| n.id), Some(a.id));
    assert_eq!(api.names(d.id), ["a", "b", "old", "sub"]);

    // Too many changes: refused whole, nothing applied.
    let many: Vec<Value> = (0..=MAX_BATCH_CHANGES)
        .map(|i| json!({"create": {"parent": d.id, "name": format!("n{i}"), "kind": "dir"}}))
        .collect();
    expect_error(
        api.post("/batch", json!({ "changes": many })),
        400,
        "bad_request",
    );
    assert_eq!(api.names(d.id), ["a", "b", "old", "sub"]);
    // Another user's node is out of reach in a batch as on its own route.
    let other = Api::new(&server, &server.add_user("mallory"));
    let answer: BatchAnswer = other.ok(other.post(
        "/batch",
        json!({"changes": [{"remove": {"id": d.id, "base_version": d.version}}]}),
    ));
    assert_eq!(answer.failed.map(|e| e.code), Some(ErrorCode::NotFound));
    assert_eq!(api.names(d.id), ["a", "b", "old", "sub"]);
}
