//! Byte tunnels: a client and an upstream connection joined until either side
//! is done, for WebSocket connections and `tcp` listeners.
//!
//! Reads land in one buffer per worker thread and go straight to the other
//! side; a direction keeps bytes of its own only while its writer pushes back,
//! so an idle tunnel holds no buffer at all. A half-close is passed on: when one side stops sending,
//! the other side's write half is shut down and the reverse direction runs on
//! until it ends too. Bytes are counted as they pass, so an idle watchdog can
//! tell a quiet tunnel from a busy one, and counters stay current while a
//! long-lived tunnel runs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a tunnel gives up on its peers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No byte either way for this long closes the tunnel.
    pub idle_timeout: Duration,
    /// The tunnel closes this long after it opened; `None`: never.
    pub max_lifetime: Option<Duration>,
}

/// Why a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides finished sending.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The maximum lifetime passed.
    Lifetime,
    /// A read or write failed (a reset, usually).
    Failed(io::Error),
    /// Its route was removed, and the grace period ran out.
    Drained,
}

/// Completes when `drain` is cancelled; never without one.
async fn drained(drain: Option<&tokio_util::sync::CancellationToken>) {
    match drain {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
            End::Drained => f.write_str("route removed (drained)"),
            End::Lifetime => f.write_str("maximum lifetime"),
            End::Failed(error) => write!(f, "error: {error}"),
        }
    }
}

/// Counters a tunnel adds its bytes to as they pass (the client's sending
/// direction first).
#[derive(Debug, Clone)]
pub(crate) struct Meters {
    pub from_client: IntCounter,
    pub to_client: IntCounter,
}

/// What a tunnel carried and how it ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub from_client: u64,
    pub to_client: u64,
    pub end: End,
}

/// Joins `client` and `upstream` until both are done or the limits end the
/// tunnel.
/// `drain`: when cancelled, the tunnel ends (its route was removed).
pub(crate) async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    limits: Limits,
    meters: &Meters,
    drain: Option<&tokio_util::sync::CancellationToken>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let from_client = Arc::new(AtomicU64::new(0));
    let to_client = Arc::new(AtomicU64::new(0));
    let copy = Bidirectional {
        client,
        upstream,
        up: Direction::new(from_client.clone()),
        down: Direction::new(to_client.clone()),
    };
    tokio::pin!(copy);
    let lifetime = async {
        match limits.max_lifetime {
            Some(max) => tokio::time::sleep(max).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    // Counters are brought up to date, and quiet time added up, every half
    // idle period (at most every 10 s, so metrics stay current on long
    // timeouts): the close comes between one idle timeout and one tick more
    // after the last byte.
    let tick = (limits.idle_timeout / 2).clamp(Duration::from_millis(1), REPORT_EVERY);
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    watchdog.reset();
    let mut reported = (0, 0);
    let mut quiet = Duration::ZERO;
    let report = |reported: &mut (u64, u64)| {
        let now = (from_client.load(Ordering::Relaxed), to_client.load(Ordering::Relaxed));
        meters.from_client.inc_by(now.0 - reported.0);
        meters.to_client.inc_by(now.1 - reported.1);
        let moved = now != *reported;
        *reported = now;
        moved
    };
    let end = loop {
        tokio::select! {
            result = copy.as_mut() => break match result {
                Ok(()) => End::Closed,
                Err(error) => End::Failed(error),
            },
            _ = watchdog.tick() => {
                if report(&mut reported) {
                    quiet = Duration::ZERO;
                } else {
                    quiet += tick;
                    if quiet >= limits.idle_timeout {
                        break End::Idle;
                    }
                }
            }
            () = &mut lifetime => break End::Lifetime,
            () = drained(drain) => break End::Drained,
        }
    };
    report(&mut reported);
    Outcome {
        from_client: reported.0,
        to_client: reported.1,
        end,
    }
}

/// Both directions of a tunnel, polled together on one task.
struct Bidirectional<'a, C: ?Sized, U: ?Sized> {
    client: &'a mut C,
    upstream: &'a mut U,
    up: Direction,
    down: Direction,
}

impl<C, U> Future for Bidirectional<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let up = this.up.poll_copy(cx, &mut *this.client, &mut *this.upstream)?;
        let down = this.down.poll_copy(cx, &mut *this.upstream, &mut *this.client)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// The longest a tunnel's byte counters lag behind.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Size of the per-thread read buffer every tunnel direction reads into.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Reads land here first; bytes the writer takes at once never leave it,
    /// so a tunnel owns a buffer only while its writer is pushing back.
    static SCRATCH_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH]);
}

