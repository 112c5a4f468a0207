//! Marking the nodes below a deleted folder as in the trash (and unmarking them on restore),
//! resumably. Deleting or restoring a folder is one transaction on the folder itself; the
//! nodes below it are rewritten afterwards, 25 to a batch, and a big subtree (tens of
//! thousands of nodes) takes longer than one Lambda run may (29 s).
//!
//! So the work is written down before it starts: the same transaction that deletes, restores
//! or replaces the folder puts a **pending mark** `PK=U#<uid>#MARK SK=N#<dir>` with `top` (the
//! folder deleted or restored). Working through it marks the children of `dir` a page of
//! [`CHILDREN_PAGE`] at a time, adds a pending mark for each child folder, records the last
//! name done (`after`) and, once the folder is done, deletes its own item; so a run cut
//! anywhere leaves pending marks that cover everything not yet done, a folder of any size
//! advances page by page, and redoing a page is harmless.
//! A request works on pending marks for [`IN_REQUEST`] after its own transaction, and every
//! later write of the same user first resumes them for [`ON_RESUME`] (one `Query` when there
//! are none), so a cut marking finishes with the user's next writes.
//!
//! What a pending mark does is read from its top's state when it is worked on, not stored:
//! a top in the trash marks (`in_trash = top`), a live top unmarks, any other state (the top
//! itself now below another deleted folder, or gone) drops the mark — that folder's own
//! marking covers the nodes. So a delete and a quick restore of the same folder never fight:
//! whatever is pending converges to the top's present state.
//!
//! While marks are pending, the nodes not yet reached still look live to `get_node` and to a
//! commit on them (as before, but now only until the next writes finish the marking).

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
use jewel_wire::NodeId;

use super::{count, dir_pk, get_n, get_s, key, n, node_sk, read_node, DynamoStore, Item};
use crate::store::{StoreError, StoreResult};

/// How long a delete or restore works on the marking after its own transaction: most of
/// what is left of Lambda's 29 s.
pub const IN_REQUEST: Duration = Duration::from_secs(15);
/// How long a later write of the same user resumes pending marks before doing its own work.
pub const ON_RESUME: Duration = Duration::from_secs(3);
/// Pending marks read per query.
const BATCH: usize = 25;
/// Children of one folder marked per step (then the progress is written down).
pub const CHILDREN_PAGE: usize = 500;

pub(super) fn marks_pk(uid: &str) -> String {
    format!("U#{uid}#MARK")
}

/// The pending mark of `dir`'s children, for the folder `top` that was deleted or restored.
pub(super) fn pending(uid: &str, dir: NodeId, top: NodeId) -> Item {
    let mut item = key(marks_pk(uid), node_sk(dir));
    item.insert("top".into(), n(top));
    item
}

fn put(item: Item) -> WriteRequest {
    WriteRequest::builder()
        .put_request(
            PutRequest::builder()
                .set_item(Some(item))
                .build()
                .expect("item"),
        )
        .build()
}

