//! Accepting connections: HTTP/1.1 and h2c on every listener, graceful shutdown.
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so tests and
//! `main` bind where they like (`127.0.0.1:0`) and learn the port before serving.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::proxy::Proxy;

/// A bound listener and the proxy that serves it.
pub struct Bound {
    pub listener: TcpListener,
    pub proxy: Arc<Proxy>,
}

/// Serves until `shutdown` resolves, then stops accepting and gives in-flight requests and
/// streams up to `grace` to finish before dropping them.
pub async fn run(bound: Vec<Bound>, shutdown: impl Future<Output = ()>, grace: Duration) {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = JoinSet::new();
    for Bound { listener, proxy } in bound {
        accept_loops.spawn(accept(listener, proxy, Arc::clone(&graceful)));
    }
    shutdown.await;
    // Dropping the accept loops closes the listening sockets and their handles on `graceful`.
    accept_loops.shutdown().await;
    let graceful = Arc::try_unwrap(graceful).expect("accept loops are gone");
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, grace = %humantime::format_duration(grace), "waiting for open connections to finish");
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>, graceful: Arc<GracefulShutdown>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
}
