//! Deleting and restoring a folder whose marking is cut short, as Lambda's time limit cuts a
//! big one: an SDK interceptor makes the store's batch writes fail while armed, so the
//! marking after the delete's transaction stops at its first batch. The delete must still
//! succeed (it is committed), and the user's next write must finish the marking, so every
//! node below the folder goes to the trash with it and comes back with its restore.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept};
use aws_sdk_dynamodb::operation::batch_write_item::BatchWriteItemInput;
use jewel_wire::{NewKind, Node, NodeId, ROOT_ID};

use super::dynamo::DynamoStore;
use super::testing::{dynamodb_local, fresh_settings, moto, sdk_for, Emulator};
use crate::store::{MetaStore, NewNode, Origin, StoreError};

/// While armed, every `BatchWriteItem` past the `allowed` ones fails (the process "dies"
/// mid-marking); `seen` counts them all.
#[derive(Debug, Default, Clone)]
struct CutBatchWrites(Arc<AtomicBool>, Arc<AtomicI64>, Arc<AtomicUsize>);

impl Intercept for CutBatchWrites {
    fn name(&self) -> &'static str {
        "CutBatchWrites"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let batch = context
            .input()
            .downcast_ref::<BatchWriteItemInput>()
            .is_some();
        if batch {
            self.2.fetch_add(1, Ordering::SeqCst);
            if self.0.load(Ordering::SeqCst) && self.1.fetch_sub(1, Ordering::SeqCst) <= 0 {
                return Err("cut: the Lambda ran out of time".into());
            }
        }
        Ok(())
    }
}

fn origin() -> Origin {
    Origin {
        device: None,
        now_ns: 1,
    }
}

async fn make(s: &DynamoStore, user: &String, parent: NodeId, name: &str, dir: bool) -> Node {
    let kind = if dir {
        NewKind::Dir
    } else {
        NewKind::Symlink { target: "t".into() }
    };
    let node = NewNode {
        parent,
        name: name.into(),
        kind,
        mode: 0o755,
        mtime_ns: 1,
    };
    s.create(user, &node, origin()).await.unwrap().0
}

/// A store on `server` whose batch writes `cut` can fail, with a fresh user.
async fn cuttable_store(
    server: Option<Arc<Emulator>>,
) -> Option<(DynamoStore, CutBatchWrites, String, Arc<Emulator>)> {
    let m = server?;
    let sdk = sdk_for(&m.url).await;
    let cut = CutBatchWrites::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(cut.clone())
        .build();
    let settings = fresh_settings();
    let store = DynamoStore::from_client(
        aws_sdk_dynamodb::Client::from_conf(conf),
        &settings.table,
        settings.log_retention,
    );
    store.create_table().await.unwrap();
    let user = store.create_user("gus", "hash-of-gus", 1).await.unwrap().id;
    Some((store, cut, user, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_whose_marking_was_cut_short_is_trashed_and_restored_whole() {
    let Some((store, cut, user, _moto)) = cuttable_store(moto()).await else {
        return;
    };
    // big/d0..d3/{s0..s4, deeper/x}: 33 nodes below `big`, three levels deep.
    let big = make(&store, &user, ROOT_ID, "big", true).await;
    let mut below = Vec::new();
    for d in 0..4 {
        let dir = make(&store, &user, big.id, &format!("d{d}"), true).await;
        below.push(dir.id);
        for f in 0..5 {
            below.push(
                make(&store, &user, dir.id, &format!("s{f}"), false)
                    .await
                    .id,
            );
        }
        let deeper = make(&store, &user, dir.id, "deeper", true).await;
        below.push(deeper.id);
        below.push(make(&store, &user, deeper.id, "x", false).await.id);
    }

    cut.0.store(true, Ordering::SeqCst);
    store
        .remove(&user, big.id, None, true, origin())
        .await
        .expect("the delete is committed even when the marking after it is cut");
    cut.0.store(false, Ordering::SeqCst);
    // The user's next write (anywhere) finishes the marking first.
    make(&store, &user, ROOT_ID, "elsewhere", true).await;
    for id in &below {
        assert!(
            matches!(store.get_node(&user, *id).await, Err(StoreError::NotFound)),
            "node {id} below the deleted folder is in the trash too"
        );
    }

    // The same for the restore: cut, then finished by the next write.
    cut.0.store(true, Ordering::SeqCst);
    store
        .restore(&user, big.id, origin())
        .await
        .expect("the restore is committed even when the unmarking after it is cut");
    cut.0.store(false, Ordering::SeqCst);
    make(&store, &user, ROOT_ID, "elsewhere too", true).await;
    for id in &below {
        assert!(
            store.get_node(&user, *id).await.is_ok(),
            "node {id} came back with its folder"
        );
    }
}

/// A folder with more children than one step marks: a cut after the first page resumes from
/// where it stopped (its progress is written down), not from the folder's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_folder_is_marked_page_by_page_and_resumes_where_it_stopped() {
    use super::dynamo::CHILDREN_PAGE;
    // On DynamoDB Local: 520 creates take minutes on moto (it copies the table per write).
    let Some((store, cut, user, _server)) = cuttable_store(dynamodb_local()).await else {
        return;
    };
    let wide = make(&store, &user, ROOT_ID, "wide", true).await;
    let mut below = Vec::new();
    for i in 0..CHILDREN_PAGE + 20 {
        below.push(
            make(&store, &user, wide.id, &format!("e{i:04}"), false)
                .await
                .id,
        );
    }
    // The first page's 20 batch writes go through, then the process "dies".
    let first_page = (CHILDREN_PAGE / 25) as i64;
    cut.1.store(first_page, Ordering::SeqCst);
    cut.0.store(true, Ordering::SeqCst);
    store
        .remove(&user, wide.id, None, true, origin())
        .await
        .unwrap();
    cut.0.store(false, Ordering::SeqCst);
    let before = cut.2.load(Ordering::SeqCst);
    make(&store, &user, ROOT_ID, "next", true).await;
    let resumed = cut.2.load(Ordering::SeqCst) - before;
    assert_eq!(
        resumed, 1,
        "only the 20 children after the first page were left to mark"
    );
    for id in &below {
        assert!(
            matches!(store.get_node(&user, *id).await, Err(StoreError::NotFound)),
            "child {id} is in the trash with its folder"
        );
    }
}
