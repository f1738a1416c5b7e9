//! Header rules of a proxy: what must not cross it (hop-by-hop fields) and what
//! it adds so upstreams know who the client was (`X-Forwarded-*`, `Forwarded`,
//! `Via`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use switchyard_config::HeaderOps;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop fields (RFC 9110 section 7.6.1): `Connection` and every
/// field it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, and `TE` except the value `trailers` (which gRPC needs end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(KEEP_ALIVE);
    headers.remove(PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.get(header::TE) {
        let only_trailers = te
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        headers.remove(header::TE);
        if only_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Who sent a request and how, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The address of the connection's peer.
    pub peer: IpAddr,
    /// The same address as a header value, made once per connection.
    pub peer_value: &'a HeaderValue,
    /// Whether the peer is a trusted proxy whose forwarding headers we keep.
    pub trusted: bool,
    /// `http` or `https`: the scheme the client used with us.
    pub proto: &'static str,
    /// The host the client asked for, if any.
    pub host: Option<&'a HeaderValue>,
    /// The client's HTTP version, for `Via`.
    pub version: Version,
}

/// Sets `X-Forwarded-For/-Proto/-Host`, `Forwarded` and `Via`.
///
/// From an untrusted peer, any forwarding headers it sent are replaced: a client
/// must not be able to claim another address. From a trusted proxy, they are
/// kept and our hop is appended. The common case (untrusted, no `Via`) reuses
/// per-connection and static values instead of formatting new ones.
pub fn set_forwarding(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let peer = fwd.peer_value.to_str().unwrap_or_default();
    // Room for the six fields below up front: one growth instead of several.
    headers.reserve(6);

    let xff = match fwd.trusted.then(|| joined(headers, &X_FORWARDED_FOR)).flatten() {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {peer}")).ok(),
        None => Some(fwd.peer_value.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR, xff);
    }

    if !(fwd.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    if !(fwd.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match fwd.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    // RFC 7239: IPv6 nodes are quoted and bracketed; a host with a port needs quotes.
    let mut element = String::with_capacity(80);
    match fwd.peer {
        IpAddr::V4(_) => {
            element.push_str("for=");
            element.push_str(peer);
        }
        IpAddr::V6(_) => {
            element.push_str("for=\"[");
            element.push_str(peer);
            element.push_str("]\"");
        }
    }
    let host = fwd.host.and_then(|h| h.to_str().ok()).filter(|h| !h.contains('"'));
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    element.push_str(";proto=");
    element.push_str(fwd.proto);
    let forwarded = match fwd.trusted.then(|| joined(headers, &FORWARDED)).flatten() {
        Some(previous) => format!("{previous}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
        headers.insert(FORWARDED, value);
    }

    let hop = match fwd.version {
        Version::HTTP_10 => "1.0 switchyard",
        Version::HTTP_2 => "2 switchyard",
        Version::HTTP_3 => "3 switchyard",
        _ => "1.1 switchyard",
    };
    let via = match joined(headers, &header::VIA) {
        Some(previous) => HeaderValue::from_str(&format!("{previous}, {hop}")).ok(),
        None => Some(HeaderValue::from_static(hop)),
    };
    if let Some(via) = via {
        headers.insert(header::VIA, via);
    }
}

/// Applies configured header edits: remove, then set, then add.
pub fn apply_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        headers.remove(name);
    }
    for (name, value) in &ops.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &ops.add {
        headers.append(name.clone(), value.clone());
    }
}

/// All values of a field joined by `, ` (how repeated list fields combine).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    let mut out = first.to_owned();
    for v in values {
        out.push_str(", ");
        out.push_str(v);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_connection_listed_ones_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
    }

    static PEER: HeaderValue = HeaderValue::from_static("10.1.2.3");
    static HOST: HeaderValue = HeaderValue::from_static("api.example.com");

    fn fwd(trusted: bool) -> Forwarding<'static> {
        Forwarding {
            peer: "10.1.2.3".parse().unwrap(),
            peer_value: &PEER,
            trusted,
            proto: "http",
            host: Some(&HOST),
            version: Version::HTTP_11,
        }
    }

    #[test]
    fn untrusted_clients_cannot_forge_their_address() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        set_forwarding(&mut h, &fwd(false));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["forwarded"], "for=10.1.2.3;host=\"api.example.com\";proto=http");
        assert_eq!(h["via"], "1.1 switchyard");
    }

    #[test]
    fn trusted_proxies_chain_is_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.1.1.1"),
            ("via", "1.1 edge"),
        ]);
        set_forwarding(&mut h, &fwd(true));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=1.1.1.1, for=10.1.2.3;host=\"api.example.com\";proto=http"
        );
        assert_eq!(h["via"], "1.1 edge, 1.1 switchyard");
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let v6 = HeaderValue::from_static("::1");
        let f = Forwarding {
            peer: "::1".parse().unwrap(),
            peer_value: &v6,
            host: None,
            ..fwd(false)
        };
        set_forwarding(&mut h, &f);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let mut h = map(&[("x-a", "1"), ("x-b", "old"), ("x-c", "1")]);
        let ops = HeaderOps {
            remove: vec![HeaderName::from_static("x-a")],
            set: vec![(HeaderName::from_static("x-b"), HeaderValue::from_static("new"))],
            add: vec![(HeaderName::from_static("x-c"), HeaderValue::from_static("2"))],
        };
        apply_ops(&mut h, &ops);
        assert!(!h.contains_key("x-a"));
        assert_eq!(h["x-b"], "new");
        assert_eq!(h.get_all("x-c").iter().collect::<Vec<_>>(), ["1", "2"]);
    }
}