/// One direction: read, write it all out, repeat; shut the writer down
/// after the reader's end.
struct Direction {
    /// Bytes read but not yet written (the writer pushed back); empty, with
    /// no allocation, otherwise.
    backlog: Vec<u8>,
    /// How much of `backlog` is written.
    written: usize,
    reader_done: bool,
    needs_flush: bool,
    finished: bool,
    bytes: Arc<AtomicU64>,
}

impl Direction {
    fn new(bytes: Arc<AtomicU64>) -> Self {
        Self {
            backlog: Vec::new(),
            written: 0,
            reader_done: false,
            needs_flush: false,
            finished: false,
            bytes,
        }
    }

    fn poll_copy<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            // What the writer could not take before goes first.
            while self.written < self.backlog.len() {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.backlog[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.needs_flush = true;
            }
            if !self.backlog.is_empty() {
                self.backlog = Vec::new();
                self.written = 0;
            }
            if self.reader_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH_BUFFER.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = buf.filled().len();
                if n == 0 {
                    self.reader_done = true;
                    return Poll::Ready(Ok(()));
                }
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                // Straight from the scratch buffer while the writer takes it;
                // the rest is kept.
                let mut sent = 0;
                while sent < n {
                    match Pin::new(&mut *writer).poll_write(cx, &scratch[sent..n]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(k)) => {
                            sent += k;
                            self.needs_flush = true;
                        }
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => {
                            self.backlog = scratch[sent..n].to_vec();
                            self.written = 0;
                            break;
                        }
                    }
                }
                Poll::Ready(Ok(()))
            });
            match step {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // Nothing more to read now: push out what was written.
                    if self.needs_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn meters() -> Meters {
        Meters {
            from_client: IntCounter::new("a", "a").unwrap(),
            to_client: IntCounter::new("b", "b").unwrap(),
        }
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, mut client_far) = tokio::io::duplex(1024);
        let (mut upstream, mut upstream_far) = tokio::io::duplex(1024);
        let meters = meters();
        let limits = Limits {
            idle_timeout: Duration::from_secs(10),
            max_lifetime: None,
        };
        let tunnel =
            tokio::spawn(async move { splice(&mut client_far, &mut upstream_far, limits, &meters, None).await });
        // 200 KiB one way: the buffer grows, every byte arrives in order.
        let payload: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while received.len() < payload.len() {
            let n = upstream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the upstream saw EOF early");
            received.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(received, payload);
        // The client's half-close reaches the upstream...
        assert_eq!(upstream.read(&mut chunk).await.unwrap(), 0);
        // ...and the other direction still works.
        upstream.write_all(b"reply").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        let outcome = tunnel.await.unwrap();
        assert!(matches!(outcome.end, End::Closed), "{:?}", outcome.end);
        assert_eq!(outcome.from_client, payload.len() as u64);
        assert_eq!(outcome.to_client, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_ends_after_its_idle_timeout() {
        let (_client, mut client_far) = tokio::io::duplex(64);
        let (_upstream, mut upstream_far) = tokio::io::duplex(64);
        let limits = Limits {
            idle_timeout: Duration::from_secs(4),
            max_lifetime: None,
        };
        let started = tokio::time::Instant::now();
        let outcome = splice(&mut client_far, &mut upstream_far, limits, &meters(), None).await;
        assert!(matches!(outcome.end, End::Idle), "{:?}", outcome.end);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_tunnel_still_ends_at_its_lifetime() {
        let (mut client, mut client_far) = tokio::io::duplex(64);
        let (mut upstream, mut upstream_far) = tokio::io::duplex(64);
        let limits = Limits {
            idle_timeout: Duration::from_secs(1),
            max_lifetime: Some(Duration::from_secs(3)),
        };
        let chatter = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            loop {
                if client.write_all(b"x").await.is_err() || upstream.read(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let outcome = splice(&mut client_far, &mut upstream_far, limits, &meters(), None).await;
        assert!(matches!(outcome.end, End::Lifetime), "{:?}", outcome.end);
        assert!(outcome.from_client >= 10, "{}", outcome.from_client);
        chatter.abort();
    }
}
