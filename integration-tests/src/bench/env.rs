//! The parts every benchmark uses: a `jewel-server` whose request log is kept (one line per
//! request with its handler time, `jewel::request` target), `jewelfs` FUSE mounts, memory
//! readings from `/proc`, a byte-counting TCP proxy, cache dropping and progress output.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{bin, free_port, is_mounted, wait_for};

/// Progress line on stderr, with the time since the bench started.
pub fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("[bench {:>3}:{:02}] {msg}", t / 60, t % 60);
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches` (page cache, dentries, inodes). Needs root.
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Resident memory of a process in bytes (`VmRSS`), 0 when unknown.
pub fn rss(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which ends with the last ')').
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine has been busy (all cores, every process).
pub fn machine_busy_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    busy / 100.0
}

/// Seconds in which some task waited for I/O (`/proc/pressure/io`, "some" total).
pub fn io_stall_s() -> f64 {
    std::fs::read_to_string("/proc/pressure/io")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("some"))
        .and_then(|l| l.split("total=").nth(1))
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|us| us / 1e6)
        .unwrap_or(0.0)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Output of a shell command, trimmed (for the machine description).
pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A real `jewel-server serve` with its request log in a file.
pub struct BenchServer {
    child: Child,
    pub url: String,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// AWS mode: the emulators (moto for S3, DynamoDB Local or moto for DynamoDB) and the
    /// environment naming them.
    emulators: Vec<Child>,
    env: Vec<(String, String)>,
    /// AWS mode: where the server writes its AWS request counts.
    counts_file: Option<PathBuf>,
}

/// One line of the request log.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// The route with ids replaced (`/api/v1/nodes/{id}`), `/blob` for block URLs.
    pub route: String,
    pub status: u16,
    pub ms: f64,
}

impl Req {
    pub fn is_poll(&self) -> bool {
        self.route.ends_with("/poll")
    }
}

fn route_of(path: &str) -> String {
    if path.starts_with("/blob/") {
        return "/blob".into();
    }
    let segs: Vec<&str> = path.split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 && segs[i - 1] == "children" {
            out.push("{name}");
        } else if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push("{id}");
        } else {
            out.push(seg);
        }
    }
    out.join("/")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_line(line: &str) -> Option<Req> {
    if !line.contains("jewel::request") {
        return None;
    }
    let line = strip_ansi(line);
    let rest = &line[line.find("jewel::request")? + "jewel::request".len()..];
    let mut it = rest
        .split_whitespace()
        .skip_while(|t| !matches!(*t, "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD"));
    let method = it.next()?.to_string();
    let path = it.next()?;
    let status = it.next()?.parse().ok()?;
    let ms = it.next()?.trim_end_matches("ms").parse().ok()?;
    Some(Req {
        method,
        route: route_of(path),
        status,
        ms,
    })
}

/// moto's server from `make setup-aws` (`.venv-emu`), if installed, as a command: its Python
/// running `moto_atomic.py` (moto with atomic DynamoDB transactions, as the tests use it).
pub fn moto_command() -> Option<Command> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-emu/bin/python");
    if !python.exists() {
        return None;
    }
    let mut cmd = Command::new(python);
    cmd.arg(root.join("backend-lambda/src/aws/moto_atomic.py"));
    Some(cmd)
}

/// DynamoDB Local from `make setup-aws` (`.emu-ddb`), if installed, as a command serving in
/// memory on `port` with its telemetry off (the same way as `aws::testing` starts it).
pub fn dynamodb_local_command(port: u16) -> Option<Command> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.emu-ddb/node_modules/amplify-dynamodb-simulator/emulator");
    let jar = dir.join("DynamoDBLocal.jar");
    if !jar.exists() {
        return None;
    }
    let mut cmd = Command::new("java");
    cmd.current_dir(&dir)
        .arg(format!(
            "-Djava.library.path={}",
            dir.join("DynamoDBLocal_lib").display()
        ))
        .args(["-Xmx2g", "-jar"])
        .arg(&jar)
        .args(["-inMemory", "-disableTelemetry", "-port", &port.to_string()]);
    Some(cmd)
}

/// AWS mode: the emulator processes, and the environment that names them to the server.
type AwsStack = (Vec<Child>, Vec<(String, String)>);

fn spawn_listening(what: &str, mut cmd: Command, port: u16) -> Option<Child> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for(what, Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some(child)
}

impl BenchServer {
    pub fn start(root: &Path, name: &str) -> BenchServer {
        Self::start_with(root, name, None)
    }

    /// Started as a person would: the server's default log (no request log), so that an
    /// idle measurement sees no log writes the bench itself asked for.
    pub fn start_quiet(root: &Path, name: &str) -> BenchServer {
        Self::start_logging(root, name, None, None)
    }

    /// `jewel-server serve --backend aws` on loopback: S3 served by moto, DynamoDB by
    /// DynamoDB Local when installed (else by moto too), the change bus in-process
    /// (`JEWEL_BUS=local`, the long-poll, so SQS on moto adds no load). Also says which
    /// DynamoDB served.
    pub fn start_aws(root: &Path, name: &str) -> Option<(BenchServer, &'static str)> {
        let mut moto = moto_command()?;
        let port = free_port();
        moto.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut emulators = vec![spawn_listening("moto to listen", moto, port)?];
        let ddb_port = free_port();
        let dynamodb = match dynamodb_local_command(ddb_port) {
            Some(cmd) => {
                emulators.push(spawn_listening("DynamoDB Local to listen", cmd, ddb_port)?);
                "DynamoDB Local"
            }
            None => "moto",
        };
        let mut env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("JEWEL_TABLE", "jewel-bench".to_string()),
            ("JEWEL_BUCKET", "jewel-bench-blocks".to_string()),
            ("JEWEL_BUS", "local".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if dynamodb == "DynamoDB Local" {
            env.push((
                "AWS_ENDPOINT_URL_DYNAMODB".into(),
                format!("http://127.0.0.1:{ddb_port}"),
            ));
        }
        let out = Command::new(bin("jewel-server"))
            .arg("aws-init")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .output()
            .ok()?;
        if !out.status.success() {
            progress(&format!(
                "jewel-server aws-init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let mut server = Self::start_with(root, name, Some((emulators, env)));
        // Only now: `start_with` gave the serving process the counts file.
        server.counts_file = Some(root.join(format!("server-{name}.aws-requests.json")));
        Some((server, dynamodb))
    }

    /// The serving process's AWS requests so far, by operation (AWS mode), read once the
    /// server has written them after this call (it writes twice a second).
    pub fn aws_requests(&self) -> std::collections::BTreeMap<String, u64> {
        let Some(file) = &self.counts_file else {
            return Default::default();
        };
        let asked = std::time::SystemTime::now();
        let fresh = || {
            std::fs::metadata(file)
                .and_then(|m| m.modified())
                .ok()
                .filter(|t| *t > asked)
                .and_then(|_| std::fs::read(file).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
        };
        wait_for(
            "the server's AWS request counts",
            Duration::from_secs(10),
            fresh,
        )
    }

    fn start_with(root: &Path, name: &str, aws: Option<AwsStack>) -> BenchServer {
        Self::start_logging(root, name, aws, Some("warn,jewel::request=info"))
    }

    /// `rust_log`: the server's `RUST_LOG`; `None` for its default.
    fn start_logging(
        root: &Path,
        name: &str,
        aws: Option<AwsStack>,
        rust_log: Option<&str>,
    ) -> BenchServer {
        let data = root.join(format!("server-{name}"));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let log = root.join(format!("server-{name}.log"));
        let addr = format!("127.0.0.1:{}", free_port());
        let out = std::fs::File::create(&log).unwrap();
        let (emulators, env) = aws.unwrap_or_default();
        let mut cmd = Command::new(bin("jewel-server"));
        if !emulators.is_empty() {
            cmd.args(["serve", "--backend", "aws"]).env(
                "JEWEL_REQUEST_COUNTS_FILE",
                root.join(format!("server-{name}.aws-requests.json")),
            );
        } else {
            cmd.args(["serve", "--data"]).arg(&data);
        }
        // One account on up to a thousand clients (the dependent experiment) needs more
        // devices than a user may have by default.
        cmd.env("JEWEL_MAX_DEVICES", "5000");
        cmd.args(["--listen", &addr])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start jewel-server");
        let url = format!("http://{addr}");
        let health = format!("{url}/api/v1/health");
        wait_for("jewel-server to answer", Duration::from_secs(30), || {
            reqwest::blocking::get(&health)
                .ok()
                .filter(|r| r.status().is_success())
        });
        BenchServer {
            child,
            url,
            addr,
            data,
            log,
            emulators,
            env,
            counts_file: None,
        }
    }

    pub fn is_aws(&self) -> bool {
        !self.emulators.is_empty()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }

    /// `jewel-server user add` for `names`, a few at a time; the tokens in order.
    pub fn add_users(&self, prefix: &str, n: usize) -> Vec<String> {
        let mut tokens = vec![String::new(); n];
        let chunk = 4;
        let mut i = 0;
        while i < n {
            let handles: Vec<_> = (i..(i + chunk).min(n))
                .map(|k| {
                    let data = self.data.clone();
                    let name = format!("{prefix}{k}");
                    let (aws, env) = (self.is_aws(), self.env.clone());
                    std::thread::spawn(move || {
                        let mut cmd = Command::new(bin("jewel-server"));
                        cmd.args(["user", "add", &name]);
                        if aws {
                            cmd.args(["--backend", "aws"]);
                        } else {
                            cmd.arg("--data").arg(&data);
                        }
                        let out = cmd
                            .envs(env)
                            .env("RUST_LOG", "warn")
                            .output()
                            .expect("run jewel-server user add");
                        assert!(
                            out.status.success(),
                            "user add {name}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .to_string()
                    })
                })
                .collect();
            for (j, h) in handles.into_iter().enumerate() {
                tokens[i + j] = h.join().unwrap();
            }
            i += chunk;
        }
        tokens
    }

    /// Where the request log ends now (a mark for [`BenchServer::requests`]).
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The requests logged between two marks.
    pub fn requests(&self, from: u64, to: u64) -> Vec<Req> {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return vec![];
        };
        if f.seek(SeekFrom::Start(from)).is_err() {
            return vec![];
        }
        let reader = BufReader::new(f.take(to.saturating_sub(from)));
        reader
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| parse_line(&l))
            .collect()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for mut m in self.emulators.drain(..) {
            let _ = m.kill();
            let _ = m.wait();
        }
        // The data folder goes with the whole scratch folder at the end (deleting tens of
        // thousands of block files here would only slow the next measurement).
    }
}

/// A `jewelfs mount` process (foreground child), unmounted on drop.
pub struct FuseClient {
    child: Option<Child>,
    pub mnt: PathBuf,
    root: PathBuf,
}

impl FuseClient {
    /// Mounts under `root` (`root/mnt`, cache `root/cache`) and waits until ready.
    pub fn mount(root: &Path, url: &str, token: &str, device: &str) -> FuseClient {
        let _ = std::fs::remove_dir_all(root);
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let log = std::fs::File::create(root.join("client.log")).unwrap();
        let child = Command::new(bin("jewelfs"))
            .arg("mount")
            .arg(&mnt)
            .args(["--server", url, "--device", device])
            // The token through the environment, never on a command line (`ps` shows it).
            .env("JEWEL_TOKEN", token)
            .arg("--cache-dir")
            .arg(root.join("cache"))
            .env(
                "JEWEL_LOG",
                std::env::var("BENCH_JEWEL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start jewelfs mount");
        let mut c = FuseClient {
            child: Some(child),
            mnt: mnt.clone(),
            root: root.to_path_buf(),
        };
        let log_path = root.join("client.log");
        wait_for("jewelfs to mount", Duration::from_secs(30), || {
            if let Some(Ok(Some(status))) = c.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "jewelfs mount exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            (is_mounted(&mnt) && jewelfs::status::query(&mnt).is_some_and(|s| s.ready))
                .then_some(())
        });
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }

    pub fn pending(&self) -> usize {
        jewelfs::status::query(&self.mnt)
            .map(|s| s.pending_uploads)
            .unwrap_or(usize::MAX)
    }

    /// Waits until the upload journal is empty; the time it took.
    pub fn wait_uploaded(&self, deadline: Duration) -> Duration {
        let t = Instant::now();
        wait_for("jewelfs uploads to drain", deadline, || {
            (self.pending() == 0).then_some(())
        });
        t.elapsed()
    }
}

impl Drop for FuseClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A TCP proxy on loopback that counts the bytes each way (client → server = up).
pub struct CountingProxy {
    pub url: String,
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

impl CountingProxy {
    pub fn start(upstream: &str) -> CountingProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.to_string();
        let (u, d, c) = (up.clone(), down.clone(), connections.clone());
        rt.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (u, d, upstream) = (u.clone(), d.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let a = tokio::spawn(pump(ri, wo, u));
                    let b = tokio::spawn(pump(ro, wi, d));
                    let _ = a.await;
                    let _ = b.await;
                });
            }
        });
        CountingProxy {
            url,
            up,
            down,
            connections,
            _rt: rt,
        }
    }

    pub fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Samples a process's RSS every 200 ms until stopped; the peak.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak.max(rss(pid))
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let l = "2026-11-25T13:06:18.123Z  INFO jewel::request: POST /api/v1/nodes/12/children/a 201 0.53ms";
        let r = parse_line(l).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.route, "/api/v1/nodes/{id}/children/{name}");
        assert_eq!(r.status, 201);
        assert!((r.ms - 0.53).abs() < 1e-9);
        let r =
            parse_line("x INFO jewel::request: GET /api/v1/devices/3/poll 200 25000.10ms").unwrap();
        assert!(r.is_poll());
        assert_eq!(
            parse_line("x INFO jewel::request: PUT /blob/1/abc 200 1.0ms")
                .unwrap()
                .route,
            "/blob"
        );
    }
}
