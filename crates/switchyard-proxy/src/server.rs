//! Listeners and connections: accepting, serving with hyper, reload of the
//! listener set, idle connection reaping, and graceful drain.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{handle, ConnectionInfo, TlsInfo};
use crate::proxy_protocol;
use crate::Shared;

/// Where a listener listens: an address and a transport. A listener whose
/// `ListenOn` stays the same across a reload keeps its socket (an `http`
/// listener that becomes `tcp` included: connections are served by the
/// protocol of the configuration they arrive under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenOn {
    pub address: SocketAddr,
    pub udp: bool,
}

impl ListenOn {
    pub(crate) fn of(listener: &switchyard_config::Listener) -> Self {
        Self {
            address: listener.listen,
            udp: listener.protocol == switchyard_config::ListenerProtocol::Udp,
        }
    }
}

impl std::fmt::Display for ListenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, if self.udp { "udp" } else { "tcp" })
    }
}

/// A bound socket, before its loop starts.
pub(crate) enum Socket {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

impl Socket {
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
    }

    /// A second descriptor of the socket, kept to hand it to a successor.
    pub(crate) fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        match self {
            Socket::Tcp(s) => s.as_fd().try_clone_to_owned(),
            Socket::Udp(s) => s.as_fd().try_clone_to_owned(),
        }
    }
}

/// A bound listener socket and the token that stops its accept loop.
#[derive(Debug)]
pub(crate) struct BoundListener {
    /// The address asked for in the config (may have port 0).
    pub configured: ListenOn,
    /// The address actually bound.
    pub local: SocketAddr,
    pub stop: CancellationToken,
    /// The accept loop; it ends (closing its descriptor) soon after `stop`.
    pub task: tokio::task::JoinHandle<()>,
    /// A second descriptor of the socket, handed to a successor process on
    /// upgrade. Dropped with the listener, so a removed listener's address
    /// is free once its loop has ended.
    pub fd: std::os::fd::OwnedFd,
}

/// Binds a listener's socket.
pub(crate) fn bind(on: ListenOn) -> io::Result<Socket> {
    if on.udp {
        let socket = std::net::UdpSocket::bind(on.address)?;
        socket.set_nonblocking(true)?;
        return tokio::net::UdpSocket::from_std(socket).map(Socket::Udp);
    }
    bind_tcp(on.address).map(Socket::Tcp)
}

/// Binds `addr` with the socket options a proxy listener wants.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// How long an HTTP/1 connection of a retiring process may stay quiet
/// before it is closed (its client reconnects to the successor).
const RETIRING_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Open connections of one listener, in all and by client address.
#[derive(Debug, Default)]
struct Connections {
    total: AtomicUsize,
    /// Only kept when the listener limits connections per address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Connections {
    /// Admits a connection from `ip` under the limits, or says no.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: Option<usize>,
        max_per_ip: Option<usize>,
    ) -> Option<ConnectionSlot> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = ConnectionSlot {
            connections: self.clone(),
            ip: None,
        };
        if max_total.is_some_and(|max| total > max) {
            return None;
        }
        if let Some(max) = max_per_ip {
            let mut per_ip = self.per_ip.lock().expect("connection count lock is never poisoned");
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= max {
                return None;
            }
            *count += 1;
            slot.ip = Some(ip);
        }
        Some(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .connections
                .per_ip
                .lock()
                .expect("connection count lock is never poisoned");
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// An open client connection's place under the listener's limits and in
/// its active-connections gauge; both are given back when the last holder
/// drops it.
pub(crate) struct ConnectionGuard {
    _slot: ConnectionSlot,
    active: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl std::fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionGuard")
    }
}

/// Accepts connections on `listener` until `stop` fires.
pub(crate) async fn accept_loop(shared: Arc<Shared>, name: Arc<str>, listener: TcpListener, stop: CancellationToken) {
    let connections = Arc::new(Connections::default());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // The limits of the current configuration (they may change on reload).
                let limits = shared.snapshot.load().listeners.get(&*name).map(|l| {
                    (
                        l.config.max_connections,
                        l.config.max_connections_per_ip,
                        l.metrics.clone(),
                        l.config.protocol == switchyard_config::ListenerProtocol::Tcp,
                    )
                });
                let Some((max_total, max_per_ip, metrics, is_tcp)) = limits else {
                    continue;
                };
                let Some(slot) = connections.admit(peer.ip(), max_total, max_per_ip) else {
                    // Over a limit: close at once, before reading anything.
                    tracing::debug!(listener = %name, %peer, "connection refused: connection limit reached");
                    metrics.refused.inc();
                    drop(stream);
                    continue;
                };
                metrics.accepted.inc();
                metrics.active.inc();
                // Held by the connection, and by a WebSocket it upgrades to
                // (which outlives hyper's connection): the socket counts
                // against the limits for as long as it is open.
                let guard = Arc::new(ConnectionGuard {
                    _slot: slot,
                    active: metrics.active.clone(),
                });
                let (shared, name, stop) = (shared.clone(), name.clone(), stop.clone());
                shared.clone().tracker.spawn(async move {
                    if is_tcp {
                        crate::l4::tcp::serve(shared, name, stream, peer).await;
                    } else {
                        serve_connection(shared, name, stream, peer, stop, guard.clone()).await;
                    }
                    drop(guard);
                });
            }
            Err(error) => {
                // Out of file descriptors or a transient error: back off a
                // little instead of spinning, and keep serving.
                tracing::warn!(%error, listener = %name, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = %name, "listener stopped");
}

