//! Stage two: validate a [`RawConfig`] and settle it into a [`Config`].
//!
//! Validation and settling are one walk over the document: each value is checked
//! and converted where it stands, and every problem is recorded with its key path
//! rather than returned, so one run reports them all.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use regex::Regex;

use crate::diagnostic::{did_you_mean, Diagnostic, KeyPath};
use crate::raw::*;
use crate::settled::*;
use crate::units::{parse_duration, parse_size};

/// Checks `raw` and converts it; returns every problem found on failure.
pub fn settle(raw: RawConfig) -> Result<Config, Vec<Diagnostic>> {
    let mut settler = Settler::default();
    let config = settler.config(&raw);
    if settler.errors.is_empty() {
        Ok(Config { raw, ..config })
    } else {
        Err(settler.errors)
    }
}

mod aggregate;

#[derive(Default)]
struct Settler {
    errors: Vec<Diagnostic>,
    /// Whether `[cluster]` names a Redis (global rate limits need one).
    cluster_mode_present: bool,
}

impl Settler {
    fn error(&mut self, path: KeyPath, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(path, message));
    }

    fn error_with_hint(&mut self, path: KeyPath, message: impl Into<String>, hint: Option<String>) {
        let mut diagnostic = Diagnostic::new(path, message);
        diagnostic.hint = hint;
        self.errors.push(diagnostic);
    }

    fn config(&mut self, raw: &RawConfig) -> Config {
        let root = KeyPath::root();
        let runtime = self.runtime(&raw.runtime, &root.key("runtime"));
        let admin = raw.admin.as_ref().map(|a| self.admin(a, &root.key("admin")));
        // Names come from the raw document so that a cluster with an unrelated
        // error does not also make every route naming it fail.
        let listener_names: Vec<&str> = raw.listeners.iter().filter_map(|l| l.name.as_deref()).collect();
        let cluster_names: Vec<&str> = raw.clusters.iter().filter_map(|c| c.name.as_deref()).collect();
        let listeners = self.listeners(&raw.listeners, &root.key("listeners"), &cluster_names);
        let clusters = self.clusters(&raw.clusters, &root.key("clusters"));
        let cluster_mode = raw
            .cluster
            .as_ref()
            .and_then(|c| self.cluster_mode(c, &root.key("cluster")));
        self.cluster_mode_present = cluster_mode.is_some();
        let tracing = raw.tracing.as_ref().and_then(|t| self.tracing(t, &root.key("tracing")));
        let cache = raw
            .cache
            .as_ref()
            .map_or_else(CacheStore::default, |c| self.cache_store(c, &root.key("cache")));
        let l4_listener_names: Vec<&str> = raw
            .listeners
            .iter()
            .filter(|l| matches!(l.protocol.as_deref(), Some("tcp" | "udp")))
            .filter_map(|l| l.name.as_deref())
            .collect();
        let routes = self.routes(
            &raw.routes,
            &root.key("routes"),
            (&listener_names, &l4_listener_names),
            &cluster_names,
        );
        self.cross_checks(raw, &clusters);
        Config {
            runtime,
            admin,
            access_log: raw.access_log.enabled.unwrap_or(true),
            listeners,
            routes,
            clusters,
            cluster_mode,
            tracing,
            cache,
            raw: RawConfig::default(),
        }
    }

    /// Settings that are fine alone but do nothing (or break) where they are used.
    fn cross_checks(&mut self, raw: &RawConfig, clusters: &[Cluster]) {
        let cluster = |name: &str| clusters.iter().find(|c| c.name == name);
        let mut reported = HashSet::new();
        for (i, route) in raw.routes.iter().enumerate() {
            let Some(target) = route.cluster.as_deref().and_then(cluster) else {
                continue;
            };
            if route.grpc_web == Some(true) && target.protocol != UpstreamProtocol::Http2 {
                self.error(
                    KeyPath::root().key("routes").index(i).key("grpc_web"),
                    format!(
                        "gRPC goes over HTTP/2: cluster \"{}\" needs `protocol = \"http2\"`",
                        target.name
                    ),
                );
            }
            if target.proxy_protocol.is_some() && reported.insert(target.name.clone()) {
                let at = raw
                    .clusters
                    .iter()
                    .position(|c| c.name.as_deref() == Some(&target.name));
                let path = at.map_or_else(KeyPath::root, |j| KeyPath::root().key("clusters").index(j));
                self.error(
                    path.key("proxy_protocol"),
                    format!(
                        "PROXY headers are sent on tcp listener connections only, but route \"{}\" forwards HTTP to this cluster",
                        route.name.as_deref().unwrap_or("-")
                    ),
                );
            }
        }
        for (i, listener) in raw.listeners.iter().enumerate() {
            if listener.protocol.as_deref() != Some("tcp") {
                continue;
            }
            let named = listener
                .cluster
                .iter()
                .chain(listener.sni_routes.iter().filter_map(|r| r.cluster.as_ref()));
            for name in named {
                if cluster(name).is_some_and(|c| c.tls.is_some()) {
                    self.error(
                        KeyPath::root().key("listeners").index(i).key("cluster"),
                        format!("cluster \"{name}\" has `tls`, which tcp listeners do not originate (they pass bytes through)"),
                    );
                }
            }
        }
    }

    fn tracing(&mut self, raw: &RawTracing, at: &KeyPath) -> Option<Tracing> {
        let endpoint = match &raw.otlp_endpoint {
            None => {
                self.error(
                    at.key("otlp_endpoint"),
                    "[tracing] needs `otlp_endpoint`, such as \"http://127.0.0.1:4318/v1/traces\"",
                );
                None
            }
            Some(text) => match text.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => Some(uri),
                _ => {
                    self.error(
                        at.key("otlp_endpoint"),
                        format!("\"{text}\" is not an http:// or https:// URL of an OTLP/HTTP collector"),
                    );
                    None
                }
            },
        };
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            self.error(at.key("sample_ratio"), "sample_ratio must be between 0 and 1");
        }
        let batch_size = raw.batch_size.unwrap_or(defaults::TRACE_BATCH_SIZE);
        if batch_size == 0 {
            self.error(at.key("batch_size"), "batch_size must be at least 1");
        }
        let queue_size = raw.queue_size.unwrap_or(defaults::TRACE_QUEUE_SIZE);
        if queue_size < batch_size {
            self.error(at.key("queue_size"), "queue_size must be at least batch_size");
        }
        let batch_timeout = self.duration(
            &raw.batch_timeout,
            at.key("batch_timeout"),
            defaults::TRACE_BATCH_TIMEOUT,
        );
        let export_timeout = self.duration(
            &raw.export_timeout,
            at.key("export_timeout"),
            defaults::TRACE_EXPORT_TIMEOUT,
        );
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            match (HeaderName::from_str(name), HeaderValue::from_str(value)) {
                (Ok(name), Ok(value)) => headers.push((name, value)),
                (Err(_), _) => self.error(at.key("headers").key(name), format!("\"{name}\" is not a header name")),
                (_, Err(_)) => self.error(at.key("headers").key(name), "not a valid header value"),
            }
        }
        Some(Tracing {
            otlp_endpoint: endpoint?,
            sample_ratio: sample_ratio.clamp(0.0, 1.0),
            service_name: raw.service_name.clone().unwrap_or_else(|| "switchyard".to_owned()),
            batch_size: batch_size.max(1),
            batch_timeout,
            queue_size: queue_size.max(batch_size.max(1)),
            export_timeout,
            headers,
        })
    }

    // ----- shared value checks -------------------------------------------------

    fn duration(&mut self, value: &Option<String>, path: KeyPath, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.error(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    /// Like [`Settler::duration`], where zero is a meaningful value.
    fn duration_or_zero(&mut self, value: &Option<String>, path: KeyPath, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        parse_duration(text).unwrap_or_else(|message| {
            self.error(path, message);
            default
        })
    }

    /// A list of networks (`10.0.0.0/8`, `2001:db8::/32`, or single addresses).
    fn networks(&mut self, entries: &[String], path: KeyPath) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, cidr) in entries.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => nets.push(net),
                None => self.error(
                    path.index(i),
                    format!("invalid CIDR \"{cidr}\": expected an address or network such as \"10.0.0.0/8\" or \"2001:db8::/32\""),
                ),
            }
        }
        nets
    }

    fn size(&mut self, value: &Option<String>, path: KeyPath, default: u64) -> u64 {
        let Some(text) = value else { return default };
        parse_size(text).unwrap_or_else(|message| {
            self.error(path, message);
            default
        })
    }

    fn optional_size(&mut self, value: &Option<String>, path: KeyPath) -> Option<u64> {
        value.as_ref().map(|_| self.size(value, path, u64::MAX))
    }

    fn socket_addr(&mut self, text: &str, path: KeyPath) -> Option<SocketAddr> {
        match SocketAddr::from_str(text) {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    path,
                    format!(
                        "invalid address \"{text}\": expected IP:PORT, such as \"127.0.0.1:8080\" or \"[::1]:8080\""
                    ),
                );
                None
            }
        }
    }

    /// A required name: present, non-empty, made of `[A-Za-z0-9_.-]`, unique in `seen`.
    fn name(
        &mut self,
        value: &Option<String>,
        path: KeyPath,
        kind: &str,
        seen: &mut HashSet<String>,
    ) -> Option<String> {
        let Some(name) = value else {
            self.error(path, format!("every {kind} needs a `name`"));
            return None;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            self.error(
                path,
                format!("invalid {kind} name \"{name}\": use letters, digits, '_', '.' and '-'"),
            );
            return None;
        }
        if !seen.insert(name.clone()) {
            self.error(path, format!("duplicate {kind} name \"{name}\""));
        }
        Some(name.clone())
    }

    fn header_name(&mut self, name: &str, path: KeyPath) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.error(path, format!("invalid header name \"{name}\""));
                None
            }
        }
    }

    fn header_value(&mut self, value: &str, path: KeyPath) -> Option<HeaderValue> {
        match HeaderValue::from_str(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    path,
                    format!("invalid header value \"{value}\": control characters are not allowed"),
                );
                None
            }
        }
    }

    fn regex(&mut self, pattern: &str, path: KeyPath) -> Option<Regex> {
        // Anchored: a route regex describes the whole value, not a substring.
        match Regex::new(&format!("^(?:{pattern})$")) {
            Ok(re) => Some(re),
            Err(e) => {
                self.error(path, format!("invalid regex \"{pattern}\": {e}"));
                None
            }
        }
    }

    // ----- sections -------------------------------------------------------------

    fn runtime(&mut self, raw: &RawRuntime, path: &KeyPath) -> Runtime {
        Runtime {
            workers: raw.workers.unwrap_or(0),
            drain_timeout: self.duration(&raw.drain_timeout, path.key("drain_timeout"), defaults::DRAIN_TIMEOUT),
            removed_route_grace: self.duration(
                &raw.removed_route_grace,
                path.key("removed_route_grace"),
                Duration::from_secs(30),
            ),
            upgrade_socket: raw.upgrade_socket.as_ref().and_then(|text| {
                // sun_path holds 108 bytes with the terminating NUL.
                if text.is_empty() || text.len() > 107 {
                    self.error(
                        path.key("upgrade_socket"),
                        format!("a Unix socket path must be 1 to 107 bytes long, not {}", text.len()),
                    );
                    return None;
                }
                Some(std::path::PathBuf::from(text))
            }),
            upgrade_timeout: self.duration(
                &raw.upgrade_timeout,
                path.key("upgrade_timeout"),
                Duration::from_secs(60),
            ),
            upgrade_drain_timeout: self.duration(
                &raw.upgrade_drain_timeout,
                path.key("upgrade_drain_timeout"),
                Duration::from_secs(600),
            ),
            pid_file: raw.pid_file.as_ref().map(std::path::PathBuf::from),
        }
    }

    fn admin(&mut self, raw: &RawAdmin, path: &KeyPath) -> Admin {
        let text = raw.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN);
        let listen = self
            .socket_addr(text, path.key("listen"))
            .unwrap_or_else(|| defaults::ADMIN_LISTEN.parse().expect("default admin address is valid"));
        if let Some(token) = &raw.token {
            if token.len() < 16 {
                self.error(
                    path.key("token"),
                    "admin token is too short: use at least 16 characters",
                );
            }
        } else if !listen.ip().is_loopback() {
            self.error(
                path.key("token"),
                format!("the admin API listens on non-loopback address {listen}: set `token` so it cannot be used by anyone who can reach it"),
            );
        }
        Admin {
            listen,
            token: raw.token.clone(),
        }
    }

    fn listeners(&mut self, raw: &[RawListener], path: &KeyPath, clusters: &[&str]) -> Vec<Listener> {
        let mut names = HashSet::new();
        // TCP and UDP ports are separate: a tcp and a udp listener may share one.
        let mut addresses: HashMap<(SocketAddr, bool), String> = HashMap::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let at = path.index(i);
            let name = self.name(&l.name, at.key("name"), "listener", &mut names);
            let listen = match &l.listen {
                Some(text) => self.socket_addr(text, at.key("listen")),
                None => {
                    self.error(
                        at.key("listen"),
                        "every listener needs a `listen` address, such as \"127.0.0.1:8080\"",
                    );
                    None
                }
            };
            if let (Some(addr), Some(name)) = (listen, &name) {
                if addr.port() != 0 {
                    let udp = l.protocol.as_deref() == Some("udp");
                    if let Some(other) = addresses.insert((addr, udp), name.clone()) {
                        self.error(
                            at.key("listen"),
                            format!("address {addr} is already used by listener \"{other}\""),
                        );
                    }
                }
            }
            let protocol = match l.protocol.as_deref().unwrap_or("http") {
                "http" => Some(ListenerProtocol::Http),
                "https" => Some(ListenerProtocol::Https),
                "tcp" => Some(ListenerProtocol::Tcp),
                "udp" => Some(ListenerProtocol::Udp),
                other => {
                    let hint = did_you_mean(other, ["http", "https", "tcp", "udp"]);
                    self.error_with_hint(at.key("protocol"), format!("unknown protocol \"{other}\""), hint);
                    None
                }
            };
            let trusted_proxies = self.networks(&l.trusted_proxies, at.key("trusted_proxies"));
            let header_read_timeout = self.duration(
                &l.header_read_timeout,
                at.key("header_read_timeout"),
                defaults::HEADER_READ_TIMEOUT,
            );
            let idle_default = match protocol {
                Some(ListenerProtocol::Tcp) => defaults::TCP_IDLE_TIMEOUT,
                Some(ListenerProtocol::Udp) => defaults::UDP_IDLE_TIMEOUT,
                _ => defaults::LISTENER_IDLE_TIMEOUT,
            };
            let idle_timeout = self.duration(&l.idle_timeout, at.key("idle_timeout"), idle_default);
            let sni_routes = protocol.map_or_else(Vec::new, |p| self.l4_listener(l, p, &at, clusters));
            let max_header_size = self.size(&l.max_header_size, at.key("max_header_size"), defaults::MAX_HEADER_SIZE);
            // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
            if !(8192..=(16 << 20)).contains(&max_header_size) {
                self.error(at.key("max_header_size"), "must be between 8KiB and 16MiB");
            }
            let max_headers = l.max_headers.unwrap_or(defaults::MAX_HEADERS);
            if max_headers == 0 {
                self.error(at.key("max_headers"), "must be at least 1");
            }
            let max_concurrent_streams = l.max_concurrent_streams.unwrap_or(defaults::MAX_CONCURRENT_STREAMS);
            if max_concurrent_streams == 0 {
                self.error(at.key("max_concurrent_streams"), "must be at least 1");
            }
            let ip_filter = l
                .ip_filter
                .as_ref()
                .map(|raw| self.ip_filter(raw, &at.key("ip_filter")));
            let tls = match (&l.tls, protocol) {
                (Some(raw), Some(ListenerProtocol::Https)) => Some(self.tls(raw, &at.key("tls"))),
                (None, Some(ListenerProtocol::Https)) => {
                    self.error(
                        at.key("tls"),
                        "an https listener needs `tls = { certificates = [{ cert = \"cert.pem\", key = \"key.pem\" }] }`",
                    );
                    None
                }
                (Some(_), Some(_)) => {
                    self.error(at.key("tls"), "`tls` is for `protocol = \"https\"` listeners");
                    None
                }
                _ => None,
            };
            let max_body_size = self.optional_size(&l.max_body_size, at.key("max_body_size"));
            let min_body_rate = self
                .optional_size(&l.min_body_rate, at.key("min_body_rate"))
                .map(|rate| {
                    let grace = self.duration(&l.body_rate_grace, at.key("body_rate_grace"), Duration::from_secs(10));
                    if rate == 0 {
                        self.error(at.key("min_body_rate"), "must be above 0 (leave it out for no minimum)");
                    }
                    (rate, grace)
                });
            if l.proxy_protocol == Some(true) && l.trusted_proxies.is_empty() {
                self.error(
                    at.key("proxy_protocol"),
                    "PROXY headers are accepted from trusted peers only: list them in `trusted_proxies`",
                );
            }
            if l.body_rate_grace.is_some() && l.min_body_rate.is_none() {
                self.error(at.key("body_rate_grace"), "only applies with `min_body_rate`");
            }
            let max_uri_length = self.size(&l.max_uri_length, at.key("max_uri_length"), defaults::MAX_URI_LENGTH);
            if !(16..=65536).contains(&max_uri_length) {
                self.error(at.key("max_uri_length"), "must be between 16B and 64KiB");
            }
            for (key, value) in [
                ("max_connections", l.max_connections),
                ("max_connections_per_ip", l.max_connections_per_ip),
            ] {
                if value == Some(0) {
                    self.error(at.key(key), "must be at least 1 (leave it out for no limit)");
                }
            }
            if let (Some(total), Some(per_ip)) = (l.max_connections, l.max_connections_per_ip) {
                if per_ip > total {
                    self.error(
                        at.key("max_connections_per_ip"),
                        format!("{per_ip} is more than `max_connections` ({total})"),
                    );
                }
            }
            if let (Some(name), Some(listen), Some(protocol)) = (name, listen, protocol) {
                out.push(Listener {
                    name,
                    listen,
                    protocol,
                    trusted_proxies,
                    header_read_timeout,
                    idle_timeout,
                    max_header_size: max_header_size as usize,
                    max_headers,
                    max_concurrent_streams,
                    ip_filter,
                    max_body_size,
                    max_uri_length: max_uri_length as usize,
                    max_connections: l.max_connections.filter(|&n| n > 0),
                    max_connections_per_ip: l.max_connections_per_ip.filter(|&n| n > 0),
                    tls,
                    min_body_rate,
                    proxy_protocol: l.proxy_protocol.unwrap_or(false),
                    cluster: l.cluster.clone(),
                    sni_routes,
                    connect_attempts: l.connect_attempts.unwrap_or(defaults::TCP_CONNECT_ATTEMPTS).max(1),
                    max_sessions: l.max_sessions.unwrap_or(defaults::UDP_MAX_SESSIONS),
                });
            }
        }
        out
    }

    /// Checks the keys of `tcp` and `udp` listeners (and that HTTP listeners
    /// have none of them); returns the TLS passthrough rules.
    fn l4_listener(
        &mut self,
        l: &RawListener,
        protocol: ListenerProtocol,
        at: &KeyPath,
        clusters: &[&str],
    ) -> Vec<SniRoute> {
        let name = match protocol {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Udp => "udp",
        };
        use ListenerProtocol::{Tcp, Udp};
        // (key, present, the protocols it is for, as the message names them)
        let keys = [
            ("cluster", l.cluster.is_some(), &[Tcp, Udp][..], "\"tcp\" or \"udp\""),
            ("sni_routes", !l.sni_routes.is_empty(), &[Tcp][..], "\"tcp\""),
            ("connect_attempts", l.connect_attempts.is_some(), &[Tcp][..], "\"tcp\""),
            ("max_sessions", l.max_sessions.is_some(), &[Udp][..], "\"udp\""),
        ];
        let misplaced = keys
            .into_iter()
            .filter(|(_, present, allowed, _)| *present && !allowed.contains(&protocol))
            .map(|(key, _, _, kinds)| {
                (
                    key,
                    format!("`{key}` is for `protocol = {kinds}` listeners, not \"{name}\""),
                )
            });
        for (key, message) in misplaced {
            self.error(at.key(key), message);
        }
        if protocol == Udp && l.proxy_protocol == Some(true) {
            self.error(
                at.key("proxy_protocol"),
                "UDP datagrams carry no PROXY header: remove it from this udp listener",
            );
        }
        if !protocol.is_http() {
            for (key, present) in [
                ("max_header_size", l.max_header_size.is_some()),
                ("max_headers", l.max_headers.is_some()),
                ("max_concurrent_streams", l.max_concurrent_streams.is_some()),
                ("max_body_size", l.max_body_size.is_some()),
                ("max_uri_length", l.max_uri_length.is_some()),
                ("min_body_rate", l.min_body_rate.is_some()),
            ] {
                if present {
                    self.error(
                        at.key(key),
                        format!("`{key}` is an HTTP setting; a {name} listener has no use for it"),
                    );
                }
            }
        }
        if l.connect_attempts.is_some_and(|n| !(1..=10).contains(&n)) {
            self.error(
                at.key("connect_attempts"),
                "use 1 to 10 (endpoints tried per connection)",
            );
        }
        if l.max_sessions == Some(0) {
            self.error(at.key("max_sessions"), "must be at least 1");
        }
        let check_cluster = |this: &mut Self, cluster: &str, key: KeyPath| {
            if !clusters.contains(&cluster) {
                let hint = did_you_mean(cluster, clusters.iter().copied());
                this.error_with_hint(key, format!("no cluster named \"{cluster}\""), hint);
            }
        };
        if let Some(cluster) = &l.cluster {
            check_cluster(self, cluster, at.key("cluster"));
        }
        let mut rules = Vec::new();
        for (i, raw) in l.sni_routes.iter().enumerate() {
            let at = at.key("sni_routes").index(i);
            if raw.server_names.is_empty() {
                self.error(
                    at.key("server_names"),
                    "list at least one server name, such as \"db.example.com\"",
                );
            }
            let mut server_names = Vec::new();
            for (j, name) in raw.server_names.iter().enumerate() {
                let lower = name.to_ascii_lowercase();
                let host = lower.strip_prefix("*.").unwrap_or(&lower);
                let valid = !host.is_empty()
                    && host.split('.').all(|label| {
                        !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !valid {
                    self.error(
                        at.key("server_names").index(j),
                        format!("\"{name}\" is not a host name or a `*.domain` wildcard"),
                    );
                }
                server_names.push(lower);
            }
            match &raw.cluster {
                Some(cluster) => {
                    check_cluster(self, cluster, at.key("cluster"));
                    rules.push(SniRoute {
                        server_names,
                        cluster: cluster.clone(),
                    });
                }
                None => self.error(
                    at.key("cluster"),
                    "each SNI rule needs the `cluster` its connections go to",
                ),
            }
        }
        if !protocol.is_http() && l.cluster.is_none() && rules.is_empty() && l.sni_routes.is_empty() {
            let example = if protocol == Tcp {
                "`cluster = \"db\"` (or `sni_routes`)"
            } else {
                "`cluster = \"dns\"`"
            };
            self.error(
                at.key("cluster"),
                format!("a {name} listener forwards to a cluster: add {example}"),
            );
        }
        rules
    }

    fn clusters(&mut self, raw: &[RawCluster], path: &KeyPath) -> Vec<Cluster> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let at = path.index(i);
            let name = self.name(&c.name, at.key("name"), "cluster", &mut names);
            let wanted = c.balancer.as_deref().unwrap_or("round_robin");
            let balancer = match BalancerKind::ALL.iter().find(|(name, _)| *name == wanted) {
                Some((_, kind)) => Some(*kind),
                None => {
                    let hint = did_you_mean(wanted, BalancerKind::ALL.iter().map(|(name, _)| *name));
                    self.error_with_hint(at.key("balancer"), format!("unknown balancer \"{wanted}\""), hint);
                    None
                }
            };
            let hash_key = match &c.hash_key {
                Some(raw) => self.hash_key(raw, &at.key("hash_key"), balancer),
                None => HashKey::ClientIp,
            };
            let slow_start = c
                .slow_start
                .is_some()
                .then(|| self.duration(&c.slow_start, at.key("slow_start"), Duration::ZERO));
            let health_check = c
                .health_check
                .as_ref()
                .map(|raw| self.health_check(raw, &at.key("health_check")));
            let outlier_detection = c
                .outlier_detection
                .as_ref()
                .map(|raw| self.outlier_detection(raw, &at.key("outlier_detection")));
            let panic_threshold = c.panic_threshold.unwrap_or(defaults::PANIC_THRESHOLD);
            if panic_threshold > 100 {
                self.error(
                    at.key("panic_threshold"),
                    format!("{panic_threshold} is not a percentage: use 0 to 100 (0 turns panic mode off)"),
                );
            }
            let sticky = c
                .sticky
                .as_ref()
                .map(|raw| self.sticky(raw, &at.key("sticky"), balancer));
            let retry_budget = self.retry_budget(c.retry_budget.as_ref(), &at.key("retry_budget"));
            let circuit_breaker = c
                .circuit_breaker
                .as_ref()
                .map(|raw| self.circuit_breaker(raw, &at.key("circuit_breaker")));
            let tls = c.tls.as_ref().map(|raw| self.upstream_tls(raw, &at.key("tls")));
            let proxy_protocol = match c.proxy_protocol.as_deref() {
                None => None,
                Some("v1") => Some(ProxyProtocolVersion::V1),
                Some("v2") => Some(ProxyProtocolVersion::V2),
                Some(other) => {
                    self.error(
                        at.key("proxy_protocol"),
                        format!("unknown PROXY protocol version \"{other}\": use \"v1\" or \"v2\""),
                    );
                    None
                }
            };
            if tls.is_some() && matches!(&health_check, Some(check) if check.kind != HealthCheckKind::Tcp) {
                self.error(
                    at.key("health_check").key("type"),
                    "HTTP health checks speak cleartext: use `type = \"tcp\"` for a cluster with `tls`",
                );
            }
            let endpoints_from = c
                .endpoints_from
                .as_ref()
                .and_then(|raw| self.endpoints_from(raw, &at.key("endpoints_from")));
            match (c.endpoints.is_empty(), &c.endpoints_from) {
                (true, None) => self.error(
                    at.key("endpoints"),
                    "a cluster needs at least one endpoint, or `endpoints_from` to discover them",
                ),
                (false, Some(_)) => self.error(
                    at.key("endpoints_from"),
                    "a cluster takes `endpoints` or `endpoints_from`, not both",
                ),
                _ => {}
            }
            let mut endpoints = Vec::new();
            let mut seen = HashSet::new();
            for (j, e) in c.endpoints.iter().enumerate() {
                let ep = at.key("endpoints").index(j);
                let Some(address) = &e.address else {
                    self.error(
                        ep.key("address"),
                        "every endpoint needs an `address`, such as \"127.0.0.1:9001\"",
                    );
                    continue;
                };
                if let Err(message) = check_host_port(address) {
                    self.error(ep.key("address"), message);
                    continue;
                }
                if !seen.insert(address.clone()) {
                    self.error(ep.key("address"), format!("endpoint {address} is listed twice"));
                }
                let weight = e.weight.unwrap_or(1);
                if weight == 0 {
                    self.error(
                        ep.key("weight"),
                        "weight must be at least 1 (remove the endpoint to stop sending it traffic)",
                    );
                }
                endpoints.push(Endpoint {
                    address: address.clone(),
                    weight: weight.max(1),
                });
            }
            let protocol = match c.protocol.as_deref().unwrap_or("http1") {
                "http1" => Some(UpstreamProtocol::Http1),
                "http2" => Some(UpstreamProtocol::Http2),
                other => {
                    let hint = did_you_mean(other, ["http1", "http2"]);
                    self.error_with_hint(
                        at.key("protocol"),
                        format!("unknown upstream protocol \"{other}\" (expected \"http1\" or \"http2\")"),
                        hint,
                    );
                    None
                }
            };
            let connect_timeout =
                self.duration(&c.connect_timeout, at.key("connect_timeout"), defaults::CONNECT_TIMEOUT);
            let pool = c.pool.clone().unwrap_or_default();
            let pool_idle_timeout = self.duration(
                &pool.idle_timeout,
                at.key("pool").key("idle_timeout"),
                defaults::POOL_IDLE_TIMEOUT,
            );
            if let (Some(name), Some(balancer), Some(protocol)) = (name, balancer, protocol) {
                out.push(Cluster {
                    name,
                    balancer,
                    endpoints,
                    endpoints_from,
                    protocol,
                    connect_timeout,
                    pool_max_idle_per_endpoint: pool.max_idle_per_endpoint.unwrap_or(defaults::POOL_MAX_IDLE),
                    pool_idle_timeout,
                    hash_key,
                    slow_start,
                    health_check,
                    outlier_detection,
                    panic_threshold: panic_threshold.min(100),
                    sticky,
                    retry_budget,
                    circuit_breaker,
                    tls,
                    proxy_protocol,
                });
            }
        }
        out
    }

    fn endpoints_from(&mut self, raw: &RawEndpointsFrom, at: &KeyPath) -> Option<EndpointSource> {
        match (&raw.registry, &raw.dns) {
            (Some(service), None) => {
                for (key, set) in [
                    ("port", raw.port.is_some()),
                    ("record", raw.record.is_some()),
                    ("resolver", raw.resolver.is_some()),
                    ("min_refresh", raw.min_refresh.is_some()),
                    ("max_refresh", raw.max_refresh.is_some()),
                    ("weight", raw.weight.is_some()),
                ] {
                    if set {
                        self.error(
                            at.key(key),
                            format!("`{key}` applies to DNS discovery; registry instances carry their own"),
                        );
                    }
                }
                if service.is_empty() {
                    self.error(at.key("registry"), "the registry service name is empty");
                    return None;
                }
                Some(EndpointSource::Registry {
                    service: service.clone(),
                })
            }
            (None, Some(name)) => {
                let record = match raw.record.as_deref().unwrap_or("a") {
                    "a" => DnsRecord::Address,
                    "srv" => DnsRecord::Srv,
                    other => {
                        let hint = did_you_mean(other, ["a", "srv"]);
                        self.error_with_hint(
                            at.key("record"),
                            format!("unknown DNS record kind \"{other}\" (expected \"a\" for A/AAAA or \"srv\")"),
                            hint,
                        );
                        return None;
                    }
                };
                let port = match (record, raw.port) {
                    (DnsRecord::Address, Some(0)) | (DnsRecord::Address, None) => {
                        self.error(
                            at.key("port"),
                            "DNS discovery by A/AAAA records needs the endpoints' `port` (1-65535)",
                        );
                        0
                    }
                    (DnsRecord::Address, Some(port)) => port,
                    (DnsRecord::Srv, None) => 0,
                    (DnsRecord::Srv, Some(_)) => {
                        self.error(at.key("port"), "SRV records carry their own ports: remove `port`");
                        0
                    }
                };
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
                    self.error(at.key("dns"), format!("\"{name}\" is not a DNS name"));
                }
                let resolver = raw.resolver.as_ref().and_then(|text| match text.parse::<SocketAddr>() {
                    Ok(address) => Some(address),
                    Err(_) => {
                        self.error(
                            at.key("resolver"),
                            format!("\"{text}\" is not a nameserver address such as \"10.0.0.2:53\""),
                        );
                        None
                    }
                });
                let min_refresh = self.duration(&raw.min_refresh, at.key("min_refresh"), defaults::DNS_MIN_REFRESH);
                let max_refresh = self.duration(&raw.max_refresh, at.key("max_refresh"), defaults::DNS_MAX_REFRESH);
                if min_refresh > max_refresh {
                    self.error(at.key("min_refresh"), "min_refresh is longer than max_refresh");
                }
                let weight = raw.weight.unwrap_or(1);
                if weight == 0 {
                    self.error(at.key("weight"), "weight must be at least 1");
                }
                Some(EndpointSource::Dns(DnsDiscovery {
                    name: name.clone(),
                    record,
                    port,
                    resolver,
                    min_refresh,
                    max_refresh,
                    weight: weight.max(1),
                }))
            }
            (Some(_), Some(_)) => {
                self.error(at.key("dns"), "`endpoints_from` takes `registry` or `dns`, not both");
                None
            }
            (None, None) => {
                self.error(
                    at.clone(),
                    "`endpoints_from` needs `registry = \"service\"` or `dns = \"name\"`",
                );
                None
            }
        }
    }

    fn hash_key(&mut self, raw: &RawHashKey, at: &KeyPath, balancer: Option<BalancerKind>) -> HashKey {
        let given: Vec<&str> = [
            ("header", raw.header.is_some()),
            ("cookie", raw.cookie.is_some()),
            ("path", raw.path.is_some()),
            ("client_ip", raw.client_ip.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(k, _)| *k)
        .collect();
        if given.len() != 1 {
            self.error(
                at.clone(),
                format!(
                    "`hash_key` takes exactly one of `header`, `cookie`, `path` and `client_ip` (found {})",
                    if given.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("`{}`", given.join("`, `"))
                    }
                ),
            );
            return HashKey::ClientIp;
        }
        if balancer.is_some_and(|b| b != BalancerKind::ConsistentHash) {
            self.error(
                at.clone(),
                "`hash_key` only applies to `balancer = \"consistent_hash\"` (`ip_hash` always hashes the client address)",
            );
        }
        for (key, flag) in [("path", raw.path), ("client_ip", raw.client_ip)] {
            if flag == Some(false) {
                self.error(at.key(key), format!("write `{key} = true`, or choose another key"));
            }
        }
        if let Some(name) = &raw.header {
            return self
                .header_name(name, at.key("header"))
                .map_or(HashKey::ClientIp, HashKey::Header);
        }
        if let Some(name) = &raw.cookie {
            if !valid_cookie_name(name) {
                self.error(at.key("cookie"), format!("invalid cookie name \"{name}\""));
            }
            return HashKey::Cookie(name.clone());
        }
        if raw.path.is_some() {
            return HashKey::Path;
        }
        HashKey::ClientIp
    }

    fn health_check(&mut self, raw: &RawHealthCheck, at: &KeyPath) -> HealthCheck {
        let interval = self.duration(&raw.interval, at.key("interval"), defaults::HEALTH_INTERVAL);
        let jitter = self.duration_or_zero(&raw.jitter, at.key("jitter"), interval / 10);
        let timeout = self.duration(&raw.timeout, at.key("timeout"), defaults::HEALTH_TIMEOUT);
        if timeout > interval {
            self.error(
                at.key("timeout"),
                format!(
                    "the check timeout ({}) is longer than its interval ({}): checks would overlap",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut threshold = |value: Option<u32>, key: &str, default: u32| {
            let n = value.unwrap_or(default);
            if n == 0 {
                self.error(at.key(key), "must be at least 1");
            }
            n.max(1)
        };
        let healthy_threshold = threshold(raw.healthy_threshold, "healthy_threshold", defaults::HEALTHY_THRESHOLD);
        let unhealthy_threshold = threshold(
            raw.unhealthy_threshold,
            "unhealthy_threshold",
            defaults::UNHEALTHY_THRESHOLD,
        );
        let kind = match raw.kind.as_deref().unwrap_or("http") {
            "http" => {
                let path = raw.path.clone().unwrap_or_else(|| defaults::HEALTH_PATH.to_owned());
                if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                    self.error(
                        at.key("path"),
                        format!("invalid check path \"{path}\": expected an absolute path such as \"/healthz\""),
                    );
                }
                if let Some(host) = &raw.host {
                    if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
                        self.error(at.key("host"), format!("invalid Host header value \"{host}\""));
                    }
                }
                let mut expected_statuses = Vec::new();
                for (i, status) in raw.expected_statuses.iter().enumerate() {
                    match status_range(status) {
                        Ok(range) => expected_statuses.push(range),
                        Err(message) => self.error(at.key("expected_statuses").index(i), message),
                    }
                }
                if expected_statuses.is_empty() {
                    expected_statuses.push((200, 399));
                }
                HealthCheckKind::Http {
                    path,
                    host: raw.host.clone(),
                    expected_statuses,
                    body_contains: raw.body_contains.clone(),
                }
            }
            "tcp" => {
                let http_only = [
                    ("path", raw.path.is_some()),
                    ("host", raw.host.is_some()),
                    ("expected_statuses", !raw.expected_statuses.is_empty()),
                    ("body_contains", raw.body_contains.is_some()),
                ];
                for (key, _) in http_only.iter().filter(|(_, present)| *present) {
                    self.error(
                        at.key(key),
                        "only HTTP checks take this key (this check is `type = \"tcp\"`)",
                    );
                }
                HealthCheckKind::Tcp
            }
            other => {
                let hint = did_you_mean(other, ["http", "tcp"]);
                self.error_with_hint(
                    at.key("type"),
                    format!("unknown check type \"{other}\" (expected \"http\" or \"tcp\")"),
                    hint,
                );
                HealthCheckKind::Tcp
            }
        };
        HealthCheck {
            kind,
            interval,
            jitter,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn outlier_detection(&mut self, raw: &RawOutlierDetection, at: &KeyPath) -> OutlierDetection {
        let consecutive_failures = raw
            .consecutive_failures
            .unwrap_or(defaults::OUTLIER_CONSECUTIVE_FAILURES);
        if consecutive_failures == 0 {
            self.error(at.key("consecutive_failures"), "must be at least 1");
        }
        let base_ejection = self.duration(
            &raw.base_ejection,
            at.key("base_ejection"),
            defaults::OUTLIER_BASE_EJECTION,
        );
        let max_ejection = self.duration(
            &raw.max_ejection,
            at.key("max_ejection"),
            defaults::OUTLIER_MAX_EJECTION.max(base_ejection),
        );
        if max_ejection < base_ejection {
            self.error(
                at.key("max_ejection"),
                format!(
                    "shorter than `base_ejection` ({}): ejections could never last their base time",
                    humantime::format_duration(base_ejection)
                ),
            );
        }
        let max_ejected_percent = raw.max_ejected_percent.unwrap_or(defaults::OUTLIER_MAX_EJECTED_PERCENT);
        if max_ejected_percent > 100 {
            self.error(
                at.key("max_ejected_percent"),
                format!("{max_ejected_percent} is not a percentage: use 0 to 100"),
            );
        }
        OutlierDetection {
            consecutive_failures: consecutive_failures.max(1),
            base_ejection,
            max_ejection: max_ejection.max(base_ejection),
            max_ejected_percent: max_ejected_percent.min(100),
        }
    }

    fn sticky(&mut self, raw: &RawSticky, at: &KeyPath, balancer: Option<BalancerKind>) -> Sticky {
        let cookie = raw.cookie.clone().unwrap_or_else(|| defaults::STICKY_COOKIE.to_owned());
        if !valid_cookie_name(&cookie) {
            self.error(at.key("cookie"), format!("invalid cookie name \"{cookie}\""));
        }
        if matches!(balancer, Some(BalancerKind::IpHash | BalancerKind::ConsistentHash)) {
            self.error(
                at.clone(),
                "hashing balancers already give affinity: use `sticky` with a non-hashing balancer, or drop it",
            );
        }
        let ttl = raw
            .ttl
            .is_some()
            .then(|| self.duration(&raw.ttl, at.key("ttl"), Duration::ZERO));
        Sticky { cookie, ttl }
    }

    /// `listeners` are the HTTP listeners' names, `l4_listeners` the others'.
    fn routes(
        &mut self,
        raw: &[Box<RawRoute>],
        path: &KeyPath,
        (listeners, l4_listeners): (&[&str], &[&str]),
        clusters: &[&str],
    ) -> Vec<Arc<Route>> {
        let mut names = HashSet::with_capacity(raw.len());
        let mut out = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let at = path.index(i);
            let name = match &r.name {
                Some(_) => self.name(&r.name, at.key("name"), "route", &mut names),
                None => Some(format!("route-{i}")),
            };
            if r.name.is_none() && raw.iter().any(|other| other.name.as_deref() == name.as_deref()) {
                self.error(
                    at.key("name"),
                    format!(
                        "this unnamed route would be called \"route-{i}\", which another route uses: give it a `name`"
                    ),
                );
            }
            if let Some(listener) = &r.listener {
                if l4_listeners.contains(&listener.as_str()) {
                    self.error(
                        at.key("listener"),
                        format!("\"{listener}\" is a tcp/udp listener: it forwards to its `cluster` and takes no HTTP routes"),
                    );
                }
                if !listeners.contains(&listener.as_str()) {
                    let hint = did_you_mean(listener, listeners.iter().copied());
                    self.error_with_hint(at.key("listener"), format!("no listener named \"{listener}\""), hint);
                }
            }
            let matcher = self.route_match(&r.matcher, &at.key("match"));
            let timeout = self.duration(&r.timeout, at.key("timeout"), defaults::ROUTE_TIMEOUT);
            let action = self.action(r, &at, clusters, &matcher, timeout);
            let rewrite = r
                .rewrite
                .as_ref()
                .map_or_else(Rewrite::default, |rw| self.rewrite(rw, &at.key("rewrite"), &matcher));
            let request_headers = self.header_ops(r.request_headers.as_ref(), &at.key("request_headers"));
            let response_headers = self.header_ops(r.response_headers.as_ref(), &at.key("response_headers"));
            let idle_timeout = self.duration(&r.idle_timeout, at.key("idle_timeout"), defaults::ROUTE_IDLE_TIMEOUT);
            let max_duration = r
                .max_duration
                .is_some()
                .then(|| self.duration(&r.max_duration, at.key("max_duration"), Duration::MAX));
            let forwards = r.cluster.is_some();
            for (key, present) in [
                ("retry", r.retry.is_some()),
                ("hedge", r.hedge.is_some()),
                ("idempotency", r.idempotency.is_some()),
                ("fault", r.fault.is_some()),
            ] {
                if present && !forwards {
                    self.error(at.key(key), format!("only routes with a `cluster` take `{key}`"));
                }
            }
            let retry = r.retry.as_ref().map(|raw| self.retry(raw, &at.key("retry"), timeout));
            let hedge = r.hedge.as_ref().map(|raw| Hedge {
                delay: self.duration(&raw.delay, at.key("hedge").key("delay"), Duration::from_millis(50)),
            });
            let idempotency = r
                .idempotency
                .as_ref()
                .map(|raw| self.idempotency(raw, &at.key("idempotency")));
            let fault = r.fault.as_ref().map(|raw| self.fault(raw, &at.key("fault")));
            let mut rate_limits = Vec::new();
            let has_auth = r.auth.is_some();
            if let Some(raw) = &r.rate_limit {
                rate_limits.extend(self.rate_limit(raw, &at.key("rate_limit"), has_auth));
            }
            for (j, raw) in r.rate_limits.iter().enumerate() {
                rate_limits.extend(self.rate_limit(raw, &at.key("rate_limits").index(j), has_auth));
            }
            let ip_filter = r
                .ip_filter
                .as_ref()
                .map(|raw| self.ip_filter(raw, &at.key("ip_filter")));
            let max_body_size = self.optional_size(&r.max_body_size, at.key("max_body_size"));
            let cors = r.cors.as_ref().map(|raw| self.cors(raw, &at.key("cors")));
            let auth = r.auth.as_ref().map(|raw| self.auth(raw, &at.key("auth")));
            let websocket = match &r.websocket {
                Some(raw) => {
                    if !forwards {
                        self.error(at.key("websocket"), "only routes with a `cluster` take `websocket`");
                    }
                    self.websocket(raw, &at.key("websocket"))
                }
                None => WebSocket::default(),
            };
            let compression = r
                .compression
                .as_ref()
                .map(|raw| self.compression(raw, &at.key("compression")));
            let cache = r.cache.as_ref().map(|raw| {
                if !forwards {
                    self.error(at.key("cache"), "only routes with a `cluster` take `cache`");
                }
                self.route_cache(raw, &at.key("cache"))
            });
            if r.grpc_web.is_some() && !forwards {
                self.error(at.key("grpc_web"), "only routes with a `cluster` take `grpc_web`");
            }
            if r.aggregate.is_some() {
                for (key, present) in [
                    ("rewrite", r.rewrite.is_some()),
                    ("request_headers", r.request_headers.is_some()),
                    ("response_headers", r.response_headers.is_some()),
                ] {
                    if present {
                        self.error(
                            at.key(key),
                            format!("an `aggregate` route takes no `{key}`: each call's `path` is its target, and the answer is the gateway's own"),
                        );
                    }
                }
            }
            let transform = r.transform.as_ref().map(|raw| {
                if !forwards {
                    self.error(at.key("transform"), "only routes with a `cluster` take `transform`");
                }
                self.transform(raw, &at.key("transform"))
            });
            if let (Some(name), Some(action)) = (name, action) {
                out.push(Arc::new(Route {
                    name,
                    listener: r.listener.clone(),
                    matcher,
                    action,
                    timeout,
                    idle_timeout,
                    max_duration,
                    rewrite,
                    request_headers,
                    response_headers,
                    retry,
                    hedge,
                    idempotency,
                    fault,
                    rate_limits,
                    ip_filter,
                    max_body_size,
                    cors,
                    auth,
                    websocket,
                    grpc_web: r.grpc_web.unwrap_or(false),
                    compression,
                    cache,
                    transform,
                }));
            }
        }
        out
    }

    fn compression(&mut self, raw: &RawCompression, at: &KeyPath) -> Compression {
        let mut algorithms = Vec::new();
        let names = raw
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["br".into(), "zstd".into(), "gzip".into()]);
        if names.is_empty() {
            self.error(
                at.key("algorithms"),
                "list at least one of \"br\", \"zstd\", \"gzip\", \"deflate\"",
            );
        }
        for (i, name) in names.iter().enumerate() {
            match Encoding::from_token(name) {
                Some(encoding) if !algorithms.contains(&encoding) => algorithms.push(encoding),
                Some(_) => self.error(at.key("algorithms").index(i), format!("\"{name}\" is listed twice")),
                None => {
                    let hint = did_you_mean(name, ["br", "zstd", "gzip", "deflate"]);
                    self.error_with_hint(
                        at.key("algorithms").index(i),
                        format!("unknown algorithm \"{name}\""),
                        hint,
                    );
                }
            }
        }
        let min_size = self.size(&raw.min_size, at.key("min_size"), defaults::COMPRESSION_MIN_SIZE);
        let content_types = match &raw.content_types {
            Some(list) => {
                for (i, item) in list.iter().enumerate() {
                    let valid = item
                        .split_once('/')
                        .is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty() && !kind.contains('*'));
                    if !valid {
                        self.error(
                            at.key("content_types").index(i),
                            format!("\"{item}\" is not a media type such as \"text/html\" or \"text/*\""),
                        );
                    }
                }
                list.iter().map(|t| t.to_ascii_lowercase()).collect()
            }
            None => defaults::COMPRESSIBLE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        };
        Compression {
            algorithms,
            min_size,
            content_types,
        }
    }

    fn cache_store(&mut self, raw: &RawCacheStore, at: &KeyPath) -> CacheStore {
        let max_size = self.size(&raw.max_size, at.key("max_size"), defaults::CACHE_MAX_SIZE);
        if max_size == 0 {
            self.error(at.key("max_size"), "must be greater than zero");
        }
        CacheStore { max_size }
    }

    fn route_cache(&mut self, raw: &RawRouteCache, at: &KeyPath) -> RouteCache {
        let optional = |s: &mut Self, value: &Option<String>, key: &str| {
            value
                .is_some()
                .then(|| s.duration_or_zero(value, at.key(key), Duration::ZERO))
        };
        let ttl = optional(self, &raw.ttl, "ttl");
        let stale_while_revalidate = optional(self, &raw.stale_while_revalidate, "stale_while_revalidate");
        let stale_if_error = optional(self, &raw.stale_if_error, "stale_if_error");
        let max_object = self.size(&raw.max_object, at.key("max_object"), defaults::CACHE_MAX_OBJECT);
        let lock_timeout =
            self.duration_or_zero(&raw.lock_timeout, at.key("lock_timeout"), defaults::CACHE_LOCK_TIMEOUT);
        let tag_header = raw
            .tag_header
            .as_ref()
            .and_then(|name| self.header_name(name, at.key("tag_header")));
        let key = match &raw.key {
            Some(raw) => self.cache_key(raw, &at.key("key")),
            None => switchyard_cache::KeySpec::default(),
        };
        RouteCache {
            ttl,
            max_object,
            stale_while_revalidate,
            stale_if_error,
            lock_timeout,
            tag_header,
            key,
        }
    }

    fn cache_key(&mut self, raw: &RawCacheKey, at: &KeyPath) -> switchyard_cache::KeySpec {
        use switchyard_cache::QueryKey;
        let query = match (raw.query, &raw.query_include, &raw.query_exclude) {
            (_, Some(_), Some(_)) => {
                self.error(
                    at.key("query_exclude"),
                    "use `query_include` or `query_exclude`, not both",
                );
                QueryKey::All
            }
            (Some(false), Some(_), _) | (Some(false), _, Some(_)) => {
                self.error(
                    at.key("query"),
                    "`query = false` leaves the query out of the key: drop `query_include`/`query_exclude`",
                );
                QueryKey::Ignore
            }
            (Some(false), None, None) => QueryKey::Ignore,
            (_, Some(names), None) => QueryKey::Include(names.clone()),
            (_, None, Some(names)) => QueryKey::Exclude(names.clone()),
            (_, None, None) => QueryKey::All,
        };
        let headers = raw
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, name)| self.header_name(name, at.key("headers").index(i)))
            .collect();
        switchyard_cache::KeySpec {
            ignore_host: raw.host == Some(false),
            query,
            sort_query: raw.sort_query.unwrap_or(false),
            headers,
            cookies: raw.cookies.clone(),
        }
    }

    fn websocket(&mut self, raw: &RawWebSocket, at: &KeyPath) -> WebSocket {
        let defaults = WebSocket::default();
        let idle_timeout = self.duration(&raw.idle_timeout, at.key("idle_timeout"), defaults.idle_timeout);
        let max_lifetime = raw
            .max_lifetime
            .is_some()
            .then(|| self.duration(&raw.max_lifetime, at.key("max_lifetime"), Duration::MAX));
        if raw.max_connections == Some(0) {
            self.error(
                at.key("max_connections"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        WebSocket {
            enabled: raw.enabled.unwrap_or(true),
            idle_timeout,
            max_lifetime,
            max_connections: raw.max_connections,
        }
    }

    fn retry(&mut self, raw: &RawRetry, at: &KeyPath, route_timeout: Duration) -> Retry {
        let attempts = raw.attempts.unwrap_or(defaults::RETRY_ATTEMPTS);
        if !(1..=10).contains(&attempts) {
            self.error(
                at.key("attempts"),
                format!("{attempts} attempts: use 1 to 10 (attempts count the first try)"),
            );
        }
        let mut on = RetryOn::default();
        let names = raw
            .on
            .clone()
            .unwrap_or_else(|| vec!["connect-failure".into(), "reset".into(), "gateway-error".into()]);
        const CONDITIONS: [&str; 6] = [
            "connect-failure",
            "reset",
            "5xx",
            "gateway-error",
            "retriable-status",
            "grpc-unavailable",
        ];
        let mut wants_statuses = false;
        for (i, name) in names.iter().enumerate() {
            match name.as_str() {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "retriable-status" => wants_statuses = true,
                "grpc-unavailable" => on.grpc_unavailable = true,
                other => {
                    let hint = did_you_mean(other, CONDITIONS);
                    self.error_with_hint(
                        at.key("on").index(i),
                        format!("unknown retry condition \"{other}\" (one of {})", CONDITIONS.join(", ")),
                        hint,
                    );
                }
            }
        }
        for (i, &code) in raw.retriable_statuses.iter().enumerate() {
            if !(100..=599).contains(&code) {
                self.error(
                    at.key("retriable_statuses").index(i),
                    format!("{code} is not an HTTP status code (100-599)"),
                );
            }
        }
        if wants_statuses && raw.retriable_statuses.is_empty() {
            self.error(
                at.key("retriable_statuses"),
                "`retriable-status` is in `on`, so list the statuses here, such as [503, 429]",
            );
        }
        if !wants_statuses && !raw.retriable_statuses.is_empty() {
            self.error(
                at.key("on"),
                "`retriable_statuses` is set: add \"retriable-status\" to `on` to use it",
            );
        }
        on.statuses = raw.retriable_statuses.clone();
        let per_try_timeout = raw
            .per_try_timeout
            .is_some()
            .then(|| self.duration(&raw.per_try_timeout, at.key("per_try_timeout"), route_timeout));
        if per_try_timeout.is_some_and(|t| t > route_timeout) {
            self.error(
                at.key("per_try_timeout"),
                format!(
                    "longer than the route's `timeout` ({}), which bounds all attempts together",
                    humantime::format_duration(route_timeout)
                ),
            );
        }
        let backoff = raw.backoff.clone().unwrap_or_default();
        let backoff_at = at.key("backoff");
        let backoff_base = self.duration(&backoff.base, backoff_at.key("base"), defaults::RETRY_BACKOFF_BASE);
        let backoff_max = self.duration(
            &backoff.max,
            backoff_at.key("max"),
            defaults::RETRY_BACKOFF_MAX.max(backoff_base),
        );
        if backoff_max < backoff_base {
            self.error(backoff_at.key("max"), "shorter than `base`");
        }
        let budget = raw.budget.map(|ratio| {
            if !(0.0..=10.0).contains(&ratio) {
                self.error(
                    at.key("budget"),
                    format!("{ratio}: use a share of requests from 0 to 10 (0.2: one retry per five requests)"),
                );
            }
            ratio.clamp(0.0, 10.0)
        });
        Retry {
            attempts: attempts.clamp(1, 10),
            on,
            per_try_timeout,
            backoff_base,
            backoff_max,
            budget,
            non_idempotent: raw.non_idempotent.unwrap_or(false),
            max_replay_body: self.size(
                &raw.max_replay_body,
                at.key("max_replay_body"),
                defaults::RETRY_MAX_REPLAY_BODY,
            ),
        }
    }

    fn idempotency(&mut self, raw: &RawIdempotency, at: &KeyPath) -> Idempotency {
        let concurrent = match raw.concurrent.as_deref().unwrap_or("wait") {
            "wait" => ConcurrentDuplicate::Wait,
            "reject" => ConcurrentDuplicate::Reject,
            other => {
                let hint = did_you_mean(other, ["wait", "reject"]);
                self.error_with_hint(
                    at.key("concurrent"),
                    format!("unknown choice \"{other}\" (expected \"wait\" or \"reject\")"),
                    hint,
                );
                ConcurrentDuplicate::Wait
            }
        };
        let max_entries = raw.max_entries.unwrap_or(defaults::IDEMPOTENCY_MAX_ENTRIES);
        if max_entries == 0 {
            self.error(at.key("max_entries"), "must be at least 1");
        }
        let on_redis_error = match raw.on_redis_error.as_deref().unwrap_or("deny") {
            "deny" => OnRedisError::Deny,
            "allow" => OnRedisError::Allow,
            other => {
                self.error(
                    at.key("on_redis_error"),
                    format!("unknown choice \"{other}\" (expected \"deny\" or \"allow\")"),
                );
                OnRedisError::Deny
            }
        };
        if raw.on_redis_error.is_some() && !self.cluster_mode_present {
            self.error(
                at.key("on_redis_error"),
                "only applies in cluster mode, where keys are kept in Redis: set `[cluster] redis = \"redis://...\"`",
            );
        }
        Idempotency {
            on_redis_error,
            ttl: self.duration(&raw.ttl, at.key("ttl"), defaults::IDEMPOTENCY_TTL),
            max_body: self.size(&raw.max_body, at.key("max_body"), defaults::IDEMPOTENCY_MAX_BODY),
            max_entries: max_entries.max(1),
            concurrent,
        }
    }

    fn percent(&mut self, value: Option<f64>, at: KeyPath) -> f64 {
        let percent = value.unwrap_or(0.0);
        if !(0.0..=100.0).contains(&percent) {
            self.error(at, format!("{percent} is not a percentage: use 0 to 100"));
            return 0.0;
        }
        percent
    }

    fn fault(&mut self, raw: &RawFault, at: &KeyPath) -> Fault {
        let delay = raw.delay.is_some().then(|| FaultDelay {
            duration: self.duration(&raw.delay, at.key("delay"), Duration::from_secs(1)),
            percent: self.percent(raw.delay_percent, at.key("delay_percent")),
            header: raw
                .delay_header
                .as_ref()
                .and_then(|h| self.header_name(h, at.key("delay_header"))),
        });
        let abort =
            (raw.abort_status.is_some() || raw.abort_percent.is_some() || raw.abort_header.is_some()).then(|| {
                let code = raw.abort_status.unwrap_or(503);
                let status = match StatusCode::from_u16(code) {
                    Ok(status) if status.is_client_error() || status.is_server_error() => status,
                    _ => {
                        self.error(
                            at.key("abort_status"),
                            format!("{code}: an abort needs an error status (400-599)"),
                        );
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                FaultAbort {
                    status,
                    percent: self.percent(raw.abort_percent, at.key("abort_percent")),
                    header: raw
                        .abort_header
                        .as_ref()
                        .and_then(|h| self.header_name(h, at.key("abort_header"))),
                }
            });
        if raw.delay.is_none() && (raw.delay_percent.is_some() || raw.delay_header.is_some()) {
            self.error(at.key("delay"), "a delay fault needs `delay`, such as \"2s\"");
        }
        let never_fires = |percent: f64, header: &Option<HeaderName>| percent == 0.0 && header.is_none();
        if delay.as_ref().is_some_and(|d| never_fires(d.percent, &d.header)) {
            self.error(
                at.key("delay"),
                "this delay never fires: set `delay_percent` above 0 or a `delay_header`",
            );
        }
        if abort.as_ref().is_some_and(|a| never_fires(a.percent, &a.header)) {
            self.error(
                at.key("abort_status"),
                "this abort never fires: set `abort_percent` above 0 or an `abort_header`",
            );
        }
        Fault { delay, abort }
    }

    /// Checks the files of a TLS client (roots to trust, and a certificate
    /// with its key to show); returns the certificate and key paths.
    fn client_tls(
        &mut self,
        ca: &Option<String>,
        cert: &Option<String>,
        key: &Option<String>,
        at: &KeyPath,
    ) -> Option<(String, String)> {
        if let Some(ca) = ca {
            if let Err(why) = switchyard_security::tls::load_roots(ca) {
                self.error(at.key("ca"), why);
            }
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                if let Err(why) = switchyard_security::tls::load_cert(cert, key) {
                    self.error(at.key("client_cert"), why);
                }
                Some((cert.clone(), key.clone()))
            }
            (None, None) => None,
            _ => {
                self.error(at.clone(), "`client_cert` and `client_key` go together");
                None
            }
        }
    }

    fn upstream_tls(&mut self, raw: &RawUpstreamTls, at: &KeyPath) -> UpstreamTls {
        if let Some(name) = &raw.server_name {
            if rustls_name_invalid(name) {
                self.error(at.key("server_name"), format!("invalid server name \"{name}\""));
            }
        }
        let client_cert = self.client_tls(&raw.ca, &raw.client_cert, &raw.client_key, at);
        UpstreamTls {
            ca: raw.ca.clone(),
            server_name: raw.server_name.clone(),
            client_cert,
        }
    }

    fn tls(&mut self, raw: &RawTls, at: &KeyPath) -> ListenerTls {
        if raw.certificates.is_empty() {
            self.error(
                at.key("certificates"),
                "list at least one certificate: [{ cert = \"cert.pem\", key = \"key.pem\" }]",
            );
        }
        let mut certificates = Vec::new();
        for (i, c) in raw.certificates.iter().enumerate() {
            let cert_at = at.key("certificates").index(i);
            let (Some(cert), Some(key)) = (&c.cert, &c.key) else {
                self.error(
                    cert_at,
                    "every certificate needs `cert` (PEM chain) and `key` (PEM private key) files",
                );
                continue;
            };
            match switchyard_security::tls::load_cert(cert, key) {
                Ok(_) => certificates.push((cert.clone(), key.clone())),
                Err(why) => self.error(cert_at, why),
            }
        }
        if let Some(ca) = &raw.client_ca {
            if let Err(why) = switchyard_security::tls::load_roots(ca) {
                self.error(at.key("client_ca"), why);
            }
        }
        let client_auth_required = match raw.client_auth.as_deref() {
            None | Some("required") => true,
            Some("optional") => false,
            Some(other) => {
                self.error(
                    at.key("client_auth"),
                    format!("unknown choice \"{other}\" (expected \"required\" or \"optional\")"),
                );
                true
            }
        };
        if raw.client_auth.is_some() && raw.client_ca.is_none() {
            self.error(at.key("client_auth"), "only applies with `client_ca`");
        }
        ListenerTls {
            certificates,
            client_ca: raw.client_ca.clone(),
            client_auth_required,
        }
    }

    fn auth(&mut self, raw: &RawAuth, at: &KeyPath) -> Auth {
        if raw.jwt.is_none() && raw.api_keys.is_none() && raw.basic.is_none() {
            self.error(at.clone(), "`auth` needs at least one of `jwt`, `api_keys` and `basic`");
        }
        let jwt = raw.jwt.as_ref().and_then(|j| self.jwt(j, &at.key("jwt")));
        let api_keys = raw.api_keys.as_ref().map(|a| {
            let at = at.key("api_keys");
            if a.header.is_none() && a.query.is_none() {
                self.error(at.clone(), "say where the key comes from: `header = \"x-api-key\"` and/or `query = \"api_key\"`");
            }
            if a.keys.is_empty() {
                self.error(at.key("keys"), "list the keys: [{ id = \"ci\", sha256 = \"<hex SHA-256 of the key>\" }]");
            }
            let header = a.header.as_ref().and_then(|h| self.header_name(h, at.key("header")));
            let mut keys = Vec::new();
            for (i, k) in a.keys.iter().enumerate() {
                let key_at = at.key("keys").index(i);
                let Some(id) = &k.id else {
                    self.error(key_at.key("id"), "every key needs an `id` (it names the client in logs and rules)");
                    continue;
                };
                match k.sha256.as_deref().and_then(switchyard_security::auth::api_key::parse_hash) {
                    Some(hash) => keys.push((id.clone(), hash)),
                    None => self.error(
                        key_at.key("sha256"),
                        "expected the key's SHA-256 as 64 hex digits (for example `printf %s KEY | sha256sum`); keys are never stored in clear",
                    ),
                }
            }
            ApiKeysAuth {
                header,
                query: a.query.clone(),
                keys,
            }
        });
        let basic = raw.basic.as_ref().map(|b| {
            let at = at.key("basic");
            if b.users.is_empty() {
                self.error(at.key("users"), "list the users: [{ name = \"alice\", hash = \"$argon2id$...\" }]");
            }
            let mut users = Vec::new();
            for (i, u) in b.users.iter().enumerate() {
                let user_at = at.key("users").index(i);
                match (&u.name, &u.hash) {
                    (Some(name), Some(hash)) if switchyard_security::auth::basic::is_supported_hash(hash) => {
                        if name.contains(':') {
                            self.error(user_at.key("name"), "a basic-auth user name cannot contain ':'");
                        }
                        users.push((name.clone(), hash.clone()));
                    }
                    (None, _) => self.error(user_at.key("name"), "every user needs a `name`"),
                    (_, _) => self.error(
                        user_at.key("hash"),
                        "expected an argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) password hash; passwords are never stored in clear",
                    ),
                }
            }
            BasicAuth {
                realm: b.realm.clone().unwrap_or_else(|| "switchyard".to_owned()),
                users,
            }
        });
        let require = raw.require.clone().unwrap_or_default();
        if !require.claims.is_empty() && raw.jwt.is_none() {
            self.error(
                at.key("require").key("claims"),
                "claims come from JWTs: add `jwt` or require `identities` instead",
            );
        }
        let identity_header = raw
            .identity_header
            .as_ref()
            .and_then(|h| self.header_name(h, at.key("identity_header")));
        Auth {
            jwt,
            api_keys,
            basic,
            require_identities: require.identities.clone(),
            require_claims: require.claims.into_iter().collect(),
            identity_header,
        }
    }

    fn jwt(&mut self, raw: &RawJwt, at: &KeyPath) -> Option<JwtAuth> {
        let sources: Vec<&str> = [
            ("secret", raw.secret.is_some()),
            ("public_key_file", raw.public_key_file.is_some()),
            ("jwks_file", raw.jwks_file.is_some()),
            ("jwks_url", raw.jwks_url.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(k, _)| *k)
        .collect();
        if sources.len() != 1 {
            self.error(
                at.clone(),
                format!(
                    "a JWT check needs exactly one key source: `secret`, `public_key_file`, `jwks_file` or `jwks_url` (found {})",
                    if sources.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("`{}`", sources.join("`, `"))
                    }
                ),
            );
            return None;
        }
        let read = |settler: &mut Self, path: &str, key: &str| -> Option<Vec<u8>> {
            match std::fs::read(path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    settler.error(at.key(key), format!("cannot read {path}: {e}"));
                    None
                }
            }
        };
        let key = if let Some(secret) = &raw.secret {
            if secret.len() < 32 {
                self.error(at.key("secret"), "an HMAC secret must be at least 32 bytes long");
            }
            JwtKey::Secret(secret.clone())
        } else if let Some(path) = &raw.public_key_file {
            let pem = read(self, path, "public_key_file")?;
            if let Err(why) = switchyard_security::auth::jwt::VerifyKey::pem(&pem) {
                self.error(at.key("public_key_file"), format!("{path}: {why}"));
            }
            JwtKey::PublicKey {
                path: path.clone(),
                pem,
            }
        } else if let Some(url) = &raw.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.parse::<http::Uri>().is_err() {
                self.error(
                    at.key("jwks_url"),
                    format!("invalid URL \"{url}\": expected https://host/path (or http:// on a trusted network)"),
                );
            }
            let refresh = self.duration(&raw.jwks_refresh, at.key("jwks_refresh"), Duration::from_secs(300));
            JwtKey::JwksUrl {
                url: url.clone(),
                refresh,
            }
        } else {
            let path = raw.jwks_file.clone().unwrap_or_default();
            let json = read(self, &path, "jwks_file")?;
            if let Err(why) = switchyard_security::auth::jwt::KeySet::from_jwks(&json) {
                self.error(at.key("jwks_file"), format!("{path}: {why}"));
            }
            let refresh = self.duration(&raw.jwks_refresh, at.key("jwks_refresh"), Duration::from_secs(60));
            JwtKey::Jwks { path, refresh }
        };
        if raw.jwks_refresh.is_some() && raw.jwks_file.is_none() && raw.jwks_url.is_none() {
            self.error(at.key("jwks_refresh"), "only applies with `jwks_file` or `jwks_url`");
        }
        let leeway = self.duration_or_zero(&raw.leeway, at.key("leeway"), Duration::from_secs(30));
        let mut forward_claims = Vec::new();
        for (claim, header) in &raw.forward_claims {
            if let Some(name) = self.header_name(header, at.key("forward_claims").key(claim)) {
                forward_claims.push((claim.clone(), name));
            }
        }
        Some(JwtAuth {
            issuer: raw.issuer.clone(),
            audiences: raw.audiences.clone(),
            key,
            leeway,
            required_claims: raw.required_claims.clone(),
            forward_claims,
        })
    }

    fn cors(&mut self, raw: &RawCors, at: &KeyPath) -> Cors {
        let credentials = raw.credentials.unwrap_or(false);
        let origins = if raw.origins.iter().any(|o| o == "*") {
            if raw.origins.len() > 1 {
                self.error(at.key("origins"), "\"*\" allows every origin: list no others beside it");
            }
            if credentials {
                self.error(
                    at.key("credentials"),
                    "browsers refuse credentials with a \"*\" origin: list the allowed origins instead",
                );
            }
            None
        } else {
            if raw.origins.is_empty() {
                self.error(
                    at.key("origins"),
                    "list the allowed origins, such as [\"https://app.example.com\"], or [\"*\"] for any",
                );
            }
            let mut origins = Vec::new();
            for (i, origin) in raw.origins.iter().enumerate() {
                let lower = origin.to_ascii_lowercase();
                let valid = lower.split_once("://").is_some_and(|(scheme, host)| {
                    !scheme.is_empty()
                        && !host.is_empty()
                        && !host.contains('/')
                        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                });
                if valid {
                    origins.push(lower);
                } else {
                    self.error(
                        at.key("origins").index(i),
                        format!("invalid origin \"{origin}\": expected scheme://host[:port], such as \"https://app.example.com\" or \"https://*.example.com\" (no path)"),
                    );
                }
            }
            Some(origins)
        };
        let mut methods = Vec::new();
        for (i, m) in raw.methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => self.error(at.key("methods").index(i), format!("invalid method \"{m}\"")),
            }
        }
        let mut names = |list: &[String], key: &str| -> Vec<HeaderName> {
            list.iter()
                .enumerate()
                .filter_map(|(i, h)| self.header_name(h, at.key(key).index(i)))
                .collect()
        };
        let headers = names(&raw.headers, "headers");
        let expose_headers = names(&raw.expose_headers, "expose_headers");
        let max_age = raw
            .max_age
            .is_some()
            .then(|| self.duration(&raw.max_age, at.key("max_age"), Duration::ZERO));
        Cors {
            origins,
            methods,
            headers,
            expose_headers,
            credentials,
            max_age,
        }
    }

    fn cluster_mode(&mut self, raw: &RawClusterMode, at: &KeyPath) -> Option<ClusterMode> {
        let Some(url) = &raw.redis else {
            self.error(at.key("redis"), "`[cluster]` needs `redis = \"redis://host:6379/0\"`");
            return None;
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
            self.error(
                at.key("redis"),
                format!(
                    "invalid Redis URL \"{url}\": expected redis://[user:password@]host:port[/db] or rediss:// for TLS"
                ),
            );
            return None;
        }
        let redis_timeout = self.duration(&raw.redis_timeout, at.key("redis_timeout"), Duration::from_millis(250));
        let tls = raw.tls.as_ref().map(|raw_tls| {
            let at = at.key("tls");
            if !url.starts_with("rediss://") {
                self.error(at.clone(), "TLS settings need a `rediss://` URL");
            }
            let client_cert = self.client_tls(&raw_tls.ca, &raw_tls.client_cert, &raw_tls.client_key, &at);
            RedisTls {
                ca: raw_tls.ca.clone(),
                client_cert,
            }
        });
        let sentinel = raw.sentinel.as_ref().and_then(|raw_sentinel| {
            let at = at.key("sentinel");
            let Some(master) = raw_sentinel.master.clone().filter(|m| !m.is_empty()) else {
                self.error(at.key("master"), "name the primary the Sentinels monitor: `master = \"mymaster\"`");
                return None;
            };
            if raw_sentinel.addresses.is_empty() {
                self.error(
                    at.key("addresses"),
                    "list at least one Sentinel: `addresses = [\"10.0.0.1:26379\"]`",
                );
                return None;
            }
            for (i, address) in raw_sentinel.addresses.iter().enumerate() {
                let parsed: Result<http::uri::Authority, _> = address.parse();
                if !parsed.is_ok_and(|a| a.port_u16().is_some() && !a.host().is_empty()) {
                    self.error(
                        at.key("addresses").index(i),
                        format!("\"{address}\" is not host:port (such as \"10.0.0.1:26379\")"),
                    );
                }
            }
            if tls.as_ref().is_some_and(|t| t.ca.is_some() || t.client_cert.is_some()) {
                self.error(
                    at.clone(),
                    "Sentinel with a private CA or client certificate is not supported: the primary is verified with the built-in roots",
                );
            }
            Some(Sentinel {
                master,
                addresses: raw_sentinel.addresses.clone(),
            })
        });
        Some(ClusterMode {
            redis: url.clone(),
            redis_timeout,
            tls,
            sentinel,
        })
    }

    fn ip_filter(&mut self, raw: &RawIpFilter, at: &KeyPath) -> IpFilter {
        let allow = self.networks(&raw.allow, at.key("allow"));
        let deny = self.networks(&raw.deny, at.key("deny"));
        if raw.allow.is_empty() && raw.deny.is_empty() {
            self.error(
                at.clone(),
                "an empty `ip_filter` filters nothing: give `allow` or `deny` networks",
            );
        }
        IpFilter { allow, deny }
    }

    fn rate_limit(&mut self, raw: &RawRateLimit, at: &KeyPath, has_auth: bool) -> Option<RateLimit> {
        let parts = match &raw.key {
            None => vec!["client_ip".to_owned()],
            Some(RawRateKey::One(part)) => vec![part.clone()],
            Some(RawRateKey::Many(parts)) => parts.clone(),
        };
        if parts.is_empty() {
            self.error(at.key("key"), "a key needs at least one part, such as \"client_ip\"");
        }
        let mut key = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let part_at = match raw.key {
                Some(RawRateKey::Many(_)) => at.key("key").index(i),
                _ => at.key("key"),
            };
            if part == "client_ip" {
                key.push(RateKeyPart::ClientIp);
            } else if let Some(name) = part.strip_prefix("header:") {
                if let Some(name) = self.header_name(name, part_at) {
                    key.push(RateKeyPart::Header(name));
                }
            } else if part.starts_with("claim:") || part == "api_key" {
                if !has_auth {
                    self.error(
                        part_at,
                        format!(
                            "\"{part}\" keys need the route's `auth` (the client must be authenticated to have one)"
                        ),
                    );
                } else if let Some(claim) = part.strip_prefix("claim:") {
                    key.push(RateKeyPart::Claim(claim.to_owned()));
                } else {
                    key.push(RateKeyPart::Identity);
                }
            } else {
                let hint = did_you_mean(part, ["client_ip", "header:NAME", "claim:NAME", "api_key"]);
                self.error_with_hint(
                    part_at,
                    format!(
                        "unknown rate-limit key \"{part}\" (expected client_ip, header:NAME, claim:NAME or api_key)"
                    ),
                    hint,
                );
            }
        }
        let Some(rate) = raw.rate else {
            self.error(at.key("rate"), "a rate limit needs a `rate` (requests per `per`)");
            return None;
        };
        if rate == 0 {
            self.error(
                at.key("rate"),
                "must be at least 1 (to block a route, use an `ip_filter` or a `direct` response)",
            );
        }
        let per = self.duration(&raw.per, at.key("per"), Duration::from_secs(1));
        let burst = raw.burst.unwrap_or(rate);
        if burst == 0 {
            self.error(at.key("burst"), "must be at least 1");
        }
        let global = match raw.scope.as_deref().unwrap_or("local") {
            "local" => None,
            "global" => {
                if !self.cluster_mode_present {
                    self.error(
                        at.key("scope"),
                        "a global limit keeps its buckets in Redis: set `[cluster] redis = \"redis://...\"`",
                    );
                }
                Some(match raw.on_redis_error.as_deref().unwrap_or("allow") {
                    "allow" => OnRedisError::Allow,
                    "deny" => OnRedisError::Deny,
                    other => {
                        self.error(
                            at.key("on_redis_error"),
                            format!("unknown choice \"{other}\" (expected \"allow\" or \"deny\")"),
                        );
                        OnRedisError::Allow
                    }
                })
            }
            other => {
                self.error(
                    at.key("scope"),
                    format!("unknown scope \"{other}\" (expected \"local\" or \"global\")"),
                );
                None
            }
        };
        if global.is_none() && raw.on_redis_error.is_some() {
            self.error(at.key("on_redis_error"), "only applies with `scope = \"global\"`");
        }
        let max_keys = raw.max_keys.unwrap_or(defaults::RATE_LIMIT_MAX_KEYS);
        if max_keys == 0 {
            self.error(at.key("max_keys"), "must be at least 1");
        }
        Some(RateLimit {
            key,
            rate: rate.max(1),
            per,
            burst: burst.max(1),
            headers: raw.headers.unwrap_or(false),
            max_keys: max_keys.max(1),
            global,
        })
    }

    fn retry_budget(&mut self, raw: Option<&RawRetryBudget>, at: &KeyPath) -> RetryBudget {
        let Some(raw) = raw else {
            return RetryBudget {
                ratio: defaults::RETRY_BUDGET_RATIO,
                min_per_second: defaults::RETRY_BUDGET_MIN_PER_SECOND,
                window: defaults::RETRY_BUDGET_WINDOW,
            };
        };
        let ratio = raw.ratio.unwrap_or(defaults::RETRY_BUDGET_RATIO);
        if !(0.0..=10.0).contains(&ratio) {
            self.error(
                at.key("ratio"),
                format!("{ratio}: use a share of requests from 0 to 10 (0.2: one retry per five requests)"),
            );
        }
        RetryBudget {
            ratio: ratio.clamp(0.0, 10.0),
            min_per_second: raw.min_per_second.unwrap_or(defaults::RETRY_BUDGET_MIN_PER_SECOND),
            window: self.duration(&raw.window, at.key("window"), defaults::RETRY_BUDGET_WINDOW),
        }
    }

    fn circuit_breaker(&mut self, raw: &RawCircuitBreaker, at: &KeyPath) -> CircuitBreaker {
        let failure_ratio = raw.failure_ratio.unwrap_or(defaults::BREAKER_FAILURE_RATIO);
        if !(failure_ratio > 0.0 && failure_ratio <= 1.0) {
            self.error(
                at.key("failure_ratio"),
                format!("{failure_ratio}: use a share of failed requests above 0 and at most 1"),
            );
        }
        let mut at_least_one = |value: Option<u32>, key: &str, default: u32| {
            let n = value.unwrap_or(default);
            if n == 0 {
                self.error(at.key(key), "must be at least 1");
            }
            n.max(1)
        };
        let min_requests = at_least_one(raw.min_requests, "min_requests", defaults::BREAKER_MIN_REQUESTS);
        let half_open_probes = at_least_one(
            raw.half_open_probes,
            "half_open_probes",
            defaults::BREAKER_HALF_OPEN_PROBES,
        );
        if raw.max_concurrent == Some(0) {
            self.error(
                at.key("max_concurrent"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if raw.max_pending.is_some_and(|p| p > 0) && raw.max_concurrent.is_none() {
            self.error(at.key("max_pending"), "only applies with `max_concurrent`");
        }
        CircuitBreaker {
            failure_ratio: failure_ratio.clamp(f64::MIN_POSITIVE, 1.0),
            min_requests,
            window: self.duration(&raw.window, at.key("window"), defaults::BREAKER_WINDOW),
            consecutive_failures: raw.consecutive_failures.unwrap_or(0),
            open_for: self.duration(&raw.open_for, at.key("open_for"), defaults::BREAKER_OPEN_FOR),
            half_open_probes,
            max_concurrent: raw.max_concurrent.filter(|&m| m > 0),
            max_pending: raw.max_pending.unwrap_or(0),
            pending_timeout: self.duration(
                &raw.pending_timeout,
                at.key("pending_timeout"),
                defaults::BREAKER_PENDING_TIMEOUT,
            ),
            per_endpoint: raw.per_endpoint.unwrap_or(false),
        }
    }

    fn route_match(&mut self, raw: &RawMatch, at: &KeyPath) -> RouteMatch {
        let host = raw.host.as_ref().and_then(|h| {
            let host = h.to_ascii_lowercase();
            let (wildcard, rest) = match host.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, host.as_str()),
            };
            let valid = !rest.is_empty()
                && rest.split('.').all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !valid {
                self.error(at.key("host"), format!("invalid host \"{h}\": expected a name such as \"api.example.com\" or \"*.example.com\" (no port)"));
                return None;
            }
            Some(if wildcard { HostMatch::Wildcard(format!(".{rest}")) } else { HostMatch::Exact(host) })
        });

        let given: Vec<&str> = [
            ("path", &raw.path),
            ("path_prefix", &raw.path_prefix),
            ("path_regex", &raw.path_regex),
        ]
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| *k)
        .collect();
        if given.len() > 1 {
            self.error(
                at.key(given[1]),
                format!(
                    "use only one of `path`, `path_prefix` and `path_regex` (found `{}`)",
                    given.join("` and `")
                ),
            );
        }
        let path = if let Some(p) = &raw.path {
            self.path_exact_or_template(p, at.key("path"))
        } else if let Some(p) = &raw.path_prefix {
            if p.starts_with('/') {
                Some(PathMatch::Prefix(p.clone()))
            } else {
                self.error(
                    at.key("path_prefix"),
                    format!("path prefix \"{p}\" must start with '/'"),
                );
                None
            }
        } else if let Some(p) = &raw.path_regex {
            self.regex(p, at.key("path_regex")).map(PathMatch::Regex)
        } else {
            None
        };

        let mut methods = Vec::new();
        for (i, m) in raw.methods.iter().enumerate() {
            match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => self.error(at.key("methods").index(i), format!("invalid method \"{m}\"")),
            }
        }
        let headers = self.value_matches(&raw.headers, &at.key("headers"), true);
        let query = self.value_matches(&raw.query, &at.key("query"), false);
        RouteMatch {
            host,
            path,
            methods,
            headers,
            query,
        }
    }

    fn path_exact_or_template(&mut self, p: &str, at: KeyPath) -> Option<PathMatch> {
        if !p.starts_with('/') {
            self.error(at, format!("path \"{p}\" must start with '/'"));
            return None;
        }
        if !p.contains('{') {
            return Some(PathMatch::Exact(p.to_owned()));
        }
        let mut segments = Vec::new();
        let mut captures = HashSet::new();
        for segment in p[1..].split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.error(
                        at,
                        format!(
                            "invalid capture \"{segment}\" in path \"{p}\": use {{name}} with letters, digits and '_'"
                        ),
                    );
                    return None;
                }
                if !captures.insert(name.to_owned()) {
                    self.error(at, format!("capture {{{name}}} appears twice in path \"{p}\""));
                    return None;
                }
                segments.push(TemplateSegment::Capture(name.to_owned()));
            } else if segment.contains(['{', '}']) {
                self.error(
                    at,
                    format!(
                        "a capture must be a whole segment, as in \"/users/{{id}}\"; found \"{segment}\" in \"{p}\""
                    ),
                );
                return None;
            } else {
                segments.push(TemplateSegment::Literal(segment.to_owned()));
            }
        }
        Some(PathMatch::Template(segments))
    }

    fn value_matches(&mut self, raw: &[RawValueMatch], at: &KeyPath, is_header: bool) -> Vec<ValueMatch> {
        let mut out = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let at = at.index(i);
            let Some(name) = &m.name else {
                self.error(at.key("name"), "every matcher needs a `name`");
                continue;
            };
            let name = if is_header {
                match self.header_name(name, at.key("name")) {
                    Some(h) => h.as_str().to_owned(),
                    None => continue,
                }
            } else {
                name.clone()
            };
            let kinds = [m.value.is_some(), m.regex.is_some(), m.present.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if kinds > 1 {
                self.error(at.clone(), "use only one of `value`, `regex` and `present`");
                continue;
            }
            let kind = if let Some(v) = &m.value {
                ValueMatchKind::Exact(v.clone())
            } else if let Some(re) = &m.regex {
                match self.regex(re, at.key("regex")) {
                    Some(re) => ValueMatchKind::Regex(re),
                    None => continue,
                }
            } else {
                ValueMatchKind::Present(m.present.unwrap_or(true))
            };
            out.push(ValueMatch { name, kind });
        }
        out
    }

    /// `timeout` is the route's, already read (an aggregate's whole answer
    /// is bounded by it).
    fn action(
        &mut self,
        r: &RawRoute,
        at: &KeyPath,
        clusters: &[&str],
        matcher: &RouteMatch,
        timeout: Duration,
    ) -> Option<RouteAction> {
        let given: Vec<&str> = [
            ("cluster", r.cluster.is_some()),
            ("redirect", r.redirect.is_some()),
            ("direct", r.direct.is_some()),
            ("static", r.static_files.is_some()),
            ("hub", r.hub.is_some()),
            ("aggregate", r.aggregate.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(k, _)| *k)
        .collect();
        match given.len() {
            0 => {
                self.error(
                    at.clone(),
                    "a route needs one of `cluster`, `redirect`, `direct`, `static`, `hub` or `aggregate`",
                );
                return None;
            }
            1 => {}
            _ => {
                self.error(
                    at.key(given[1]),
                    format!(
                        "a route takes only one of `cluster`, `redirect`, `direct`, `static`, `hub` and `aggregate` (found `{}`)",
                        given.join("` and `")
                    ),
                );
                return None;
            }
        }
        if let Some(cluster) = &r.cluster {
            if !clusters.contains(&cluster.as_str()) {
                let hint = did_you_mean(cluster, clusters.iter().copied());
                self.error_with_hint(at.key("cluster"), format!("no cluster named \"{cluster}\""), hint);
                return None;
            }
            return Some(RouteAction::Forward {
                cluster: cluster.clone(),
            });
        }
        if let Some(redirect) = &r.redirect {
            return self
                .redirect(redirect, &at.key("redirect"), matcher)
                .map(RouteAction::Redirect);
        }
        if let Some(raw) = &r.static_files {
            return self.static_files(raw, &at.key("static")).map(RouteAction::Static);
        }
        if let Some(raw) = &r.hub {
            return Some(RouteAction::Hub(self.hub(raw, &at.key("hub"))));
        }
        if let Some(raw) = &r.aggregate {
            return self
                .aggregate(raw, &at.key("aggregate"), clusters, matcher, timeout)
                .map(RouteAction::Aggregate);
        }
        r.direct
            .as_ref()
            .and_then(|d| self.direct(d, &at.key("direct")))
            .map(RouteAction::Direct)
    }

    fn hub(&mut self, raw: &RawHub, at: &KeyPath) -> Hub {
        let count = |s: &mut Self, value: Option<usize>, key: &str, default: usize, min: usize| match value {
            Some(n) if n < min => {
                s.error(at.key(key), format!("must be at least {min}"));
                default
            }
            Some(n) => n,
            None => default,
        };
        let history = count(self, raw.history, "history", defaults::HUB_HISTORY, 0);
        let queue = count(self, raw.queue, "queue", defaults::HUB_QUEUE, 1);
        let max_topics = count(self, raw.max_topics, "max_topics", defaults::HUB_MAX_TOPICS, 1);
        let max_subscriptions = count(
            self,
            raw.max_subscriptions,
            "max_subscriptions",
            defaults::HUB_MAX_SUBSCRIPTIONS,
            1,
        );
        let slow_consumer = match raw.slow_consumer.as_deref() {
            None | Some("drop_oldest") => SlowConsumer::DropOldest,
            Some("disconnect") => SlowConsumer::Disconnect,
            Some(other) => {
                let hint = did_you_mean(other, ["drop_oldest", "disconnect"]);
                self.error_with_hint(
                    at.key("slow_consumer"),
                    format!("unknown policy \"{other}\": use \"drop_oldest\" or \"disconnect\""),
                    hint,
                );
                SlowConsumer::DropOldest
            }
        };
        let rules = |s: &mut Self, raw: &[RawHubRule], key: &str| -> Vec<HubRule> {
            raw.iter()
                .enumerate()
                .filter_map(|(i, rule)| {
                    let path = at.key(key).index(i);
                    let Some(topics) = &rule.topics else {
                        s.error(
                            path.key("topics"),
                            "every rule needs `topics`, a pattern such as \"orders.*\"",
                        );
                        return None;
                    };
                    match TopicPattern::parse(topics) {
                        Ok(topics) => Some(HubRule {
                            topics,
                            require: switchyard_security::auth::Require {
                                identities: rule.identities.clone(),
                                claims: rule.claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                            },
                        }),
                        Err(message) => {
                            s.error(path.key("topics"), message);
                            None
                        }
                    }
                })
                .collect()
        };
        let publish = raw
            .publish
            .as_deref()
            .map(|r| rules(self, r, "publish"))
            .unwrap_or_default();
        let subscribe = raw.subscribe.as_deref().map(|r| rules(self, r, "subscribe"));
        Hub {
            history,
            history_ttl: self.duration(&raw.history_ttl, at.key("history_ttl"), defaults::HUB_HISTORY_TTL),
            max_message: self.size(&raw.max_message, at.key("max_message"), defaults::HUB_MAX_MESSAGE),
            queue,
            slow_consumer,
            heartbeat: self.duration(&raw.heartbeat, at.key("heartbeat"), defaults::HUB_HEARTBEAT),
            retry: self.duration(&raw.retry, at.key("retry"), defaults::HUB_RETRY),
            long_poll_timeout: self.duration(
                &raw.long_poll_timeout,
                at.key("long_poll_timeout"),
                defaults::HUB_LONG_POLL_TIMEOUT,
            ),
            max_topics,
            max_subscriptions,
            publish,
            subscribe,
        }
    }

    fn static_files(&mut self, raw: &RawStatic, at: &KeyPath) -> Option<StaticFiles> {
        let Some(root) = &raw.root else {
            self.error(
                at.key("root"),
                "`static` needs the `root` directory to serve, such as \"public/\"",
            );
            return None;
        };
        let root = match std::fs::canonicalize(root) {
            Ok(path) if path.is_dir() => path,
            Ok(_) => {
                self.error(at.key("root"), format!("\"{root}\" is not a directory"));
                return None;
            }
            Err(error) => {
                self.error(at.key("root"), format!("cannot open \"{root}\": {error}"));
                return None;
            }
        };
        let index = match raw.index.as_deref() {
            None => Some("index.html".to_owned()),
            Some("") => None,
            Some(name) if name.contains('/') || name == ".." => {
                self.error(at.key("index"), format!("\"{name}\" must be a file name, not a path"));
                None
            }
            Some(name) => Some(name.to_owned()),
        };
        Some(StaticFiles {
            root,
            index,
            listing: raw.listing.unwrap_or(false),
            precompressed: raw.precompressed.unwrap_or(true),
        })
    }

    fn redirect(&mut self, raw: &RawRedirect, at: &KeyPath, matcher: &RouteMatch) -> Option<Redirect> {
        let status = match raw.status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s).expect("listed redirect codes are valid"),
            other => {
                self.error(
                    at.key("status"),
                    format!("redirect status {other} is not a redirect: use 301, 302, 303, 307 or 308"),
                );
                return None;
            }
        };
        if let Some(scheme) = &raw.scheme {
            if scheme != "http" && scheme != "https" {
                self.error(
                    at.key("scheme"),
                    format!("redirect scheme must be \"http\" or \"https\", found \"{scheme}\""),
                );
            }
        }
        if raw.prefix.is_some() && !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
            self.error(
                at.key("prefix"),
                "`prefix` replaces the matched `path_prefix`, but the route's match has none",
            );
        }
        if raw.prefix.is_some() && raw.path.is_some() {
            self.error(at.key("prefix"), "use only one of `path` and `prefix`");
        }
        let any_part = raw.scheme.is_some()
            || raw.host.is_some()
            || raw.port.is_some()
            || raw.path.is_some()
            || raw.prefix.is_some();
        if raw.location.is_none() && !any_part {
            self.error(
                at.clone(),
                "a redirect needs `location` or at least one of `scheme`, `host`, `port`, `path`, `prefix`",
            );
        }
        for (key, value) in [("path", &raw.path), ("prefix", &raw.prefix)] {
            if value.as_ref().is_some_and(|v| !v.starts_with('/')) {
                self.error(at.key(key), format!("redirect {key} must start with '/'"));
            }
        }
        if let Some(host) = &raw.host {
            let valid = !host.is_empty()
                && host
                    .split('.')
                    .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !valid {
                self.error(at.key("host"), format!("invalid redirect host \"{host}\": expected a name such as \"www.example.com\" (use `port` for the port)"));
            }
        }
        if let Some(location) = &raw.location {
            self.header_value(location, at.key("location"))?;
        }
        Some(Redirect {
            status,
            location: raw.location.clone(),
            scheme: raw.scheme.clone(),
            host: raw.host.clone(),
            port: raw.port,
            path: raw.path.clone(),
            prefix: raw.prefix.clone(),
        })
    }

    fn direct(&mut self, raw: &RawDirect, at: &KeyPath) -> Option<Direct> {
        let status = match StatusCode::from_u16(raw.status.unwrap_or(200)) {
            Ok(s) => s,
            Err(_) => {
                self.error(
                    at.key("status"),
                    format!("invalid status code {}", raw.status.unwrap_or(0)),
                );
                return None;
            }
        };
        let mut headers = Vec::new();
        let content_type = raw.content_type.as_deref().unwrap_or("text/plain; charset=utf-8");
        if let Some(v) = self.header_value(content_type, at.key("content_type")) {
            headers.push((http::header::CONTENT_TYPE, v));
        }
        for (name, value) in &raw.headers {
            let at = at.key("headers").key(name);
            if let (Some(n), Some(v)) = (self.header_name(name, at.clone()), self.header_value(value, at)) {
                headers.push((n, v));
            }
        }
        Some(Direct {
            status,
            body: raw.body.clone().unwrap_or_default(),
            headers,
        })
    }

    fn rewrite(&mut self, raw: &RawRewrite, at: &KeyPath, matcher: &RouteMatch) -> Rewrite {
        if raw.prefix.is_some() && raw.path.is_some() {
            self.error(at.key("prefix"), "use only one of `prefix` and `path`");
        }
        if let Some(prefix) = &raw.prefix {
            if !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
                self.error(
                    at.key("prefix"),
                    "`prefix` replaces the matched `path_prefix`, but the route's match has none",
                );
            }
            if !prefix.starts_with('/') {
                self.error(
                    at.key("prefix"),
                    format!("rewrite prefix \"{prefix}\" must start with '/'"),
                );
            }
        }
        if let Some(path) = &raw.path {
            if !path.starts_with('/') {
                self.error(at.key("path"), format!("rewrite path \"{path}\" must start with '/'"));
            }
        }
        let host = raw.host.as_ref().and_then(|h| self.header_value(h, at.key("host")));
        let query = raw.query.as_ref().map(|q| {
            let at = at.key("query");
            for (to_key, name) in q.rename.iter() {
                if name.is_empty() || to_key.is_empty() {
                    self.error(at.key("rename").key(to_key), "parameter names cannot be empty");
                }
            }
            if q.remove.iter().any(String::is_empty) || q.set.keys().any(String::is_empty) {
                self.error(at.clone(), "parameter names cannot be empty");
            }
            QueryRewrite {
                remove: q.remove.clone(),
                rename: q.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
                set: q.set.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            }
        });
        Rewrite {
            prefix: raw.prefix.clone(),
            path: raw.path.clone(),
            host,
            query,
        }
    }

    fn header_ops(&mut self, raw: Option<&RawHeaderOps>, at: &KeyPath) -> HeaderOps {
        let Some(raw) = raw else {
            return HeaderOps::default();
        };
        let mut ops = HeaderOps::default();
        for (i, name) in raw.remove.iter().enumerate() {
            if let Some(n) = self.header_name(name, at.key("remove").index(i)) {
                ops.remove.push(n);
            }
        }
        for (key, map, list) in [("set", &raw.set, &mut ops.set), ("add", &raw.add, &mut ops.add)] {
            for (name, value) in map {
                let at = at.key(key).key(name);
                if let (Some(n), Some(v)) = (self.header_name(name, at.clone()), self.header_value(value, at)) {
                    list.push((n, v));
                }
            }
        }
        ops
    }
}

