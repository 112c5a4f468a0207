//! Small files' blocks kept in the table (`MetaStore::keeps_small_blocks`), so a small file
//! in AWS mode costs no S3 request: its block (at most `MAX_INLINE_BYTES`, sent inline with
//! the commit) is written in the same `TransactWriteItems` as the node that names it.
//!
//! | item | PK | SK | attributes |
//! |---|---|---|---|
//! | small block | `U#<uid>#SB` | `<block hash>` | `b` (the bytes, binary), `w` (the sequence number of the change that last wrote it) |
//!
//! **Why an item per block, not an attribute of the node.** A block is asked for by its hash
//! (block URLs, `blocks/missing`), and one block may be named by many nodes and versions: a
//! node's attribute could be found only by the node, and would be copied into the entry, the
//! trash and every version item. Content-addressed items are written once, read with one
//! `GetItem`, and an earlier version or a trashed file reads its bytes exactly as a live one
//! does, for as long as anything names them. An item is at most ~4.2 KB, far inside the
//! 400 KB limit, and adds one item to the change's transaction (at most 6 of the 100).
//!
//! **Collecting without losing a block a change is naming.** `collect_small_blocks` reads
//! the blocks (with their `w`), then the references (`referenced_blocks`), and deletes each
//! unreferenced block on the condition that its `w` is still the one it read. Every change
//! that names a kept block writes it again with its own `w` (an inline commit carries it;
//! the router gives the bytes to a commit that names a kept block without them, see
//! `api/tree.rs`). So a change that landed before the references were read is seen there, and
//! one that landed after rewrote `w`, and the delete fails: the block stays.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};
use jewel_wire::Seq;

use super::condemned::condition_failed;
use super::{be, count, get_n, get_s, key, n, DynamoStore, Item, Tx};
use crate::aws::batch_get::batch_get;
use crate::aws::{PK, SK};
use crate::store::{StoreError, StoreResult};

/// Conditional deletes sent at once while collecting.
const DELETES_AT_ONCE: usize = 16;

pub(super) fn small_pk(uid: &str) -> String {
    format!("U#{uid}#SB")
}

impl DynamoStore {
    /// Adds the write of a small block to a change's transaction; `seq` is the sequence
    /// number of that change (the block's new `w`).
    pub(super) fn tx_keep_small_block(
        &self,
        tx: &mut Tx,
        uid: &str,
        block: Option<(&str, &[u8])>,
        seq: Seq,
    ) {
        let Some((hash, bytes)) = block else { return };
        let mut item = key(small_pk(uid), hash.to_string());
        item.insert("b".into(), AttributeValue::B(Blob::new(bytes)));
        item.insert("w".into(), n(seq));
        tx.put(&self.table, item, None);
    }

    pub(super) async fn small_block_bytes(
        &self,
        uid: &str,
        hash: &str,
    ) -> StoreResult<Option<Vec<u8>>> {
        let Some(item) = self.get(small_pk(uid), hash.to_string()).await? else {
            return Ok(None);
        };
        match item.get("b") {
            Some(AttributeValue::B(b)) => Ok(Some(b.clone().into_inner())),
            _ => Err(StoreError::Backend(format!(
                "small block {hash} lacks its bytes"
            ))),
        }
    }

    /// Which of `hashes` (in their order) the table holds, read by key in batches of 100
    /// (keys only: the bytes are not read back).
    pub(super) async fn small_blocks_in(
        &self,
        uid: &str,
        hashes: &[String],
    ) -> StoreResult<Vec<String>> {
        let unique: HashSet<&String> = hashes.iter().collect();
        let keys = unique
            .into_iter()
            .map(|h| key(small_pk(uid), h.clone()))
            .collect();
        let items = batch_get(&self.client, &self.table, keys, Some(SK))
            .await
            .map_err(|e| StoreError::Backend(e.reading("small blocks")))?;
        let found = items
            .iter()
            .map(|item| get_s(item, SK))
            .collect::<StoreResult<HashSet<String>>>()?;
        Ok(hashes
            .iter()
            .filter(|h| found.contains(h.as_str()))
            .cloned()
            .collect())
    }

    /// Every kept block of the user with its `w`, keys and `w` only (a query page holds at
    /// most 1 MB; the bytes are never read).
    pub(in crate::aws) async fn small_block_writes(
        &self,
        uid: &str,
    ) -> StoreResult<HashMap<String, Seq>> {
        let mut out = HashMap::new();
        let mut start: Option<Item> = None;
        loop {
            count("dynamodb:Query");
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .projection_expression("#sk, #w")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_names("#w", "w")
                .expression_attribute_values(":pk", AttributeValue::S(small_pk(uid)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(be)?;
            for item in page.items.unwrap_or_default() {
                out.insert(get_s(&item, SK)?, get_n(&item, "w")?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Forgets one kept block if no change wrote it since it was read with `w`; true when
    /// it went.
    pub(in crate::aws) async fn forget_small_block(
        &self,
        uid: &str,
        hash: &str,
        w: Seq,
    ) -> StoreResult<bool> {
        count("dynamodb:DeleteItem");
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(small_pk(uid), hash.to_string())))
            .condition_expression("#w = :w")
            .expression_attribute_names("#w", "w")
            .expression_attribute_values(":w", n(w))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    /// Forgets the kept blocks nothing names, each on the condition that no change wrote it
    /// since it was read (see the module's docs); returns how many went.
    pub(super) async fn collect_unnamed_small_blocks(&self, uid: &str) -> StoreResult<usize> {
        let written = self.small_block_writes(uid).await?;
        if written.is_empty() {
            return Ok(0);
        }
        // Read after the blocks: a change that wrote one before is seen here.
        let named: HashSet<String> =
            crate::store::MetaStore::referenced_blocks(self, &uid.to_string())
                .await?
                .into_iter()
                .collect();
        let unnamed = written
            .into_iter()
            .filter(|(hash, _)| !named.contains(hash));
        let gone: Vec<bool> = futures::stream::iter(unnamed)
            .map(|(hash, w)| async move { self.forget_small_block(uid, &hash, w).await })
            .buffer_unordered(DELETES_AT_ONCE)
            .try_collect()
            .await?;
        Ok(gone.into_iter().filter(|g| *g).count())
    }
}
