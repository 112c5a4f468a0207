//! The store conformance suites, unchanged, on DynamoDB, S3 and SQS served by moto on
//! loopback; then what only the AWS engines have: presigned URLs checked by S3, device queues
//! read with the device's own credentials.

use std::sync::Arc;

use bytes::Bytes;
use jewel_wire::{ChangeEvent, ChangeOp, ChangePage, Listen, Node, NodeKind};

use super::dynamo::DynamoStore;
use super::s3::{checksum_header, S3BlobStore, CHECKSUM_HEADER};
use super::sqs::SqsBus;
use super::testing::{fresh_settings, moto, sdk_for, Emulator};
use crate::blobs::{sha256_hex, BlobStore};
use crate::bus::ChangeBus;

async fn dynamo_on(m: Arc<Emulator>) -> (DynamoStore, Arc<Emulator>) {
    let sdk = sdk_for(&m.url).await;
    let store = DynamoStore::new(&sdk, &fresh_settings());
    store.create_table().await.expect("create table on moto");
    (store, m)
}

async fn s3_on(m: Arc<Emulator>) -> (S3BlobStore, Arc<Emulator>) {
    let sdk = sdk_for(&m.url).await;
    let store = S3BlobStore::new(&sdk, &fresh_settings());
    store.create_bucket().await.expect("create bucket on moto");
    (store, m)
}

/// The SQS bus keeps each device's queue record in the table: it needs one.
pub(super) async fn sqs_on(m: Arc<Emulator>) -> (SqsBus, Arc<Emulator>) {
    let sdk = sdk_for(&m.url).await;
    let settings = fresh_settings();
    DynamoStore::new(&sdk, &settings)
        .create_table()
        .await
        .expect("create table on moto");
    (SqsBus::new(&sdk, &settings), m)
}

async fn dynamo_on_dynalite(d: Emulator) -> (DynamoStore, Emulator) {
    let sdk = sdk_for(&d.url).await;
    let store = DynamoStore::new(&sdk, &fresh_settings()).without_transactions();
    store
        .create_table()
        .await
        .expect("create table on dynalite");
    (store, d)
}

/// The same suite on dynalite, which rejects malformed expressions, unused or missing
/// placeholders and reserved words as DynamoDB does (moto lets them through). dynalite has no
/// transactions, so each item is written alone: this checks every expression the engine
/// builds, not atomicity (moto's run above checks that).
mod dynamo_expressions_on_dynalite {
    use super::*;
    crate::meta_store_conformance!(guarded match super::super::testing::dynalite() {
        Some(d) => dynamo_on_dynalite(d),
        None => return,
    });
}

mod dynamo_conformance {
    use super::*;
    crate::meta_store_conformance!(guarded match moto() {
        Some(m) => dynamo_on(m),
        None => return,
    });
}

/// The same suite on DynamoDB Local, AWS's own server: DynamoDB's transaction rules (one
/// operation per item per transaction, 100 items, 4 MB), conditions and the 400 KB item
/// limit as the service enforces them.
mod dynamo_conformance_on_dynamodb_local {
    use super::*;
    crate::meta_store_conformance!(guarded match super::super::testing::dynamodb_local() {
        Some(d) => dynamo_on(d),
        None => return,
    });
}

crate::blob_store_conformance!(match moto() {
    Some(m) => s3_on(m),
    None => return,
});

crate::change_bus_conformance!(match moto() {
    Some(m) => sqs_on(m),
    None => return,
});

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_move_blocks_without_the_service() {
    let Some(m) = moto() else { return };
    let (store, _m) = s3_on(m).await;
    let user = "u1".to_string();
    let data = Bytes::from(vec![42u8; 300_000]);
    let hash = sha256_hex(&data);
    assert_eq!(
        store
            .missing(&user, std::slice::from_ref(&hash))
            .await
            .unwrap(),
        vec![hash.clone()]
    );

    let put = store.upload_url(&user, &hash).await.unwrap();
    eprintln!("upload URL: {put}");
    assert!(put.starts_with(&_m.url), "{put}");
    assert!(
        put.contains(&format!("/u/{user}/b/{hash}?")),
        "one block of one user: {put}"
    );
    assert!(put.contains("X-Amz-Expires=600"), "short-lived: {put}");
    assert!(
        put.to_lowercase().contains("x-amz-checksum-sha256"),
        "the checksum is signed: {put}"
    );
    let sum = checksum_header(&hash).unwrap();
    let r = client()
        .put(&put)
        .header("content-type", "application/octet-stream")
        .header(CHECKSUM_HEADER, &sum)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "presigned PUT: {} {}",
        r.status(),
        r.text().await.unwrap()
    );
    assert!(store
        .missing(&user, std::slice::from_ref(&hash))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.get(&user, &hash).await.unwrap(), data);

    let get = store.download_url(&user, &hash).await.unwrap();
    let r = client().get(&get).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.bytes().await.unwrap(), data);
}

