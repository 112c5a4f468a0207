//! Who is asking: the bearer token names the user (and, for a device's own token, the
//! device), and nothing else does.
//!
//! Two kinds of token open the same account: the **account token** (`jewel-server user add`,
//! reissued by `user token`, which revokes it everywhere at once) and a **device token**,
//! drawn by one machine when it was linked with a code (`api/links.rs`). A device token is
//! bound to its device: the caller's device is that one whatever the device header says, and
//! the device routes answer only for it. Unlinking the device revokes its token.
//!
//! The token is hashed and looked up in the store, and the answer is kept for
//! [`AUTH_CACHE_TTL`] (1 s) in this process: two store reads per request (token, device)
//! cost more than a small file's commit itself. So a token revoked by `jewel-server user
//! token`, or a user removed, stops working within 1 s (at once for a token never seen by
//! this process); an unlinked device's token stops **at once** in the process that unlinked
//! it ([`AuthCache::forget_device`]) and within 1 s in any other (another Lambda instance).
//! A refused token is never cached. The optional device header is checked to belong to the
//! same user before it is recorded in change events (cached the same way); a foreign or
//! unknown device id is refused.
//!
//! A device token's use is recorded (`last seen`, shown in the devices list) at most once per
//! [`LAST_SEEN_EVERY`], on a cache miss: one store write per device per minute at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jewel_wire::{DeviceId, ErrorCode, DEVICE_HEADER};

use super::error::AppError;
use crate::service::{token_hash, Service};
use crate::store::{now_ns, Origin, User};

/// How long a checked token (and a checked device of its user) is believed without asking
/// the store again: the bound on how long a revoked token keeps working.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(1);

/// How stale a device's `last seen` may get before a request records it again.
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);

/// Entries kept at most; the cache is emptied when full (a cheap bound, refilled at once).
const AUTH_CACHE_MAX: usize = 100_000;

/// Whom a checked token belongs to (user, device for a device's own token), and when it was
/// checked.
type CheckedToken = (User, Option<DeviceId>, Instant);

/// Tokens (by hash) and devices checked within [`AUTH_CACHE_TTL`].
#[derive(Default)]
pub struct AuthCache {
    tokens: Mutex<HashMap<String, CheckedToken>>,
    devices: Mutex<HashMap<(String, DeviceId), Instant>>,
    /// Woken when a device is unlinked in this process: its long-polls end at once.
    pub unlinked: tokio::sync::Notify,
}

fn fresh(at: &Instant) -> bool {
    at.elapsed() < AUTH_CACHE_TTL
}

impl AuthCache {
    fn owner(&self, hash: &str) -> Option<(User, Option<DeviceId>)> {
        let map = self.tokens.lock().unwrap();
        map.get(hash)
            .filter(|(_, _, at)| fresh(at))
            .map(|(u, d, _)| (u.clone(), *d))
    }

    fn put_owner(&self, hash: String, user: User, device: Option<DeviceId>) {
        let mut map = self.tokens.lock().unwrap();
        if map.len() >= AUTH_CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (user, device, Instant::now()));
    }

    /// Whether `device` was found to be `user`'s within [`AUTH_CACHE_TTL`].
    pub fn device_ok(&self, user: &User, device: DeviceId) -> bool {
        let key = (user.id.clone(), device);
        self.devices.lock().unwrap().get(&key).is_some_and(fresh)
    }

    pub fn put_device(&self, user: &User, device: DeviceId) {
        let mut map = self.devices.lock().unwrap();
        if map.len() >= AUTH_CACHE_MAX {
            map.clear();
        }
        map.insert((user.id.clone(), device), Instant::now());
    }

    /// Forgets everything believed about an unlinked device (its token, its id), so its
    /// next request is asked of the store and refused, and wakes the long-polls.
    pub fn forget_device(&self, user: &User, device: DeviceId) {
        self.tokens
            .lock()
            .unwrap()
            .retain(|_, (u, d, _)| !(u.id == user.id && *d == Some(device)));
        self.devices
            .lock()
            .unwrap()
            .remove(&(user.id.clone(), device));
        self.unlinked.notify_waiters();
    }
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub user: User,
    /// The device the request is made for: a device token's own, else the device header's.
    pub device: Option<DeviceId>,
    /// Set when the token is a device's own token (then `device` is that device).
    pub token_device: Option<DeviceId>,
}

impl Caller {
    /// The origin stamp for a change made now by this caller.
    pub fn origin(&self) -> Origin {
        Origin {
            device: self.device,
            now_ns: now_ns(),
        }
    }

    /// Refuses a device route for another device than a device token's own (as unknown, like
    /// another user's device).
    pub fn may_use_device(&self, device: DeviceId) -> Result<(), AppError> {
        match self.token_device {
            Some(own) if own != device => Err(AppError::new(ErrorCode::NotFound, "no such device")),
            _ => Ok(()),
        }
    }
}

/// The token of a request's `Authorization: Bearer` header.
pub fn bearer(parts: &Parts) -> Result<&str, AppError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let hash = token_hash(bearer(parts)?);
        let (user, token_device) = match service.auth_cache.owner(&hash) {
            Some(owner) => owner,
            None => {
                let owner = service.meta.token_owner(&hash).await?.ok_or_else(|| {
                    unauthorized(
                        "the token is not valid (wrong or revoked, or this machine was unlinked)",
                    )
                })?;
                if let Some(device) = owner.device {
                    let stale = now_ns().saturating_sub(owner.last_seen_ns)
                        > LAST_SEEN_EVERY.as_nanos() as i64;
                    if stale {
                        if let Err(e) = service
                            .meta
                            .touch_device(&owner.user.id, device, now_ns())
                            .await
                        {
                            tracing::warn!("cannot record that device {device} was seen: {e}");
                        }
                    }
                }
                service
                    .auth_cache
                    .put_owner(hash, owner.user.clone(), owner.device);
                (owner.user, owner.device)
            }
        };
        let device = match (token_device, parts.headers.get(DEVICE_HEADER)) {
            (Some(own), _) => Some(own),
            (None, None) => None,
            (None, Some(value)) => {
                let id: DeviceId = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| AppError::bad_request("the device header must be a number"))?;
                if !service.auth_cache.device_ok(&user, id) {
                    service.meta.device(&user.id, id).await?;
                    service.auth_cache.put_device(&user, id);
                }
                Some(id)
            }
        };
        Ok(Caller {
            user,
            device,
            token_device,
        })
    }
}

pub fn unauthorized(message: &str) -> AppError {
    AppError::new(ErrorCode::Unauthorized, message)
}
