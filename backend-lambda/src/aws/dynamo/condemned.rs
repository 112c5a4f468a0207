//! The table side of block garbage collection in AWS mode: which blocks the collector has
//! condemned or is deleting, the blocks the tree references, and where the last run stopped.
//! The protocol that makes these safe against concurrent commits is in `aws/block_gc.rs`;
//! this module only stores it.
//!
//! | item | PK | SK | attributes |
//! |---|---|---|---|
//! | condemnation | `U#<uid>#GC` | `<block hash>` | `state` = `condemned` with `at` (ns), or `deleting` with `claimed` (ns) |
//! | run cursor | `GC` | `CURSOR` | `user`: the name of the last user a time-bounded run finished |
//!
//! Every change of a condemnation is conditional on the state it was read in: a collector
//! condemns only a block with no item (never over another run's claim), claims only the
//! condemnation (or stale claim) it read, and a commit rescues only a block still
//! `condemned` — so of a commit and a collector racing for one block exactly one wins, and
//! each learns which. Reads are strongly consistent; pages and batches are bounded (1000
//! items a query page, 100 keys a `BatchGetItem`, 25 deletes a `BatchWriteItem`).

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::AttributeValue;

use super::{be, count, get_n, get_s, key, n, s, user_pk, DynamoStore, Item};
use crate::aws::batch_get::batch_get;
use crate::aws::{PK, SK};
use crate::store::{StoreError, StoreResult};

/// Items read per query page: bounds the memory of one answer (DynamoDB also cuts at 1 MB).
const QUERY_PAGE: i32 = 1000;

/// Where the collector stands on one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condemnation {
    /// Found unreferenced (and old) at `at_ns`; a commit naming the block rescues it.
    Condemned { at_ns: i64 },
    /// Claimed for deletion at `claimed_ns`: commits naming it are refused (`missing_blocks`)
    /// until the collector has deleted it and forgotten the item.
    Deleting { claimed_ns: i64 },
}

pub(super) fn gc_pk(uid: &str) -> String {
    format!("U#{uid}#GC")
}

fn read(item: &Item) -> StoreResult<(String, Condemnation)> {
    let hash = get_s(item, SK)?;
    let state = match get_s(item, "state")?.as_str() {
        "condemned" => Condemnation::Condemned {
            at_ns: get_n(item, "at")?,
        },
        "deleting" => Condemnation::Deleting {
            claimed_ns: get_n(item, "claimed")?,
        },
        other => {
            return Err(StoreError::Backend(format!(
                "unknown state {other:?} of condemned block {hash}"
            )))
        }
    };
    Ok((hash, state))
}

/// The condition "the item is still as `seen`", with its names and values.
fn still(seen: Condemnation) -> (String, HashMap<String, String>, Item) {
    let mut names = HashMap::from([("#st".to_string(), "state".to_string())]);
    let (expr, value) = match seen {
        Condemnation::Condemned { at_ns } => {
            names.insert("#t".into(), "at".into());
            ("#st = :st AND #t = :t", ("condemned", at_ns))
        }
        Condemnation::Deleting { claimed_ns } => {
            names.insert("#t".into(), "claimed".into());
            ("#st = :st AND #t = :t", ("deleting", claimed_ns))
        }
    };
    let values = HashMap::from([
        (":st".to_string(), s(value.0)),
        (":t".to_string(), n(value.1)),
    ]);
    (expr.to_string(), names, values)
}

/// Whether an SDK error is a failed condition (the item was not as expected).
pub(super) fn condition_failed<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

