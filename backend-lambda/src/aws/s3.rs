//! `BlobStore` on S3: each block is the object `u/<user>/b/<hash>` in one bucket.
//!
//! Clients move block bytes straight to and from S3 through presigned URLs, so no file content
//! passes through Lambda (whose payload limit is 6 MB). The URLs are short-lived
//! ([`AwsSettings::url_lifetime`]) and name one block of one user.
//!
//! **The upload URL carries the block's SHA-256.** It is presigned with
//! `x-amz-checksum-sha256` (the base64 of the hash) as a signed header, so S3 itself refuses a
//! body whose SHA-256 differs, and refuses the request if the header is left out or changed.
//! A client therefore sends, with the block's bytes:
//!
//! ```text
//! PUT <url>
//! content-type: application/octet-stream
//! x-amz-checksum-sha256: base64(hex-decode(hash))
//! ```
//!
//! (it knows the hash, so it computes the header itself; [`checksum_header`] does it here).
//! The local block store ignores the header, so a client can always send it.
//!
//! Reads verify the SHA-256 of what comes back (never an ETag, which is not a content hash for
//! every upload), so a block handed out is always the block asked for.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jewel_wire::is_block_hash;

use super::{count, sdk_err, AwsSettings};
use crate::blobs::{sha256_hex, BlobError, BlobResult, BlobStore, StoredBlock};
use crate::store::UserId;

/// Keys per `DeleteObjects` request (S3's limit).
pub const DELETE_BATCH: usize = 1000;

/// The header a client sends with a presigned PUT.
pub const CHECKSUM_HEADER: &str = "x-amz-checksum-sha256";

/// The value of [`CHECKSUM_HEADER`] for a block hash (hex).
pub fn checksum_header(hash: &str) -> Option<String> {
    let raw = hex::decode(hash).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

pub struct S3BlobStore {
    client: Client,
    bucket: String,
    url_lifetime: Duration,
}

fn be<E: std::error::Error + 'static>(e: E) -> BlobError {
    BlobError::Backend(sdk_err(&e))
}

fn check(hash: &str) -> BlobResult<()> {
    if is_block_hash(hash) {
        Ok(())
    } else {
        Err(BlobError::BadHash(hash.to_string()))
    }
}

impl S3BlobStore {
    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> S3BlobStore {
        // Path-style URLs (`endpoint/bucket/key`): they work against loopback servers, which
        // have no per-bucket host names, and against AWS alike.
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build();
        S3BlobStore {
            client: Client::from_conf(conf),
            bucket: settings.bucket.clone(),
            url_lifetime: settings.url_lifetime,
        }
    }