pub(super) fn event(seq: u64, name_len: usize) -> ChangeEvent {
    ChangeEvent {
        inline: None,
        seq,
        op: ChangeOp::Upsert,
        node: Node {
            id: 5000 + seq,
            parent: 1,
            name: "n".repeat(name_len),
            kind: NodeKind::File,
            size: 1,
            mode: 0o644,
            mtime_ns: 0,
            version: 1,
            blocks: vec![format!("{seq:064x}")],
            target: None,
        },
        from: None,
        device: Some(7),
        at_ns: 1,
    }
}

#[test]
fn message_bodies_stay_small_and_ordered() {
    let events: Vec<_> = (1..=300).map(|s| event(s, 200)).collect();
    let bodies = super::sqs::bodies(&events);
    assert!(bodies.len() > 1);
    let mut seqs = Vec::new();
    for b in &bodies {
        assert!(b.len() <= super::sqs::MAX_BODY, "{}", b.len());
        let page: ChangePage = serde_json::from_str(b).unwrap();
        assert_eq!(page.latest_seq, page.events.last().unwrap().seq);
        seqs.extend(page.events.iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());

    // An event too large for a message (a huge file's block list) travels as its seq alone.
    let mut big = event(301, 10);
    big.node.blocks = (0..5000).map(|i| format!("{i:064x}")).collect();
    let bodies = super::sqs::bodies(&[event(300, 10), big, event(302, 10)]);
    let pages: Vec<ChangePage> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert!(bodies.iter().all(|b| b.len() <= super::sqs::MAX_BODY));
    assert_eq!(pages.len(), 3);
    assert_eq!((pages[1].events.len(), pages[1].latest_seq), (0, 301));
    assert_eq!(pages[2].events[0].seq, 302);
}

/// Receives everything waiting in a queue as the device would: with its own credentials, from
/// the endpoint and region it was given.
pub(super) async fn receive_all(listen: &Listen) -> Vec<ChangeEvent> {
    let Listen::Sqs {
        queue_url,
        region,
        endpoint,
        credentials,
    } = listen
    else {
        panic!("not an SQS listener: {listen:?}")
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
        .http_client(super::http_client())
        .credentials_provider(creds)
        .region(aws_sdk_sqs::config::Region::new(region.clone()))
        .endpoint_url(endpoint.clone().expect("loopback endpoint"))
        .build();
    let sqs = aws_sdk_sqs::Client::from_conf(conf);
    let mut out = Vec::new();
    loop {
        let r = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        for msg in msgs {
            let page: ChangePage = serde_json::from_str(msg.body().unwrap()).unwrap();
            out.extend(page.events);
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(msg.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    out.sort_by_key(|e| e.seq);
    out.dedup_by_key(|e| e.seq); // a standard queue may deliver twice
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_receives_from_its_own_queue() {
    let Some(m) = moto() else { return };
    let (bus, _m) = sqs_on(m).await;
    let user = "ann".to_string();
    let a = bus.register_device(&user, 101).await.unwrap();
    let b = bus.register_device(&user, 102).await.unwrap();
    let Listen::Sqs {
        queue_url: qa,
        credentials,
        endpoint,
        ..
    } = &a
    else {
        panic!("{a:?}")
    };
    let Listen::Sqs { queue_url: qb, .. } = &b else {
        panic!("{b:?}")
    };
    assert_ne!(qa, qb, "one queue per device");
    assert_eq!(
        endpoint.as_deref(),
        Some(_m.url.as_str()),
        "the device is sent to loopback"
    );
    assert!(!credentials.access_key_id.is_empty() && credentials.session_token.is_some());
    let now = crate::store::now_ns();
    assert!(credentials.expires_ns > now && credentials.expires_ns <= now + 3_700_000_000_000);
    // Registering again (to renew credentials) keeps the queue.
    let again = bus.register_device(&user, 101).await.unwrap();
    let Listen::Sqs { queue_url: qa2, .. } = &again else {
        panic!()
    };
    assert_eq!(qa, qa2);

    let events: Vec<_> = (1..=25).map(|s| event(s, 10)).collect();
    bus.publish(&user, &[101, 102], &events).await.unwrap();
    bus.publish(&user, &[101], &[event(26, 10)]).await.unwrap();
    let got_a: Vec<u64> = receive_all(&a).await.iter().map(|e| e.seq).collect();
    let got_b: Vec<u64> = receive_all(&b).await.iter().map(|e| e.seq).collect();
    assert_eq!(got_a, (1..=26).collect::<Vec<_>>());
    assert_eq!(got_b, (1..=25).collect::<Vec<_>>());
}

#[test]
fn the_session_policy_names_one_queue_and_only_receive_actions() {
    let p: serde_json::Value = serde_json::from_str(&super::sqs::session_policy(
        "arn:aws:sqs:eu-west-1:1:jewel-u-7",
    ))
    .unwrap();
    let st = &p["Statement"][0];
    assert_eq!(st["Resource"], "arn:aws:sqs:eu-west-1:1:jewel-u-7");
    let actions: Vec<&str> = st["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        actions
            .iter()
            .all(|a| !a.contains("Send") && !a.contains('*')),
        "{actions:?}"
    );
}

/// The dynalite run above is worth something only if dynalite refuses what DynamoDB refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynalite_refuses_what_dynamodb_refuses() {
    let Some(d) = super::testing::dynalite() else {
        return;
    };
    let (store, d) = dynamo_on_dynalite(d).await;
    drop(store);
    let sdk = sdk_for(&d.url).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let table = client
        .list_tables()
        .send()
        .await
        .unwrap()
        .table_names
        .unwrap()
        .remove(0);
    let s = |v: &str| aws_sdk_dynamodb::types::AttributeValue::S(v.into());
    let put = || {
        client
            .put_item()
            .table_name(&table)
            .item("PK", s("p"))
            .item("SK", s("s"))
    };
    // An unused placeholder value, and a reserved word used bare: both refused.
    let unused = put()
        .condition_expression("attribute_not_exists(PK)")
        .expression_attribute_values(":x", s("1"));
    assert!(unused.send().await.is_err());
    let reserved = put().condition_expression("attribute_not_exists(name)");
    assert!(reserved.send().await.is_err());
    // The same condition written properly passes.
    let good = put()
        .condition_expression("attribute_not_exists(#n)")
        .expression_attribute_names("#n", "name");
    good.send().await.unwrap();
}

/// Against an S3 that checks signatures: the upload URL works only with the block's own
/// checksum header, only for the block it names, and only until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_are_checked_by_a_signature_checking_s3() {
    let Some(s3s) = super::testing::s3s_fs() else {
        return;
    };
    let sdk = sdk_for(&s3s.url).await;
    let mut settings = fresh_settings();
    let store = S3BlobStore::new(&sdk, &settings);
    store.create_bucket().await.unwrap();
    let user = "ann".to_string();
    let data = Bytes::from_static(b"block bytes");
    let hash = sha256_hex(&data);
    let sum = checksum_header(&hash).unwrap();
    let put = |url: String, header: Option<String>, body: Bytes| {
        let mut r = client()
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(h) = header {
            r = r.header(CHECKSUM_HEADER, h);
        }
        r.send()
    };
    let url = store.upload_url(&user, &hash).await.unwrap();

    // Without the signed checksum header, or with another block's checksum: refused.
    let r = put(url.clone(), None, data.clone()).await.unwrap();
    assert!(
        r.status().is_client_error(),
        "no checksum header: {}",
        r.status()
    );
    let other = checksum_header(&sha256_hex(b"other")).unwrap();
    let r = put(url.clone(), Some(other), data.clone()).await.unwrap();
    assert!(
        r.status().is_client_error(),
        "wrong checksum header: {}",
        r.status()
    );
    // (Bytes that do not match a correct checksum header are refused by S3 itself; neither
    // moto nor s3s-fs computes the checksum, so that last step is AWS's and not tested here.
    // Reads verify the SHA-256 in the service and the client regardless.)
    // A tampered URL (another user's key) is refused.
    let tampered = url.replace("/u/ann/", "/u/bob/");
    let r = put(tampered, Some(sum.clone()), data.clone())
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "tampered URL: {}", r.status());
    assert_eq!(
        store
            .missing(&user, std::slice::from_ref(&hash))
            .await
            .unwrap(),
        vec![hash.clone()]
    );

    // The real thing works, and the download URL serves it.
    let r = put(url, Some(sum.clone()), data.clone()).await.unwrap();
    assert!(
        r.status().is_success(),
        "{} {}",
        r.status(),
        r.text().await.unwrap()
    );
    let got = client()
        .get(store.download_url(&user, &hash).await.unwrap())
        .send()
        .await
        .unwrap();
    assert!(got.status().is_success());
    assert_eq!(got.bytes().await.unwrap(), data);

    // An expired URL is refused.
    settings.url_lifetime = std::time::Duration::from_secs(1);
    let short = S3BlobStore::new(&sdk, &settings);
    let url = short.download_url(&user, &hash).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "expired URL");
}

/// The largest file AWS mode takes fits DynamoDB's 400 KB items (moto checks the size); one
/// block more is refused with a message saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_file_fits_and_a_larger_one_is_refused() {
    use crate::store::{MetaStore, NewNode, Origin};
    use jewel_wire::{Content, NewKind, ROOT_ID};
    let Some(m) = moto() else { return };
    let (store, _m) = dynamo_on(m).await;
    let u = store.create_user("big", "hash-big", 1).await.unwrap().id;
    let blocks = |n: usize| (0..n).map(|i| format!("{i:064x}")).collect::<Vec<_>>();
    let n = super::dynamo::MAX_BLOCKS;
    let content = Content {
        inline: None,
        size: n as u64 * jewel_wire::BLOCK_SIZE,
        blocks: blocks(n),
    };
    let new = NewNode {
        parent: ROOT_ID,
        name: "big.iso".into(),
        kind: NewKind::File { content },
        mode: 0o644,
        mtime_ns: 1,
    };
    let (node, _) = store
        .create(&u, &new, Origin::default())
        .await
        .expect("the largest file fits");
    assert_eq!(store.get_node(&u, node.id).await.unwrap().blocks.len(), n);
    let bigger = Content {
        inline: None,
        size: 0,
        blocks: blocks(n + 1),
    };
    let err = store
        .commit_content(&u, node.id, 1, &bigger, None, Origin::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::store::StoreError::TooLarge(_))
            && err.to_string().contains("larger than AWS mode stores"),
        "{err}"
    );
    let page = store.changes_since(&u, 0, 10).await.unwrap();
    assert_eq!(
        page.events[0].node.blocks.len(),
        n,
        "the log holds the whole event"
    );
}

