//! What each sync operation really costs in AWS requests: the service runs in this process (the
//! same router Lambda runs) on DynamoDB, S3 and SQS served by moto; two devices of one user do
//! what `jewelfs` does — device A uploads blocks straight to S3 and commits, device B hears the
//! change from its SQS queue and downloads the block from S3 — and every AWS request is
//! counted: the service's through `aws::request_counts`, the devices' by hand.
//!
//! `docs/COST.md` turns these numbers into a monthly bill. Run with `--nocapture` to see the
//! table; the assertions keep the counts from creeping up unnoticed.

#![cfg(all(feature = "aws", feature = "conformance"))]

use std::collections::BTreeMap;
use std::sync::Arc;

use backend_lambda::aws::s3::{checksum_header, CHECKSUM_HEADER};
use backend_lambda::aws::testing::{fresh_settings, moto, sdk_for};
use backend_lambda::aws::{self, dynamo::DynamoStore, s3::S3BlobStore, sqs::SqsBus};
use backend_lambda::blobs::sha256_hex;
use backend_lambda::service::Service;
use jewel_wire::*;
use serde_json::json;

/// Requests per operation, service side and device side, plus API calls (Lambda invocations).
#[derive(Default, Debug)]
struct Tally {
    aws: BTreeMap<String, u64>,
    api_calls: u64,
}

impl Tally {
    fn add_service(&mut self, before: &BTreeMap<&'static str, u64>) {
        for (k, v) in aws::request_counts() {
            let d = v - before.get(k).copied().unwrap_or(0);
            if d > 0 {
                *self.aws.entry(k.to_string()).or_default() += d;
            }
        }
    }
    fn device(&mut self, op: &str) {
        *self.aws.entry(format!("{op} (device)")).or_default() += 1;
    }
}