impl DynamoStore {
    /// Works on the user's pending marks until none is left (true) or `budget` has passed
    /// (false: the rest stays pending).
    pub(super) async fn drain_marks(&self, uid: &str, budget: Duration) -> StoreResult<bool> {
        let deadline = Instant::now() + budget;
        loop {
            let pending = self.query(marks_pk(uid), None, None, Some(BATCH)).await?;
            if pending.is_empty() {
                return Ok(true);
            }
            for mut item in pending {
                // One folder, page by page, its progress written down after each.
                while !self.work_on(uid, &mut item).await? {
                    if Instant::now() >= deadline {
                        return Ok(false);
                    }
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
        }
    }

    /// Marks or unmarks the next page of children of one pending mark's folder and queues
    /// its subfolders; true (and the mark forgotten) once the folder is done, else the mark's
    /// `after` moves past the page.
    async fn work_on(&self, uid: &str, item: &mut Item) -> StoreResult<bool> {
        let sk = get_s(item, super::SK)?;
        let dir: NodeId = sk
            .strip_prefix("N#")
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| StoreError::Backend(format!("bad pending mark {sk}")))?;
        let top: NodeId = get_n(item, "top")?;
        let mark = match self.ptr(uid, top).await? {
            Some(p) if p.trash_at.is_some() && p.in_trash.is_none() => Some(Some(top)),
            Some(p) if p.live() => Some(None),
            _ => None,
        };
        if let Some(mark) = mark {
            let after = item.get("after").and_then(|v| v.as_s().ok()).cloned();
            let children = self
                .query(dir_pk(uid, dir), after, None, Some(CHILDREN_PAGE))
                .await?;
            let last = children.last().map(|c| get_s(c, super::SK)).transpose()?;
            let mut writes = Vec::new();
            for child in &children {
                let node = read_node(child)?;
                if node.is_dir() {
                    writes.push(put(pending(uid, node.id, top)));
                }
                let mut p = self.ptr_item(uid, &node);
                if let Some(t) = mark {
                    p.insert("in_trash".into(), n(t));
                }
                writes.push(put(p));
            }
            self.batch_write(writes).await?;
            if let (Some(last), true) = (last, children.len() == CHILDREN_PAGE) {
                let seen = item.clone();
                item.insert("after".into(), super::s(last));
                // Unless a newer delete or restore of the same folder rewrote the mark
                // meanwhile (another instance): then that one is worked on, from its start.
                return Ok(!self.replace_mark(&seen, Some(item.clone())).await?);
            }
        }
        self.replace_mark(item, None).await?;
        Ok(true)
    }

    /// Replaces the pending mark `seen` with `next` (or deletes it) if it is still as seen;
    /// false when it was not.
    async fn replace_mark(&self, seen: &Item, next: Option<Item>) -> StoreResult<bool> {
        let mut c = super::Cond::exists();
        match seen.get("after") {
            Some(a) => {
                c.expr.push_str(" AND #after = :after");
                c.values.insert(":after".into(), a.clone());
            }
            None => c.expr.push_str(" AND attribute_not_exists(#after)"),
        }
        c.names.insert("#after".into(), "after".into());
        let result = match next {
            Some(item) => {
                count("dynamodb:PutItem");
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(c.expr)
                    .set_expression_attribute_names(Some(c.names))
                    .set_expression_attribute_values((!c.values.is_empty()).then_some(c.values))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.into_service_error())
                    .map_err(|e| (e.is_conditional_check_failed_exception(), super::be(e)))
            }
            None => {
                count("dynamodb:DeleteItem");
                let k = key(get_s(seen, super::PK)?, get_s(seen, super::SK)?);
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .condition_expression(c.expr)
                    .set_expression_attribute_names(Some(c.names))
                    .set_expression_attribute_values((!c.values.is_empty()).then_some(c.values))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.into_service_error())
                    .map_err(|e| (e.is_conditional_check_failed_exception(), super::be(e)))
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, e)) => Err(e),
        }
    }

    /// Before a write of the user: finishes (for a while) a marking an earlier request left.
    pub(super) async fn resume_marks(&self, uid: &str) {
        if let Err(e) = self.drain_marks(uid, ON_RESUME).await {
            tracing::warn!("resuming the trash marks of user {uid}: {e}");
        }
    }

    /// After a delete or restore: works on the marking it queued, within the request's time;
    /// a failure leaves the rest pending (the deletion itself is committed).
    pub(super) async fn mark_after_commit(&self, uid: &str) {
        match self.drain_marks(uid, IN_REQUEST).await {
            Ok(true) => {}
            Ok(false) => tracing::info!("user {uid}: trash marking continues with later writes"),
            Err(e) => tracing::warn!("user {uid}: trash marking cut short ({e}); resumed later"),
        }
    }
}
