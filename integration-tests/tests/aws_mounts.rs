//! Two real mounts of one user sync through `jewel-server --backend aws`: the tree in
//! DynamoDB, the blocks in S3 (moved by the clients through presigned URLs), and every change
//! notification through the device's own SQS queue (the default `JEWEL_BUS=sqs`): each mount
//! receives with the short-lived credentials the API hands it (STS `AssumeRole` with a
//! one-queue session policy, `JEWEL_LISTENER_ROLE_ARN`), all served by moto on loopback. The
//! `jewelfs` processes run with no AWS variables at all (only `AWS_EC2_METADATA_DISABLED`):
//! queue URL, endpoint, region and credentials come from the API.
//!
//! A second test serves the API from the real `bootstrap` binary behind a function URL
//! (`cargo lambda watch`, as in `backend-lambda/tests/aws_lambda.rs`): the Lambda topology,
//! where long-poll is refused and SQS is the only way to hear of changes.
//!
//! The first test then unmounts one side and mounts it again with the same cache directory:
//! it must come back as the same device (the same queue; its changes name the same device
//! id), renewing its listener instead of registering again, and still sync both ways.
//!
//! Skipped with a loud message when moto or cargo-lambda (`make setup-aws`) or FUSE is
//! missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{bin, free_port, wait_for};

const SYNC: Duration = Duration::from_secs(20);

fn skip(why: &str) {
    eprintln!("\n!!!!!!!! SKIPPED aws_mounts: {why} !!!!!!!!\n");
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A `jewelfs mount` child process; stopped (SIGTERM, then SIGKILL) and detached on drop.
struct Mount {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(url: &str, token: &str, device: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        Mount::with_cache(url, token, device, dir, &cache)
    }
    fn with_cache(
        url: &str,
        token: &str,
        device: &str,
        dir: tempfile::TempDir,
        cache: &Path,
    ) -> Mount {
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let log = fs::File::create(dir.path().join("client.log")).unwrap();
        let child = Command::new(bin("jewelfs"))
            .arg("mount")
            .arg(&mnt)
            .args(["--server", url, "--device", device])
            // The token through the environment, never on a command line (`ps` shows it).
            .env("JEWEL_TOKEN", token)
            .arg("--cache-dir")
            .arg(cache)
            // The client gets its queue, endpoint and credentials from the API alone: no AWS
            // settings of this process reach it (metadata stays disabled, to be safe).
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_SQS")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start jewelfs mount");
        let mut m = Mount {
            child: Some(child),
            dir,
        };
        wait_for("jewelfs to mount", SYNC, || {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                panic!("jewelfs exited with {st}: {}", m.log());
            }
            (mounted(&m.p("")) && fs::read_dir(m.p("")).is_ok()).then_some(())
        });
        m
    }
    fn p(&self, rel: &str) -> PathBuf {
        let mnt = self.dir.path().join("mnt");
        if rel.is_empty() {
            mnt
        } else {
            mnt.join(rel)
        }
    }
    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("client.log")).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..500 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.p("")) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(self.p(""))
                .status();
        }
    }
}

