//! Byte tunnels: a client and an upstream connection joined until either side
//! is done, for WebSocket connections and `tcp` listeners.
//!
//! Each direction copies through its own buffer, which starts small (an idle
//! WebSocket costs a few KiB, not two 64 KiB buffers) and grows while reads
//! keep filling it. A half-close is passed on: when one side stops sending,
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

/// A direction's buffer starts this small...
const MIN_BUFFER: usize = 2 * 1024;
/// ...and grows (fourfold each time a read fills it) up to this.
const MAX_BUFFER: usize = 64 * 1024;

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
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
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
pub(crate) async fn splice<C, U>(client: &mut C, upstream: &mut U, limits: Limits, meters: &Meters) -> Outcome
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
    // Checked every half idle period: two quiet checks in a row mean no
    // byte moved for at least the idle timeout.
    let mut watchdog = tokio::time::interval(limits.idle_timeout / 2);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    watchdog.reset();
    let mut reported = (0, 0);
    let mut quiet_checks = 0;
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
                    quiet_checks = 0;
                } else {
                    quiet_checks += 1;
                    if quiet_checks >= 2 {
                        break End::Idle;
                    }
                }
            }
            () = &mut lifetime => break End::Lifetime,
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

/// One direction: read into the buffer, write it all out, repeat; shut the
/// writer down after the reader's end.
struct Direction {
    buffer: Vec<u8>,
    /// Bytes of `buffer` written so far and read so far.
    written: usize,
    read: usize,
    reader_done: bool,
    needs_flush: bool,
    finished: bool,
    bytes: Arc<AtomicU64>,
}

impl Direction {
    fn new(bytes: Arc<AtomicU64>) -> Self {
        Self {
            buffer: Vec::new(),
            written: 0,
            read: 0,
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
            if self.written == self.read && !self.reader_done {
                self.size_buffer();
                let mut buf = ReadBuf::new(&mut self.buffer);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
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
                let n = buf.filled().len();
                self.written = 0;
                self.read = n;
                if n == 0 {
                    self.reader_done = true;
                } else {
                    self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            while self.written < self.read {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.buffer[self.written..self.read]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.needs_flush = true;
            }
            if self.reader_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                self.buffer = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Allocates the buffer on first use, and grows it after a read that
    /// filled it (a bulk transfer is under way).
    fn size_buffer(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = vec![0; MIN_BUFFER];
        } else if self.read == self.buffer.len() && self.buffer.len() < MAX_BUFFER {
            self.buffer = vec![0; (self.buffer.len() * 4).min(MAX_BUFFER)];
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
        let tunnel = tokio::spawn(async move { splice(&mut client_far, &mut upstream_far, limits, &meters).await });
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
        let outcome = splice(&mut client_far, &mut upstream_far, limits, &meters()).await;
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
        let outcome = splice(&mut client_far, &mut upstream_far, limits, &meters()).await;
        assert!(matches!(outcome.end, End::Lifetime), "{:?}", outcome.end);
        assert!(outcome.from_client >= 10, "{}", outcome.from_client);
        chatter.abort();
    }
}
