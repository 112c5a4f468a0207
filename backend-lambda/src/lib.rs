//! The JewelFS service: one `axum::Router` with the whole JSON API, the block URLs and the web
//! portal, over three storage traits (`MetaStore`, `BlobStore`, `ChangeBus`).
//!
//! The same router runs in two hosts: `bootstrap` (AWS Lambda behind API Gateway, via
//! `lambda_http`) and `jewel-server` (self-hosted, `axum::serve`). Nothing here knows which
//! host it runs in.

pub mod admin;
pub mod api;
pub mod blobs;
pub mod bus;
pub mod maintenance;
pub mod portal;
pub mod server;
pub mod service;
pub mod store;

#[cfg(feature = "aws")]
pub mod aws;
