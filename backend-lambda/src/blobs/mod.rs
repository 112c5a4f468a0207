//! `BlobStore`: content blocks, stored once per user under their SHA-256, and the short-lived
//! URLs through which clients move block bytes without the API in between.
//!
//! Two engines: a local folder whose URLs are HMAC-signed and served by this router
//! (`local.rs`), and S3 with presigned URLs (AWS mode). Both pass one conformance suite.
//! A block is immutable once stored: its name is its hash, so a cached copy never goes stale.
//! Every write is verified against the hash it claims; wrong bytes are refused and nothing
//! is stored.

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::UserId;

pub mod local;
pub mod url_key;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no such block")]
    NotFound,
    #[error("the bytes do not match the block hash {0}")]
    HashMismatch(String),
    #[error("not a block hash: {0:?}")]
    BadHash(String),
    #[error("the block URL is invalid or has expired")]
    BadSignature,
    #[error("block storage failure: {0}")]
    Backend(String),
}

pub type BlobResult<T> = Result<T, BlobError>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The hashes among `hashes` this user's store does not hold, in the given order.
    async fn missing(&self, user: &UserId, hashes: &[String]) -> BlobResult<Vec<String>>;
    /// A short-lived URL to PUT this block's bytes to.
    async fn upload_url(&self, user: &UserId, hash: &str) -> BlobResult<String>;
    /// A short-lived URL to GET this block's bytes from.
    async fn download_url(&self, user: &UserId, hash: &str) -> BlobResult<String>;
    /// Stores a block directly, verifying it against its hash.
    async fn put(&self, user: &UserId, hash: &str, bytes: Bytes) -> BlobResult<()>;
    /// Reads a block directly.
    async fn get(&self, user: &UserId, hash: &str) -> BlobResult<Bytes>;
    /// Deletes a block (garbage collection); deleting a missing block is not an error.
    async fn delete(&self, user: &UserId, hash: &str) -> BlobResult<()>;
    /// Every block this user's store holds, with when it was stored (for garbage collection).
    async fn list(&self, user: &UserId) -> BlobResult<Vec<StoredBlock>>;
    /// Deletes every block of the user (the user is being removed); returns how many. Safe to
    /// run again after a failure.
    async fn remove_user(&self, user: &UserId) -> BlobResult<u64>;
}

/// A block as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub hash: String,
    /// When the block was written, ns since the epoch.
    pub stored_at_ns: i64,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