/// A queue deleted behind the service's back (its URL cached) is created again on the next
/// publish, and the other devices get their copies regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_recreated_on_publish_or_renewal() {
    let Some(m) = moto() else { return };
    let (bus, _m) = sqs_on(m).await;
    let user = "carol".to_string();
    let a = bus.register_device(&user, 201).await.unwrap();
    let b = bus.register_device(&user, 202).await.unwrap();
    let Listen::Sqs { queue_url, .. } = &a else {
        panic!()
    };
    let sdk = sdk_for(&_m.url).await;
    aws_sdk_sqs::Client::new(&sdk)
        .delete_queue()
        .queue_url(queue_url)
        .send()
        .await
        .unwrap();
    bus.publish(&user, &[201, 202], &[event(1, 5)])
        .await
        .unwrap();
    assert_eq!(receive_all(&b).await.len(), 1);
    let again = bus.register_device(&user, 201).await.unwrap();
    assert_eq!(
        receive_all(&again).await.len(),
        1,
        "the recreated queue got the event"
    );

    // A device asking for its listener after its queue vanished (no publish in between to
    // notice) gets a working queue too.
    let Listen::Sqs { queue_url, .. } = &b else {
        panic!()
    };
    aws_sdk_sqs::Client::new(&sdk)
        .delete_queue()
        .queue_url(queue_url)
        .send()
        .await
        .unwrap();
    let b2 = bus.register_device(&user, 202).await.unwrap();
    bus.publish(&user, &[202], &[event(2, 5)]).await.unwrap();
    assert_eq!(receive_all(&b2).await.len(), 1);
}

