//! Who is asking: the bearer token names the user, and nothing else does.
//!
//! The token is hashed and looked up on every request (no in-process cache), so a token
//! revoked by `jewel-server user token` stops working at once, even in another process. The
//! optional device header is checked to belong to the same user before it is recorded in
//! change events; a foreign or unknown device id is refused.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jewel_wire::{DeviceId, ErrorCode, DEVICE_HEADER};

use super::error::AppError;
use crate::service::{token_hash, Service};
use crate::store::{now_ns, Origin, User};

/// The authenticated caller of a request.
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
        let user = service
            .meta
            .user_by_token(&token_hash(token))
            .await?
            .ok_or_else(|| unauthorized("the token is not valid (wrong or revoked)"))?;
        let device = match parts.headers.get(DEVICE_HEADER) {
            None => None,
            Some(value) => {
                let id: DeviceId = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| AppError::bad_request("the device header must be a number"))?;
                service.meta.device(&user.id, id).await?;
                Some(id)
            }
        };
        Ok(Caller { user, device })
    }
}

fn unauthorized(message: &str) -> AppError {
    AppError::new(ErrorCode::Unauthorized, message)
}