/// Parses `10.0.0.0/8`, or a bare address as a single-host network.
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Checks `host:port` where host is an IP literal or a DNS name.
fn check_host_port(text: &str) -> Result<(), String> {
    if let Ok(addr) = SocketAddr::from_str(text) {
        if addr.port() == 0 {
            return Err(format!("invalid address \"{text}\": port must be 1-65535"));
        }
        return Ok(());
    }
    let invalid = |why: &str| {
        format!("invalid address \"{text}\": {why} (expected HOST:PORT, such as \"127.0.0.1:9001\" or \"users.internal:8080\")")
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(invalid("missing port"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(invalid("port must be 1-65535")),
        Ok(_) => {}
    }
    let valid_host = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if valid_host {
        Ok(())
    } else {
        Err(invalid("bad host name"))
    }
}

/// A cookie name as RFC 6265 allows it (an HTTP token).
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// `200` is `(200, 200)`; `"2xx"` is `(200, 299)`.
fn status_range(status: &RawStatus) -> Result<(u16, u16), String> {
    match status {
        RawStatus::Code(code) if (100..=599).contains(code) => Ok((*code, *code)),
        RawStatus::Code(code) => Err(format!("{code} is not an HTTP status code (100-599)")),
        RawStatus::Class(text) => match text.as_bytes() {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                let base = u16::from(d - b'0') * 100;
                Ok((base, base + 99))
            }
            _ => Err(format!(
                "invalid status \"{text}\": expected a code such as 200 or a class such as \"2xx\""
            )),
        },
    }
}

/// Whether `name` cannot be a TLS server name (a DNS name or an IP address).
fn rustls_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !(name.parse::<std::net::IpAddr>().is_ok()
            || name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')))
}
