//! The api's listener: axum's router served by hyper-util's connection
//! builder in an accept loop of our own, because `axum::serve` has no
//! header-read timeout and no connection limit.
//!
//! - A connection whose request headers are not complete within
//!   `HTTP_HEADER_READ_TIMEOUT_SECS` of their first byte (or of the
//!   connection's accept, for its first request) is closed: a client
//!   trickling headers in holds nothing for long.
//! - A keep-alive connection waiting for its next request is closed after
//!   `HTTP_IDLE_TIMEOUT_SECS` (75 s), longer than the idle timeout of the
//!   usual proxies and HTTP clients (60 s), so that they, not the api, close
//!   an idle connection: a server closing first races a request sent on the
//!   socket it is closing, which fails without an answer. (hyper's own
//!   header-read timer also runs while a connection waits between requests,
//!   so it is turned off and both deadlines are kept here.)
//! - At most `HTTP_MAX_CONNECTIONS` connections are open at once; a
//!   connection beyond it is closed as soon as it is accepted.
//! - On shutdown the listener closes, open connections finish their
//!   requests (for up to 30 s) and are closed.
//!
//! The request timeout and the in-flight limit are middleware
//! ([`crate::middleware::guard`]), so they answer with problem+json.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tower::ServiceExt;

/// How long open connections may take to finish after shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(30);

/// What a listener allows a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let activity = Arc::new(Activity::new());
        let watched = Watched {
            io: stream,
            activity: activity.clone(),
        };
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let app = app.clone();
            let serving = Serving::start(&seen, req.version());
            async move {
                let response = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                // The request is in flight until its body has been written
                // (hyper drops the body then, and the guard with it).
                Ok::<_, Infallible>(response.map(|body| {
                    axum::body::Body::new(Guarded {
                        body,
                        _serving: serving,
                    })
                }))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(watched), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = activity.expired(limits) => {
                    metrics::counter!("http_connections_timed_out_total").increment(1);
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
    Ok(())
}

/// "None" in the millisecond fields of [`Activity`].
const NEVER: u64 = u64::MAX;

/// Where a connection is between requests, for its two deadlines: times in
/// milliseconds since it was accepted.
struct Activity {
    accepted: Instant,
    /// Requests being handled.
    in_flight: AtomicUsize,
    /// Whether a request was ever handled (before, the first must come
    /// within the header timeout of the accept).
    served: AtomicBool,
    /// HTTP/2: frames arrive between requests (pings, settings), so only the
    /// idle timeout applies once a request was seen.
    h2: AtomicBool,
    /// When the last request was answered.
    idle_since: AtomicU64,
    /// When the first byte arrived while no request was being handled: a
    /// request's headers are coming in.
    arriving_since: AtomicU64,
    /// Wakes the deadline's watch when `arriving_since` is set: the only
    /// change that brings the deadline forward.
    arrived: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            arriving_since: AtomicU64::new(NEVER),
            arrived: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64, after: Duration) -> Instant {
        self.accepted + Duration::from_millis(ms) + after
    }

    /// When the connection is to be closed as it stands; `None` while a
    /// request is being handled (the request timeout bounds that).
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.at(0, limits.header_read_timeout));
        }
        let arriving = self.arriving_since.load(Ordering::Acquire);
        if arriving != NEVER && !self.h2.load(Ordering::Acquire) {
            return Some(self.at(arriving, limits.header_read_timeout));
        }
        Some(self.at(self.idle_since.load(Ordering::Acquire), limits.idle_timeout))
    }

    /// Bytes came in: while no request is being handled, a request's headers
    /// are arriving from now (unless they already were).
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .arriving_since
                .compare_exchange(NEVER, self.now(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.arrived.notify_one();
        }
    }

    /// Completes once the connection is past its deadline. Looked at again
    /// when the deadline it slept for comes, when a request's first byte
    /// arrives (which brings it forward), and while a request is in flight
    /// every header timeout or idle timeout, whichever is shorter (the end of
    /// a request only moves it later).
    async fn expired(&self, limits: Limits) {
        let recheck = limits.header_read_timeout.min(limits.idle_timeout);
        loop {
            let wake = match self.deadline(limits) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => at,
                None => Instant::now() + recheck,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.arrived.notified() => {}
            }
        }
    }
}

/// One request being handled on a connection, from its parsed headers to the
/// end of its response's body (dropped: written, or cancelled with the
/// connection).
struct Serving(Arc<Activity>);

impl Serving {
    fn start(activity: &Arc<Activity>, version: hyper::Version) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.served.store(true, Ordering::Release);
        activity.arriving_since.store(NEVER, Ordering::Release);
        if version == hyper::Version::HTTP_2 {
            activity.h2.store(true, Ordering::Release);
        }
        Self(activity.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response's body holding its request's [`Serving`] until hyper drops it;
/// everything else is the body's own (its size hint too, from which hyper
/// writes `Content-Length`).
struct Guarded {
    body: axum::body::Body,
    _serving: Serving,
}

impl hyper::body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        hyper::body::Body::poll_frame(Pin::new(&mut self.get_mut().body), cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// The connection's socket, noting when bytes arrive between requests.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1,
    };

    /// When the watch of `a` completes, after accept.
    fn watch(a: &Arc<Activity>) -> tokio::task::JoinHandle<Duration> {
        let a = a.clone();
        tokio::spawn(async move {
            a.expired(LIMITS).await;
            a.accepted.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_sending_nothing_is_closed_at_the_header_timeout() {
        let a = Arc::new(Activity::new());
        assert_eq!(watch(&a).await.unwrap(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
        let a = Arc::new(Activity::new());
        drop(Serving::start(&a, hyper::Version::HTTP_11));
        assert_eq!(watch(&a).await.unwrap(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn headers_starting_on_an_idle_connection_bring_its_deadline_forward() {
        // The watch may first look while the connection is idle after a
        // request (deadline: the idle timeout); headers arriving then must
        // still be cut at the header timeout, not at the idle deadline.
        let a = Arc::new(Activity::new());
        drop(Serving::start(&a, hyper::Version::HTTP_11));
        let closed = watch(&a);
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.bytes_arrived();
        assert_eq!(closed.await.unwrap(), Duration::from_millis(1_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_and_its_end_starts_the_idle_time() {
        let a = Arc::new(Activity::new());
        let serving = Serving::start(&a, hyper::Version::HTTP_11);
        let closed = watch(&a);
        tokio::time::sleep(Duration::from_secs(300)).await;
        a.bytes_arrived(); // a pipelined request while this one runs
        assert!(!closed.is_finished());
        drop(serving);
        assert_eq!(closed.await.unwrap(), Duration::from_secs(360));
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_between_requests_only_has_the_idle_timeout() {
        let a = Arc::new(Activity::new());
        drop(Serving::start(&a, hyper::Version::HTTP_2));
        let closed = watch(&a);
        a.bytes_arrived(); // a ping
        assert_eq!(closed.await.unwrap(), Duration::from_secs(60));
    }
}
