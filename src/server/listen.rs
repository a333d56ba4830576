//! The accept loop of the HTTP server, with the limits `axum::serve` does not have.
//!
//! The health port may be reachable by clients we do not control, and the process shares one
//! file-descriptor limit with the pipeline (Caldera and Elasticsearch connections, spool files).
//! With `axum::serve`, 100 half-sent requests stayed open for 45 s+ and, at a 64-file limit,
//! broke polling, bulk sends and spool writes. So:
//! * at most [`connection_limit`] connections at once (a quarter of the file limit, 8..=256);
//!   a connection over the limit is closed at once, before anything is read;
//! * request headers must arrive within [`HEADER_TIMEOUT`]; waiting for the next request on a
//!   kept-alive connection counts as reading headers, so an idle connection goes after that too;
//! * a connection with no traffic in any other phase (e.g. a client that never reads its answer)
//!   is closed after [`IDLE_TIMEOUT`] (a request being answered is finished first);
//! * a request's head may not exceed 64 KB (hyper's default buffer is ~400 KB per connection);
//! * accept errors (e.g. out of file descriptors) pause the loop instead of spinning.
//!
//! HTTP/1.1 only: health, metrics and liveness need nothing more.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Time a client has to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read (and write) buffer per connection.
const MAX_BUF: usize = 64 * 1024;
/// After a graceful close was asked for, the longest wait for the answer in progress.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Connections served at once: a quarter of the process's file-descriptor limit, 8..=256, so
/// the pipeline always keeps most descriptors for itself.
pub fn connection_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4).unwrap_or(256).clamp(8, 256)
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open requests finish.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(connection_limit()));
    let (closing_tx, closing) = watch::channel(false);
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|v| *v) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning; the pipeline needs the CPU.
                tracing::warn!(error = %e, "health server cannot accept a connection; pausing 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(
                    limit = connection_limit(),
                    "health server connection limit reached; new connections are closed until some end"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let app = app.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, closing).await;
            drop(permit);
        });
    }
    // Ask every connection to finish its request and close; wait (bounded) for them.
    let _ = closing_tx.send(true);
    let all = slots.acquire_many(connection_limit() as u32);
    let _ = tokio::time::timeout(CLOSE_GRACE, all).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        last: last.clone(),
    });
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        // Our requests are a line and a few headers; hyper's default (~400 KB per connection)
        // would let the allowed connections hold ~100 MB of junk headers.
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle_check = IDLE_TIMEOUT.min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = closing.wait_for(|v| *v) => break,
            _ = tokio::time::sleep(idle_check) => {
                let quiet = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= IDLE_TIMEOUT {
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
}

/// A stream that notes when bytes last moved (milliseconds since `started`).
struct Tracked {
    inner: TcpStream,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