struct Dev {
    id: DeviceId,
    sqs: aws_sdk_sqs::Client,
    queue: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_sync_operation() {
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let st = fresh_settings();
    let meta = Arc::new(DynamoStore::new(&sdk, &st));
    meta.create_table().await.unwrap();
    let s3 = Arc::new(S3BlobStore::new(&sdk, &st));
    s3.create_bucket().await.unwrap();
    // As AWS mode serves: block checks through the garbage collector's guard.
    let blobs = aws::gc_guard::GuardedBlobs::new(s3, meta.clone());
    let bus = SqsBus::new(&sdk, &st);
    // As AWS mode serves: with the table's key for the small blocks it keeps.
    let service: Arc<Service> = Arc::new(
        aws::service(meta, Arc::new(blobs), Arc::new(bus))
            .await
            .unwrap(),
    );
    let (_user, token) = backend_lambda::admin::add_user(service.meta.as_ref(), "ann")
        .await
        .unwrap();
    let router = backend_lambda::api::router(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{API_PREFIX}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let http = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let call = |method: reqwest::Method, path: String, dev: DeviceId| {
        http.request(method, format!("{base}{path}"))
            .header("authorization", &auth)
            .header(DEVICE_HEADER, dev.to_string())
    };
    let mut devs = Vec::new();
    for name in ["laptop", "desktop"] {
        let d: jewel_wire::Device = http
            .post(format!("{base}/devices"))
            .header("authorization", &auth)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let Listen::Sqs {
            queue_url,
            region,
            endpoint,
            credentials,
        } = d.listen
        else {
            panic!()
        };
        let creds = aws_sdk_sqs::config::Credentials::new(
            credentials.access_key_id,
            credentials.secret_access_key,
            credentials.session_token,
            None,
            "device",
        );
        let conf = aws_sdk_sqs::config::Builder::new()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .http_client(aws::http_client())
            .credentials_provider(creds)
            .region(aws_sdk_sqs::config::Region::new(region))
            .endpoint_url(endpoint.unwrap())
            .build();
        devs.push(Dev {
            id: d.id,
            sqs: aws_sdk_sqs::Client::from_conf(conf),
            queue: queue_url,
        });
    }
    let (a, b) = (&devs[0], &devs[1]);

    // Device A uploads one block and returns its hash.
    async fn upload(http: &reqwest::Client, t: &mut Tally, missing: MissingBlocks, data: &[u8]) {
        for u in missing.missing {
            http.put(&u.url)
                .header("content-type", "application/octet-stream")
                .header(CHECKSUM_HEADER, checksum_header(&u.hash).unwrap())
                .body(data.to_vec())
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
            t.device("s3:PutObject");
        }
    }
    // Device B receives (and deletes) what is waiting, as its listener does.
    async fn receive(dev: &Dev, t: &mut Tally) -> Vec<ChangeEvent> {
        let r = dev
            .sqs
            .receive_message()
            .queue_url(&dev.queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        t.device("sqs:ReceiveMessage");
        let mut out = Vec::new();
        for msg in r.messages.unwrap_or_default() {
            let page: ChangePage = serde_json::from_str(msg.body().unwrap()).unwrap();
            out.extend(page.events);
            dev.sqs
                .delete_message()
                .queue_url(&dev.queue)
                .receipt_handle(msg.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            t.device("sqs:DeleteMessage");
        }
        out
    }

    const N: u64 = 10;
    let mut per_op: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut ids = Vec::new();
    for round in 0..N {
        // ---- create a file of one block on A; B hears it and downloads the block ----
        let t = per_op.entry("create file").or_default();
        let before = aws::request_counts();
        let data = format!("file {round} first version").into_bytes();
        let hash = sha256_hex(&data);
        let missing: MissingBlocks = call(reqwest::Method::POST, "/blocks/missing".into(), a.id)
            .json(&BlockHashes {
                hashes: vec![hash.clone()],
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.api_calls += 1;
        upload(&http, t, missing, &data).await;
        let body = json!({"parent": ROOT_ID, "name": format!("f{round}"), "kind": "file",
            "content": {"size": data.len(), "blocks": [hash.clone()]}});
        let node: Node = call(reqwest::Method::POST, "/nodes".into(), a.id)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.api_calls += 1;
        ids.push(node.id);
        let evs = receive(b, t).await;
        assert_eq!(evs.len(), 1);
        let urls: BlockUrls = call(reqwest::Method::POST, "/blocks/urls".into(), b.id)
            .json(&BlockHashes { hashes: vec![hash] })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.api_calls += 1;
        http.get(&urls.urls[0].url)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        t.device("s3:GetObject");
        receive(a, t).await; // A drains its own echo
        t.add_service(&before);

        // ---- a small file (at most 4 KiB) on A: inline, its block kept in the table; B
        // gets the bytes inside the change event ----
        let t = per_op.entry("create small file").or_default();
        let before = aws::request_counts();
        let data = format!("small file {round}").into_bytes();
        let body = json!({"parent": ROOT_ID, "name": format!("s{round}"), "kind": "file",
            "content": {"size": data.len(), "blocks": [sha256_hex(&data)],
                        "inline": InlineBytes(data.clone())}});
        let r = call(reqwest::Method::POST, "/nodes".into(), a.id)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        t.api_calls += 1;
        let evs = receive(b, t).await;
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].inline.as_ref().map(|i| &i.0), Some(&data));
        receive(a, t).await;
        t.add_service(&before);

        // ---- edit it on A (new content) ----
        let t = per_op.entry("edit file").or_default();
        let before = aws::request_counts();
        let data = format!("file {round} second version").into_bytes();
        let hash = sha256_hex(&data);
        let missing: MissingBlocks = call(reqwest::Method::POST, "/blocks/missing".into(), a.id)
            .json(&BlockHashes {
                hashes: vec![hash.clone()],
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.api_calls += 1;
        upload(&http, t, missing, &data).await;
        let commit = CommitContent {
            base_version: node.version,
            content: Content {
                inline: None,
                size: data.len() as u64,
                blocks: vec![hash.clone()],
            },
            mtime_ns: None,
        };
        let r = call(
            reqwest::Method::PUT,
            format!("/nodes/{}/content", node.id),
            a.id,
        )
        .json(&commit)
        .send()
        .await
        .unwrap();
        assert!(r.status().is_success());
        t.api_calls += 1;
        assert_eq!(receive(b, t).await.len(), 1);
        let urls: BlockUrls = call(reqwest::Method::POST, "/blocks/urls".into(), b.id)
            .json(&BlockHashes { hashes: vec![hash] })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.api_calls += 1;
        http.get(&urls.urls[0].url)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        t.device("s3:GetObject");
        receive(a, t).await;
        t.add_service(&before);

        // ---- rename on A ----
        let t = per_op.entry("rename").or_default();
        let before = aws::request_counts();
        let mv = MoveNode {
            base_version: node.version + 1,
            new_parent: ROOT_ID,
            new_name: format!("g{round}"),
            mode: MoveMode::Replace,
            expect_target: None,
        };
        let r = call(
            reqwest::Method::POST,
            format!("/nodes/{}/move", node.id),
            a.id,
        )
        .json(&mv)
        .send()
        .await
        .unwrap();
        assert!(r.status().is_success());
        t.api_calls += 1;
        assert_eq!(receive(b, t).await.len(), 1);
        receive(a, t).await;
        t.add_service(&before);

        // ---- delete on A ----
        let t = per_op.entry("delete").or_default();
        let before = aws::request_counts();
        let r = call(reqwest::Method::DELETE, format!("/nodes/{}", node.id), a.id)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        t.api_calls += 1;
        assert_eq!(receive(b, t).await.len(), 1);
        receive(a, t).await;
        t.add_service(&before);
    }

    println!("\nAWS requests per operation (average of {N}), device-side ones marked:");
    for (op, t) in &per_op {
        println!(
            "  {op}: {} API calls (Lambda invocations)",
            t.api_calls as f64 / N as f64
        );
        for (k, v) in &t.aws {
            println!("      {k:<44} {:>5.1}", *v as f64 / N as f64);
        }
    }
    // Guards against creeping request counts (what COST.md's numbers assume).
    let per = |op: &str, k: &str| per_op[op].aws.get(k).copied().unwrap_or(0) as f64 / N as f64;
    for op in ["create file", "edit file", "rename", "delete"] {
        assert_eq!(
            per(op, "dynamodb:TransactWriteItems"),
            1.0,
            "{op}: one transaction"
        );
        assert!(
            per(op, "dynamodb:GetItem") <= 10.0,
            "{op}: {} reads",
            per(op, "dynamodb:GetItem")
        );
        assert_eq!(
            per(op, "sqs:SendMessageBatch"),
            2.0,
            "{op}: one send per device"
        );
    }
    // The collector's guard: one read of the condemned blocks per block check (`blocks/missing`
    // and the commit), besides the device queue records a publish reads (cached per process);
    // and `blocks/urls` asks which blocks are small ones the table keeps (served by the
    // service, not S3).
    for op in ["create file", "edit file"] {
        assert!(
            (3.0..=4.0).contains(&per(op, "dynamodb:BatchGetItem")),
            "{op}: {} BatchGetItem",
            per(op, "dynamodb:BatchGetItem")
        );
    }
    // A small file: one call, one transaction (pointer, entry, parent check, log, counter
    // and its block), and nothing in S3.
    let small = &per_op["create small file"];
    assert_eq!(small.api_calls, N);
    assert_eq!(per("create small file", "dynamodb:TransactWriteItems"), 1.0);
    assert_eq!(
        per("create small file", "dynamodb:TransactWriteItems (items)"),
        6.0
    );
    assert!(
        !small.aws.keys().any(|k| k.starts_with("s3:")),
        "a small file costs no S3 request: {:?}",
        small.aws
    );
    // An edit: pointer, entry, log, counter, and the earlier version it keeps.
    assert!(per("edit file", "dynamodb:TransactWriteItems (items)") <= 5.0);
    assert!(per("rename", "dynamodb:TransactWriteItems (items)") <= 6.0);
}
