//! `POST /batch`: many changes in one round trip. On a link of tens of milliseconds a
//! change sent on its own costs a round trip however little the service does for it; a
//! client with a thousand small changes ready sends them in a few batches instead.
//!
//! Each change is checked as its own route checks it and applied by the store as its own
//! route's store call applies it (same rules, same change event), in order; the first that
//! fails ends the batch, so a batch means exactly what its changes sent one by one, stopping
//! at the first error, would mean. The store applies the lot in one transaction where it
//! can (`MetaStore::apply_batch`: SQLite, a savepoint per change), so a batch also saves
//! commits and trips to the writer, not only round trips; the events go out together after
//! it. A move in a batch only ever takes a free name (`no_replace`): a replacing rename's
//! answer names the node it replaced, which a batch's answer has no room for, so the client
//! sends those alone. The small files' inline blocks go into that same transaction when the
//! store keeps small blocks (SQLite); otherwise they are stored in the block store together
//! first (each is flushed before a commit names it; sixteen flushes at once cost about one).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use futures::StreamExt;
use jewel_wire::{
    Batch, BatchAnswer, Change, CommitContent, Content, CreateNode, ErrorCode, MoveMode, NewKind,
    MAX_BATCH_CHANGES,
};

use super::auth::Caller;
use super::error::{AppError, AppResult, JsonBody};
use super::tree::{self, InlineBlock};
use crate::service::Service;
use crate::store::{BatchOp, NewNode};

pub async fn apply(
    State(svc): State<Arc<Service>>,
    caller: Caller,
    JsonBody(batch): JsonBody<Batch>,
) -> AppResult<Json<BatchAnswer>> {
    if batch.changes.len() > MAX_BATCH_CHANGES {
        return Err(AppError::new(
            ErrorCode::BadRequest,
            format!(
                "a batch carries at most {MAX_BATCH_CHANGES} changes, not {}",
                batch.changes.len()
            ),
        ));
    }
    let user = &caller.user.id;
    let origin = caller.origin();
    // Held from the block checks to the commit (see `Service::block_guard`).
    let blocks_checked = svc.block_guard.read().await;
    store_inline_blocks(&svc, &caller, &batch.changes).await;
    // Each change checked as its route checks it; the first bad one ends the batch there.
    let mut ops = Vec::with_capacity(batch.changes.len());
    let mut refused = None;
    for change in batch.changes {
        match checked(&svc, &caller, change, origin).await {
            Ok(op) => ops.push(op),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let contents: Vec<Option<Content>> = ops.iter().map(content_of).collect();
    let done = svc.meta.apply_batch(user, ops, origin).await?;
    drop(blocks_checked);
    let mut answer = BatchAnswer::default();
    let mut events = Vec::with_capacity(done.applied.len());
    for ((node, mut event), content) in done.applied.into_iter().zip(contents) {
        if let Some(content) = content {
            tree::with_inline(&mut event, content);
        }
        answer.done.push(node);
        events.push(event);
    }
    answer.failed = match (done.failed, refused) {
        (Some(e), _) => Some(AppError::from(e).0),
        (None, refused) => refused.map(|AppError(e)| e),
    };
    tree::publish(&svc, user, &events).await;
    Ok(Json(answer))
}

/// A change's input checked as its own route checks it, made ready for the store.
async fn checked(
    svc: &Service,
    caller: &Caller,
    change: Change,
    origin: crate::store::Origin,
) -> AppResult<BatchOp> {
    Ok(match change {
        Change::Create(req) => {
            BatchOp::Create(tree::new_node(svc, caller, req, origin, InlineBlock::Stored).await?)
        }
        Change::Commit { id, mut commit } => {
            tree::valid_content(
                svc,
                &caller.user.id,
                &mut commit.content,
                InlineBlock::Stored,
            )
            .await?;
            BatchOp::Commit {
                id,
                base: commit.base_version,
                content: commit.content,
                mtime_ns: commit.mtime_ns,
            }
        }
        Change::Remove { id, base_version } => BatchOp::Remove {
            id,
            base: base_version,
        },
        Change::Move { id, mv } => {
            tree::valid_name(&mv.new_name)?;
            if mv.mode != MoveMode::NoReplace {
                return Err(AppError::new(
                    ErrorCode::BadRequest,
                    "a move in a batch never replaces: its mode must be no_replace",
                ));
            }
            BatchOp::Move {
                id,
                base: mv.base_version,
                new_parent: mv.new_parent,
                new_name: mv.new_name,
            }
        }
        Change::SetAttr { id, attr } => {
            tree::valid_mode(attr.mode)?;
            BatchOp::SetAttr { id, attr }
        }
    })
}

/// The content a change stores, if any (its event may carry it inline).
fn content_of(op: &BatchOp) -> Option<Content> {
    match op {
        BatchOp::Create(NewNode {
            kind: NewKind::File { content },
            ..
        })
        | BatchOp::Commit { content, .. } => Some(content.clone()),
        _ => None,
    }
}

/// Stores the inline blocks of the batch's small files all at once, before the changes are
/// applied one by one: each block is written and flushed to disk (or to S3) before a commit
/// may name it, and sixteen of those waits at once cost about what one does. Each change
/// still checks its own content in order (a bad one fails there, at its place in the batch);
/// a block stored here for a change the batch never reaches is garbage the collector takes.
async fn store_inline_blocks(svc: &Service, caller: &Caller, changes: &[Change]) {
    if svc.meta.keeps_small_blocks() {
        // The store writes each with the change that names it, in the batch's transaction.
        return;
    }
    let inlines = changes.iter().filter_map(|change| match change {
        Change::Create(CreateNode {
            kind: NewKind::File { content },
            ..
        })
        | Change::Commit {
            commit: CommitContent { content, .. },
            ..
        } => content
            .inline
            .as_ref()
            .filter(|_| tree::check_shape(content).is_ok()),
        _ => None,
    });
    futures::stream::iter(inlines)
        .for_each_concurrent(16, |inline| async move {
            let _ = tree::store_inline(svc, &caller.user.id, inline).await;
        })
        .await;
}
