//! The HTTP front door: the accept loop and each connection's life, with the
//! limits a server facing the internet needs and `axum::serve` does not offer.
//!
//! - **Connection cap** (`--max-connections`): past it, a new connection is
//!   closed at once, so idle sockets cannot use up the file descriptors that
//!   real clients need.
//! - **Header read timeout** (`--header-read-timeout`): hyper's own timer, from
//!   the moment a request head is awaited until it is complete, so headers
//!   trickled a byte at a time are cut off.
//! - **Keep-alive timeout** (`--keep-alive-timeout`): a connection with no request
//!   in flight and no bytes moving for this long is closed. A request in flight
//!   (a synchronous txt2img running for minutes, an SSE stream, which sends a
//!   heartbeat comment every 15 s) is never idle.
//! - The body read timeout lives in [`crate::app`]'s body middleware: it bounds
//!   the whole body, not the gap between bytes.
//! - **Bounded shutdown**: [`serve`] stops when `shutdown` resolves and the
//!   caller's drain is over, tells every connection to finish its current
//!   response and close, and aborts whatever is still open after the grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::ConnectionLimits;

/// What one connection has been doing, shared by its IO wrapper, its service
/// wrapper and its watchdog.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Requests whose response has not been fully sent (or dropped) yet.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_io_ms.store(now, Ordering::Relaxed);
    }

    /// How long the connection has had no request in flight and no traffic.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }
}

/// Counts a request as in flight until its response body is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A socket that records when bytes last moved.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then runs `drain`
/// (connections keep working meanwhile, so waiting clients get their answers),
/// then closes every connection: gracefully for `limits.shutdown_grace`, then by force.
pub async fn serve<R>(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
    drain: impl Future<Output = R> + Send,
) -> io::Result<R> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut drain = std::pin::pin!(drain);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown, if !shutting_down => shutting_down = true,
            outcome = &mut drain, if shutting_down => break outcome,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (router, limits, close) = (router.clone(), limits.clone(), close_rx.clone());
                        connections.spawn(async move {
                            serve_connection(stream, addr, router, &limits, close).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(client = %addr, limit = limits.max_connections,
                            "connection limit reached; closing the new connection");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    let _ = close_tx.send(true);
    let open = connections.len();
    let all_closed = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !all_closed {
        tracing::warn!(
            open,
            still_open = connections.len(),
            "closing connections that did not finish in the grace period"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(outcome)
}

/// One connection: hyper's HTTP/1 with the header timer, plus a watchdog for
/// idleness and for the server's close signal.
async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: &ConnectionLimits,
    mut close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let guard = InFlight::begin(&service_activity);
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(addr));
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await?;
                // The guard lives as long as the response body: until it is sent or dropped.
                Ok::<_, std::convert::Infallible>(response.map(move |body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &guard;
                        frame
                    }))
                }))
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let tick =
        (limits.keep_alive_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut closing = *close.borrow();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %addr, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = close.changed(), if !closing => {
                if changed.is_err() || *close.borrow() {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = ticker.tick(), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= limits.keep_alive_timeout) {
                    tracing::debug!(client = %addr, "closing an idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
