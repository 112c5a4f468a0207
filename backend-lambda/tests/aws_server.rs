//! End to end through a real `jewel-server --backend aws` process whose stores are DynamoDB,
//! S3 and SQS served by moto on loopback: the admin commands create the resources and a user;
//! two devices of that user register and get their own SQS queues and credentials; one device
//! uploads a block straight to S3 through a presigned URL (with the signed SHA-256 header),
//! creates, edits, renames and deletes a file; the other device hears every change from its
//! own queue, with its own credentials, and downloads the content from S3. The same again
//! with DynamoDB served by DynamoDB Local (AWS's own server and its transaction rules).

#![cfg(all(feature = "aws", feature = "conformance"))]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_lambda::aws::s3::{checksum_header, CHECKSUM_HEADER};
use backend_lambda::aws::testing::{dynamodb_local, fresh_settings, moto, Emulator};
use backend_lambda::blobs::sha256_hex;
use jewel_wire::*;
use serde_json::json;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dynamodb`: the DynamoDB endpoint when it is not moto's.
fn server_cmd(
    m: &Emulator,
    dynamodb: Option<&Emulator>,
    table: &str,
    bucket: &str,
    prefix: &str,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jewel-server"));
    if let Some(d) = dynamodb {
        cmd.env("AWS_ENDPOINT_URL_DYNAMODB", &d.url);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", &m.url)
        .env("JEWEL_TABLE", table)
        .env("JEWEL_BUCKET", bucket)
        .env("JEWEL_QUEUE_PREFIX", prefix)
        .env(
            "JEWEL_LISTENER_ROLE_ARN",
            "arn:aws:iam::123456789012:role/jewel-listener",
        )
        .env("RUST_LOG", "warn")
        .env_remove("AWS_PROFILE");
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> String {
    let out = cmd.args(args).output().expect("run jewel-server");
    assert!(
        out.status.success(),
        "jewel-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Device {
    id: DeviceId,
    sqs: aws_sdk_sqs::Client,
    queue: String,
}

impl Device {
    /// Receives until `want` events arrived (deleting what it read), as the client would.
    async fn receive(&self, want: usize) -> Vec<ChangeEvent> {
        let mut got: Vec<ChangeEvent> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} events arrived: {got:?}",
                got.len()
            );
            let r = self
                .sqs
                .receive_message()
                .queue_url(&self.queue)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive with the device's credentials");
            for m in r.messages.unwrap_or_default() {
                let page: ChangePage = serde_json::from_str(m.body().unwrap()).unwrap();
                for e in page.events {
                    if !got.iter().any(|g| g.seq == e.seq) {
                        got.push(e);
                    }
                }
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        got.sort_by_key(|e| e.seq);
        got
    }
}

fn device_client(listen: &Listen) -> (aws_sdk_sqs::Client, String) {
    let Listen::Sqs {
        queue_url,
        region,
        endpoint,
        credentials,
    } = listen
    else {
        panic!("AWS mode hands out SQS listeners: {listen:?}")
    };
    let creds = aws_sdk_sqs::config::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "device",
    );
    let conf = aws_sdk_sqs::config::Builder::new()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .http_client(backend_lambda::aws::http_client())
        .credentials_provider(creds)
        .region(aws_sdk_sqs::config::Region::new(region.clone()))
        .endpoint_url(endpoint.clone().expect("a loopback endpoint"))
        .build();
    (aws_sdk_sqs::Client::from_conf(conf), queue_url.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_sync_through_jewel_server_on_aws_stores() {
    let Some(m) = moto() else { return };
    two_devices_sync(&m, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_sync_with_dynamodb_on_dynamodb_local() {
    let (Some(m), Some(d)) = (moto(), dynamodb_local()) else {
        return;
    };
    two_devices_sync(&m, Some(&d)).await;
}

async fn two_devices_sync(m: &Emulator, dynamodb: Option<&Emulator>) {
    let st = fresh_settings();
    let cmd = || server_cmd(m, dynamodb, &st.table, &st.bucket, &st.queue_prefix);
    run(cmd(), &["aws-init"]);
    run(cmd(), &["aws-init"]); // again: nothing missing, nothing fails
    let out = run(cmd(), &["user", "add", "ann", "--backend", "aws"]);
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(run(cmd(), &["user", "list", "--backend", "aws"]).contains("ann"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve = cmd();
    serve
        .args(["serve", "--backend", "aws", "--listen", &addr])
        .stdout(Stdio::null());
    let _server = Proc(serve.spawn().unwrap());
    let base = format!("http://{addr}{API_PREFIX}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "jewel-server did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = format!("Bearer {token}");
    let api = |method: reqwest::Method, path: &str, dev: Option<DeviceId>| {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .header("authorization", &auth);
        if let Some(d) = dev {
            r = r.header(DEVICE_HEADER, d.to_string());
        }
        r
    };

    // Two devices, each with its own queue and credentials.
    let mut devices = Vec::new();
    for name in ["laptop", "desktop"] {
        let r = api(reqwest::Method::POST, "/devices", None)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let d: jewel_wire::Device = r.json().await.unwrap();
        let (sqs, queue) = device_client(&d.listen);
        devices.push(Device {
            id: d.id,
            sqs,
            queue,
        });
    }
    let (a, b) = (&devices[0], &devices[1]);
    assert_ne!(a.queue, b.queue);
    // Long-poll is not how AWS mode listens; the answer says so.
    let r = api(
        reqwest::Method::GET,
        &format!("/devices/{}/poll?since=0&timeout_ms=10", b.id),
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A uploads a block straight to S3, then creates the file.
    let data = b"hello from the laptop".to_vec();
    let hash = sha256_hex(&data);
    let r = api(reqwest::Method::POST, "/blocks/missing", Some(a.id))
        .json(&BlockHashes {
            hashes: vec![hash.clone()],
        })
        .send()
        .await
        .unwrap();
    let missing: MissingBlocks = r.json().await.unwrap();
    assert_eq!(missing.missing.len(), 1);
    let put = &missing.missing[0].url;
    assert!(
        put.starts_with(&m.url),
        "the bytes go to S3, not the service: {put}"
    );
    let r = http
        .put(put)
        .header("content-type", "application/octet-stream")
        .header(CHECKSUM_HEADER, checksum_header(&hash).unwrap())
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let create = json!({"parent": ROOT_ID, "name": "notes.txt", "kind": "file",
        "content": {"size": data.len(), "blocks": [hash]}});
    let r = api(reqwest::Method::POST, "/nodes", Some(a.id))
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let file: Node = r.json().await.unwrap();

    // Edit, rename, delete.
    let data2 = b"edited on the laptop".to_vec();
    let hash2 = sha256_hex(&data2);
    let r = api(reqwest::Method::POST, "/blocks/missing", Some(a.id))
        .json(&BlockHashes {
            hashes: vec![hash2.clone()],
        })
        .send()
        .await
        .unwrap();
    let missing: MissingBlocks = r.json().await.unwrap();
    http.put(&missing.missing[0].url)
        .header("content-type", "application/octet-stream")
        .header(CHECKSUM_HEADER, checksum_header(&hash2).unwrap())
        .body(data2.clone())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let commit = CommitContent {
        base_version: 1,
        content: Content {
            inline: None,
            size: data2.len() as u64,
            blocks: vec![hash2.clone()],
        },
        mtime_ns: None,
    };
    let r = api(
        reqwest::Method::PUT,
        &format!("/nodes/{}/content", file.id),
        Some(a.id),
    )
    .json(&commit)
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // A stale base is a conflict, as on every engine.
    let r = api(
        reqwest::Method::PUT,
        &format!("/nodes/{}/content", file.id),
        Some(b.id),
    )
    .json(&commit)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let mv = MoveNode {
        base_version: 2,
        new_parent: ROOT_ID,
        new_name: "renamed.txt".into(),
        mode: MoveMode::Replace,
        expect_target: None,
    };
    let r = api(
        reqwest::Method::POST,
        &format!("/nodes/{}/move", file.id),
        Some(a.id),
    )
    .json(&mv)
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // B hears each change from its own queue, in order, and fetches the content from S3.
    let events = b.receive(3).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(events.iter().all(|e| e.device == Some(a.id)));
    assert_eq!(events[0].node.name, "notes.txt");
    assert_eq!(events[1].node.blocks, std::slice::from_ref(&hash2));
    assert_eq!(events[2].node.name, "renamed.txt");
    assert_eq!(
        events[2].from.as_ref().map(|p| p.name.as_str()),
        Some("notes.txt")
    );
    let r = api(reqwest::Method::POST, "/blocks/urls", Some(b.id))
        .json(&BlockHashes {
            hashes: vec![hash2.clone()],
        })
        .send()
        .await
        .unwrap();
    let urls: BlockUrls = r.json().await.unwrap();
    let got = http
        .get(&urls.urls[0].url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data2.as_slice());

    let r = api(
        reqwest::Method::DELETE,
        &format!("/nodes/{}?base_version=3", file.id),
        Some(a.id),
    )
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let events = b.receive(1).await;
    assert_eq!((events[0].seq, events[0].op), (4, ChangeOp::Remove));
    // A's own queue got its echoes too (the client skips them by device id).
    assert_eq!(a.receive(4).await.len(), 4);

    // The change feed agrees, and a listing shows the state.
    let page: ChangePage = api(reqwest::Method::GET, "/changes?since=0", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page.latest_seq, 4);
    let list: ListPage = api(
        reqwest::Method::GET,
        &format!("/nodes/{ROOT_ID}/children"),
        None,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(list.entries.is_empty());
    let trash: TrashPage = api(reqwest::Method::GET, "/trash", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trash.entries[0].node.name, "renamed.txt");

    // The scheduled maintenance, run by hand: it goes through the user; nothing is old
    // enough to go yet (30 days of trash, an hour's grace for blocks).
    let out = run(cmd(), &["maintenance", "--backend", "aws"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["users"], 1, "{report}");
    assert_eq!(report["finished"], true, "{report}");
    assert_eq!(report["trash_entries"], 0, "{report}");
    assert_eq!(report["blocks_condemned"], 0, "{report}");
    assert_eq!(report["blocks_deleted"], 0, "{report}");
}

/// `jewel-server maintenance` beside an embedded server would collect blocks without the
/// serving process's lock: it refuses and says what it is for.
#[test]
fn maintenance_by_hand_is_for_aws_mode_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jewel-server"))
        .args(["maintenance", "--data"])
        .arg(dir.path())
        .env_remove("JEWEL_BACKEND")
        .output()
        .expect("run jewel-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend aws"), "{err}");
}

/// Serving with the SQS bus but no listener role would fail every device's registration
/// quietly (mounts would only look offline): the server refuses to start and says what to set.
#[test]
fn serving_sqs_without_the_listener_role_is_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_jewel-server"))
        .args(["serve", "--backend", "aws", "--listen", "127.0.0.1:0"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env_remove("JEWEL_LISTENER_ROLE_ARN")
        .env_remove("JEWEL_BUS")
        .output()
        .expect("run jewel-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JEWEL_LISTENER_ROLE_ARN is not set") && err.contains("JEWEL_BUS=local"),
        "{err}"
    );
}
