//! A small file in AWS mode, through the API on DynamoDB and S3 (moto): its block is kept in
//! the table with its node, so S3 gets nothing; the service serves the block itself at a
//! signed URL (S3 does not hold it) and refuses that URL altered; an overwritten small
//! content comes back by restoring its version, still without S3. Collecting kept blocks
//! (the daily maintenance) takes only those nothing names, and never one a change wrote
//! again meanwhile.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use jewel_wire::{CommitContent, Content, CreateNode, InlineBytes, NewKind, Node, ROOT_ID};
use tower::ServiceExt;

use super::dynamo::DynamoStore;
use super::gc_guard::GuardedBlobs;
use super::s3::S3BlobStore;
use super::testing::{fresh_settings, moto, sdk_for};
use crate::blobs::{sha256_hex, BlobStore};

fn small(bytes: &[u8]) -> Content {
    Content {
        size: bytes.len() as u64,
        blocks: vec![sha256_hex(bytes)],
        inline: Some(InlineBytes(bytes.to_vec())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_costs_no_s3_request_and_the_service_serves_its_block() {
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let settings = fresh_settings();
    let meta = Arc::new(DynamoStore::new(&sdk, &settings));
    meta.create_table().await.unwrap();
    let s3 = Arc::new(S3BlobStore::new(&sdk, &settings));
    s3.create_bucket().await.unwrap();
    let blobs = Arc::new(GuardedBlobs::new(s3.clone(), meta.clone()));
    let svc = Arc::new(
        super::service(
            meta,
            blobs,
            Arc::new(crate::bus::local::LocalBus::default()),
        )
        .await
        .unwrap(),
    );
    let (ann, token) = crate::admin::add_user(svc.meta.as_ref(), "ann")
        .await
        .unwrap();
    let app = crate::api::router(svc.clone());
    let call = |method: Method, uri: String, body: Option<String>| {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"));
        if body.is_none() {
            req = req.header("content-length", "0");
        }
        let req = req.body(Body::from(body.unwrap_or_default())).unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, bytes)
        }
    };
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();

    let first = small(b"shopping list: eggs");
    let create = CreateNode {
        parent: ROOT_ID,
        name: "list.txt".into(),
        kind: NewKind::File {
            content: first.clone(),
        },
        mode: None,
        mtime_ns: None,
    };
    let (status, body) = call(
        Method::POST,
        "/api/v1/nodes".into(),
        Some(serde_json::to_string(&create).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", json(&body));
    let node: Node = serde_json::from_slice(&body).unwrap();
    assert!(
        s3.list(&ann.id).await.unwrap().is_empty(),
        "no block went to S3"
    );

    // Another device reads the file as a listing shows it: by its block's URL.
    let url_of = |hash: String| {
        let call = &call;
        async move {
            let (status, body) = call(
                Method::POST,
                "/api/v1/blocks/urls".into(),
                Some(serde_json::json!({ "hashes": [hash] }).to_string()),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            json(&body)["urls"][0]["url"].as_str().unwrap().to_string()
        }
    };
    let url = url_of(node.blocks[0].clone()).await;
    assert!(url.starts_with("/blob/"), "served by the service: {url}");
    let (status, bytes) = call(Method::GET, url.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&bytes[..], b"shopping list: eggs");
    // The URL is the authority: altered, it serves nothing.
    let (user_part, rest) = url.split_at(url.find("?").unwrap());
    let other_user = user_part.replace(&ann.id, "0000000000000000");
    for bad in [
        format!("{other_user}{rest}"),
        format!("{}0", url.trim_end_matches(|c: char| c.is_ascii_hexdigit())),
        user_part.to_string(),
    ] {
        let (status, _) = call(Method::GET, bad.clone(), None).await;
        assert!(status.is_client_error(), "{bad}: {status}");
    }

    // Overwritten, then the earlier content restored from its version: both small, both
    // without S3, and the restored content reads back.
    let commit = CommitContent {
        base_version: node.version,
        content: small(b"shopping list: eggs, milk"),
        mtime_ns: None,
    };
    let (status, body) = call(
        Method::PUT,
        format!("/api/v1/nodes/{}/content", node.id),
        Some(serde_json::to_string(&commit).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", json(&body));
    let (status, body) = call(
        Method::POST,
        format!(
            "/api/v1/nodes/{}/versions/{}/restore",
            node.id, node.version
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", json(&body));
    let restored: Node = serde_json::from_slice(&body).unwrap();
    assert_eq!(restored.blocks, first.blocks);
    let (status, bytes) = call(Method::GET, url_of(first.blocks[0].clone()).await, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&bytes[..], b"shopping list: eggs");
    assert!(s3.list(&ann.id).await.unwrap().is_empty());
}

/// Collecting while a device saves the same small bytes again: the collector found the block
/// unnamed, then a new file named it (writing it again), then the collector deletes — that
/// delete is refused, and the new file's content stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_written_again_while_collecting_stays() {
    use crate::store::{MetaStore, NewNode, Origin};
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let meta = DynamoStore::new(&sdk, &fresh_settings());
    meta.create_table().await.unwrap();
    let (ann, _) = crate::admin::add_user(&meta, "ann").await.unwrap();
    let content = small(b"todo: water the plants");
    let hash = content.blocks[0].clone();
    let file = |name: &str| NewNode {
        parent: ROOT_ID,
        name: name.into(),
        kind: NewKind::File {
            content: content.clone(),
        },
        mode: 0o644,
        mtime_ns: 1,
    };
    let at = |now_ns| Origin {
        device: None,
        now_ns,
    };
    // A file named the block, then went for good.
    let (gone, _) = meta.create(&ann.id, &file("old"), at(1)).await.unwrap();
    meta.remove(&ann.id, gone.id, None, false, at(2))
        .await
        .unwrap();
    assert_eq!(meta.purge_trash(&ann.id, 3).await.unwrap(), 1);

    // The collector reads the kept blocks (and would find this one unnamed)...
    let seen = meta.small_block_writes(&ann.id).await.unwrap();
    let w = seen[&hash];
    // ...a device saves the same bytes as a new file...
    meta.create(&ann.id, &file("new"), at(4)).await.unwrap();
    // ...and the collector's delete, made on what it read, is refused.
    assert!(!meta.forget_small_block(&ann.id, &hash, w).await.unwrap());
    assert_eq!(
        meta.small_block(&ann.id, &hash).await.unwrap().as_deref(),
        Some(&b"todo: water the plants"[..])
    );
    assert_eq!(meta.collect_small_blocks(&ann.id).await.unwrap(), 0);
}

/// The daily maintenance: once a deleted small file's trash is purged, its block goes from
/// the table; a live small file's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_maintenance_forgets_small_blocks_nothing_names() {
    use super::scheduled::{run, MaintenanceSettings};
    use crate::store::{now_ns, MetaStore, NewNode, Origin};
    let Some(m) = moto() else { return };
    let sdk = sdk_for(&m.url).await;
    let settings = fresh_settings();
    let meta = DynamoStore::new(&sdk, &settings);
    meta.create_table().await.unwrap();
    let s3 = S3BlobStore::new(&sdk, &settings);
    s3.create_bucket().await.unwrap();
    let (ann, _) = crate::admin::add_user(&meta, "ann").await.unwrap();
    let origin = Origin {
        device: None,
        now_ns: now_ns(),
    };
    let mut nodes = Vec::new();
    for (name, bytes) in [
        ("kept.txt", &b"still here"[..]),
        ("gone.txt", &b"deleted"[..]),
    ] {
        let new = NewNode {
            parent: ROOT_ID,
            name: name.into(),
            kind: NewKind::File {
                content: small(bytes),
            },
            mode: 0o644,
            mtime_ns: 1,
        };
        nodes.push(meta.create(&ann.id, &new, origin).await.unwrap().0);
    }
    meta.remove(&ann.id, nodes[1].id, None, false, origin)
        .await
        .unwrap();

    let right_away = MaintenanceSettings {
        trash_retention: std::time::Duration::ZERO,
        ..Default::default()
    };
    let report = run(&meta, &s3, right_away, now_ns() + 1).await.unwrap();
    assert_eq!((report.trash_entries, report.small_blocks), (1, 1));
    assert_eq!(
        meta.small_block(&ann.id, &nodes[0].blocks[0])
            .await
            .unwrap()
            .as_deref(),
        Some(&b"still here"[..])
    );
    assert_eq!(
        meta.small_block(&ann.id, &nodes[1].blocks[0])
            .await
            .unwrap(),
        None
    );
}