/// Two service instances (two Lambdas: no shared lock) writing one user at once: the
/// transaction guards alone keep every write whole and the sequence dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_writing_one_user_keep_the_log_dense() {
    use crate::store::{MetaStore, NewNode, Origin};
    use jewel_wire::{NewKind, ROOT_ID};
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let st = fresh_settings();
    let one = DynamoStore::new(&sdk, &st);
    one.create_table().await.unwrap();
    let two = DynamoStore::new(&sdk, &st);
    let u = one.create_user("dana", "hash-dana", 1).await.unwrap().id;
    let writes = (0..12).map(|i| {
        let (store, u) = (if i % 2 == 0 { &one } else { &two }, &u);
        async move {
            let new = NewNode {
                parent: ROOT_ID,
                name: format!("d{i:02}"),
                kind: NewKind::Dir,
                mode: 0o755,
                mtime_ns: 1,
            };
            store.create(u, &new, Origin::default()).await
        }
    });
    let cancelled = || {
        super::request_counts()
            .get("dynamodb:TransactWriteItems (cancelled)")
            .copied()
            .unwrap_or(0)
    };
    let before = cancelled();
    let results = futures::future::join_all(writes).await;
    eprintln!(
        "guards that failed and were retried: {}",
        cancelled() - before
    );
    let mut seqs: Vec<u64> = results
        .into_iter()
        .map(|r| r.expect("write").1.seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    let page = one.changes_since(&u, 0, 100).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert_eq!(
        two.list_children(&u, ROOT_ID, None, 100)
            .await
            .unwrap()
            .entries
            .len(),
        12
    );
}

