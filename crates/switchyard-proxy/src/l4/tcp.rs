//! One `tcp` listener connection, top to bottom:
//!
//! 1. a PROXY header from a trusted peer names the real client;
//! 2. the listener's `ip_filter`;
//! 3. with `sni_routes`, the TLS ClientHello is read (not answered) and its
//!    server name chooses the cluster; otherwise the listener's cluster;
//! 4. endpoints are tried in balancer order, each under the cluster's connect
//!    timeout, up to `connect_attempts`; a failed connect counts against the
//!    endpoint (outlier detection) and the next one is tried;
//! 5. a PROXY header to the endpoint if the cluster asks for one, then the
//!    bytes already read, then both connections joined until they end or idle
//!    out ([`crate::tunnel`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_balance::Failure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sni::{parse_client_hello, ClientHello};
use crate::forward::record_outcome;
use crate::snapshot::{ClusterRuntime, ListenerRuntime};
use crate::tunnel::{self, Limits};
use crate::{proxy_protocol, Shared};

/// Serves one accepted connection of the `tcp` listener `listener`.
pub(crate) async fn serve(shared: Arc<Shared>, listener: Arc<str>, mut stream: TcpStream, mut peer: SocketAddr) {
    let snapshot = shared.snapshot.load_full();
    let Some(runtime) = snapshot.listeners.get(&*listener) else {
        return;
    };
    let metrics = &runtime.metrics.l4;
    let config = &runtime.config;
    if config.proxy_protocol && runtime.trusts(peer.ip()) {
        match proxy_protocol::read_header(&mut stream, config.header_read_timeout).await {
            Ok(Some(client)) => peer = client,
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, %peer, %listener, "connection closed: bad PROXY header");
                metrics.rejected.inc();
                return;
            }
        }
    }
    if let Some(filter) = &runtime.ip_filter {
        if let Err(reason) = filter.check(peer.ip()) {
            tracing::debug!(%peer, %listener, ?reason, "connection refused by the listener's ip_filter");
            metrics.rejected.inc();
            return;
        }
    }
    let (cluster_name, prefix) = match route_by_sni(runtime, &mut stream).await {
        Ok((name, prefix)) => (name.to_owned(), prefix),
        Err(reason) => {
            tracing::debug!(%peer, %listener, %reason, "connection refused");
            metrics.rejected.inc();
            return;
        }
    };
    let Some(cluster) = snapshot.clusters.get(&cluster_name).cloned() else {
        metrics.no_endpoint.inc();
        return;
    };
    let Some((mut upstream, index, in_flight)) = connect(&cluster, runtime, peer).await else {
        metrics.no_endpoint.inc();
        return;
    };
    // What the tunnel needs, taken out: an open connection must not keep a
    // whole configuration generation alive.
    let metrics = metrics.clone();
    let limits = Limits {
        idle_timeout: config.idle_timeout,
        max_lifetime: None,
    };
    let listen = config.listen;
    let drain = runtime.drains.get(&cluster_name).cloned();
    drop(snapshot);

    let endpoint = cluster.endpoints[index].address();
    let mut preface = Vec::new();
    if let Some(version) = cluster.config.proxy_protocol {
        let local = stream.local_addr().unwrap_or(listen);
        preface.extend(proxy_protocol::header(version, peer, local));
    }
    preface.extend_from_slice(&prefix);
    if !preface.is_empty() {
        if let Err(error) = upstream.write_all(&preface).await {
            tracing::debug!(%error, endpoint, "writing to the endpoint failed");
            return;
        }
    }
    metrics.proxied.inc();
    let outcome = tunnel::splice(&mut stream, &mut upstream, limits, &metrics.bytes, drain.as_ref()).await;
    drop(in_flight);
    if matches!(outcome.end, tunnel::End::Drained) {
        metrics.drained.inc();
        tracing::info!(%listener, client = %peer, cluster = %cluster.config.name, "tcp connection closed: the listener no longer sends connections to its cluster and the grace period ran out");
    }
    tracing::debug!(
        %listener,
        client = %peer,
        cluster = %cluster.config.name,
        endpoint,
        end = %outcome.end,
        from_client = outcome.from_client + prefix.len() as u64,
        to_client = outcome.to_client,
        "tcp connection closed"
    );
}

/// The cluster for this connection and the bytes read to decide it (to be
/// sent on first).
async fn route_by_sni<'r>(runtime: &'r ListenerRuntime, stream: &mut TcpStream) -> Result<(&'r str, Vec<u8>), String> {
    let config = &runtime.config;
    let fallback = config.cluster.as_deref();
    if config.sni_routes.is_empty() {
        return fallback.map(|c| (c, Vec::new())).ok_or_else(|| "no cluster".to_owned());
    }
    let mut buffer = Vec::with_capacity(1024);
    let read = tokio::time::timeout(config.header_read_timeout, async {
        loop {
            match parse_client_hello(&buffer) {
                Ok(ClientHello::Complete { server_name }) => return Ok(server_name),
                Ok(ClientHello::Incomplete(_)) => {}
                Err(error) => return Err(format!("not a TLS ClientHello: {error}")),
            }
            if stream.read_buf(&mut buffer).await.map_err(|e| e.to_string())? == 0 {
                return Err("the client closed before its ClientHello ended".to_owned());
            }
        }
    })
    .await
    .map_err(|_| format!("no ClientHello within {:?}", config.header_read_timeout))?;
    let server_name = read?;
    let chosen = server_name
        .as_deref()
        .and_then(|name| config.sni_routes.iter().find(|rule| rule.matches(name)))
        .map(|rule| rule.cluster.as_str())
        .or(fallback)
        .ok_or_else(|| format!("no SNI rule for {server_name:?} and no default cluster"))?;
    Ok((chosen, buffer))
}

/// Connects to an endpoint of `cluster`, trying others when one fails.
async fn connect(
    cluster: &ClusterRuntime,
    runtime: &ListenerRuntime,
    client: SocketAddr,
) -> Option<(TcpStream, usize, switchyard_balance::InFlight)> {
    let attempts = runtime.config.connect_attempts as usize;
    let mut tried = Vec::with_capacity(attempts.min(cluster.endpoints.len()));
    while tried.len() < attempts {
        let index = super::pick(cluster, client.ip(), &tried)?;
        tried.push(index);
        let endpoint = &cluster.endpoints[index];
        let in_flight = endpoint.begin();
        let timeout = cluster.config.connect_timeout;
        match tokio::time::timeout(timeout, TcpStream::connect(endpoint.address())).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                record_outcome(cluster, endpoint, None);
                return Some((stream, index, in_flight));
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, endpoint = endpoint.address(), "tcp connect failed");
                record_outcome(cluster, endpoint, Some(Failure::Connect));
            }
            Err(_) => {
                tracing::debug!(endpoint = endpoint.address(), ?timeout, "tcp connect timed out");
                record_outcome(cluster, endpoint, Some(Failure::Timeout));
            }
        }
        runtime.metrics.l4.connect_failed.inc();
        // A moment before the next endpoint, so a burst of clients does not
        // hammer a cluster that is all down.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tracing::warn!(
        cluster = %cluster.config.name,
        tried = tried.len(),
        "no endpoint accepted the connection"
    );
    None
}
