//! `POST /batch`: many changes in one round trip. On a link of tens of milliseconds a
//! change sent on its own costs a round trip however little the service does for it; a
//! client with a thousand small changes ready sends them in a few batches instead.
//!
//! Each change goes through the very handler of its own route (same checks, same store
//! call, same change event), in order; the first that fails ends the batch, so a batch
//! means exactly what its changes sent one by one, stopping at the first error, would mean.
//! Each change is its own store transaction: what a batch saves is round trips, not
//! commits.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use jewel_wire::{Batch, BatchAnswer, Change, ErrorCode, MAX_BATCH_CHANGES};

use super::auth::Caller;
use super::error::{ApiPath, ApiQuery, AppError, AppResult, JsonBody};
use super::tree::{self, RemoveQuery};
use crate::service::Service;

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
    let mut answer = BatchAnswer::default();
    for change in batch.changes {
        let state = State(svc.clone());
        let caller = caller.clone();
        let applied = match change {
            Change::Create(req) => tree::create(state, caller, JsonBody(req))
                .await
                .map(|(_, Json(node))| node),
            Change::Commit { id, commit } => {
                tree::commit_content(state, caller, ApiPath(id), JsonBody(commit))
                    .await
                    .map(|Json(node)| node)
            }
            Change::Remove { id, base_version } => {
                let query = RemoveQuery {
                    base_version: Some(base_version),
                    recursive: false,
                };
                tree::remove(state, caller, ApiPath(id), ApiQuery(query))
                    .await
                    .map(|Json(node)| node)
            }
        };
        match applied {
            Ok(node) => answer.done.push(node),
            Err(AppError(e)) => {
                answer.failed = Some(e);
                break;
            }
        }
    }
    Ok(Json(answer))
}