/// `jewel-server user remove` in AWS mode: the user's blocks in S3 and device queues go with
/// the user's items; another user's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_deletes_its_blocks_and_queues() {
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let settings = fresh_settings();
    let meta = DynamoStore::new(&sdk, &settings);
    meta.create_table().await.unwrap();
    let blobs = S3BlobStore::new(&sdk, &settings);
    blobs.create_bucket().await.unwrap();
    let bus = SqsBus::new(&sdk, &settings);
    let svc = crate::service::Service::new(Arc::new(meta), Arc::new(blobs), Arc::new(bus));

    let mut hashes = std::collections::HashMap::new();
    for name in ["ann", "bob"] {
        let (user, _) = crate::admin::add_user(svc.meta.as_ref(), name)
            .await
            .unwrap();
        let mut hs = Vec::new();
        for i in 0..3 {
            let bytes = Bytes::from(format!("{name} block {i}"));
            let h = sha256_hex(&bytes);
            svc.blobs.put(&user.id, &h, bytes).await.unwrap();
            hs.push(h);
        }
        for d in ["laptop", "desktop"] {
            let id = svc.meta.register_device(&user.id, d, 100).await.unwrap();
            svc.bus.register_device(&user.id, id).await.unwrap();
        }
        hashes.insert(name, (user.id, hs));
    }
    let queues = || async {
        aws_sdk_sqs::Client::new(&sdk)
            .list_queues()
            .queue_name_prefix(&settings.queue_prefix)
            .send()
            .await
            .unwrap()
            .queue_urls()
            .to_vec()
    };
    assert_eq!(queues().await.len(), 4);

    let removed = crate::admin::remove_user_everywhere(&svc, "ann")
        .await
        .unwrap();
    assert_eq!(
        removed,
        crate::admin::Removed {
            blocks: 3,
            queues: 2
        }
    );

    let (ann, ann_blocks) = &hashes["ann"];
    let (bob, bob_blocks) = &hashes["bob"];
    assert_eq!(
        &svc.blobs.missing(ann, ann_blocks).await.unwrap(),
        ann_blocks
    );
    assert!(svc.blobs.missing(bob, bob_blocks).await.unwrap().is_empty());
    let left = queues().await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|q| q.contains(bob.as_str())), "{left:?}");
    let users = svc.meta.list_users().await.unwrap();
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );
    // Nothing left: running it again says the user is unknown.
    assert!(crate::admin::remove_user_everywhere(&svc, "ann")
        .await
        .is_err());
}

