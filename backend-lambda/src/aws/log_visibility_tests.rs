//! `changes_since` under DynamoDB's isolation levels. A `GetItem` of the user's counter is
//! serializable with transactions, but a `Query` of the log is read-committed: it may miss a
//! log item of a transaction whose counter update it has already seen (or, on AWS, any item
//! of one still being applied). These tests hide chosen log items from `Query` answers only
//! (an SDK interceptor on the store's own client) and check that the store answers the
//! contiguous prefix it can see, never a spurious "cursor too old" (which makes a device drop
//! its caches and list everything again) and never a page with a hole (a device would skip
//! the missing change for good).

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::FinalizerInterceptorContextMut;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::query::QueryOutput;
use jewel_wire::{NewKind, Seq, ROOT_ID};

use super::dynamo::DynamoStore;
use super::testing::{fresh_settings, moto, sdk_for, Emulator};
use crate::store::{MetaStore, NewNode, Origin, StoreError};

/// Drops the log items with these sort keys from every `Query` answer, as a read-committed
/// read racing a transaction may.
#[derive(Debug, Default, Clone)]
struct HideFromQueries(Arc<Mutex<Vec<String>>>);

impl Intercept for HideFromQueries {
    fn name(&self) -> &'static str {
        "HideFromQueries"
    }

    fn modify_before_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let hidden = self.0.lock().unwrap().clone();
        if let Some(Ok(output)) = context.output_or_error_mut() {
            if let Some(query) = output.downcast_mut::<QueryOutput>() {
                if let Some(items) = query.items.as_mut() {
                    items.retain(|item| {
                        let sk = item.get(super::SK).and_then(|v| v.as_s().ok());
                        !sk.is_some_and(|sk| hidden.iter().any(|h| h == sk))
                    });
                    query.count = items.len() as i32;
                }
            }
        }
        Ok(())
    }
}

fn seq_key(seq: Seq) -> String {
    format!("{seq:020}")
}

/// A store on moto whose queries miss what `hide` names, with a user who made three changes.
/// The last element keeps the shared server alive for the test.
async fn store_with_three_changes(
) -> Option<(DynamoStore, HideFromQueries, String, Seq, Arc<Emulator>)> {
    let m = moto()?;
    let sdk = sdk_for(&m.url).await;
    let hide = HideFromQueries::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(hide.clone())
        .build();
    let settings = fresh_settings();
    let store = DynamoStore::from_client(
        aws_sdk_dynamodb::Client::from_conf(conf),
        &settings.table,
        settings.log_retention,
    );
    store.create_table().await.unwrap();
    let user = store.create_user("ann", "hash-of-ann", 1).await.unwrap().id;
    for name in ["a", "b", "c"] {
        let node = NewNode {
            parent: ROOT_ID,
            name: name.into(),
            kind: NewKind::Dir,
            mode: 0o755,
            mtime_ns: 1,
        };
        let origin = Origin {
            device: None,
            now_ns: 1,
        };
        store.create(&user, &node, origin).await.unwrap();
    }
    let latest = store.latest_seq(&user).await.unwrap();
    Some((store, hide, user, latest, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_item_not_yet_seen_by_query_is_no_cursor_too_old() {
    let Some((store, hide, user, latest, _server)) = store_with_three_changes().await else {
        return;
    };
    assert!(latest >= 3, "three changes logged: {latest}");
    // The newest change's counter is visible, its log item not yet to Query.
    *hide.0.lock().unwrap() = vec![seq_key(latest)];
    let page = store
        .changes_since(&user, latest - 1, 100)
        .await
        .expect("the change is committed: the cursor is not too old");
    let seqs: Vec<Seq> = page.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![latest], "the committed change, read by its key");
    assert_eq!(page.latest_seq, latest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_what_query_sees_ends_the_page() {
    let Some((store, hide, user, latest, _server)) = store_with_three_changes().await else {
        return;
    };
    let first = latest - 2;
    // The middle one of the three is not yet visible to Query.
    *hide.0.lock().unwrap() = vec![seq_key(first + 1)];
    let page = store.changes_since(&user, first - 1, 100).await.unwrap();
    let seqs: Vec<Seq> = page.events.iter().map(|e| e.seq).collect();
    let contiguous: Vec<Seq> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, contiguous, "a page never has a hole");
    assert!(!seqs.is_empty());
    assert_eq!(page.latest_seq, latest, "the device reads on from there");

    // Once visible, the rest follows from the new cursor.
    hide.0.lock().unwrap().clear();
    let cursor = *seqs.last().unwrap();
    let rest = store.changes_since(&user, cursor, 100).await.unwrap();
    let rest: Vec<Seq> = rest.events.iter().map(|e| e.seq).collect();
    assert_eq!(rest, ((cursor + 1)..=latest).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_item_really_gone_is_still_cursor_too_old() {
    let Some((store, _hide, user, latest, _server)) = store_with_three_changes().await else {
        return;
    };
    // Trim everything but the newest event: a cursor before the trim is too old.
    store.trim_log(&user, i64::MAX).await.unwrap();
    match store.changes_since(&user, latest - 2, 100).await {
        Err(StoreError::CursorTooOld) => {}
        other => panic!("expected CursorTooOld, got {other:?}"),
    }
}
