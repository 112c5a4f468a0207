//! Who is asking: the bearer token names the user, and nothing else does.
//!
//! The token is hashed and looked up in the store, and the answer is kept for
//! [`AUTH_CACHE_TTL`] (1 s) in this process: two store reads per request (token, device)
//! cost more than a small file's commit itself. So a token revoked by `jewel-server user
//! token`, or a user removed, stops working within 1 s (at once for a token never seen by
//! this process); a refused token is never cached. The optional device header is checked
//! to belong to the same user before it is recorded in change events (cached the same way);
//! a foreign or unknown device id is refused.

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

/// Entries kept at most; the cache is emptied when full (a cheap bound, refilled at once).
const AUTH_CACHE_MAX: usize = 100_000;

/// Tokens (by hash) and devices checked within [`AUTH_CACHE_TTL`].
#[derive(Default)]
pub struct AuthCache {
    tokens: Mutex<HashMap<String, (User, Instant)>>,
    devices: Mutex<HashMap<(String, DeviceId), Instant>>,
}

fn fresh(at: &Instant) -> bool {
    at.elapsed() < AUTH_CACHE_TTL
}

impl AuthCache {
    fn user(&self, hash: &str) -> Option<User> {
        let map = self.tokens.lock().unwrap();
        map.get(hash)
            .filter(|(_, at)| fresh(at))
            .map(|(u, _)| u.clone())
    }

    fn put_user(&self, hash: String, user: User) {
        let mut map = self.tokens.lock().unwrap();
        if map.len() >= AUTH_CACHE_MAX {
            map.clear();
        }
        map.insert(hash, (user, Instant::now()));
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
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub user: User,
    pub device: Option<DeviceId>,
}

impl Caller {
    /// The origin stamp for a change made now by this caller.
    pub fn origin(&self) -> Origin {
        Origin {
            device: self.device,
            now_ns: now_ns(),
        }
    }
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        let hash = token_hash(token);
        let user = match service.auth_cache.user(&hash) {
            Some(user) => user,
            None => {
                let user = service
                    .meta
                    .user_by_token(&hash)
                    .await?
                    .ok_or_else(|| unauthorized("the token is not valid (wrong or revoked)"))?;
                service.auth_cache.put_user(hash, user.clone());
                user
            }
        };
        let device = match parts.headers.get(DEVICE_HEADER) {
            None => None,
            Some(value) => {
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
        Ok(Caller { user, device })
    }
}

fn unauthorized(message: &str) -> AppError {
    AppError::new(ErrorCode::Unauthorized, message)
}
