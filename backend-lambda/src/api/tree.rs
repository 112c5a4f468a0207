//! The tree routes: read nodes and listings, create, commit content, move, set attributes,
//! delete to the trash and restore.
//!
//! Input is checked here, before any store is touched: names (`check_name`), modes, symlink
//! targets, content shapes (at most `MAX_FILE_SIZE` bytes in `MAX_FILE_BLOCKS` blocks, block
//! count matches size, hashes well-formed) and that every named block is stored (in the block
//! store, or kept by the metadata store: a small file's inline block goes into the store's
//! own transaction when the store keeps small blocks, see `MetaStore::keeps_small_blocks`,
//! and is then neither stored nor checked beforehand; a small content that names a block
//! only the store keeps, without its bytes, is given them, so the store writes that block
//! again with the change). Listings,
//! the trash and a file's versions are answered a bounded page at a time (see `store`). The store then applies the change atomically and returns the events, which
//! are published on the bus after the commit (the log is the truth; a lost notification is
//! caught up from the log by the client).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use jewel_wire::{
    block_count, check_name, is_block_hash, ApiError, ChangeEvent, CommitContent, Content,
    CreateNode, ErrorCode, ListPage, Me, MoveMode, MoveNode, MoveResult, NewKind, Node, NodeId,
    SetAttr, TargetExpect, TrashPage, Version, VersionList, MAX_FILE_BLOCKS, MAX_FILE_SIZE,
    MAX_INLINE_BYTES, MAX_SYMLINK_BYTES, ROOT_ID,
};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiPath, ApiQuery, AppError, AppResult, JsonBody};
use crate::service::Service;
use crate::store::{is_new_folder, NewNode, StoreError, TrashCursor, UserId};

type S = State<Arc<Service>>;

pub async fn me(State(svc): S, caller: Caller) -> AppResult<Json<Me>> {
    let latest_seq = svc.meta.latest_seq(&caller.user.id).await?;
    Ok(Json(Me {
        user: caller.user.name,
        root: ROOT_ID,
        latest_seq,
        inline_content: true,
    }))
}

