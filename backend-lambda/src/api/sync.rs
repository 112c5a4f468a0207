//! The routes that keep devices in step: register a device, read the change feed, and
//! long-poll for a device's notifications. A long-poll ends at once when its device is
//! unlinked in this process (401 for the device's own token).
//!
//! The long-poll answers as soon as the log holds events after the caller's cursor, so a
//! change reaches a waiting device in one round trip. It asks the bus to wait only when the
//! log has nothing newer; the bus is checked after the store, and `wait_after` returns at
//! once when the bus already knows a newer sequence number, so an event committed between the
//! two reads is never missed.
//!
//! Both read only what the device watches (the folders it has listed, see `jewel_wire`'s
//! "Who hears what"), unless it asks for `every_folder`: the poll reads the device's page, and waits on the bus for an event in
//! one of its folders; a wake that brings nothing for it (a bus may wake early) waits again
//! until the deadline. So a thousand devices of one user, each in its own folder, are not all
//! woken, and do not all read the log, for every change of every other.
//!
//! A poll that had to wait lingers [`POLL_LINGER`] after the bus wakes it before reading the
//! log, so a burst of changes goes out as one page rather than one answer (and one new poll)
//! per change: with many devices of one user all waiting, every commit woke every device,
//! and each answered with a single event (a thundering herd, once per change).
//!
//! A page that holds only the caller's own changes (its echoes: the client already applied
//! the answers to its own requests) is held back up to [`OWN_ECHO_DELAY`] for another
//! device's change to go with it. A writing client then gets about one answer a second for
//! its echoes instead of one per commit (each commit woke the writer's own poll as well as
//! the others': a third of the answers in the bench). The echoes still arrive, within that
//! delay: the client uses them to repair names it holds (`listener.rs`, `keep_listed`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use jewel_wire::{
    check_name, valid_request_id, ChangePage, Device, DeviceId, ErrorCode, RegisterDevice, Seq,
};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiPath, ApiQuery, AppError, AppResult, JsonBody};
use crate::bus::FolderWait;
use crate::service::Service;
use crate::store::UserId;

type S = State<Arc<Service>>;

pub async fn register_device(
    State(svc): S,
    caller: Caller,
    JsonBody(req): JsonBody<RegisterDevice>,
) -> AppResult<(StatusCode, Json<Device>)> {
    if let Some(id) = caller.token_device {
        // A linked machine is its device already: it learns which, and how it listens.
        let name = svc.meta.device(&caller.user.id, id).await?;
        let listen = svc.bus.register_device(&caller.user.id, id).await?;
        return Ok((StatusCode::OK, Json(Device { id, name, listen })));
    }
    check_name(&req.name)
        .map_err(|e| AppError::new(ErrorCode::InvalidName, format!("device name: {e}")))?;
    let max = svc.limits.max_devices;
    // With a request id, a retry of a registration whose answer was lost finds its device.
    let (id, created) = match req.request_id.as_deref() {
        Some(key) if !valid_request_id(key) => {
            return Err(AppError::bad_request(
                "request_id must be 16 to 64 letters, digits, '-' or '_'",
            ))
        }
        Some(key) => {
            svc.meta
                .register_device_keyed(&caller.user.id, &req.name, max, key)
                .await?
        }
        None => (
            svc.meta
                .register_device(&caller.user.id, &req.name, max)
                .await?,
            true,
        ),
    };
    let listen = svc.bus.register_device(&caller.user.id, id).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
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
    caller.may_use_device(id)?;
    let name = svc.meta.device(&caller.user.id, id).await?;
    let listen = svc.bus.register_device(&caller.user.id, id).await?;
    Ok(Json(Device { id, name, listen }))
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    #[serde(default)]
    since: Seq,
    limit: Option<u32>,
    /// Every change of the user, not only those in the caller's folders.
    #[serde(default)]
    every_folder: bool,
}