/// Serves one client connection until it closes, idles out or drains. `closing`
/// (the listener's token, a child of the gateway's drain token) fires when the
/// gateway drains or a reload removes the listener: the connection then closes
/// gracefully. On `https` listeners the TLS handshake comes first, bounded by
/// the listener's `header_read_timeout`.
async fn serve_connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    closing: CancellationToken,
    guard: Arc<ConnectionGuard>,
) {
    // TCP_NODELAY is inherited from the listening socket (see `bind`): no
    // setsockopt per connection.
    let snapshot = shared.snapshot.load_full();
    let Some(runtime) = snapshot.listeners.get(&*listener) else {
        return;
    };
    // A trusted load balancer speaking the PROXY protocol names the client
    // first; from then on that client is the peer.
    if runtime.config.proxy_protocol && runtime.trusts(peer.ip()) {
        match proxy_protocol::read_header(&mut stream, runtime.config.header_read_timeout).await {
            Ok(Some(client)) => peer = client,
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, %peer, "connection closed: bad PROXY header");
                return;
            }
        }
    }
    let trusted = runtime.trusts(peer.ip());
    // What the connection needs from its listener's settings, taken out: an
    // open connection must not keep a whole configuration generation (all
    // its routes) alive through later reloads.
    let serving = Serving {
        http: runtime.http.clone(),
        idle_timeout: runtime.config.idle_timeout,
    };
    let handshake_timeout = runtime.config.header_read_timeout;
    let (tls, metrics) = (runtime.tls.clone(), runtime.metrics.clone());
    drop(snapshot);
    match tls {
        None => {
            let info = ConnectionInfo::new(peer, listener, trusted).with_tasks(shared.tracker.clone(), guard);
            drive(shared.clone(), serving, info, stream, peer, closing).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    metrics.tls_failed.inc();
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    metrics.tls_failed.inc();
                    return;
                }
            };
            metrics.tls_ok.inc();
            let (_, session) = stream.get_ref();
            let tls = TlsInfo::of(session);
            let info = ConnectionInfo::new(peer, listener, trusted)
                .with_tls(tls)
                .with_tasks(shared.tracker.clone(), guard);
            drive(shared.clone(), serving, info, stream, peer, closing).await;
        }
    }
}

/// A listener's settings an HTTP connection is served with.
struct Serving {
    http: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    idle_timeout: Duration,
}

/// Serves HTTP on an accepted (and, for https, decrypted) connection.
async fn drive<IO>(
    shared: Arc<Shared>,
    serving: Serving,
    info: ConnectionInfo,
    stream: IO,
    peer: SocketAddr,
    closing: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = serving.idle_timeout;
    let info = Arc::new(info);
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    // Whether the client speaks HTTP/2 here: a retiring process closes
    // those at once (GOAWAY tells the client what was not served).
    let http2 = Arc::new(AtomicBool::new(false));
    let gateway = shared.clone();
    let service = {
        let http2 = http2.clone();
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            if req.version() == hyper::Version::HTTP_2 {
                http2.store(true, Ordering::Relaxed);
            }
            handle(shared.clone(), info.clone(), req)
        })
    };
    let conn = serving.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    let mut idle_timeout = idle_timeout;
    let mut draining = false;
    let mut retiring = false;
    let mut last_seen = 0;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                break;
            }
            // The listener stops: a drain or a reload closes the connection
            // politely; a retirement after an upgrade (the successor took the
            // socket) closes HTTP/2 at once and HTTP/1 as described below.
            _ = closing.cancelled(), if !draining && !retiring => {
                let retirement = gateway.retiring.load(Ordering::Relaxed);
                if !retirement || http2.load(Ordering::Relaxed) {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    retiring = true;
                    // Closing an idle HTTP/1 connection now would race a
                    // request the client may be sending: its next response
                    // says `Connection: close` instead (see `handle`), and
                    // a connection that stays quiet closes soon.
                    idle_timeout = RETIRING_IDLE_TIMEOUT.min(idle_timeout);
                    last_seen = activity.load(Ordering::Relaxed);
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                }
            }
            _ = &mut idle, if !draining => {
                let now_seen = activity.load(Ordering::Relaxed);
                // Retiring, a connection found to speak HTTP/2 only after
                // the retirement began (no request before it) gets its GOAWAY.
                let late_http2 = retiring && http2.load(Ordering::Relaxed);
                if now_seen == last_seen || late_http2 {
                    // No byte either way for a whole idle period: close politely
                    // (in-flight exchanges still finish).
                    tracing::debug!(%peer, late_http2, "closing idle or retiring connection");
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    last_seen = now_seen;
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                }
            }
        }
    }
}

/// A stream that counts reads and writes, so the idle reaper can tell a
/// quiet connection from a busy one without reading the clock per I/O.
struct ActivityIo<IO> {
    inner: IO,
    activity: Arc<AtomicU64>,
}

impl<IO> ActivityIo<IO> {
    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ActivityIo<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ActivityIo<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
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
