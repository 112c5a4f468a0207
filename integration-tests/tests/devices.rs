//! A machine linked with a code and unlinked when lost (issue 12), with a real server, real
//! FUSE mounts and the real `jewelfs login` / `jewelfs devices` commands: the approval is the
//! portal's own request (`POST /links/{code}/approve`, signed in with the account token;
//! the browser side is `integration-tests/portal/test/devices.test.mjs`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::*;
use jewel_wire::{DeviceInfo, DeviceList};

const SYNC: Duration = Duration::from_secs(20);

fn api(server: &Server, path: &str) -> String {
    format!("{}/api/v1{path}", server.url)
}

/// Approves a waiting machine's code as the signed-in portal does.
fn approve(server: &Server, token: &str, code: &str) -> DeviceInfo {
    let resp = reqwest::blocking::Client::new()
        .post(api(server, &format!("/links/{code}/approve")))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "approving {code}: {}",
        resp.text().unwrap()
    );
    resp.json().unwrap()
}

fn devices(server: &Server, token: &str) -> Vec<DeviceInfo> {
    let resp = reqwest::blocking::Client::new()
        .get(api(server, "/devices"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<DeviceList>().unwrap().devices
}

fn me_status(server: &Server, token: &str) -> u16 {
    reqwest::blocking::Client::new()
        .get(api(server, "/me"))
        .bearer_auth(token)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The token `jewelfs login` kept, after checking the file is its owner's only.
fn saved_token(config_home: &Path) -> String {
    let path = config_home.join("jewel").join("config.toml");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
    let table: toml::Table = toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    table["token"].as_str().unwrap().to_string()
}

/// `jewelfs login`, approved with the account token; returns the machine's new token.
fn link(server: &Server, account: &str, home: &Path, name: &str) -> (String, DeviceInfo) {
    let login = Login::start(&server.url, home, name);
    assert!(
        login.shown.contains(&format!("/#/link/{}", login.code)),
        "it shows the portal page that approves it:\n{}",
        login.shown
    );
    let device = approve(server, account, &login.code);
    assert_eq!(device.name, name);
    let shown = login.shown.clone();
    login.wait_linked(SYNC);
    let token = saved_token(home);
    assert!(!shown.contains(&token), "the token is never shown");
    assert_ne!(token, account, "the machine has a token of its own");
    (token, device)
}

#[test]
fn an_unlinked_machine_is_refused_at_once_keeps_its_changes_and_uploads_them_when_linked_again() {
    let server = Server::start();
    let account = server.add_user("ann");
    let desk = Mount::new(&server, &account, "desk");
    let home = tempfile::tempdir().unwrap();

    // A second machine, linked with a code; its mount reads server and token from the file.
    let (token, laptop) = link(&server, &account, home.path(), "laptop");
    assert_eq!(me_status(&server, &token), 200);
    let mut machine = Mount::with_config(home.path(), "laptop");
    fs::write(machine.p("first.txt"), b"from the laptop").unwrap();
    wait_content(&desk.p("first.txt"), b"from the laptop", SYNC);
    let listed = devices(&server, &account);
    let entry = listed.iter().find(|d| d.id == laptop.id).expect("listed");
    assert!(entry.linked && entry.last_seen_ns > 0, "{entry:?}");

    // A long-poll of the laptop's device, waiting when it is unlinked.
    let latest: u64 = reqwest::blocking::Client::new()
        .get(api(&server, "/me"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json::<jewel_wire::Me>()
        .unwrap()
        .latest_seq;
    let poll_url = api(
        &server,
        &format!(
            "/devices/{}/poll?since={latest}&timeout_ms=25000",
            laptop.id
        ),
    );
    let poll_token = token.clone();
    let poll = std::thread::spawn(move || {
        let start = Instant::now();
        let status = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
            .get(poll_url)
            .bearer_auth(poll_token)
            .send()
            .unwrap()
            .status()
            .as_u16();
        (status, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300)); // let the poll start waiting

    // Unlinked: its token is refused at once, and its long-poll ends.
    let unlinked_at = Instant::now();
    let resp = reqwest::blocking::Client::new()
        .delete(api(&server, &format!("/devices/{}", laptop.id)))
        .bearer_auth(&account)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(me_status(&server, &token), 401, "refused at once");
    let refused_after = unlinked_at.elapsed();
    let (poll_status, poll_took) = poll.join().unwrap();
    assert_eq!(poll_status, 401, "the long-poll ends with a refusal");
    assert!(
        poll_took < Duration::from_secs(5),
        "the long-poll lasted {poll_took:?}"
    );
    assert!(!devices(&server, &account).iter().any(|d| d.id == laptop.id));
    eprintln!(
        "refused {refused_after:?} after the unlink; the long-poll ended after {poll_took:?}"
    );

    // Its mount goes offline and keeps what is written meanwhile.
    fs::write(machine.p("offline.txt"), b"written while unlinked").unwrap();
    wait_for("the unlinked mount to say so", SYNC, || {
        let s = machine.status();
        (!s.online
            && s.pending_uploads >= 1
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("jewelfs login")))
        .then_some(())
    });
    assert_eq!(
        fs::read(machine.p("offline.txt")).unwrap(),
        b"written while unlinked"
    );
    assert!(!desk.p("offline.txt").exists(), "nothing went through");

    // Linked again (a new token in the same file): the running mount uploads what it kept.
    let (token2, again) = link(&server, &account, home.path(), "laptop");
    assert_ne!(token2, token);
    assert_eq!(
        me_status(&server, &token),
        401,
        "the old token stays revoked"
    );
    wait_content(&desk.p("offline.txt"), b"written while unlinked", SYNC);
    machine.wait_uploaded(SYNC);
    wait_for("the mount to be online again", SYNC, || {
        let s = machine.status();
        (s.online && s.last_error.is_none()).then_some(())
    });
    assert!(devices(&server, &account).iter().any(|d| d.id == again.id));
    // And it hears the other machine's changes again.
    fs::write(desk.p("back.txt"), b"welcome back").unwrap();
    wait_content(&machine.p("back.txt"), b"welcome back", SYNC);
    // `jewelfs devices` on that machine knows its mount's pending uploads (none now), once
    // the mount has taken up its new device (its listener's next turn).
    wait_for(
        "jewelfs devices to show this machine's pending uploads",
        SYNC,
        || {
            let out = Command::new(bin("jewelfs"))
                .arg("devices")
                .env("XDG_CONFIG_HOME", home.path())
                .env_remove("JEWEL_TOKEN")
                .env_remove("JEWEL_SERVER")
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&out.stdout).to_string();
            list.lines()
                .any(|l| l.contains(&again.id.to_string()) && l.ends_with(" 0  (this machine)"))
                .then_some(())
        },
    );
    machine.unmount();
}

#[test]
fn jewelfs_devices_lists_the_machines_and_unlinks_one() {
    let server = Server::start();
    let account = server.add_user("ann");
    let (home1, home2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (t0, _) = link(&server, &account, home1.path(), "laptop");
    // Linked again while still linked: the device it was goes with its token.
    let (t1, one) = link(&server, &account, home1.path(), "laptop");
    assert_eq!(
        me_status(&server, &t0),
        401,
        "the replaced token works no more"
    );
    let (t2, two) = link(&server, &account, home2.path(), "old-phone");
    let jewelfs = |home: &Path, args: &[&str]| {
        let out = Command::new(bin("jewelfs"))
            .args(args)
            .env("XDG_CONFIG_HOME", home)
            .env_remove("JEWEL_TOKEN")
            .env_remove("JEWEL_SERVER")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, list) = jewelfs(home1.path(), &["devices"]);
    assert!(ok, "{list}");
    let this_line = list.lines().find(|l| l.contains("laptop")).expect(&list);
    assert!(
        this_line.contains("(this machine)") && this_line.contains("own"),
        "{list}"
    );
    assert!(
        list.contains("old-phone") && list.contains(&two.id.to_string()),
        "{list}"
    );

    // Bad input changes nothing.
    let (ok, out) = jewelfs(home1.path(), &["devices", "unlink", "no-such-machine"]);
    assert!(!ok && out.contains("no device"), "{out}");
    assert_eq!(me_status(&server, &t2), 200);

    let (ok, out) = jewelfs(home1.path(), &["devices", "unlink", "old-phone"]);
    assert!(ok && out.contains("no longer works"), "{out}");
    assert_eq!(me_status(&server, &t2), 401);
    assert_eq!(me_status(&server, &t1), 200);
    let left: Vec<u64> = devices(&server, &account).iter().map(|d| d.id).collect();
    assert_eq!(left, vec![one.id]);
    // The unlinked machine hears why.
    let (ok, out) = jewelfs(home2.path(), &["devices"]);
    assert!(!ok && out.contains("unlinked"), "{out}");
}

#[test]
fn bad_link_requests_are_refused_and_change_nothing() {
    let server = Server::start();
    let account = server.add_user("ann");
    let http = reqwest::blocking::Client::new();
    let post = |body: serde_json::Value| {
        http.post(api(&server, "/links"))
            .json(&body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let hash = "ab".repeat(32);
    assert_eq!(
        post(serde_json::json!({"name": "", "token_sha256": hash})),
        400
    );
    assert_eq!(
        post(serde_json::json!({"name": "a/b", "token_sha256": hash})),
        400
    );
    assert_eq!(
        post(serde_json::json!({"name": "pc", "token_sha256": "AB".repeat(32)})),
        400
    );
    assert_eq!(
        post(serde_json::json!({"name": "pc", "token_sha256": "abc"})),
        400
    );
    // The account token's own hash cannot be claimed by a machine.
    let account_hash = sha256_hex(account.as_bytes());
    assert_eq!(
        post(serde_json::json!({"name": "pc", "token_sha256": account_hash})),
        400
    );
    for code in ["ABCD-EFGH", "not-a-code", "0000-0000"] {
        let resp = http
            .post(api(&server, &format!("/links/{code}/approve")))
            .bearer_auth(&account)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404, "{code}");
    }
    // A real code: approving it needs a signed-in account.
    let started: jewel_wire::LinkStarted = http
        .post(api(&server, "/links"))
        .json(&serde_json::json!({"name": "pc", "token_sha256": hash}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let approve_url = api(&server, &format!("/links/{}/approve", started.code));
    assert_eq!(http.post(&approve_url).send().unwrap().status(), 401);
    let wrong = http
        .post(&approve_url)
        .bearer_auth(format!("jwl_{hash}"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(devices(&server, &account).is_empty(), "nothing linked");
    // The code reads back in any case, and stays approvable once.
    let lower = started.code.to_lowercase();
    let info = http
        .get(api(&server, &format!("/links/{lower}")))
        .bearer_auth(&account)
        .send()
        .unwrap();
    assert_eq!(info.status(), 200);
    assert_eq!(approve(&server, &account, &lower).name, "pc");
    let again = http
        .post(&approve_url)
        .bearer_auth(&account)
        .send()
        .unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(devices(&server, &account).len(), 1);
}
