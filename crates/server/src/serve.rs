//! The listener: accepts client connections, plain or TLS, and serves each with
//! hyper's HTTP/1.1 under the connection limits of `[limits]`, before any request
//! reaches the router in `api`. This is where slow and idle clients are cut off;
//! body size and body time are bounded in `api`, which reads the body.
//!
//! - At most `connections_max` connections are open; one more is closed as soon
//!   as it is accepted (the client sees a reset and retries), so file descriptors
//!   and per-connection memory stay bounded however many clients connect.
//! - A request's line and headers may hold `header_bytes_max` bytes (431 beyond)
//!   and must arrive within `header_timeout`. hyper starts that clock whenever the
//!   connection waits for a request head, so it also closes keep-alive connections
//!   idle for that long; a TLS handshake gets the same time. Trickling a byte at a
//!   time does not reset it (slowloris).
//!
//! At shutdown the listener stops accepting and every connection finishes the
//! request it is serving, then closes. Idle connections close at once; a head or a
//! body still arriving is waited for at most its timeout, so shutdown is bounded by
//! `header_timeout` and `body_timeout` plus the requests being answered.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::ConnectionLimits;

/// Serves `router` on `listener` until `stop` resolves, then lets open
/// connections finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let (stopping, stopped) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut connections = JoinSet::new();
    let mut last_refusal_logged: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: pause rather than spin on the error.
                    tracing::warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            ::metrics::counter!("sluice_connections_refused").increment(1);
            if last_refusal_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                last_refusal_logged = Some(Instant::now());
                tracing::warn!(
                    connections_max = limits.connections_max,
                    "Refusing connections: the limit of open connections is reached ([limits] connections_max)."
                );
            }
            continue;
        };
        // Responses are small and written whole; Nagle's algorithm would only
        // delay them.
        let _ = stream.set_nodelay(true);
        let (tls, router, mut stopped) = (tls.clone(), router.clone(), stopped.clone());
        connections.spawn(async move {
            let _open = OpenConnection::new(slot);
            match tls {
                None => connection(TokioIo::new(stream), router, limits, stopped).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            _ => return,
                        },
                        // Shutdown during a handshake: there is no request to finish.
                        _ = stopped.changed() => return,
                    };
                    connection(TokioIo::new(stream), router, limits, stopped).await
                }
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection's requests until it closes, or until shutdown once its
/// request in progress is answered.
async fn connection<I>(io: TokioIo<I>, router: Router, limits: ConnectionLimits, mut stopped: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.header_bytes_max)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// One open connection: holds its slot and counts itself in `sluice_connections_open`.
struct OpenConnection(#[allow(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit) -> OpenConnection {
        ::metrics::gauge!("sluice_connections_open").increment(1.0);
        OpenConnection(slot)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        ::metrics::gauge!("sluice_connections_open").decrement(1.0);
    }
}
