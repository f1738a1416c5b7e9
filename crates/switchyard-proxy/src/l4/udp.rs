//! `udp` listeners: datagrams from each client address form a session with
//! one endpoint (its own connected socket, so replies come back to the right
//! client), kept until the session sees no datagram either way for the
//! listener's idle timeout. The session table is bounded: datagrams from new
//! clients beyond `max_sessions` are dropped and counted, never queued.
//!
//! One task receives on the listener socket and owns the table (no lock on
//! the datagram path); each session has a task relaying the endpoint's
//! replies to its client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::l4::L4Metrics;
use crate::Shared;

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// One client's session.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the listener started, at the last datagram either way.
    last_active: Arc<AtomicU64>,
    relay: JoinHandle<()>,
    endpoint: Arc<str>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// Serves the `udp` listener `listener` on `socket` until `stop` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Arc<str>, socket: UdpSocket, stop: CancellationToken) {
    let socket = Arc::new(socket);
    let started = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    let mut metrics: Option<L4Metrics> = None;
    loop {
        let (n, client) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                let snapshot = shared.snapshot.load();
                let Some(runtime) = snapshot.listeners.get(&*listener) else { continue };
                let idle = runtime.config.idle_timeout.as_millis() as u64;
                let now = started.elapsed().as_millis() as u64;
                let before = sessions.len();
                sessions.retain(|_, s| now.saturating_sub(s.last_active.load(Ordering::Relaxed)) < idle);
                let expired = before - sessions.len();
                if expired > 0 {
                    runtime.metrics.l4.sessions_active.sub(expired as i64);
                    tracing::debug!(%listener, expired, open = sessions.len(), "udp sessions expired");
                }
                metrics = Some(runtime.metrics.l4.clone());
                continue;
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors of earlier sends surface here on some systems.
                    tracing::debug!(%error, %listener, "udp receive failed");
                    continue;
                }
            },
        };
        let now = started.elapsed().as_millis() as u64;
        if let Some(session) = sessions.get(&client) {
            session.last_active.store(now, Ordering::Relaxed);
            if let Some(metrics) = &metrics {
                metrics.bytes.from_client.inc_by(n as u64);
            }
            if let Err(error) = session.upstream.send(&buffer[..n]).await {
                tracing::debug!(%error, endpoint = %session.endpoint, "udp send to the endpoint failed");
            }
            continue;
        }
        // A new client: the current configuration decides its endpoint.
        let snapshot = shared.snapshot.load_full();
        let Some(runtime) = snapshot.listeners.get(&*listener) else {
            continue;
        };
        let l4 = &runtime.metrics.l4;
        metrics = Some(l4.clone());
        if let Some(filter) = &runtime.ip_filter {
            if filter.check(client.ip()).is_err() {
                l4.datagrams_dropped.inc();
                continue;
            }
        }
        if sessions.len() >= runtime.config.max_sessions {
            l4.datagrams_dropped.inc();
            continue;
        }
        let cluster = runtime
            .config
            .cluster
            .as_deref()
            .and_then(|name| snapshot.clusters.get(name));
        let Some((cluster, index)) = cluster.and_then(|c| super::pick(c, client.ip(), &[]).map(|i| (c, i))) else {
            l4.datagrams_dropped.inc();
            l4.no_endpoint.inc();
            continue;
        };
        let endpoint = cluster.endpoints[index].address();
        let upstream = match open(endpoint, client).await {
            Ok(upstream) => Arc::new(upstream),
            Err(error) => {
                tracing::debug!(%error, endpoint, "cannot open a udp session");
                l4.datagrams_dropped.inc();
                continue;
            }
        };
        let last_active = Arc::new(AtomicU64::new(now));
        let relay = tokio::spawn(relay(
            upstream.clone(),
            socket.clone(),
            client,
            last_active.clone(),
            started,
            l4.clone(),
        ));
        l4.sessions_opened.inc();
        l4.sessions_active.inc();
        l4.bytes.from_client.inc_by(n as u64);
        if let Err(error) = upstream.send(&buffer[..n]).await {
            tracing::debug!(%error, endpoint, "udp send to the endpoint failed");
        }
        sessions.insert(
            client,
            Session {
                upstream,
                last_active,
                relay,
                endpoint: Arc::from(endpoint),
            },
        );
    }
    if let Some(metrics) = metrics {
        metrics.sessions_active.sub(sessions.len() as i64);
    }
}

/// A socket connected to `endpoint`, of the family its address resolves to.
async fn open(endpoint: &str, client: SocketAddr) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(endpoint)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{endpoint} resolves to no address")))?;
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    tracing::trace!(%client, %target, "udp session opened");
    Ok(socket)
}

/// Sends the endpoint's replies back to `client` from the listener's socket.
async fn relay(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last_active: Arc<AtomicU64>,
    started: Instant,
    metrics: L4Metrics,
) {
    loop {
        // The buffer exists only while datagrams are waiting: an idle
        // session holds none.
        if upstream.readable().await.is_err() {
            return;
        }
        let mut buffer = Vec::with_capacity(MAX_DATAGRAM);
        loop {
            buffer.clear();
            let n = match upstream.try_recv_buf(&mut buffer) {
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // An ICMP "port unreachable" from the endpoint: keep
                // listening; the session expires if nothing more comes.
                Err(_) => break,
            };
            last_active.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            metrics.bytes.to_client.inc_by(n as u64);
            if let Err(error) = listener.send_to(&buffer[..n], client).await {
                tracing::debug!(%error, %client, "udp reply to the client failed");
            }
        }
    }
}
