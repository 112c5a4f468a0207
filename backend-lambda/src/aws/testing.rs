//! AWS-compatible servers on loopback for tests: moto server (DynamoDB, S3, SQS, STS),
//! dynalite (strict DynamoDB expressions) and DynamoDB Local (AWS's own DynamoDB server:
//! its transaction, condition and item-size rules, fast enough for 100 users). `make
//! setup-aws` installs them into the workspace (`.venv-emu`, `.emu-node`, `.emu-ddb`);
//! `JEWEL_DYNALITE` and `JEWEL_DYNAMODB_LOCAL` point elsewhere. moto runs through
//! `moto_atomic.py` (its server with DynamoDB item operations under one lock), because moto's
//! own transactions are not isolated from each other across its request threads, and the
//! tests check guards that rely on DynamoDB's being so.
//!
//! One moto process is shared by the tests that run at the same time (each test uses its own
//! table, bucket and queue names) and killed when the last of them ends. Every SDK client here
//! has explicit static credentials, a region and a loopback endpoint, so nothing ever looks
//! for instance metadata.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::AwsSettings;

/// A server process on a loopback port, killed on drop.
pub struct Emulator {
    child: Mutex<Child>,
    pub url: String,
    pub name: &'static str,
    /// A folder the server stored data in, removed on drop.
    scratch: Option<PathBuf>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback port nothing listens on, never one handed out before in this process. The
/// kernel may give a port it just gave (the probe socket is closed before the emulator binds
/// it): two emulators of parallel tests then raced for one port, and the loser's test talked
/// to the winner's emulator until that one was stopped ("connection refused" mid-test).
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Sets the AWS environment every test must have (same values everywhere, so setting it from
/// several threads is harmless).
pub fn aws_test_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            std::env::set_var(k, v);
        }
    });
}

fn start(name: &'static str, mut cmd: Command, port: u16) -> Emulator {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start emulator");
    let emu = Emulator {
        child: Mutex::new(child),
        url: format!("http://127.0.0.1:{port}"),
        name,
        scratch: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = emu.child.lock().unwrap().try_wait() {
            panic!("{name} exited at start: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    emu
}

fn skip(what: &str, path: &std::path::Path) {
    eprintln!(
        "\n!!!!!!!! SKIPPED: {what} is not installed at {} — run `make setup-aws` \
         (make test does) to run the AWS-mode tests !!!!!!!!\n",
        path.display()
    );
}

/// `moto_atomic.py`: moto's server with DynamoDB item operations atomic, as in DynamoDB (see
/// the script's docstring for why the tests need it).
pub fn moto_atomic_script() -> PathBuf {
    workspace().join("backend-lambda/src/aws/moto_atomic.py")
}

/// The shared moto server, started if none is running; `None` (after a loud message) when
/// moto is not installed.
pub fn moto() -> Option<Arc<Emulator>> {
    static SHARED: Mutex<Weak<Emulator>> = Mutex::new(Weak::new());
    aws_test_env();
    let python = workspace().join(".venv-emu/bin/python");
    if !python.exists() {
        skip("moto server", &python);
        return None;
    }
    let mut shared = SHARED.lock().unwrap();
    if let Some(m) = shared.upgrade() {
        return Some(m);
    }
    let port = free_port();
    let mut cmd = Command::new(python);
    cmd.arg(moto_atomic_script())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let m = Arc::new(start("moto", cmd, port));
    *shared = Arc::downgrade(&m);
    Some(m)
}

/// A dynalite server of this test's own; `None` (after a loud message) when not installed.
pub fn dynalite() -> Option<Emulator> {
    aws_test_env();
    let cli = std::env::var_os("JEWEL_DYNALITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".emu-node/node_modules/dynalite/cli.js"));
    if !cli.exists() {
        skip("dynalite", &cli);
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(cli).args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--createTableMs",
        "0",
    ]);
    Some(start("dynalite", cmd, port))
}

/// Where `make setup-aws` puts DynamoDB Local: the folder holding `DynamoDBLocal.jar` and, in
/// `DynamoDBLocal_lib`, its libraries and the native sqlite4java library.
pub fn dynamodb_local_dir() -> PathBuf {
    std::env::var_os("JEWEL_DYNAMODB_LOCAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace().join(".emu-ddb/node_modules/amplify-dynamodb-simulator/emulator")
        })
}

/// DynamoDB Local started in memory on a free loopback port (with its telemetry off: it
/// must not call out) as a command, for the tests and the bench. `None` when not installed.
pub fn dynamodb_local_command() -> Option<(Command, u16)> {
    let dir = dynamodb_local_dir();
    let jar = dir.join("DynamoDBLocal.jar");
    if !jar.exists() {
        skip("DynamoDB Local", &jar);
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("java");
    cmd.current_dir(&dir)
        .arg(format!(
            "-Djava.library.path={}",
            dir.join("DynamoDBLocal_lib").display()
        ))
        // Small heap: several tests run one each on a 2-core, shared machine.
        .args(["-Xmx512m", "-XX:+UseSerialGC", "-jar"])
        .arg(&jar)
        .args(["-inMemory", "-disableTelemetry", "-port", &port.to_string()]);
    Some((cmd, port))
}

/// The shared DynamoDB Local server, started if none is running (tests use their own table
/// names); `None` (after a loud message) when not installed.
pub fn dynamodb_local() -> Option<Arc<Emulator>> {
    static SHARED: Mutex<Weak<Emulator>> = Mutex::new(Weak::new());
    aws_test_env();
    let mut shared = SHARED.lock().unwrap();
    if let Some(d) = shared.upgrade() {
        return Some(d);
    }
    let (cmd, port) = dynamodb_local_command()?;
    let d = Arc::new(start("DynamoDB Local", cmd, port));
    *shared = Arc::downgrade(&d);
    Some(d)
}

/// An SDK configuration that talks only to `endpoint`, with static test credentials.
pub async fn sdk_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_test_env();
    let creds =
        aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "jewel-tests");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(super::http_client())
        .credentials_provider(creds)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// Settings with names no other test uses.
pub fn fresh_settings() -> AwsSettings {
    let tag = format!("{:x}", rand::random::<u32>());
    AwsSettings {
        table: format!("jewel-t{tag}"),
        bucket: format!("jewel-b{tag}"),
        queue_prefix: format!("jq{tag}"),
        listener_role_arn: Some("arn:aws:iam::123456789012:role/jewel-listener".into()),
        ..AwsSettings::default()
    }
}

/// An s3s-fs server of this test's own (S3 that checks SigV4: a tampered presigned URL gets
/// 400, an expired one 403), with credentials `testing`/`testing`; `None` (after a loud
/// message) when not installed.
pub fn s3s_fs() -> Option<Emulator> {
    aws_test_env();
    let bin = std::env::var_os("JEWEL_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".tools/bin/s3s-fs"));
    if !bin.exists() {
        skip("s3s-fs", &bin);
        return None;
    }
    let dir = std::env::temp_dir().join(format!("jewel-s3s-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "testing", "--secret-key", "testing"])
        .arg(&dir);
    let mut emu = start("s3s-fs", cmd, port);
    emu.scratch = Some(dir);
    Some(emu)
}
