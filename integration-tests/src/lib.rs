//! Helpers shared by the end-to-end tests: find the built binaries, start a real
//! `jewel-server` process on a free loopback port with its own data folder, add users, and
//! wait on conditions with a deadline (never sleep-and-hope).
//!
//! The binaries are built by `make test` (`cargo build --workspace --bins`) before the tests
//! run; a test that cannot find one says so and how to build it.

pub mod fault_proxy;
pub mod seeded;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary in the current profile's target folder.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
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
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let server = Server {
            child: Some(child),
            url,
            data,
            addr,
        };
        let health = format!("{}/api/v1/health", server.url);
        wait_for("jewel-server to answer", Duration::from_secs(20), || {
            reqwest::blocking::get(&health)
                .ok()
                .filter(|r| r.status().is_success())
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
            "jewel-server {args:?} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
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

// ------------------------------------------------------------------------------------------
// Real FUSE mounts of the `jewelfs` client.

impl Server {
    /// Starts a server on a given data folder and address (to restart on the same port, so
    /// running clients find it again).
    pub fn start_at(data: tempfile::TempDir, addr: &str) -> Server {
        let child = Command::new(bin("jewel-server"))
            .args(["serve", "--data"])
            .arg(data.path())
            .args(["--listen", addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start jewel-server");
        let url = format!("http://{addr}");
        let server = Server {
            child: Some(child),
            url,
            data,
            addr: addr.to_string(),
        };
        let health = format!("{}/api/v1/health", server.url);
        wait_for("jewel-server to answer", Duration::from_secs(20), || {
            reqwest::blocking::get(&health)
                .ok()
                .filter(|r| r.status().is_success())
        });
        server
    }

    /// Stops the process and hands back its data folder: with `Stop::Term` as a service
    /// manager does (SIGTERM; the server finishes requests in flight within its grace period
    /// and exits; SIGKILL if it has not after 10 s), with `Stop::Kill` at once (SIGKILL, a
    /// crash).
    pub fn stop(mut self, how: Stop) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            if how == Stop::Term {
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let data = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, data)
    }

    /// Kills the server and starts it again on the same data and port.
    pub fn restart(self) -> Server {
        let addr = self.addr.clone();
        let data = self.kill();
        Server::start_at(data, &addr)
    }
}

/// How [`Server::stop`] stops the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the server's own orderly stop.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

/// A server with one user, `alice`, mounted on two machines: `laptop` and `desktop`.
pub fn two_mounts() -> (Server, Mount, Mount) {
    let server = Server::start();
    let token = server.add_user("alice");
    let a = Mount::new(&server, &token, "laptop");
    let b = Mount::new(&server, &token, "desktop");
    (server, a, b)
}

/// Whether `path` is a mountpoint right now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")) == Some(want.clone()))
}

/// A `jewelfs mount` running in the foreground as a child process, in its own temporary
/// folder (`mnt/` the mountpoint, `cache/` its cache). Unmounted (and the client stopped) on
/// drop.
pub struct Mount {
    child: Option<Child>,
    root: tempfile::TempDir,
    pub url: String,
    pub token: String,
    pub device: String,
    /// More `jewelfs mount` options (say `--allow-other`), given at every start.
    pub extra_args: Vec<String>,
    mnt: PathBuf,
    /// Set for a machine linked with `jewelfs login`: its `XDG_CONFIG_HOME`, where the
    /// mount reads its token (then `token` is empty).
    config_home: Option<PathBuf>,
}

impl Mount {
    /// Mounts `token`'s drive from `server`, as device `device`, and waits until it is ready.
    pub fn new(server: &Server, token: &str, device: &str) -> Mount {
        Self::with_url(&server.url, token, device)
    }

    /// Mounts from a service at `url` (a server behind a proxy, say), as [`Mount::new`].
    pub fn with_url(url: &str, token: &str, device: &str) -> Mount {
        Self::with_args(url, token, device, &[])
    }

    /// Mounts from a service at `url` with more `jewelfs mount` options, as [`Mount::new`].
    pub fn with_args(url: &str, token: &str, device: &str, extra_args: &[&str]) -> Mount {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut m = Mount {
            child: None,
            root,
            url: url.to_string(),
            token: token.to_string(),
            device: device.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            mnt,
            config_home: None,
        };
        m.start();
        m
    }

    /// Mounts as a machine linked with `jewelfs login`: the server and token come from the
    /// config file under `config_home` (`XDG_CONFIG_HOME`), as on a person's machine.
    pub fn with_config(config_home: &Path, device: &str) -> Mount {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut m = Mount {
            child: None,
            root,
            url: String::new(),
            token: String::new(),
            device: device.to_string(),
            extra_args: Vec::new(),
            mnt,
            config_home: Some(config_home.to_path_buf()),
        };
        m.start();
        m
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// Starts the client (again) on the same mountpoint and cache, and waits until ready.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Appended to, so a log shows every life of a client that was killed and restarted.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("client.log"))
            .unwrap();
        let mut cmd = Command::new(bin("jewelfs"));
        cmd.arg("mount").arg(&self.mnt);
        match &self.config_home {
            // The token never on a command line (`ps` shows those to everyone).
            None => {
                cmd.args(["--server", &self.url])
                    .env("JEWEL_TOKEN", &self.token);
            }
            Some(home) => {
                cmd.env("XDG_CONFIG_HOME", home).env_remove("JEWEL_TOKEN");
            }
        }
        let child = cmd
            .args(["--device", &self.device])
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .args(&self.extra_args)
            .env(
                "JEWEL_LOG",
                std::env::var("JEWEL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start jewelfs mount");
        let pid = child.id();
        self.child = Some(child);
        let mnt = self.mnt.clone();
        wait_for("jewelfs to mount", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("jewelfs mount exited with {status}:\n{}", self.log());
            }
            // The status of this process, not one left behind by a killed one.
            (is_mounted(&mnt)
                && jewelfs::mount::read_status(&mnt).is_some_and(|s| s.ready && s.pid == pid))
            .then_some(())
        });
    }

    /// The client's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("client.log")).unwrap_or_default()
    }

    /// What `jewelfs status` says: the status as of now, asked of the running client.
    pub fn status(&self) -> jewelfs::core::Status {
        jewelfs::status::query(&self.mnt).unwrap_or_else(|| {
            panic!(
                "the client at {} does not answer status requests:\n{}",
                self.mnt.display(),
                self.log()
            )
        })
    }

    /// Where the client publishes its status file.
    pub fn status_file(&self) -> PathBuf {
        jewelfs::status::status_path(&self.mnt)
    }

    /// Waits until the client has uploaded everything it has journaled (asked of the client
    /// itself, so changes made just before this call count).
    pub fn wait_uploaded(&self, deadline: Duration) {
        wait_for("pending uploads to drain", deadline, || {
            (self.status().pending_uploads == 0).then_some(())
        });
    }

    /// The client's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("a running client")
    }

    /// Sends the client `signal` (as Ctrl-C, logout or `systemctl stop` would) and waits up
    /// to `deadline` for it to exit; returns its exit status.
    pub fn stop_with(&mut self, signal: &str, deadline: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running client");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the client") {
                break status;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.detach();
                panic!(
                    "the client did not exit within {deadline:?} of SIG{signal}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.detach();
        status
    }

    /// SIGKILLs the client (no clean-up at all) and detaches the dead mount.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.detach();
    }

    fn detach(&self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }

    /// `jewelfs unmount`: waits for uploads, then unmounts; returns its output.
    pub fn unmount(&mut self) -> String {
        let out = Command::new(bin("jewelfs"))
            .arg("unmount")
            .arg(&self.mnt)
            .args(["--wait", "30"])
            .output()
            .expect("run jewelfs unmount");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            // The whole log, for a failure the last lines do not explain.
            if let Ok(dir) = std::env::var("JEWEL_TEST_LOG_DIR") {
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(Path::new(&dir).join(format!("{}.log", self.device)), &log);
            }
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "---- last lines of the {} client log ----\n{}",
                self.device,
                tail.join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.detach();
    }
}

