//! Every error a route can answer, as one type, and the request extractors that turn malformed
//! input into clear JSON errors instead of axum's plain-text rejections.
//!
//! The rule: bad input is a 4xx with `{code, message}` and changes nothing; only a failing
//! store is a 5xx. Store and blob errors map to codes in exactly one place, here.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jewel_wire::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

use crate::blobs::BlobError;
use crate::bus::BusError;
use crate::store::StoreError;

/// An error answer: the wire `ApiError` with its HTTP status.
#[derive(Debug)]
pub struct AppError(pub ApiError);

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AppError {
        AppError(ApiError::new(code, message))
    }
    pub fn bad_request(message: impl Into<String>) -> AppError {
        AppError::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found() -> AppError {
        AppError::new(ErrorCode::NotFound, "no such file or directory")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = ?self.0.code, message = %self.0.message, "request failed");
        }
        (status, axum::Json(self.0)).into_response()
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> AppError {
        let message = err.to_string();
        match err {
            StoreError::NotFound => AppError::not_found(),
            StoreError::Conflict(node) => {
                AppError(ApiError::new(ErrorCode::Conflict, message).with_current(*node))
            }
            StoreError::Exists(node) => {
                AppError(ApiError::new(ErrorCode::Exists, message).with_current(*node))
            }
            StoreError::NotEmpty => AppError::new(ErrorCode::NotEmpty, message),
            StoreError::NotADirectory => AppError::new(ErrorCode::NotADirectory, message),
            StoreError::IsADirectory => AppError::new(ErrorCode::IsADirectory, message),
            StoreError::InvalidMove(_) => AppError::new(ErrorCode::BadRequest, message),
            StoreError::CursorTooOld => AppError::new(ErrorCode::CursorTooOld, message),
            StoreError::UnknownDevice => AppError::new(ErrorCode::NotFound, "no such device"),
            StoreError::TooManyDevices(_) => AppError::new(ErrorCode::Forbidden, message),
            StoreError::UserExists(_) | StoreError::UnknownUser(_) => {
                AppError::new(ErrorCode::BadRequest, message)
            }
            StoreError::UnknownLink => AppError::new(ErrorCode::NotFound, message),
            StoreError::TokenInUse => AppError::new(ErrorCode::BadRequest, message),
            // Many machines waiting at once (a flood): try again later; a code drawn twice
            // is drawn anew by the route, so this is only seen if that keeps failing.
            StoreError::TooManyLinks(_) | StoreError::LinkCodeTaken => {
                AppError::new(ErrorCode::TooManyRequests, message)
            }
            StoreError::TooLarge(_) => AppError::new(ErrorCode::PayloadTooLarge, message),
            StoreError::Busy(_) | StoreError::Backend(_) => {
                AppError::new(ErrorCode::Unavailable, message)
            }
        }
    }
}

impl From<BlobError> for AppError {
    fn from(err: BlobError) -> AppError {
        let message = err.to_string();
        match err {
            BlobError::NotFound => AppError::new(ErrorCode::NotFound, message),
            BlobError::HashMismatch(_) | BlobError::BadHash(_) => {
                AppError::new(ErrorCode::BadRequest, message)
            }
            BlobError::BadSignature => AppError::new(ErrorCode::Forbidden, message),
            BlobError::Backend(_) => AppError::new(ErrorCode::Unavailable, message),
        }
    }
}

impl From<BusError> for AppError {
    fn from(err: BusError) -> AppError {
        match err {
            BusError::PollUnsupported => AppError::new(
                ErrorCode::BadRequest,
                "this service delivers changes through the device's queue, not by long-poll",
            ),
            BusError::Backend(m) => AppError::new(ErrorCode::Unavailable, m),
        }
    }
}

/// A JSON body, refused with a JSON 400/413 when malformed or too large.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
                } else {
                    AppError::bad_request(format!("could not read the request body: {rejection}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AppError::bad_request(format!("malformed JSON body: {e}")))
    }
}

/// Path parameters, refused with a JSON 400 when they do not parse (e.g. an id that is not a
/// number, a name that is not UTF-8).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| AppError::bad_request(format!("bad path: {e}")))
    }
}

/// Query parameters, refused with a JSON 400 when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| AppError::bad_request(format!("bad query: {e}")))
    }
}
