//! The router: every route of the JSON API (table in `jewel_wire`'s docs), the local block
//! URLs, and a JSON 404 for anything else.
//!
//! The router is host-agnostic: `jewel-server` serves it with `axum::serve`, the Lambda
//! `bootstrap` with `lambda_http::run`. Request bodies are bounded (JSON by
//! `Limits::max_json_body`, blocks by `BLOCK_SIZE`), every refusal is a JSON error (see
//! `error.rs`), every API answer says `Cache-Control: no-store` and
//! `X-Content-Type-Options: nosniff`, and each request is logged in one line — without its query string, which may
//! hold a URL signature.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use jewel_wire::BLOCK_SIZE;

pub mod auth;
pub mod batch;
pub mod blocks;
pub mod devices;
pub mod error;
pub mod openapi;
pub mod sync;
pub mod tree;

use crate::service::Service;
use error::AppError;

/// The whole service as one router.
pub fn router(service: Arc<Service>) -> Router {
    let api = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "ok": true })) }),
        )
        .route("/openapi.json", get(openapi::serve))
        .route("/me", get(tree::me))
        .route("/lookup", get(tree::lookup))
        .route("/nodes", post(tree::create))
        .route(
            "/nodes/{id}",
            get(tree::get_node)
                .patch(tree::set_attr)
                .delete(tree::remove),
        )
        .route("/nodes/{id}/children", get(tree::list_children))
        .route("/nodes/{id}/children/{name}", get(tree::child))
        .route("/nodes/{id}/content", put(tree::commit_content))
        .route("/nodes/{id}/move", post(tree::move_node))
        .route("/nodes/{id}/versions", get(tree::list_versions))
        .route(
            "/nodes/{id}/versions/{version}/restore",
            post(tree::restore_version),
        )
        .route("/trash", get(tree::list_trash))
        .route("/trash/{id}/restore", post(tree::restore))
        .route("/devices", post(sync::register_device).get(devices::list))
        .route("/devices/{id}", axum::routing::delete(devices::unlink))
        .route("/links", post(devices::start))
        .route("/links/{code}", get(devices::show))
        .route("/links/{code}/approve", post(devices::approve))
        .route("/devices/{id}/poll", get(sync::poll))
        .route("/devices/{id}/listen", post(sync::renew_listen))
        .route("/changes", get(sync::changes))
        .route("/batch", post(batch::apply))
        .route("/blocks/missing", post(blocks::missing))
        .route("/blocks/urls", post(blocks::urls))
        .layer(DefaultBodyLimit::max(service.limits.max_json_body))
        .layer(axum::middleware::from_fn(api_headers));
    let blobs = Router::new()
        .route(
            "/blob/{user}/{hash}",
            put(blocks::blob_put).get(blocks::blob_get),
        )
        .layer(DefaultBodyLimit::max(BLOCK_SIZE as usize));
    Router::new()
        .nest(jewel_wire::API_PREFIX, api)
        .merge(blobs)
        .merge(crate::portal::routes())
        .fallback(|| async { AppError::new(jewel_wire::ErrorCode::NotFound, "no such route") })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(service)
}

/// Every API answer holds a user's data (or an error about it): no cache may keep it (a
/// shared computer, a proxy), and no browser may guess it is something other than JSON.
async fn api_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    tracing::info!(
        target: "jewel::request",
        "{method} {path} {} {:.2}ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    response
}
