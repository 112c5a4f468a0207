//! Admin commands run beside a running server (`jewel-server user add` while `jewel-server
//! serve` holds the same database): they wait for the database instead of failing, for
//! longer than SQLite's usual busy timeout, and change nothing until they get it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{bin, Server};

#[test]
fn user_add_waits_for_the_database_while_it_is_held() {
    let server = Server::start();
    // Hold the write lock as a busy server would, past the 5 s a connection used to wait.
    let db = rusqlite::Connection::open(server.data.path().join("meta.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin("jewel-server"))
        .args(["user", "add", "bob", "--data"])
        .arg(server.data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = Duration::from_secs(7);
    while started.elapsed() < held {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "`user add` ended ({status}) while the database was held:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    db.execute_batch("COMMIT").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`user add` failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let token = stdout.lines().last().unwrap_or_default();
    assert!(
        token.starts_with("jwl_"),
        "a token as the last line: {stdout}"
    );
    assert!(
        server.admin(&["user", "list"]).contains("bob"),
        "the user exists once the command is done"
    );
    // The token works against the running server.
    let me = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/me", server.url))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert!(
        me.status().is_success(),
        "the new token is accepted: {me:?}"
    );
}
