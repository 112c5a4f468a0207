//! Marking the nodes below a deleted folder as in the trash (and unmarking them on restore),
//! resumably. Deleting or restoring a folder is one transaction on the folder itself; the
//! nodes below it are rewritten afterwards, 25 to a batch, and a big subtree (tens of
//! thousands of nodes) takes longer than one Lambda run may (29 s).
//!
//! So the work is written down before it starts: the same transaction that deletes, restores
//! or replaces the folder puts a **pending mark** `PK=U#<uid>#MARK SK=N#<dir>` with `top` (the
//! folder deleted or restored). Working through it marks every child of `dir`, adds a pending
//! mark for each child folder, and only then deletes its own item, so a run cut anywhere
//! leaves pending marks that cover everything not yet done, and redoing one is harmless.
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

use super::{dir_pk, get_n, get_s, key, n, node_sk, read_node, DynamoStore, Item};
use crate::store::{StoreError, StoreResult};

/// How long a delete or restore works on the marking after its own transaction: most of
/// what is left of Lambda's 29 s.
pub const IN_REQUEST: Duration = Duration::from_secs(15);
/// How long a later write of the same user resumes pending marks before doing its own work.
pub const ON_RESUME: Duration = Duration::from_secs(3);
/// Pending marks read per query.
const BATCH: usize = 25;

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
            for item in pending {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                self.work_on(uid, &item).await?;
            }
        }
    }

    /// Marks or unmarks the children of one pending mark's folder, queues its subfolders,
    /// then forgets the mark.
    async fn work_on(&self, uid: &str, item: &Item) -> StoreResult<()> {
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
            let mut writes = Vec::new();
            for child in self.query(dir_pk(uid, dir), None, None, None).await? {
                let node = read_node(&child)?;
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
        }
        self.batch_write(vec![Self::delete_req(item)]).await
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
