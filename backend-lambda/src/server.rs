//! The self-hosted host: serve the router on a TCP address until SIGINT or SIGTERM.
//!
//! On a signal the listener stops accepting, requests in flight get a short grace period to
//! finish, and then the process exits — long-polls (up to 25 s) are not waited for, since
//! their devices simply poll again after the restart.
//!
//! Slow clients. `axum::serve` has no timeouts, so a client that drips its request head one
//! byte at a time (slowloris), or announces a body and never sends it, holds its connection —
//! a socket, a task and up to a body limit of memory — for ever; enough of them exhaust the
//! process's file descriptors. So connections are served here with hyper's HTTP/1 builder
//! directly, with two bounds:
//! - [`HEADER_READ_TIMEOUT`]: a request head must arrive whole within it (hyper's timer is
//!   not reset by each byte, so dripping does not extend it). It also closes a kept-alive
//!   connection idle that long; HTTP clients reconnect (reqwest retries a request that found
//!   its pooled connection closed before sending).
//! - [`REQUEST_TIMEOUT`]: a request must be answered within it, body upload included; past it
//!   the answer is `408` and the connection closes.
//!
//! What this does not bound: the number of connections (that is the job of a reverse proxy or
//! firewall in front of an exposed server; see `docs/SECURITY.md`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::service::Service;

/// How long requests in flight may take to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(2);

/// How long a client may take to send a whole request head, and how long a kept-alive
/// connection may sit idle. Far above what any honest client needs (one round trip), short
/// enough that a slow-header attack holds each socket only briefly.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a request may take from its head to its answer. Above the longest long-poll
/// (25 s), and enough to upload a 4 MiB block at about 110 kbit/s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn serve(service: Arc<Service>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    tracing::info!(
        "jewel-server listening on http://{}",
        listener.local_addr()?
    );
    crate::maintenance::spawn(service.clone());
    let app = crate::api::router(service);
    // `stop` tells connections to finish; every connection task holds a clone of `open_rx`,
    // so `open_tx.closed()` resolves once the last one ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let mut signal = std::pin::pin!(stop_signal());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, stop).await;
            drop(open);
        });
    }
    drop(listener);
    tracing::info!("stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    drop(open_rx);
    let _ = tokio::time::timeout(GRACE, open_tx.closed()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        async move {
            let answer = match tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(req)).await {
                Ok(answer) => answer.unwrap_or_else(|never| match never {}),
                Err(_) => timed_out(),
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn timed_out() -> Response {
    tracing::warn!(
        target: "jewel::request",
        "a request took longer than {REQUEST_TIMEOUT:?}: answered 408"
    );
    let body = jewel_wire::ApiError::new(
        jewel_wire::ErrorCode::BadRequest,
        format!(
            "the request was not complete within {} s",
            REQUEST_TIMEOUT.as_secs()
        ),
    );
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        [(axum::http::header::CONNECTION, "close")],
        axum::Json(body),
    )
        .into_response()
}

/// An accept error is about one connection (skip it) or about the process, e.g. out of file
/// descriptors (wait a moment, so a full table does not spin the loop).
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "could not accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