/// `jewelfs login SERVER` running as a child process with its own `XDG_CONFIG_HOME`, as a
/// person would start it on a new machine: it prints a code and waits for its approval.
pub struct Login {
    child: Child,
    /// The code it showed (`XXXX-XXXX`).
    pub code: String,
    /// What it printed up to the code.
    pub shown: String,
}

impl Login {
    /// Starts `jewelfs login` and waits (up to 20 s) for the code it shows.
    pub fn start(server_url: &str, config_home: &Path, name: &str) -> Login {
        use std::io::BufRead;
        let mut child = Command::new(bin("jewelfs"))
            .args(["login", server_url, "--name", name])
            .env("XDG_CONFIG_HOME", config_home)
            .env_remove("JEWEL_TOKEN")
            .env_remove("JEWEL_SERVER")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start jewelfs login");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut shown = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("jewelfs login showed no code; it printed:\n{shown}");
            };
            shown.push_str(&line);
            shown.push('\n');
            if let Some(code) = line
                .split_whitespace()
                .find(|w| w.len() == 9 && w.as_bytes()[4] == b'-')
            {
                let code = code.to_string();
                // Keep reading its output so it never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return Login { child, code, shown };
            }
        }
    }

    /// Waits (up to `deadline`) for `jewelfs login` to finish; panics unless it succeeded.
    pub fn wait_linked(mut self, deadline: Duration) {
        let status = wait_for("jewelfs login to finish", deadline, || {
            self.child.try_wait().unwrap()
        });
        assert!(
            status.success(),
            "jewelfs login failed ({status}):\n{}",
            self.shown
        );
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` holds exactly `want`.
pub fn wait_content(path: &Path, want: &[u8], deadline: Duration) {
    wait_for(
        &format!(
            "{} to hold the expected {} bytes",
            path.display(),
            want.len()
        ),
        deadline,
        || std::fs::read(path).ok().filter(|c| c == want).map(|_| ()),
    );
}

/// Waits until `path` does not exist.
pub fn wait_gone(path: &Path, deadline: Duration) {
    wait_for(
        &format!("{} to disappear", path.display()),
        deadline,
        || (!path.exists() && std::fs::symlink_metadata(path).is_err()).then_some(()),
    );
}
