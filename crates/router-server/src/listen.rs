//! Accepting connections: a cap on connections served at once, a header (and idle keep-alive)
//! timeout, and a narrow overflow lane so that `GET /health` still answers at the cap.
//!
//! `axum::serve` has neither a cap nor a header timeout: a few hundred clients that connect
//! and send nothing (or half a request head) would hold their file descriptors forever. Here
//! every connection holds a permit of a semaphore of `max_connections`; hyper closes one that
//! does not send a whole request head within `header_timeout` of its start or of its previous
//! response. At the cap, up to [`OVERFLOW_CONNECTIONS`] more are served by the overflow app
//! (health, else 503 with `Retry-After`), one request each with [`OVERFLOW_HEADER_TIMEOUT`];
//! beyond those, a new connection is closed at once.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Connections accepted beyond the cap, for `/health` and a quick 503.
pub(crate) const OVERFLOW_CONNECTIONS: usize = 64;
/// The header timeout of an overflow connection.
pub(crate) const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How connections are accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served by the main app at once.
    pub(crate) max_connections: usize,
    /// Time to send a whole request head (also the idle keep-alive timeout).
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` (and `overflow` beyond the cap) until
/// `shutdown` fires; then stops accepting and waits for the open connections to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    overflow: axum::Router,
    limits: Limits,
    shutdown: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let main_slots = Arc::new(Semaphore::new(limits.max_connections));
    let overflow_slots = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let mut main_conn = http1::Builder::new();
    main_conn
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut overflow_conn = http1::Builder::new();
    overflow_conn
        .timer(TokioTimer::new())
        .header_read_timeout(OVERFLOW_HEADER_TIMEOUT)
        .keep_alive(false);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or the peer gave up: wait a little, go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (permit, service, builder) = match main_slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, app.clone(), &main_conn),
            Err(_) => match overflow_slots.clone().try_acquire_owned() {
                Ok(permit) => (permit, overflow.clone(), &overflow_conn),
                Err(_) => continue,
            },
        };
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        tokio::spawn(async move {
            // A client that goes away or times out is its own business.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