/// AWS mode: a machine linked with a code gets a queue like any device; unlinking it through
/// the API deletes that queue (its credentials then reach nothing) and its token items, so
/// its token is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinking_a_device_deletes_its_queue_and_revokes_its_token() {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let settings = fresh_settings();
    let meta = DynamoStore::new(&sdk, &settings);
    meta.create_table().await.unwrap();
    let blobs = S3BlobStore::new(&sdk, &settings);
    blobs.create_bucket().await.unwrap();
    let bus = SqsBus::new(&sdk, &settings);
    let svc = Arc::new(crate::service::Service::new(
        Arc::new(meta),
        Arc::new(blobs),
        Arc::new(bus),
    ));
    let (ann, account) = crate::admin::add_user(svc.meta.as_ref(), "ann")
        .await
        .unwrap();
    let records = super::device_queues::DeviceQueues::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &settings.table,
    );
    let app = crate::api::router(svc.clone());
    let call = |method: Method, path: &str, token: Option<&str>, body: Option<String>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Body::from(body.unwrap_or_default())).unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
            )
        }
    };
    let token = format!("jwl_{}", "7".repeat(64));
    let body = serde_json::json!({"name": "laptop", "token_sha256": sha256_hex(token.as_bytes())});
    let (status, started) = call(Method::POST, "/links", None, Some(body.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let code = started["code"].as_str().unwrap().to_string();
    let (status, device) = call(
        Method::POST,
        &format!("/links/{code}/approve"),
        Some(&account),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    // The machine registers as the client does: it learns its device and its queue.
    let (status, dev) = call(
        Method::POST,
        "/devices",
        Some(&token),
        Some(r#"{"name":"x"}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{dev}");
    assert_eq!(dev["id"], device["id"]);
    assert_eq!(dev["listen"]["via"], "sqs");
    let queues = || async {
        aws_sdk_sqs::Client::new(&sdk)
            .list_queues()
            .queue_name_prefix(&settings.queue_prefix)
            .send()
            .await
            .unwrap()
            .queue_urls()
            .len()
    };
    assert_eq!(queues().await, 1);
    let id = device["id"].as_u64().unwrap();
    assert!(records.get(&ann.id, id).await.unwrap().is_some());

    let (status, _) = call(
        Method::DELETE,
        &format!("/devices/{id}"),
        Some(&account),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(queues().await, 0, "the device's queue is gone");
    assert_eq!(
        records.get(&ann.id, id).await.unwrap(),
        None,
        "and the record of its queue (`Q#<id>`)"
    );
    let (status, _) = call(Method::GET, "/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        svc.meta
            .token_owner(&sha256_hex(token.as_bytes()))
            .await
            .unwrap(),
        None
    );
    let (status, _) = call(Method::GET, "/me", Some(&account), None).await;
    assert_eq!(status, StatusCode::OK, "the account token still works");

    // `jewel-server user forget-devices`: every device goes with its queue and its record.
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let (status, dev) = call(
            Method::POST,
            "/devices",
            Some(&account),
            Some(format!(r#"{{"name":"{name}"}}"#)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{dev}");
        ids.push(dev["id"].as_u64().unwrap());
    }
    assert_eq!(records.get_many(&ann.id, &ids).await.unwrap().len(), 2);
    assert_eq!(crate::admin::forget_devices(&svc, "ann").await.unwrap(), 2);
    assert_eq!(queues().await, 0);
    assert!(
        records.get_many(&ann.id, &ids).await.unwrap().is_empty(),
        "no queue record outlives its device"
    );
}