    /// Creates the bucket if it is missing (for loopback tests and first runs; in AWS,
    /// Terraform creates it with encryption, public-access block and lifecycle).
    pub async fn create_bucket(&self) -> anyhow::Result<()> {
        count("s3:HeadBucket");
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        count("s3:CreateBucket");
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        let region = self.client.config().region().map(|r| r.to_string());
        if let Some(r) = region.filter(|r| r != "us-east-1") {
            use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(r.as_str()))
                    .build(),
            );
        }
        req.send()
            .await
            .map_err(|e| anyhow::anyhow!("creating bucket {}: {}", self.bucket, sdk_err(&e)))?;
        Ok(())
    }

    fn key(user: &str, hash: &str) -> String {
        format!("u/{user}/b/{hash}")
    }

    async fn exists(&self, user: &str, hash: &str) -> BlobResult<bool> {
        count("s3:HeadObject");
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(be(e)),
        }
    }

    /// Deletes these blocks of the user, [`DELETE_BATCH`] keys per `DeleteObjects`; returns
    /// how many requests it took. Deleting a block that is not there is no error.
    pub async fn delete_many(&self, user: &str, hashes: &[String]) -> BlobResult<usize> {
        let mut requests = 0;
        for chunk in hashes.chunks(DELETE_BATCH) {
            let mut ids = Vec::with_capacity(chunk.len());
            for h in chunk {
                check(h)?;
                ids.push(
                    ObjectIdentifier::builder()
                        .key(Self::key(user, h))
                        .build()
                        .map_err(be)?,
                );
            }
            count("s3:DeleteObjects");
            requests += 1;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids))
                        .quiet(true)
                        .build()
                        .map_err(be)?,
                )
                .send()
                .await
                .map_err(be)?;
            if let Some(e) = out.errors().first() {
                return Err(BlobError::Backend(format!(
                    "S3 kept {} of {} blocks it was asked to delete: {} {}",
                    out.errors().len(),
                    chunk.len(),
                    e.key().unwrap_or_default(),
                    e.message().unwrap_or_default()
                )));
            }
        }
        Ok(requests)
    }

    fn presigning(&self) -> BlobResult<PresigningConfig> {
        PresigningConfig::expires_in(self.url_lifetime).map_err(be)
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn missing(&self, user: &UserId, hashes: &[String]) -> BlobResult<Vec<String>> {
        for h in hashes {
            check(h)?;
        }
        // One HEAD per block, 16 at a time; the answer keeps the given order.
        let user: &str = user;
        let checks: Vec<_> = hashes
            .iter()
            .map(|h| self.exists(user, h.as_str()))
            .collect();
        let present: Vec<bool> = futures::stream::iter(checks)
            .buffered(16)
            .try_collect()
            .await?;
        Ok(hashes
            .iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(h, _)| h.clone())
            .collect())
    }

    async fn upload_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        check(hash)?;
        let sum = checksum_header(hash).ok_or_else(|| BlobError::BadHash(hash.into()))?;
        count("s3:presign PutObject");
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .checksum_sha256(sum)
            .presigned(self.presigning()?)
            .await
            .map_err(be)?;
        Ok(req.uri().to_string())
    }

    async fn download_url(&self, user: &UserId, hash: &str) -> BlobResult<String> {
        check(hash)?;
        count("s3:presign GetObject");
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .presigned(self.presigning()?)
            .await
            .map_err(be)?;
        Ok(req.uri().to_string())
    }

    async fn put(&self, user: &UserId, hash: &str, bytes: Bytes) -> BlobResult<()> {
        check(hash)?;
        if sha256_hex(&bytes) != hash {
            return Err(BlobError::HashMismatch(hash.into()));
        }
        let sum = checksum_header(hash).ok_or_else(|| BlobError::BadHash(hash.into()))?;
        count("s3:PutObject");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .checksum_sha256(sum)
            .content_type("application/octet-stream")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(be)?;
        Ok(())
    }

    async fn get(&self, user: &UserId, hash: &str) -> BlobResult<Bytes> {
        check(hash)?;
        count("s3:GetObject");
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(BlobError::NotFound)
            }
            Err(e) => return Err(be(e)),
        };
        let bytes = out.body.collect().await.map_err(be)?.into_bytes();
        if sha256_hex(&bytes) != hash {
            return Err(BlobError::Backend(format!(
                "stored block {hash} does not match its hash"
            )));
        }
        Ok(bytes)
    }

    async fn remove_user(&self, user: &UserId) -> BlobResult<u64> {
        if user.is_empty() || user.contains('/') {
            return Ok(0);
        }
        let prefix = format!("u/{user}/");
        let mut removed = 0;
        loop {
            // List a page, delete it, list again from the start: each pass sees only what is
            // left, so no continuation token goes stale while deleting.
            count("s3:ListObjectsV2");
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .max_keys(1000)
                .send()
                .await
                .map_err(be)?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                return Ok(removed);
            }
            let n = ids.len() as u64;
            count("s3:DeleteObjects");
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids))
                        .quiet(true)
                        .build()
                        .map_err(be)?,
                )
                .send()
                .await
                .map_err(be)?;
            if let Some(e) = out.errors().first() {
                return Err(BlobError::Backend(format!(
                    "S3 kept {} of the user's blocks: {} {}",
                    out.errors().len(),
                    e.key().unwrap_or_default(),
                    e.message().unwrap_or_default()
                )));
            }
            removed += n;
        }
    }

    async fn delete(&self, user: &UserId, hash: &str) -> BlobResult<()> {
        check(hash)?;
        count("s3:DeleteObject");
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(Self::key(user, hash))
            .send()
            .await
            .map_err(be)?;
        Ok(())
    }

    async fn list(&self, user: &UserId) -> BlobResult<Vec<StoredBlock>> {
        let prefix = Self::key(user, "");
        let mut out = Vec::new();
        let mut token = None;
        loop {
            count("s3:ListObjectsV2");
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .max_keys(1000)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(be)?;
            for object in page.contents() {
                let Some(hash) = object.key().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                if !is_block_hash(hash) {
                    continue;
                }
                let stored_at_ns = object.last_modified().map_or(0, |t| {
                    t.secs() * 1_000_000_000 + i64::from(t.subsec_nanos())
                });
                out.push(StoredBlock {
                    hash: hash.to_string(),
                    stored_at_ns,
                });
            }
            match page.next_continuation_token {
                Some(next) if page.is_truncated == Some(true) => token = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }
}