pub async fn get_node(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
) -> AppResult<Json<Node>> {
    Ok(Json(svc.meta.get_node(&caller.user.id, id).await?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

pub async fn list_children(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> AppResult<Json<ListPage>> {
    let dir = svc.meta.get_node(&caller.user.id, id).await?;
    if !dir.is_dir() {
        return Err(AppError::new(ErrorCode::NotADirectory, "not a directory"));
    }
    let limit = page_limit(&svc, q.limit);
    if let (Some(device), None) = (caller.device, &q.after) {
        // Before the listing is read: every change after it reaches the device.
        if svc.meta.watch_folder(&caller.user.id, device, id).await? {
            svc.bus.watch_added(&caller.user.id, device);
        }
    }
    let page = svc
        .meta
        .list_children(&caller.user.id, id, q.after.as_deref(), limit)
        .await?;
    let next = page
        .more
        .then(|| page.entries.last().map(|n| n.name.clone()))
        .flatten();
    Ok(Json(ListPage {
        entries: page.entries,
        next,
    }))
}

pub async fn child(
    State(svc): S,
    caller: Caller,
    ApiPath((parent, name)): ApiPath<(NodeId, String)>,
) -> AppResult<Json<Node>> {
    valid_name(&name)?;
    Ok(Json(svc.meta.child(&caller.user.id, parent, &name).await?))
}

#[derive(Deserialize)]
pub struct LookupQuery {
    path: String,
}

pub async fn lookup(
    State(svc): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<LookupQuery>,
) -> AppResult<Json<Node>> {
    let mut node = svc.meta.get_node(&caller.user.id, ROOT_ID).await?;
    for part in q.path.split('/').filter(|p| !p.is_empty()) {
        valid_name(part)?;
        if !node.is_dir() {
            return Err(AppError::new(
                ErrorCode::NotADirectory,
                "a path component is not a directory",
            ));
        }
        node = svc.meta.child(&caller.user.id, node.id, part).await?;
    }
    Ok(Json(node))
}

pub async fn create(
    State(svc): S,
    caller: Caller,
    JsonBody(req): JsonBody<CreateNode>,
) -> AppResult<(StatusCode, Json<Node>)> {
    // Held from the block check to the commit (see `Service::block_guard`).
    let blocks_checked = svc.block_guard.read().await;
    let origin = caller.origin();
    let new = new_node(&svc, &caller, req, origin, InlineBlock::ToStore).await?;
    let (node, mut event) = svc.meta.create(&caller.user.id, &new, origin).await?;
    drop(blocks_checked);
    if let NewKind::File { content } = new.kind {
        with_inline(&mut event, content);
    }
    publish(&svc, &caller.user.id, &[event]).await;
    Ok((StatusCode::CREATED, Json(node)))
}

/// Checks a create's input (its name, content, mode, symlink target) and makes the node to
/// store. The caller holds `block_guard` (the content's blocks are checked here).
pub(super) async fn new_node(
    svc: &Service,
    caller: &Caller,
    mut req: CreateNode,
    origin: crate::store::Origin,
    inline_block: InlineBlock,
) -> AppResult<NewNode> {
    valid_name(&req.name)?;
    let default_mode = match &mut req.kind {
        NewKind::File { content } => {
            valid_content(svc, &caller.user.id, content, inline_block).await?;
            0o644
        }
        NewKind::Dir => 0o755,
        NewKind::Symlink { target } => {
            if target.is_empty() || target.len() > MAX_SYMLINK_BYTES || target.contains('\0') {
                return Err(AppError::bad_request(format!(
                    "a symlink target must be 1 to {MAX_SYMLINK_BYTES} bytes without NUL"
                )));
            }
            0o777
        }
    };
    let mode = valid_mode(req.mode)?.unwrap_or(default_mode);
    Ok(NewNode {
        parent: req.parent,
        name: req.name,
        kind: req.kind,
        mode,
        mtime_ns: req.mtime_ns.unwrap_or(origin.now_ns),
    })
}

pub async fn commit_content(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    JsonBody(mut req): JsonBody<CommitContent>,
) -> AppResult<Json<Node>> {
    let blocks_checked = svc.block_guard.read().await;
    valid_content(
        &svc,
        &caller.user.id,
        &mut req.content,
        InlineBlock::ToStore,
    )
    .await?;
    let (node, mut event) = svc
        .meta
        .commit_content(
            &caller.user.id,
            id,
            req.base_version,
            &req.content,
            req.mtime_ns,
            caller.origin(),
        )
        .await?;
    drop(blocks_checked);
    with_inline(&mut event, req.content);
    publish(&svc, &caller.user.id, &[event]).await;
    Ok(Json(node))
}

pub async fn move_node(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    JsonBody(req): JsonBody<MoveNode>,
) -> AppResult<Json<MoveResult>> {
    valid_name(&req.new_name)?;
    if req.mode == MoveMode::Replace {
        if let Some(expect) = req.expect_target {
            expect_target(&svc, &caller.user.id, id, &req, expect).await?;
        }
    }
    let moved = svc
        .meta
        .move_node(
            &caller.user.id,
            id,
            req.base_version,
            req.new_parent,
            &req.new_name,
            req.mode,
            caller.origin(),
        )
        .await?;
    publish(&svc, &caller.user.id, &moved.events).await;
    Ok(Json(MoveResult {
        node: moved.node,
        other: moved.other,
    }))
}

/// Refuses a replacing move (409 `exists`, with what holds the name) when the target name
/// holds something other than what the mover saw: another device's edit or new file is then
/// kept (by the client, as a conflict copy) instead of going to the trash. Checked just
/// before the move; a change landing between the two is replaced as before (a window of one
/// store round trip, against the client's whole upload delay before).
async fn expect_target(
    svc: &Service,
    user: &UserId,
    moving: NodeId,
    req: &MoveNode,
    expect: TargetExpect,
) -> AppResult<()> {
    let found = match svc.meta.child(user, req.new_parent, &req.new_name).await {
        Ok(found) => found,
        Err(StoreError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let as_seen = found.id == moving
        || matches!(expect, TargetExpect::Node { id, version } if id == found.id && version == found.version);
    if as_seen {
        return Ok(());
    }
    Err(AppError(
        ApiError::new(
            ErrorCode::Exists,
            format!(
                "{:?} changed since this move was made: it now holds node {} at version {}",
                req.new_name, found.id, found.version
            ),
        )
        .with_current(found),
    ))
}

pub async fn set_attr(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    JsonBody(req): JsonBody<SetAttr>,
) -> AppResult<Json<Node>> {
    valid_mode(req.mode)?;
    let (node, event) = svc
        .meta
        .set_attr(&caller.user.id, id, &req, caller.origin())
        .await?;
    publish(&svc, &caller.user.id, &[event]).await;
    Ok(Json(node))
}

#[derive(Deserialize)]
pub struct RemoveQuery {
    pub base_version: Option<u64>,
    #[serde(default)]
    pub recursive: bool,
}

pub async fn remove(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> AppResult<Json<Node>> {
    let (node, event) = svc
        .meta
        .remove(
            &caller.user.id,
            id,
            q.base_version,
            q.recursive,
            caller.origin(),
        )
        .await?;
    publish(&svc, &caller.user.id, &[event]).await;
    Ok(Json(node))
}

#[derive(Deserialize)]
pub struct TrashQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// The trash, newest first, one bounded page at a time (`next` goes on).
pub async fn list_trash(
    State(svc): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<TrashQuery>,
) -> AppResult<Json<TrashPage>> {
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(text) => Some(TrashCursor::parse(text).ok_or_else(|| {
            AppError::bad_request("`after` must be the `next` of an earlier trash page")
        })?),
    };
    let page = svc
        .meta
        .list_trash(&caller.user.id, after, page_limit(&svc, q.limit))
        .await?;
    let next = page
        .more
        .then(|| page.entries.last().map(|e| TrashCursor::of(e).to_string()))
        .flatten();
    Ok(Json(TrashPage {
        entries: page.entries,
        next,
    }))
}

/// The page size asked for, within 1 and the service's largest.
fn page_limit(svc: &Service, asked: Option<u32>) -> u32 {
    asked
        .unwrap_or(svc.limits.max_page)
        .clamp(1, svc.limits.max_page)
}

pub async fn restore(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
) -> AppResult<Json<Node>> {
    let (node, event) = svc
        .meta
        .restore(&caller.user.id, id, caller.origin())
        .await?;
    publish(&svc, &caller.user.id, &[event]).await;
    Ok(Json(node))
}

#[derive(Deserialize)]
pub struct VersionsQuery {
    before: Option<Version>,
    limit: Option<u32>,
}

/// A file's earlier contents, newest first, one bounded page at a time (`next` goes on).
pub async fn list_versions(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<NodeId>,
    ApiQuery(q): ApiQuery<VersionsQuery>,
) -> AppResult<Json<VersionList>> {
    let page = svc
        .meta
        .list_versions(&caller.user.id, id, q.before, page_limit(&svc, q.limit))
        .await?;
    let next = page
        .more
        .then(|| page.entries.last().map(|v| v.version))
        .flatten();
    Ok(Json(VersionList {
        versions: page.entries,
        next,
    }))
}

/// Commits an earlier content again on top of the current one (whose content becomes a
/// version in turn, so a restore can be undone the same way). Its blocks are kept while the
/// version is, so they are there; the block check still runs, as for any commit.
pub async fn restore_version(
    State(svc): S,
    caller: Caller,
    ApiPath((id, version)): ApiPath<(NodeId, Version)>,
) -> AppResult<Json<Node>> {
    let user = &caller.user.id;
    let mut old = svc
        .meta
        .list_versions(user, id, version.checked_add(1), 1)
        .await?
        .entries
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| {
            AppError::new(
                ErrorCode::NotFound,
                format!("file {id} has no kept version {version}"),
            )
        })?;
    let current = svc.meta.get_node(user, id).await?;
    let blocks_checked = svc.block_guard.read().await;
    valid_content(&svc, user, &mut old.content, InlineBlock::ToStore).await?;
    let (node, mut event) = svc
        .meta
        .commit_content(
            user,
            id,
            current.version,
            &old.content,
            Some(old.mtime_ns),
            caller.origin(),
        )
        .await?;
    drop(blocks_checked);
    with_inline(&mut event, old.content);
    publish(&svc, user, &[event]).await;
    Ok(Json(node))
}

/// Tells the user's devices; a failure is logged, never returned (the change is committed and
/// devices catch up from the log).
/// The notice of a change that stored inline content carries the bytes (a store may have
/// logged the event without them: the other devices then fetch the block as usual).
pub(super) fn with_inline(event: &mut ChangeEvent, content: Content) {
    if event.inline.is_none() {
        event.inline = content.inline;
    }
}

pub async fn publish(svc: &Service, user: &UserId, events: &[ChangeEvent]) {
    if events.is_empty() {
        return;
    }
    // A device that made a folder watches it (see `MetaStore::watch_folder`): its long-poll
    // waits on it from now on.
    for event in events.iter().filter(|e| is_new_folder(e)) {
        if let Some(device) = event.device {
            svc.bus.watch_added(user, device);
        }
    }
    let devices = if svc.bus.wants_device_list() {
        match svc.meta.devices(user).await {
            Ok(devices) => devices.into_iter().map(|d| d.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list devices to notify");
                return;
            }
        }
    } else {
        Vec::new()
    };
    if let Err(e) = svc.bus.publish(user, &devices, events).await {
        tracing::warn!(error = %e, "could not notify devices; they will catch up from the log");
    }
}

pub(super) fn valid_name(name: &str) -> AppResult<()> {
    check_name(name).map_err(|e| AppError::new(ErrorCode::InvalidName, e.to_string()))
}

pub(super) fn valid_mode(mode: Option<u32>) -> AppResult<Option<u32>> {
    match mode {
        Some(m) if m > 0o7777 => Err(AppError::bad_request(format!(
            "mode {m:o} has bits beyond 0o7777"
        ))),
        other => Ok(other),
    }
}

/// Content must be well-formed and every block must already be stored (blocks first, then
/// the commit).
/// Where a change's inline block is (see [`jewel_wire::Content::inline`]): still to be stored
/// (a change sent on its own route), or stored already (a batch stores all of its changes'
/// inline blocks together first).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum InlineBlock {
    ToStore,
    Stored,
}

pub(super) async fn valid_content(
    svc: &Service,
    user: &UserId,
    content: &mut Content,
    inline_block: InlineBlock,
) -> AppResult<()> {
    check_shape(content)?;
    if content.inline.is_some() && svc.meta.keeps_small_blocks() {
        // The store writes the block in the change that names it: nothing to store or check
        // before (the content names no other block).
        return Ok(());
    }
    if let (Some(inline), InlineBlock::ToStore) = (&content.inline, inline_block) {
        store_inline(svc, user, inline).await?;
    }
    match check_stored(svc, user, content).await {
        Err(AppError(e)) if e.code == ErrorCode::MissingBlocks && svc.meta.keeps_small_blocks() => {
            if carry_kept_block(svc, user, content).await? {
                Ok(())
            } else {
                Err(AppError(e))
            }
        }
        checked => checked,
    }
}

/// Gives a small content whose block the block store lacks but the metadata store keeps (a
/// version restored in AWS mode, where `missing_blocks` does not ask the table) that block's
/// bytes, so the store writes the block again with the change that names it; true when it
/// did. That rewrite is what keeps the block from a collection running meanwhile on another
/// process (see `aws/dynamo/small_blocks.rs`).
async fn carry_kept_block(svc: &Service, user: &UserId, content: &mut Content) -> AppResult<bool> {
    let [hash] = content.blocks.as_slice() else {
        return Ok(false);
    };
    if content.inline.is_some() || content.size > MAX_INLINE_BYTES as u64 {
        return Ok(false);
    }
    match svc.meta.small_block(user, hash).await? {
        Some(bytes) if bytes.len() as u64 == content.size => {
            content.inline = Some(jewel_wire::InlineBytes(bytes));
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What content can be checked without a store: its size and block count, its hashes, and
/// that inline bytes (see [`jewel_wire::Content::inline`]) are exactly the one block named.
pub(super) fn check_shape(content: &Content) -> AppResult<()> {
    if content.size > MAX_FILE_SIZE || content.blocks.len() > MAX_FILE_BLOCKS {
        return Err(AppError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "a file is at most {MAX_FILE_SIZE} bytes ({MAX_FILE_BLOCKS} blocks); \
                 this one has {} bytes in {} blocks",
                content.size,
                content.blocks.len()
            ),
        ));
    }
    if block_count(content.size) != content.blocks.len() as u64 {
        return Err(AppError::bad_request(format!(
            "{} bytes need {} blocks, the request names {}",
            content.size,
            block_count(content.size),
            content.blocks.len()
        )));
    }
    if let Some(bad) = content.blocks.iter().find(|h| !is_block_hash(h)) {
        return Err(AppError::bad_request(format!("not a block hash: {bad:?}")));
    }
    if let Some(inline) = &content.inline {
        let bytes = &inline.0;
        if bytes.is_empty() || bytes.len() > MAX_INLINE_BYTES || bytes.len() as u64 != content.size
        {
            return Err(AppError::bad_request(format!(
                "inline content must be 1 to {MAX_INLINE_BYTES} bytes, the file's size ({}); it has {}",
                content.size,
                bytes.len()
            )));
        }
        if content.blocks != [crate::blobs::sha256_hex(bytes)] {
            return Err(AppError::bad_request(
                "inline content must be the one block the content names (its SHA-256)",
            ));
        }
    }
    Ok(())
}

/// Stores a small file's inline block (checked by [`check_shape`]). Storing a block is
/// idempotent (content-addressed), so a commit sent twice is harmless.
pub(super) async fn store_inline(
    svc: &Service,
    user: &UserId,
    inline: &jewel_wire::InlineBytes,
) -> AppResult<()> {
    let hash = crate::blobs::sha256_hex(&inline.0);
    svc.blobs
        .put(user, &hash, bytes::Bytes::copy_from_slice(&inline.0))
        .await?;
    Ok(())
}

/// Every block the content names is stored. Inline blocks are checked too, after they are
/// stored: the check is what keeps a block that block collection is about to delete from
/// being named (see `aws/gc_guard.rs`).
async fn check_stored(svc: &Service, user: &UserId, content: &Content) -> AppResult<()> {
    let mut unique = content.blocks.clone();
    unique.sort();
    unique.dedup();
    let missing = missing_blocks(svc, user, &unique).await?;
    if !missing.is_empty() {
        let mut err = jewel_wire::ApiError::new(
            ErrorCode::MissingBlocks,
            format!(
                "{} block(s) must be uploaded before this commit",
                missing.len()
            ),
        );
        err.missing = missing;
        return Err(AppError(err));
    }
    Ok(())
}

/// The blocks among `hashes` (in their order) that neither the block store nor the metadata
/// store (small blocks it keeps with their nodes, see `MetaStore::keeps_small_blocks`) holds.
///
/// Only a local block folder is paired with a store asked here; in AWS mode the table is not
/// asked (a kept block counts as missing): `blocks/missing` comes from uploads that did not
/// go inline (big files, the portal), whose blocks S3 holds or is about to, and a table read
/// on every upload would cost more than the odd small block sent to S3 again. A commit whose
/// small block is found missing here is given its bytes if the table keeps it
/// (`carry_kept_block`).
pub(super) async fn missing_blocks(
    svc: &Service,
    user: &UserId,
    hashes: &[String],
) -> AppResult<Vec<String>> {
    let mut missing = svc.blobs.missing(user, hashes).await?;
    if !missing.is_empty() && svc.meta.keeps_small_blocks() && svc.local_blobs.is_some() {
        let held = svc.meta.small_blocks_held(user, &missing).await?;
        missing.retain(|hash| !held.contains(hash));
    }
    Ok(missing)
}
