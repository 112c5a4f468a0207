//! The routes that keep devices in step: register a device, read the change feed, and
//! long-poll for a device's notifications.
//!
//! The long-poll answers as soon as the log holds events after the caller's cursor, so a
//! change reaches a waiting device in one round trip. It asks the bus to wait only when the
//! log has nothing newer; the bus is checked after the store, and `wait_after` returns at
//! once when the bus already knows a newer sequence number, so an event committed between the
//! two reads is never missed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use jewel_wire::{check_name, ChangePage, Device, DeviceId, ErrorCode, RegisterDevice, Seq};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiPath, ApiQuery, AppError, AppResult, JsonBody};
use crate::service::Service;

type S = State<Arc<Service>>;

pub async fn register_device(
    State(svc): S,
    caller: Caller,
    JsonBody(req): JsonBody<RegisterDevice>,
) -> AppResult<(StatusCode, Json<Device>)> {
    check_name(&req.name)
        .map_err(|e| AppError::new(ErrorCode::InvalidName, format!("device name: {e}")))?;
    let id = svc.meta.register_device(&caller.user.id, &req.name).await?;
    let listen = svc.bus.register_device(&caller.user.id, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(Device {
            id,
            name: req.name,
            listen,
        }),
    ))
}

/// Renews how an existing device listens (in AWS mode: fresh short-lived credentials for the
/// same queue), without creating a new device.
pub async fn renew_listen(
    State(svc): S,
    caller: Caller,
    ApiPath(id): ApiPath<DeviceId>,
) -> AppResult<Json<Device>> {
    let name = svc.meta.device(&caller.user.id, id).await?;
    let listen = svc.bus.register_device(&caller.user.id, id).await?;
    Ok(Json(Device { id, name, listen }))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    #[serde(default)]
    since: Seq,
    limit: Option<u32>,
}

pub async fn changes(
    State(svc): S,
    caller: Caller,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> AppResult<Json<ChangePage>> {
    let limit = q
        .limit
        .unwrap_or(svc.limits.max_page)
        .clamp(1, svc.limits.max_page);
    Ok(Json(
        svc.meta
            .changes_since(&caller.user.id, q.since, limit)
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    since: Seq,
    timeout_ms: Option<u64>,
}

pub async fn poll(
    State(svc): S,
    caller: Caller,
    ApiPath(device): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> AppResult<Json<ChangePage>> {
    svc.meta.device(&caller.user.id, device).await?;
    let user = &caller.user.id;
    let limit = svc.limits.max_page;
    let page = svc.meta.changes_since(user, q.since, limit).await?;
    if !page.events.is_empty() {
        return Ok(Json(page));
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(25_000)).min(svc.limits.max_poll);
    let newest = svc.bus.wait_after(user, q.since, timeout).await?;
    if newest <= q.since {
        return Ok(Json(page));
    }
    Ok(Json(svc.meta.changes_since(user, q.since, limit).await?))
}
