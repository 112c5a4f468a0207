//! The block store AWS mode serves with: S3, with the one answer block collection depends on
//! made aware of it. `missing` — what a commit checks before storing a node, and what
//! `POST /blocks/missing` answers — also asks the table which of the blocks the collector
//! condemned or is deleting (`dynamo/condemned.rs`):
//! - a block being deleted is answered **missing**, even while S3 still holds it: its client
//!   uploads it again and the commit waits for that;
//! - a block merely condemned is **rescued** first (its condemnation deleted, on the
//!   condition that it is still only condemned), then answered as S3 answers; if the
//!   collector claimed it in between, it is answered missing.
//!
//! So no commit that a collector's sweep cannot see yet names a block that sweep deletes
//! (`block_gc.rs` says why). Everything else passes straight to S3. The table is read before
//! S3 is asked: a block deleted after the read is absent in S3's answer, one claimed before it
//! is refused by the table's.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jewel_wire::is_block_hash;

use super::dynamo::{Condemnation, DynamoStore};
use super::s3::S3BlobStore;
use crate::blobs::{BlobError, BlobResult, BlobStore, StoredBlock};
use crate::store::UserId;

/// Conditional deletes (rescues) sent at once.
const RESCUES_AT_ONCE: usize = 16;

pub struct GuardedBlobs {
    s3: Arc<S3BlobStore>,
    meta: Arc<DynamoStore>,
}

impl GuardedBlobs {
    pub fn new(s3: Arc<S3BlobStore>, meta: Arc<DynamoStore>) -> GuardedBlobs {
        GuardedBlobs { s3, meta }
    }

    /// The hashes among `hashes` that are being deleted, or were claimed while this call
    /// rescued them.
    async fn collected(&self, user: &str, hashes: &[String]) -> BlobResult<HashSet<String>> {
        let store = |e: crate::store::StoreError| BlobError::Backend(e.to_string());
        let marks = self
            .meta
            .condemnations_of(user, hashes)
            .await
            .map_err(store)?;
        let mut gone = HashSet::new();
        let mut condemned = Vec::new();
        for (hash, state) in marks {
            match state {
                Condemnation::Deleting { .. } => {
                    gone.insert(hash);
                }
                Condemnation::Condemned { .. } => condemned.push(hash),
            }
        }
        let lost: Vec<Option<String>> = futures::stream::iter(condemned)
            .map(|hash| async move {
                let rescued = self.meta.rescue(user, &hash).await.map_err(store)?;
                Ok::<_, BlobError>((!rescued).then_some(hash))
            })
            .buffer_unordered(RESCUES_AT_ONCE)
            .try_collect()
            .await?;
        gone.extend(lost.into_iter().flatten());
        Ok(gone)
    }
}

#[async_trait]
impl BlobStore for GuardedBlobs {
    async fn missing(&self, user: &UserId, hashes: &[String]) -> BlobResult<Vec<String>> {
        if let Some(bad) = hashes.iter().find(|h| !is_block_hash(h)) {
            return Err(BlobError::BadHash(bad.clone()));
        }
        let gone = self.collected(user, hashes).await?;
        let absent: HashSet<String> = self.s3.missing(user, hashes).await?.into_iter().collect();
        Ok(hashes
            .iter()
            .filter(|h| gone.contains(*h) || absent.contains(*h))
            .cloned()
            .collect())
    }

    async fn upload_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        self.s3.upload_url(user, hash).await
    }

    async fn download_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        self.s3.download_url(user, hash).await
    }

    async fn put(&self, user: &UserId, hash: &str, bytes: Bytes) -> BlobResult<()> {
        self.s3.put(user, hash, bytes).await
    }

    async fn get(&self, user: &UserId, hash: &str) -> BlobResult<Bytes> {
        self.s3.get(user, hash).await
    }

    async fn delete(&self, user: &UserId, hash: &str) -> BlobResult<()> {
        self.s3.delete(user, hash).await
    }

    async fn list(&self, user: &UserId) -> BlobResult<Vec<StoredBlock>> {
        self.s3.list(user).await
    }

    async fn remove_user(&self, user: &UserId) -> BlobResult<u64> {
        self.s3.remove_user(user).await
    }
}
