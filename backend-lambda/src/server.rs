//! The self-hosted host: serve the router on a TCP address until SIGINT or SIGTERM.
//!
//! On a signal the listener stops accepting, requests in flight get a short grace period to
//! finish, and then the process exits — long-polls (up to 25 s) are not waited for, since
//! their devices simply poll again after the restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::IntoFuture;

use anyhow::Context;

use crate::service::Service;

/// How long requests in flight may take to finish after a stop signal.
const GRACE: Duration = Duration::from_secs(2);

pub async fn serve(service: Arc<Service>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    tracing::info!(
        "jewel-server listening on http://{}",
        listener.local_addr()?
    );
    let app = crate::api::router(service);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => return result.context("the server failed"),
        () = stop_signal() => {}
    }
    tracing::info!("stopping: finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(GRACE, server).await;
    tracing::info!("stopped");
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
