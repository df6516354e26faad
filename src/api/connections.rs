//! The connection layer under the router: accepting connections (at most
//! `server.max_connections` at once), HTTP/1 and HTTP/2 through hyper, and the limits that
//! keep a hostile or broken client from holding a connection, a file descriptor and an
//! upload's staging file for good:
//!
//! - the request head must arrive within `server.header_read_timeout` (hyper's own timer);
//! - a request body must arrive at `server.min_body_rate` once `server.body_read_timeout` has
//!   passed ([`TimedBody`]; the handler sees a [`BodyTimeout`] error and answers 408);
//! - a connection on which no byte moves for `server.idle_timeout` while none of its requests
//!   is being worked on is dropped (`Activity`).
//!
//! axum's own `serve` has none of these, which is why the API drives hyper here itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServerConfig;

/// The connection limits of `server.*`, copied out of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `server.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `server.body_read_timeout`.
    pub body_read_timeout: Duration,
    /// `server.min_body_rate`, in bytes per second.
    pub min_body_rate: u64,
    /// `server.idle_timeout`.
    pub idle_timeout: Duration,
    /// `server.max_connections`.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits a server configuration sets.
    pub fn of(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            body_read_timeout: server.body_read_timeout,
            min_body_rate: server.min_body_rate.as_u64(),
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections.max(1),
        }
    }
}

/// Serves `app` on `listener` until `stopping` turns true; then stops accepting, asks every
/// connection to finish its requests in flight and close, and returns once all have.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        // A slot first: past the cap, new connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = stopping.wait_for(|stopping| *stopping) => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stopping| *stopping) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of file descriptors, say: wait instead of spinning on the error.
                tracing::warn!(%error, "could not accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let app = app.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            serve_connection(stream, app, limits, stopping).await;
            drop(slot);
        });
        // Finished connections are collected as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one incoming connection (it went away before it was accepted), not of the
/// listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it closes, its idle time runs out, or the server stops.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    // Small responses (errors, JSON) go out at once instead of waiting for Nagle.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let working = service_activity.working();
        let request = request.map(|body| {
            Body::new(TimedBody::new(
                body,
                limits.body_read_timeout,
                limits.min_body_rate,
            ))
        });
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(working);
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let idle = activity.idle(limits.idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    // A client that went away or spoke no HTTP: its business, not the server's.
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = &mut idle => {
                // Dropping the connection closes the socket; a response still being written
                // to a client that stopped reading is abandoned with it.
                tracing::debug!("closing a connection that stayed idle");
                return;
            }
            _ = stopping.wait_for(|stopping| *stopping), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being worked on.
#[derive(Debug)]
struct Activity {
    /// The start of the clock `last` counts on.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last: AtomicU64,
    /// Requests whose handler has not produced a response yet.
    working: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            working: AtomicUsize::new(0),
        }
    }

    /// Notes that a byte moved now.
    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Counts a request as being worked on until the guard is dropped.
    fn working(self: &Arc<Self>) -> Working {
        self.working.fetch_add(1, Ordering::Relaxed);
        Working(self.clone())
    }

    /// Completes once nothing has moved for `timeout` while no request was being worked on.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = last + timeout;
            if Instant::now() >= due && self.working.load(Ordering::Relaxed) == 0 {
                return;
            }
            // A handler still working (a long run) postpones the check by a whole period.
            let next = if Instant::now() >= due {
                Instant::now() + timeout
            } else {
                due
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A request being worked on; the idle clock restarts when its handler is done.
struct Working(Arc<Activity>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.touch();
        self.0.working.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records in its [`Activity`] every time bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that arrived too slowly (see `server.body_read_timeout`).
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body arrived too slowly: {received} bytes in {elapsed_secs} s, past the \
     server's timeout"
)]
pub struct BodyTimeout {
    /// Bytes that had arrived.
    pub received: u64,
    /// Whole seconds since the request arrived.
    pub elapsed_secs: u64,
}

/// A request body with a deadline that moves forward as its bytes arrive: `grace` after the
/// request, plus the time its bytes so far need at `min_rate` bytes per second.
pub struct TimedBody<B> {
    inner: B,
    started: Instant,
    grace: Duration,
    min_rate: u64,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    expired: bool,
}

impl<B> TimedBody<B> {
    /// Wraps `inner`, whose request arrived now.
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> Self {
        let started = Instant::now();
        Self {
            inner,
            started,
            grace,
            min_rate,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
            expired: false,
        }
    }

    /// The deadline for the bytes received so far.
    fn due(&self) -> Instant {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(self.received as f64 / rate as f64),
        };
        let allowed = self.grace.saturating_add(earned);
        self.started
            .checked_add(allowed)
            // Far beyond any real request: a year stands for "no deadline".
            .unwrap_or_else(|| self.started + Duration::from_secs(365 * 24 * 3600))
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                    let due = self.due();
                    self.deadline.as_mut().reset(due);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.expired = true;
                let timeout = BodyTimeout {
                    received: self.received,
                    elapsed_secs: self.started.elapsed().as_secs(),
                };
                Poll::Ready(Some(Err(Box::new(timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields its chunks with a pause before each.
    fn trickle(
        chunks: usize,
        pause: Duration,
    ) -> impl http_body::Body<Data = Bytes, Error = io::Error> + Unpin {
        let stream = futures::stream::iter(0..chunks).then(move |_| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"x")))
        });
        http_body_util::StreamBody::new(Box::pin(stream))
    }

    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_off_after_the_grace_period() {
        let body = TimedBody::new(
            trickle(100, Duration::from_secs(2)),
            Duration::from_secs(10),
            1024,
        );
        let error = body
            .collect()
            .await
            .expect_err("a byte every 2 s cannot last");
        let timeout = error.downcast_ref::<BodyTimeout>().expect("a body timeout");
        assert!(timeout.received <= 5, "{timeout:?}");
        assert_eq!(timeout.elapsed_secs, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_gets_the_time_its_size_needs() {
        // 100 bytes at one a second need 100 s; at a minimum rate of 1 byte/s they earn it.
        let body = TimedBody::new(
            trickle(100, Duration::from_millis(990)),
            Duration::from_secs(5),
            1,
        );
        let collected = body.collect().await.expect("a steady body is read whole");
        assert_eq!(collected.to_bytes().len(), 100);
    }
}
