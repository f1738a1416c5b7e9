//! `udp` listeners: datagrams from each client address form a session with
//! one endpoint (its own connected socket, so replies come back to the right
//! client), kept until the session sees no datagram either way for the
//! listener's idle timeout, or its endpoint stops being usable (refused the
//! datagrams, ejected, unhealthy, or gone from the cluster): the client's next
//! datagram then opens a session with another endpoint. The session table is
//! bounded: datagrams from new clients beyond `max_sessions` are dropped and
//! counted, never queued.
//!
//! One task receives on the listener socket and owns the table (no lock on
//! the datagram path); each session has a task relaying the endpoint's
//! replies to its client. Neither keeps a buffer of its own while idle.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_balance::{EndpointState, Failure};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::forward::record_outcome;
use crate::l4::L4Metrics;
use crate::snapshot::{ClusterRuntime, Snapshot};
use crate::Shared;

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;
/// How often idle and unusable sessions are swept out.
const SWEEP: Duration = Duration::from_millis(250);

thread_local! {
    /// Replies are received here and sent on at once when the socket takes
    /// them: a session holds no buffer between datagrams.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// One client's session.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the listener started, at the last datagram either way.
    last_active: Arc<AtomicU64>,
    /// Set by the relay when the endpoint refuses (ICMP port unreachable).
    refused: Arc<AtomicBool>,
    /// Aborted when the session ends.
    relay: Option<JoinHandle<()>>,
    cluster: Arc<ClusterRuntime>,
    endpoint: Arc<EndpointState>,
    /// Milliseconds since the listener started, when a reload was first seen
    /// to take the endpoint out of the listener's cluster: the session goes
    /// on for `runtime.removed_route_grace` from then.
    orphaned: Option<u64>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(relay) = &self.relay {
            relay.abort();
        }
    }
}

impl Session {
    /// Whether the session may go on with its endpoint at `now`: not
    /// refused, still usable, and still in the cluster the listener forwards
    /// to, or out of it (a reload) for less than `grace`.
    fn usable(&mut self, snapshot: &Snapshot, cluster: Option<&str>, now: u64, grace: u64) -> bool {
        if self.refused.load(Ordering::Relaxed) || !self.endpoint.is_available() {
            return false;
        }
        let current = cluster.and_then(|name| snapshot.clusters.get(name));
        if current.is_some_and(|c| c.endpoints.iter().any(|e| Arc::ptr_eq(e, &self.endpoint))) {
            self.orphaned = None;
            return true;
        }
        now.saturating_sub(*self.orphaned.get_or_insert(now)) < grace
    }
}