/// One device's page: the changes in the folders it watches, or, when it asks for every
/// folder, the whole log.
async fn device_page(
    svc: &Service,
    user: &UserId,
    device: DeviceId,
    every_folder: bool,
    since: Seq,
    limit: u32,
) -> AppResult<ChangePage> {
    Ok(if every_folder {
        svc.meta.changes_since(user, since, limit).await?
    } else {
        svc.meta
            .changes_for_device(user, device, since, limit)
            .await?
    })
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
    let user = &caller.user.id;
    // A device reads what it watches; anyone else (the portal, a script) the whole log.
    let page = match caller.device {
        Some(device) => device_page(&svc, user, device, q.every_folder, q.since, limit).await?,
        None => svc.meta.changes_since(user, q.since, limit).await?,
    };
    Ok(Json(page))
}

#[derive(Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    since: Seq,
    timeout_ms: Option<u64>,
    /// Every change of the user, not only those in the device's folders.
    #[serde(default)]
    every_folder: bool,
}

/// How long a woken long-poll waits for more changes before answering (see the module docs):
/// short against the one-second promise, long enough to gather a burst.
pub const POLL_LINGER: Duration = Duration::from_millis(10);

/// How long a page of only the caller's own changes waits for another device's (see the
/// module docs): the longest a client's own echo is held back.
pub const OWN_ECHO_DELAY: Duration = Duration::from_secs(1);

/// Whether `page` is worth answering at once: it holds a change of another device, or it
/// is cut short (the device must read on to reach the rest).
fn has_news(page: &ChangePage, device: DeviceId) -> bool {
    let covered = page
        .through
        .or_else(|| page.events.last().map(|e| e.seq))
        .unwrap_or(page.latest_seq);
    covered < page.latest_seq || page.events.iter().any(|e| e.device != Some(device))
}

pub async fn poll(
    State(svc): S,
    caller: Caller,
    ApiPath(device): ApiPath<DeviceId>,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> AppResult<Json<ChangePage>> {
    caller.may_use_device(device)?;
    // Registered before anything is read, so an unlink from now on ends this wait.
    let unlinked = svc.auth_cache.unlinked.notified();
    if !svc.auth_cache.device_ok(&caller.user, device) {
        svc.meta.device(&caller.user.id, device).await?;
        svc.auth_cache.put_device(&caller.user, device);
    }
    let user = &caller.user.id;
    let limit = svc.limits.max_page;
    let read = || device_page(&svc, user, device, q.every_folder, q.since, limit);
    let mut page = read().await?;
    if has_news(&page, device) {
        return Ok(Json(page));
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(25_000)).min(svc.limits.max_poll);
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut echoes_held = false;
    tokio::pin!(unlinked);
    let mut watched = None;
    loop {
        // Own echoes wait for company, but not long: from when the first is in the page.
        if !echoes_held && !page.events.is_empty() {
            echoes_held = true;
            deadline = deadline.min(tokio::time::Instant::now() + OWN_ECHO_DELAY);
        }
        // The generation first: a folder listed after the folders are read ends the wait.
        let watch_generation = svc.bus.watch_generation(user, device);
        let folders = match watched.take() {
            Some((generation, folders)) if generation == watch_generation => folders,
            _ if q.every_folder => None,
            _ => svc.meta.watched_folders(user, device).await?,
        };
        // What the page covers: a later event, in a folder this device watches, wakes it.
        let after = page.through.unwrap_or(page.latest_seq).max(q.since);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let wait = async {
            match &folders {
                Some(folders) => {
                    let wait = FolderWait {
                        device,
                        folders,
                        after,
                        watch_generation,
                    };
                    svc.bus.wait_in_folders(user, wait, left).await
                }
                None => svc.bus.wait_after(user, after, left).await.map(|_| ()),
            }
        };
        tokio::select! {
            waited = wait => waited?,
            () = &mut unlinked => {
                // Some device was unlinked in this process: if it is this one, say so now.
                match svc.meta.device(user, device).await {
                    Err(crate::store::StoreError::UnknownDevice)
                        if caller.token_device.is_some() =>
                    {
                        return Err(super::auth::unauthorized("this machine was unlinked"));
                    }
                    Err(e) => return Err(e.into()),
                    Ok(_) => return Ok(Json(page)),
                }
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(page)); // the wait ran out
        }
        watched = Some((watch_generation, folders));
        tokio::time::sleep(POLL_LINGER).await;
        page = read().await?;
        if has_news(&page, device) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(page));
        }
    }
}