impl DynamoStore {
    /// Every condemnation of the user, in hash order.
    pub async fn condemned_blocks(&self, uid: &str) -> StoreResult<Vec<(String, Condemnation)>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            count("dynamodb:Query");
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(gc_pk(uid)))
                .consistent_read(true)
                .limit(QUERY_PAGE)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(be)?;
            for item in page.items() {
                out.push(read(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// The condemnations among `hashes` (those that have one), read in batches of 100.
    pub async fn condemnations_of(
        &self,
        uid: &str,
        hashes: &[String],
    ) -> StoreResult<HashMap<String, Condemnation>> {
        let unique: HashSet<&String> = hashes.iter().collect();
        let keys = unique
            .into_iter()
            .map(|h| key(gc_pk(uid), h.clone()))
            .collect();
        let items = batch_get(&self.client, &self.table, keys, None)
            .await
            .map_err(|e| StoreError::Backend(e.reading("condemned blocks")))?;
        items.iter().map(read).collect()
    }

    /// Condemns a block found unreferenced at `now_ns`, unless it has an item already (a
    /// condemnation or another run's claim); true when this call condemned it.
    pub async fn condemn(&self, uid: &str, hash: &str, now_ns: i64) -> StoreResult<bool> {
        let mut item = key(gc_pk(uid), hash.to_string());
        item.insert("state".into(), s("condemned"));
        item.insert("at".into(), n(now_ns));
        count("dynamodb:PutItem");
        match self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    /// Turns the condemnation (or stale claim) `seen` into this run's claim at `now_ns`;
    /// false when the item changed meanwhile (a commit rescued the block, or another run
    /// claimed it).
    pub async fn claim(
        &self,
        uid: &str,
        hash: &str,
        seen: Condemnation,
        now_ns: i64,
    ) -> StoreResult<bool> {
        let (cond, mut names, mut values) = still(seen);
        names.insert("#cl".into(), "claimed".into());
        values.insert(":deleting".into(), s("deleting"));
        values.insert(":now".into(), n(now_ns));
        count("dynamodb:UpdateItem");
        match self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(gc_pk(uid), hash.to_string())))
            .update_expression("SET #st = :deleting, #cl = :now")
            .condition_expression(cond)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    /// Forgets a block's condemnation if it is still merely condemned (a commit rescuing the
    /// block, or the collector finding it referenced or gone); true when it was (or there
    /// was none), false when the block is being deleted.
    pub async fn rescue(&self, uid: &str, hash: &str) -> StoreResult<bool> {
        count("dynamodb:DeleteItem");
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(gc_pk(uid), hash.to_string())))
            .condition_expression("attribute_not_exists(#pk) OR #st = :condemned")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#st", "state")
            .expression_attribute_values(":condemned", s("condemned"))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    /// Forgets the items of blocks this run claimed (deleted, or found referenced).
    pub async fn forget_claims(&self, uid: &str, hashes: &[String]) -> StoreResult<()> {
        let deletes = hashes
            .iter()
            .map(|h| Self::delete_req(&key(gc_pk(uid), h.clone())))
            .collect();
        self.batch_write(deletes).await
    }

    /// Every block hash a node (live or in the trash, reachable or not) or a kept version of
    /// the user names, read page by page with only the block lists projected.
    pub async fn block_references(&self, uid: &str) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for prefix in ["N#", "V#"] {
            let mut start: Option<Item> = None;
            loop {
                count("dynamodb:Query");
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .projection_expression("#b")
                    .expression_attribute_names("#pk", PK)
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_names("#b", "blocks")
                    .expression_attribute_values(":pk", s(user_pk(uid)))
                    .expression_attribute_values(":prefix", s(prefix))
                    .consistent_read(true)
                    .limit(QUERY_PAGE)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(be)?;
                for item in page.items() {
                    if let Some(AttributeValue::L(list)) = item.get("blocks") {
                        for v in list {
                            match v {
                                AttributeValue::S(h) => out.insert(h.clone()),
                                _ => return Err(StoreError::Backend("bad block list".into())),
                            };
                        }
                    }
                }
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// The user a time-bounded maintenance run finished last, if the last run stopped early.
    pub async fn gc_cursor(&self) -> StoreResult<Option<String>> {
        let item = self.get("GC".into(), "CURSOR".into()).await?;
        item.map(|i| get_s(&i, "user")).transpose()
    }

    /// Records where a maintenance run stopped (`None`: it went through every user).
    pub async fn set_gc_cursor(&self, user: Option<&str>) -> StoreResult<()> {
        let k = key("GC".into(), "CURSOR".into());
        match user {
            Some(name) => {
                let mut item = k;
                item.insert("user".into(), s(name));
                count("dynamodb:PutItem");
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(be)?;
            }
            None => {
                count("dynamodb:DeleteItem");
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .send()
                    .await
                    .map_err(be)?;
            }
        }
        Ok(())
    }
}