fn wait_content(path: &Path, want: &[u8], m: &Mount) {
    let what = format!(
        "{} to hold {:?}",
        path.display(),
        String::from_utf8_lossy(want)
    );
    let start = std::time::Instant::now();
    loop {
        if fs::read(path).ok().as_deref() == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < SYNC,
            "timed out waiting for {what}\nclient log:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(path: &Path) {
    wait_for(&format!("{} to disappear", path.display()), SYNC, || {
        fs::symlink_metadata(path).is_err().then_some(())
    });
}

#[test]
fn two_mounts_sync_through_jewel_server_on_aws_stores() {
    scenario(false, true, false);
}

/// The AWS topology itself: the API is the real `bootstrap` binary behind a function URL
/// (`cargo lambda watch` emulating the Lambda runtime API), where long-poll is refused, so
/// the mounts hear of each other's changes only through their SQS queues.
#[test]
fn two_mounts_sync_through_the_lambda_function() {
    scenario(false, false, true);
}

/// The same with blocks in s3s-fs, which checks the presigned URLs' signatures as S3 does:
/// the upload URL signs `x-amz-checksum-sha256`, so a client must send that header with every
/// block PUT (moto above does not check signatures).
#[test]
fn two_mounts_sync_with_a_signature_checking_s3() {
    scenario(true, false, false);
}

fn scenario(strict_s3: bool, remount: bool, lambda: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo_lambda = std::env::var_os("JEWEL_CARGO_LAMBDA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-lambda/bin/cargo-lambda"));
    if lambda && !cargo_lambda.exists() {
        return skip(&format!(
            "cargo-lambda is not installed at {} (make setup-aws)",
            cargo_lambda.display()
        ));
    }
    // moto's server with atomic DynamoDB transactions (see backend-lambda/src/aws/moto_atomic.py).
    let moto = root.join(".venv-emu/bin/python");
    if !moto.exists() {
        return skip(&format!(
            "moto is not installed at {} (make setup-aws)",
            moto.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return skip("no /dev/fuse");
    }
    let moto_port = free_port();
    let _moto = Proc(
        Command::new(&moto)
            .arg(root.join("backend-lambda/src/aws/moto_atomic.py"))
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("moto to listen", SYNC, || {
        std::net::TcpStream::connect(("127.0.0.1", moto_port)).ok()
    });
    let s3s = root.join(".tools/bin/s3s-fs");
    let s3_dir = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let _s3s = if strict_s3 {
        if !s3s.exists() {
            return skip(&format!("s3s-fs is not installed at {}", s3s.display()));
        }
        let p = Proc(
            Command::new(&s3s)
                .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
                .args(["--access-key", "testing", "--secret-key", "testing"])
                .arg(s3_dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("s3s-fs to listen", SYNC, || {
            std::net::TcpStream::connect(("127.0.0.1", s3_port)).ok()
        });
        Some(p)
    } else {
        None
    };
    let s3_url = if strict_s3 {
        format!("http://127.0.0.1:{s3_port}")
    } else {
        format!("http://127.0.0.1:{moto_port}")
    };
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{moto_port}")),
        ("JEWEL_TABLE", "jewel-mounts".to_string()),
        ("JEWEL_BUCKET", "jewel-mounts-blocks".to_string()),
        ("AWS_ENDPOINT_URL_S3", s3_url),
        // STS on moto accepts any role; the service narrows it to one queue per device.
        (
            "JEWEL_LISTENER_ROLE_ARN",
            "arn:aws:iam::123456789012:role/jewel-listener".to_string(),
        ),
        ("RUST_LOG", "warn".to_string()),
    ];
    let server = |args: &[&str]| {
        let mut c = Command::new(bin("jewel-server"));
        c.args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    };
    let run = |args: &[&str]| {
        let out = server(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["aws-init"]);
    let token = run(&["user", "add", "alice", "--backend", "aws"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let mut _procs = Vec::new();
    let url = if lambda {
        // The Lambda runtime API and function URLs; then the function, as Lambda starts it.
        let port = free_port();
        _procs.push(Proc(
            Command::new(&cargo_lambda)
                .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1"])
                .args(["-P", &port.to_string(), "-p", "backend-lambda"])
                .current_dir(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_for("cargo lambda watch to listen", SYNC * 3, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let base = format!("http://127.0.0.1:{port}");
        _procs.push(Proc(
            Command::new(bin("bootstrap"))
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_LAMBDA_FUNCTION_NAME", "_")
                .env("AWS_LAMBDA_RUNTIME_API", format!("{base}/.rt"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        format!("{base}/lambda-url/_")
    } else {
        let addr = format!("127.0.0.1:{}", free_port());
        _procs.push(Proc(
            server(&["serve", "--backend", "aws", "--listen", &addr])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        format!("http://{addr}")
    };
    wait_for("the service to answer", SYNC * 3, || {
        reqwest::blocking::get(format!("{url}/api/v1/health"))
            .ok()
            .filter(|r| r.status().is_success())
    });

    let a_cache = tempfile::tempdir().unwrap();
    let a = Mount::with_cache(
        &url,
        &token,
        "laptop",
        tempfile::tempdir().unwrap(),
        a_cache.path(),
    );
    let b = Mount::new(&url, &token, "desktop");

    // A file, its edit, a rename, a folder with a file, deletes: each reaches the other side.
    fs::write(a.p("note.txt"), b"first").unwrap();
    wait_content(&b.p("note.txt"), b"first", &b);
    fs::write(a.p("note.txt"), b"second, longer version").unwrap();
    wait_content(&b.p("note.txt"), b"second, longer version", &b);
    fs::rename(a.p("note.txt"), a.p("renamed.txt")).unwrap();
    wait_content(&b.p("renamed.txt"), b"second, longer version", &b);
    wait_gone(&b.p("note.txt"));

    fs::create_dir(b.p("docs")).unwrap();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(b.p("docs/big.bin"), &big).unwrap(); // two blocks
    wait_content(&a.p("docs/big.bin"), &big, &a);

    fs::remove_file(a.p("renamed.txt")).unwrap();
    wait_gone(&b.p("renamed.txt"));
    fs::remove_file(a.p("docs/big.bin")).unwrap();
    fs::remove_dir(a.p("docs")).unwrap();
    wait_gone(&b.p("docs"));
    if !remount {
        return;
    }

    // The laptop mounts again with the same cache: the same device, still hearing changes.
    drop(a);
    let a = Mount::with_cache(
        &url,
        &token,
        "laptop",
        tempfile::tempdir().unwrap(),
        a_cache.path(),
    );
    fs::write(a.p("again.txt"), b"back again").unwrap();
    wait_content(&b.p("again.txt"), b"back again", &b);
    fs::write(b.p("reply.txt"), b"welcome back").unwrap();
    wait_content(&a.p("reply.txt"), b"welcome back", &a);

    let changes: jewel_wire::ChangePage = reqwest::blocking::Client::new()
        .get(format!("{url}/api/v1/changes?since=0"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let device_of = |name: &str| {
        changes
            .events
            .iter()
            .find(|e| e.node.name == name)
            .and_then(|e| e.device)
            .unwrap_or_else(|| panic!("no change names {name}: {changes:?}"))
    };
    let laptop = device_of("note.txt");
    assert_eq!(
        device_of("again.txt"),
        laptop,
        "the remount registered a new device"
    );
    assert_ne!(device_of("reply.txt"), laptop);
    let saved = fs::read_to_string(a_cache.path().join("device.json")).unwrap();
    assert!(saved.contains(&laptop.to_string()), "{saved}");
}
