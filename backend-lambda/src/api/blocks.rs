//! Block routes: which blocks are missing (with upload URLs), download URLs, and — when blocks
//! live in a local folder — the signed URLs themselves.
//!
//! Block bytes never pass through the JSON API: clients PUT and GET them at short-lived URLs
//! scoped to one block of one user (S3 presigned URLs in AWS mode, HMAC-signed `/blob/...`
//! URLs here). The blob routes take no bearer token: the signature is the authority, and it
//! names the user, the block and the operation. A small file's block may live in the
//! metadata store instead (`MetaStore::keeps_small_blocks`): it counts as stored, and its
//! URL serves it from there — a local folder's URL falls back to the store, and in AWS mode
//! (blocks in S3, which does not hold these) `blocks/urls` answers a kept block with a URL
//! of this router signed with the table's key (`Service::kept_block_urls`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jewel_wire::{
    is_block_hash, BlockHashes, BlockUrl, BlockUrls, ErrorCode, MissingBlocks, BLOCK_SIZE,
    MAX_HASHES_PER_REQUEST,
};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiPath, ApiQuery, AppError, AppResult};
use crate::blobs::url_key::{BlobOp, SignedUrl};
use crate::service::Service;

type S = State<Arc<Service>>;

fn valid_hashes(req: &BlockHashes) -> AppResult<()> {
    if req.hashes.len() > MAX_HASHES_PER_REQUEST {
        return Err(AppError::bad_request(format!(
            "at most {MAX_HASHES_PER_REQUEST} hashes per request"
        )));
    }
    if let Some(bad) = req.hashes.iter().find(|h| !is_block_hash(h)) {
        return Err(AppError::bad_request(format!("not a block hash: {bad:?}")));
    }
    Ok(())
}

pub async fn missing(
    State(svc): S,
    caller: Caller,
    super::error::JsonBody(req): super::error::JsonBody<BlockHashes>,
) -> AppResult<Json<MissingBlocks>> {
    valid_hashes(&req)?;
    let mut hashes = req.hashes;
    hashes.sort();
    hashes.dedup();
    let mut missing = Vec::new();
    for hash in super::tree::missing_blocks(&svc, &caller.user.id, &hashes).await? {
        let url = svc.blobs.upload_url(&caller.user.id, &hash).await?;
        missing.push(BlockUrl { hash, url });
    }
    Ok(Json(MissingBlocks { missing }))
}

pub async fn urls(
    State(svc): S,
    caller: Caller,
    super::error::JsonBody(req): super::error::JsonBody<BlockHashes>,
) -> AppResult<Json<BlockUrls>> {
    valid_hashes(&req)?;
    let user = &caller.user.id;
    // Blocks the metadata store keeps, which only this router serves (AWS mode).
    let (kept, key) = match (&svc.local_blobs, &svc.kept_block_urls) {
        (None, Some(key)) if svc.meta.keeps_small_blocks() => {
            let held = svc.meta.small_blocks_held(user, &req.hashes).await?;
            (held.into_iter().collect(), Some(key))
        }
        _ => (std::collections::HashSet::new(), None),
    };
    let mut urls = Vec::with_capacity(req.hashes.len());
    for hash in req.hashes {
        let url = match key {
            Some(key) if kept.contains(&hash) => key.sign(BlobOp::Get, user, &hash),
            _ => svc.blobs.download_url(user, &hash).await?,
        };
        urls.push(BlockUrl { hash, url });
    }
    Ok(Json(BlockUrls { urls }))
}

#[derive(Deserialize)]
pub struct SignatureQuery {
    exp: u64,
    sig: String,
}

fn checked(
    svc: &Service,
    op: BlobOp,
    user: &str,
    hash: &str,
    q: &SignatureQuery,
) -> AppResult<Arc<crate::blobs::local::LocalBlobStore>> {
    let local = svc.local_blobs.clone().ok_or_else(AppError::not_found)?;
    if !is_block_hash(hash) {
        return Err(AppError::bad_request("not a block hash"));
    }
    let url = SignedUrl {
        op,
        user,
        hash,
        exp: q.exp,
        sig: &q.sig,
    };
    local.verify(&url).map_err(AppError::from)?;
    Ok(local)
}

/// Stores one block at a signed URL. Everything that costs nothing is checked before a byte
/// of the body is read: the signature and expiry, the announced `Content-Length` (at most
/// [`BLOCK_SIZE`]), and that the URL's user still exists — so a stranger's connection, or a
/// URL issued to a user removed since, costs no memory. A body without a length (chunked) is
/// read only up to [`BLOCK_SIZE`]. The user is checked once more after the write: a removal
/// that ran meanwhile (and swept the user's folder before this block landed) wins, and the
/// block goes.
pub async fn blob_put(
    State(svc): S,
    ApiPath((user, hash)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<SignatureQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<StatusCode> {
    let local = checked(&svc, BlobOp::Put, &user, &hash, &q)?;
    let too_large = || {
        AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("a block is at most {BLOCK_SIZE} bytes"),
        )
    };
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| AppError::bad_request("Content-Length is not a number"))?;
        if length > BLOCK_SIZE {
            return Err(too_large());
        }
    }
    if !svc.meta.user_exists(&user).await? {
        return Err(crate::blobs::BlobError::BadSignature.into());
    }
    let body = axum::body::to_bytes(body, BLOCK_SIZE as usize)
        .await
        .map_err(|_| too_large())?;
    crate::blobs::BlobStore::put(local.as_ref(), &user, &hash, body).await?;
    if !svc.meta.user_exists(&user).await? {
        crate::blobs::BlobStore::delete(local.as_ref(), &user, &hash).await?;
        return Err(crate::blobs::BlobError::BadSignature.into());
    }
    Ok(StatusCode::OK)
}

/// A kept small block's URL in AWS mode (see the module's docs): the key of
/// `Service::kept_block_urls`, GET only.
fn checked_kept(svc: &Service, user: &str, hash: &str, q: &SignatureQuery) -> AppResult<()> {
    let key = svc
        .kept_block_urls
        .as_ref()
        .ok_or_else(AppError::not_found)?;
    if !is_block_hash(hash) {
        return Err(AppError::bad_request("not a block hash"));
    }
    key.verify(&SignedUrl {
        op: BlobOp::Get,
        user,
        hash,
        exp: q.exp,
        sig: &q.sig,
    })
    .map_err(AppError::from)
}

pub async fn blob_get(
    State(svc): S,
    ApiPath((user, hash)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<SignatureQuery>,
) -> AppResult<Response> {
    let kept = || async {
        AppResult::Ok(
            svc.meta
                .small_block(&user, &hash)
                .await?
                .map(bytes::Bytes::from)
                .ok_or(crate::blobs::BlobError::NotFound)?,
        )
    };
    let bytes = if svc.local_blobs.is_some() {
        let local = checked(&svc, BlobOp::Get, &user, &hash, &q)?;
        match crate::blobs::BlobStore::get(local.as_ref(), &user, &hash).await {
            Err(crate::blobs::BlobError::NotFound) => kept().await?,
            other => other?,
        }
    } else {
        checked_kept(&svc, &user, &hash, &q)?;
        kept().await?
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // A block is a user's file content: never kept by a browser past the moment
            // (a shared computer's next user, after "Sign out", must find nothing).
            (header::CACHE_CONTROL, "private, no-store"),
            // Blocks share the portal's origin: never let a block render as a page.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_DISPOSITION, "attachment"),
            (header::CONTENT_SECURITY_POLICY, "sandbox"),
        ],
        bytes,
    )
        .into_response())
}
