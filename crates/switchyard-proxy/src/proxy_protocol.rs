//! The PROXY protocol (HAProxy's, versions 1 and 2) on accepted connections:
//! a load balancer in front of the gateway tells, before any other byte, which
//! client the connection is for. Only peers the listener trusts may send it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest a version 1 header may be, and what a version 2 header may
/// carry here (addresses and a few TLVs).
const MAX_HEADER: usize = 536;

/// Reads a PROXY header from the start of `stream` and returns the client
/// address it names (`None` for `UNKNOWN`/`LOCAL`: the socket peer stands).
/// Only the header's bytes are consumed.
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, String> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| format!("no PROXY header within {timeout:?}"))?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let mut buf = [0u8; MAX_HEADER];
    let mut wait = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a PROXY header".into());
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() && n < MAX_HEADER {
            // More bytes are on their way: peek again shortly.
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(50));
            continue;
        }
        let (length, client) = match parsed {
            HeaderResult::V1(Ok(header)) => (header.header.len(), v1_client(&header.addresses)),
            HeaderResult::V2(Ok(header)) => (header.len(), v2_client(&header.addresses)),
            HeaderResult::V1(Err(e)) => return Err(format!("invalid PROXY header: {e:?}")),
            HeaderResult::V2(Err(e)) => return Err(format!("invalid PROXY header: {e:?}")),
        };
        let mut consumed = vec![0u8; length];
        stream.read_exact(&mut consumed).await.map_err(|e| e.to_string())?;
        return Ok(client);
    }
}

fn v1_client(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(addresses: &v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        _ => None,
    }
}

/// The PROXY header that tells an upstream a connection from `client` came
/// in on `local` (the listener's address). Version 1 is text; version 2 binary.
pub fn header(version: switchyard_config::ProxyProtocolVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // Mixed families (a v4 client on a v6 listener) are named as v6.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V6(l)) => {
            (SocketAddr::new(IpAddr::V6(c.ip().to_ipv6_mapped()), c.port()), l.into())
        }
        (SocketAddr::V6(c), SocketAddr::V4(l)) => {
            (c.into(), SocketAddr::new(IpAddr::V6(l.ip().to_ipv6_mapped()), l.port()))
        }
        pair => pair,
    };
    match version {
        switchyard_config::ProxyProtocolVersion::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        switchyard_config::ProxyProtocolVersion::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, local),
        )
        .build()
        .expect("a header of two addresses fits"),
    }
}
