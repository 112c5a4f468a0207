//! Helpers shared by the end-to-end tests: find the built binaries, start a real
//! `jewel-server` process on a free loopback port with its own data folder, add users, and
//! wait on conditions with a deadline (never sleep-and-hope).
//!
//! The binaries are built by `make test` (`cargo build --workspace --bins`) before the tests
//! run; a test that cannot find one says so and how to build it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary in the current profile's target folder.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does) first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it returns `Some` or `deadline` passes; panics with `what` on timeout.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real `jewel-server serve` process with its own data folder, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub data: tempfile::TempDir,
    pub addr: String,
}

impl Server {
    pub fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data)
    }

    /// Starts a server on an existing data folder (to restart after a kill).
    pub fn start_in(data: tempfile::TempDir) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin("jewel-server"))
            .args(["serve", "--data"])
            .arg(data.path())
            .args(["--listen", &addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start jewel-server");
        let url = format!("http://{addr}");
        let server = Server { child: Some(child), url, data, addr };
        let health = format!("{}/api/v1/health", server.url);
        wait_for("jewel-server to answer", Duration::from_secs(20), || {
            reqwest::blocking::get(&health).ok().filter(|r| r.status().is_success())
        });
        server
    }

    /// Runs `jewel-server user add NAME` on this server's data and returns the token.
    pub fn add_user(&self, name: &str) -> String {
        let out = self.admin(&["user", "add", name]);
        out.lines().last().expect("a token line").trim().to_string()
    }

    /// Runs an admin command (`jewel-server ARGS --data DIR`) and returns its standard output.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(bin("jewel-server"))
            .args(args)
            .arg("--data")
            .arg(self.data.path())
            .output()
            .expect("run jewel-server admin command");
        assert!(
            out.status.success(),
            "jewel-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Kills the process at once (SIGKILL) and hands back its data folder.
    pub fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let data = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, data)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