/// Serves the `udp` listener `listener` on `socket` until `stop` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Arc<str>, socket: UdpSocket, stop: CancellationToken) {
    let socket = Arc::new(socket);
    let started = Instant::now();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP);
    let mut metrics: Option<L4Metrics> = None;
    let millis = |started: Instant| started.elapsed().as_millis() as u64;
    // Once a successor took the socket over it reads the datagrams; this
    // process only relays its open sessions' replies until they idle out.
    let mut retired = false;
    loop {
        let (n, client) = tokio::select! {
            _ = stop.cancelled(), if !retired => {
                if !shared.retiring.load(Ordering::Relaxed) {
                    break;
                }
                retired = true;
                continue;
            }
            _ = shared.drain.cancelled(), if retired => break,
            _ = sweep.tick() => {
                let snapshot = shared.snapshot.load();
                let Some(runtime) = snapshot.listeners.get(&*listener) else { continue };
                let idle = runtime.config.idle_timeout.as_millis() as u64;
                let now = millis(started);
                let cluster = runtime.config.cluster.as_deref();
                let grace = snapshot.config.runtime.removed_route_grace.as_millis() as u64;
                let before = sessions.len();
                sessions.retain(|client, s| {
                    let keep = now.saturating_sub(s.last_active.load(Ordering::Relaxed)) < idle
                        && s.usable(&snapshot, cluster, now, grace);
                    if !keep && s.refused.load(Ordering::Relaxed) {
                        record_outcome(&s.cluster, &s.endpoint, Some(Failure::Connect));
                    }
                    if !keep && s.orphaned.is_some_and(|at| now.saturating_sub(at) >= grace) {
                        runtime.metrics.l4.drained.inc();
                        tracing::info!(%listener, %client, endpoint = s.endpoint.address(), "udp session closed: a reload took its endpoint out of the listener's cluster and the grace period ran out");
                    }
                    keep
                });
                let ended = before - sessions.len();
                if ended > 0 {
                    runtime.metrics.l4.sessions_active.sub(ended as i64);
                    tracing::debug!(%listener, ended, open = sessions.len(), "udp sessions ended");
                }
                metrics = Some(runtime.metrics.l4.clone());
                continue;
            }
            received = socket.recv_from(&mut buffer), if !retired => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, %listener, "udp receive failed");
                    continue;
                }
            },
        };
        let now = millis(started);
        if let Some(session) = sessions.get(&client) {
            if !session.refused.load(Ordering::Relaxed) {
                session.last_active.store(now, Ordering::Relaxed);
                if let Some(metrics) = &metrics {
                    metrics.bytes.from_client.inc_by(n as u64);
                }
                match session.upstream.send(&buffer[..n]).await {
                    Ok(_) => continue,
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        session.refused.store(true, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::debug!(%error, endpoint = session.endpoint.address(), "udp send failed");
                        continue;
                    }
                }
            }
            // Refused by its endpoint: counted against it, and the datagram
            // goes to a new session below.
            let session = sessions.remove(&client).expect("the session was just found");
            record_outcome(&session.cluster, &session.endpoint, Some(Failure::Connect));
            if let Some(metrics) = &metrics {
                metrics.sessions_active.dec();
            }
        }
        // A new client: the current configuration decides its endpoint.
        let snapshot = shared.snapshot.load_full();
        let Some(runtime) = snapshot.listeners.get(&*listener) else {
            continue;
        };
        let l4 = &runtime.metrics.l4;
        metrics = Some(l4.clone());
        let refused = runtime
            .ip_filter
            .as_ref()
            .is_some_and(|f| f.check(client.ip()).is_err());
        if refused || sessions.len() >= runtime.config.max_sessions {
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
        let endpoint = cluster.endpoints[index].clone();
        let upstream = match open(endpoint.address()).await {
            Ok(upstream) => Arc::new(upstream),
            Err(error) => {
                tracing::debug!(%error, endpoint = endpoint.address(), "cannot open a udp session");
                l4.datagrams_dropped.inc();
                continue;
            }
        };
        let last_active = Arc::new(AtomicU64::new(now));
        let refused = Arc::new(AtomicBool::new(false));
        let relay = tokio::spawn(relay(
            upstream.clone(),
            Arc::downgrade(&socket),
            client,
            (last_active.clone(), refused.clone(), started),
            l4.clone(),
        ));
        l4.sessions_opened.inc();
        l4.sessions_active.inc();
        l4.bytes.from_client.inc_by(n as u64);
        if let Err(error) = upstream.send(&buffer[..n]).await {
            tracing::debug!(%error, endpoint = endpoint.address(), "udp send to the endpoint failed");
        }
        sessions.insert(
            client,
            Session {
                upstream,
                last_active,
                refused,
                relay: Some(relay),
                cluster: cluster.clone(),
                endpoint,
                orphaned: None,
            },
        );
    }
    // The relays hold only a weak reference to the listener socket, so it is
    // closed (and its address free for a new listener) as this returns; wait
    // for them anyway so that nothing of this listener outlives it.
    if let Some(metrics) = metrics {
        metrics.sessions_active.sub(sessions.len() as i64);
    }
    for (_, mut session) in sessions.drain() {
        if let Some(relay) = session.relay.take() {
            relay.abort();
            let _ = relay.await;
        }
    }
}

/// A socket connected to `endpoint` (an address, or a name resolved now).
async fn open(endpoint: &str) -> io::Result<UdpSocket> {
    let target = match endpoint.parse::<SocketAddr>() {
        Ok(address) => address,
        Err(_) => tokio::net::lookup_host(endpoint)
            .await?
            .next()
            .ok_or_else(|| io::Error::other(format!("{endpoint} resolves to no address")))?,
    };
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Sends the endpoint's replies back to `client` from the listener's socket.
async fn relay(
    upstream: Arc<UdpSocket>,
    listener: std::sync::Weak<UdpSocket>,
    client: SocketAddr,
    (last_active, refused, started): (Arc<AtomicU64>, Arc<AtomicBool>, Instant),
    metrics: L4Metrics,
) {
    loop {
        if upstream.readable().await.is_err() {
            return;
        }
        let Some(listener) = listener.upgrade() else { return };
        loop {
            // Received into the thread's scratch buffer and sent on at once;
            // only a reply the socket cannot take now is copied out.
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let n = match upstream.try_recv(&mut scratch) {
                    Ok(n) => n,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        refused.store(true, Ordering::Relaxed);
                        return Step::Wait;
                    }
                    Err(_) => return Step::Wait,
                };
                last_active.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                metrics.bytes.to_client.inc_by(n as u64);
                match listener.try_send_to(&scratch[..n], client) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Step::Later(scratch[..n].to_vec()),
                    _ => Step::Next,
                }
            });
            match step {
                Step::Next => {}
                Step::Wait => break,
                Step::Later(reply) => {
                    if let Err(error) = listener.send_to(&reply, client).await {
                        tracing::debug!(%error, %client, "udp reply to the client failed");
                    }
                }
            }
        }
    }
}

/// What the relay does after one receive.
enum Step {
    /// Sent: receive the next one.
    Next,
    /// Nothing more to receive now.
    Wait,
    /// Received, but the listener socket is full: send it when it can take it.
    Later(Vec<u8>),
}
