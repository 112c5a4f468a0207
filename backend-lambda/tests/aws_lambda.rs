//! The real `bootstrap` binary driven as AWS Lambda runs it: `cargo lambda watch` emulates the
//! Lambda runtime API and serves function URLs (HTTP API v2 payloads) on loopback, the
//! bootstrap process polls it for invocations, and its stores are DynamoDB, S3 and SQS on
//! moto. Skipped (loudly) when cargo-lambda is not installed (`make setup-aws` installs it).

#![cfg(all(feature = "aws", feature = "conformance"))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_lambda::aws::testing::{fresh_settings, moto};
use jewel_wire::{ChangePage, Listen, Me, Node};
use serde_json::json;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serves_function_url_requests_on_aws_stores() {
    let cargo_lambda = std::env::var_os("JEWEL_CARGO_LAMBDA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-lambda/bin/cargo-lambda"));
    if !cargo_lambda.exists() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: cargo-lambda is not installed at {} — run `make setup-aws` !!!!!!!!\n",
            cargo_lambda.display()
        );
        return;
    }
    let Some(m) = moto() else { return };
    let st = fresh_settings();
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_ENDPOINT_URL", m.url.clone()),
        ("JEWEL_TABLE", st.table.clone()),
        ("JEWEL_BUCKET", st.bucket.clone()),
        ("JEWEL_QUEUE_PREFIX", st.queue_prefix.clone()),
        (
            "JEWEL_LISTENER_ROLE_ARN",
            st.listener_role_arn.clone().unwrap(),
        ),
    ];
    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jewel-server"))
            .args(args)
            .envs(aws_env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    admin(&["aws-init"]);
    let token = admin(&["user", "add", "ann", "--backend", "aws"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();

    // The Lambda runtime API and function URLs, without building anything.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _runtime = Proc(
        Command::new(&cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .args(["-p", "backend-lambda"])
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The function itself, exactly as Lambda starts it: JEWEL_BACKEND unset means AWS.
    let _function = Proc(
        Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .envs(aws_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("JEWEL_BACKEND")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_RUNTIME_API", format!("{base}/.rt"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let url = format!("{base}/lambda-url/_/api/v1");
    let http = reqwest::Client::new();
    let health = loop {
        match http
            .get(format!("{url}/health"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => break r,
            _ => {
                assert!(Instant::now() < deadline, "the function did not answer");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap()["ok"],
        true
    );
    let auth = format!("Bearer {token}");
    let r = http.get(format!("{url}/me")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token, no answer");
    let me: Me = http
        .get(format!("{url}/me"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me.user, "ann");

    let r = http
        .post(format!("{url}/devices"))
        .header("authorization", &auth)
        .json(&json!({"name": "laptop"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let device: jewel_wire::Device = r.json().await.unwrap();
    assert!(
        matches!(device.listen, Listen::Sqs { .. }),
        "{:?}",
        device.listen
    );

    let r = http
        .post(format!("{url}/nodes"))
        .header("authorization", &auth)
        .json(&json!({"parent": 1, "name": "from lambda", "kind": "dir"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let node: Node = r.json().await.unwrap();
    let page: ChangePage = http
        .get(format!("{url}/changes?since=0"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].node, node);
    let r = http
        .get(format!("{url}/nodes/1/children/from%20lambda"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Node>().await.unwrap().id,
        node.id,
        "percent-encoded names survive the v2 payload"
    );
}
