//! Reading a configuration from TOML (files) or JSON (the admin API).
//!
//! Both formats go through the same steps: deserialize into [`RawConfig`] while
//! collecting unknown keys, then [`settle`] it. For TOML, each problem's key path
//! is then resolved to the line and column of that key in the source.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, KeyPath, Location, PathSegment};
use crate::raw::RawConfig;
use crate::settle::settle;
use crate::settled::Config;

/// Reads and settles the TOML file at `path`.
pub fn load_file(path: &Path) -> Result<Config, Diagnostics> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse_toml(&text, &name),
        Err(e) => {
            let mut diagnostic = Diagnostic::new(KeyPath::root(), format!("cannot read the file: {e}"));
            diagnostic.file = Some(name);
            Err(Diagnostics(vec![diagnostic]))
        }
    }
}

/// Settles a TOML document; `file` names it in error messages.
pub fn parse_toml(text: &str, file: &str) -> Result<Config, Diagnostics> {
    let at_offset = |span: Option<Range<usize>>, message: &str| {
        let mut d = Diagnostic::new(KeyPath::root(), message.trim().to_owned());
        d.file = Some(file.to_owned());
        d.location = span.map(|s| Location::of_offset(text, s.start));
        Diagnostics(vec![d])
    };
    let document = DeTable::parse(text).map_err(|e| at_offset(e.span(), e.message()))?;
    let deserializer = toml::Deserializer::from(document.clone());
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| unknown.push(key_path(&path)))
        .map_err(|e| at_offset(e.span(), e.message()))?;

    let mut problems: Vec<Diagnostic> = unknown.into_iter().map(unknown_key).collect();
    if let Err(found) = settle(raw.clone()) {
        problems.extend(found);
    }
    if problems.is_empty() {
        return settle(raw).map_err(Diagnostics);
    }
    for problem in &mut problems {
        problem.file = Some(file.to_owned());
        problem.location = locate(document.get_ref(), &problem.path).map(|span| Location::of_offset(text, span.start));
    }
    problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
    Err(Diagnostics(problems))
}

/// Settles a JSON document of the same schema (the admin API's `PUT /api/config`).
pub fn parse_json(bytes: &[u8]) -> Result<Config, Diagnostics> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut unknown = Vec::new();
    let raw: RawConfig =
        serde_ignored::deserialize(&mut deserializer, |path| unknown.push(key_path(&path))).map_err(|e| {
            let mut d = Diagnostic::new(KeyPath::root(), format!("invalid JSON: {e}"));
            d.location = Some(Location {
                line: e.line(),
                column: e.column(),
            });
            Diagnostics(vec![d])
        })?;
    let mut problems: Vec<Diagnostic> = unknown.into_iter().map(unknown_key).collect();
    match settle(raw) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(Diagnostics(problems)),
        Err(found) => {
            problems.extend(found);
            Err(Diagnostics(problems))
        }
    }
}

fn unknown_key(path: KeyPath) -> Diagnostic {
    Diagnostic::new(path, "unknown key").with_hint("see docs/configuration.md for the keys each section takes")
}

fn key_path(path: &serde_ignored::Path<'_>) -> KeyPath {
    use serde_ignored::Path as P;
    match path {
        P::Root => KeyPath::root(),
        P::Seq { parent, index } => key_path(parent).index(*index),
        P::Map { parent, key } => key_path(parent).key(key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => key_path(parent),
    }
}

/// The span of the key (or array element) a path names, or of its nearest
/// present ancestor when the key itself is missing.
fn locate(root: &DeTable<'_>, path: &KeyPath) -> Option<Range<usize>> {
    let mut table = Some(root);
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    let mut best = None;
    for segment in path.segments() {
        match segment {
            PathSegment::Key(key) => {
                let current = table.or_else(|| value.and_then(|v| v.get_ref().as_table()))?;
                let Some((k, v)) = current.iter().find(|(k, _)| k.get_ref() == key) else {
                    return best;
                };
                best = Some(k.span());
                value = Some(v);
                table = None;
            }
            PathSegment::Index(i) => {
                let array = value.and_then(|v| v.get_ref().as_array())?;
                let Some(element) = array.get(*i) else {
                    return best;
                };
                best = Some(element.span());
                value = Some(element);
                table = None;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"

[[clusters]]
name = "api"
endpoints = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 3 }]

[[routes]]
name = "api"
match = { path_prefix = "/api/" }
cluster = "api"
timeout = "2s"
"#;

    fn errors(text: &str) -> Vec<String> {
        match parse_toml(text, "test.toml") {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_good_file_settles() {
        let config = parse_toml(GOOD, "good.toml").expect("valid config");
        assert_eq!(config.listeners[0].listen.port(), 8080);
        assert_eq!(config.clusters[0].endpoints[1].weight, 3);
        assert_eq!(config.routes[0].timeout, std::time::Duration::from_secs(2));
        assert!(config.admin.is_none());
    }

    #[test]
    fn json_round_trips_the_same_schema() {
        let config = parse_toml(GOOD, "good.toml").unwrap();
        let json = serde_json::to_vec(&config.raw).unwrap();
        let again = parse_json(&json).expect("the served config parses back");
        assert_eq!(again.raw, config.raw);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
colour = "blue"

[[clusters]]
name = "api"
balancer = "round_robbin"
endpoints = [{ address = "127.0.0.1" }]
connect_timeout = "5"

[[routes]]
name = "api"
match = { path_regex = "([a-z" }
cluster = "apii"
"#;
        let found = errors(text);
        assert_eq!(found.len(), 6, "{found:#?}");
        let expect = [
            "test.toml:5:1: `listeners[0].colour`: unknown key",
            "test.toml:9:1: `clusters[0].balancer`: unknown balancer \"round_robbin\" (did you mean \"round_robin\"?)",
            "test.toml:10:16: `clusters[0].endpoints[0].address`: invalid address \"127.0.0.1\": missing port",
            "test.toml:11:1: `clusters[0].connect_timeout`: duration \"5\" has no unit",
            "test.toml:15:11: `routes[0].match.path_regex`: invalid regex",
            "test.toml:16:1: `routes[0].cluster`: no cluster named \"apii\" (did you mean \"api\"?)",
        ];
        for (got, want) in found.iter().zip(expect) {
            assert!(got.starts_with(want), "got {got:?}\nwant prefix {want:?}");
        }
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let found = errors("[[listeners]]\nname = \"a\nlisten = 1\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("test.toml:2:"), "{found:?}");
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let found = errors("[[listeners]]\nname = \"a\"\nlisten = 8080\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("test.toml:3:10:"), "{found:?}");
        assert!(found[0].contains("expected a string"), "{found:?}");
    }

    #[test]
    fn redirects_endpoints_and_generated_names_are_checked() {
        let text = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:0" }]
[[routes]]
redirect = { path = "nolead", host = "bad host" }
[[routes]]
name = "route-0"
cluster = "c"
"#;
        let joined = errors(text).join("\n");
        assert!(
            joined
                .contains("`clusters[0].endpoints[0].address`: invalid address \"127.0.0.1:0\": port must be 1-65535"),
            "{joined}"
        );
        assert!(
            joined.contains("`routes[0].redirect.path`: redirect path must start with '/'"),
            "{joined}"
        );
        assert!(
            joined.contains("`routes[0].redirect.host`: invalid redirect host \"bad host\""),
            "{joined}"
        );
        assert!(joined.contains("would be called \"route-0\""), "{joined}");
    }

    #[test]
    fn duplicates_and_exclusive_keys() {
        let text = r#"
[[listeners]]
name = "a"
listen = "127.0.0.1:8080"
[[listeners]]
name = "a"
listen = "127.0.0.1:8080"
[[routes]]
match = { path = "/x", path_prefix = "/y" }
direct = { status = 200 }
redirect = { location = "/z" }
"#;
        let found = errors(text);
        let joined = found.join("\n");
        assert!(joined.contains("duplicate listener name \"a\""), "{joined}");
        assert!(joined.contains("already used by listener \"a\""), "{joined}");
        assert!(
            joined.contains("use only one of `path`, `path_prefix` and `path_regex`"),
            "{joined}"
        );
        assert!(
            joined.contains("only one of `cluster`, `redirect`, `direct`, `static`, `hub` and `aggregate`"),
            "{joined}"
        );
    }

    #[test]
    fn health_outlier_panic_and_sticky_settle() {
        let text = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]
health_check = { path = "/healthz", expected_statuses = [204, "2xx"], body_contains = "ok", interval = "1s", timeout = "500ms" }
outlier_detection = { consecutive_failures = 3, base_ejection = "10s" }
panic_threshold = 25
sticky = { cookie = "sid", ttl = "1h" }
"#;
        let config = parse_toml(text, "test.toml").expect("valid config");
        let cluster = &config.clusters[0];
        let check = cluster.health_check.as_ref().unwrap();
        assert_eq!(check.interval, std::time::Duration::from_secs(1));
        assert_eq!(
            check.jitter,
            std::time::Duration::from_millis(100),
            "a tenth of the interval"
        );
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
        match &check.kind {
            crate::HealthCheckKind::Http {
                path,
                expected_statuses,
                body_contains,
                ..
            } => {
                assert_eq!(path, "/healthz");
                assert_eq!(expected_statuses, &[(204, 204), (200, 299)]);
                assert_eq!(body_contains.as_deref(), Some("ok"));
            }
            other => panic!("expected an HTTP check, got {other:?}"),
        }
        let outlier = cluster.outlier_detection.unwrap();
        assert_eq!(outlier.consecutive_failures, 3);
        assert_eq!(outlier.max_ejection, std::time::Duration::from_secs(300));
        assert_eq!(outlier.max_ejected_percent, 50);
        assert_eq!(cluster.panic_threshold, 25);
        let sticky = cluster.sticky.as_ref().unwrap();
        assert_eq!(sticky.cookie, "sid");
        assert_eq!(sticky.ttl, Some(std::time::Duration::from_secs(3600)));
    }

    #[test]
    fn bad_health_outlier_panic_and_sticky_keys_are_named() {
        let text = r#"
[[clusters]]
name = "c"
balancer = "ip_hash"
endpoints = [{ address = "127.0.0.1:9001" }]
health_check = { type = "tcp", path = "/x", interval = "1s", timeout = "2s", healthy_threshold = 0, expected_statuses = [99] }
outlier_detection = { base_ejection = "1m", max_ejection = "10s", max_ejected_percent = 101 }
panic_threshold = 200
sticky = { cookie = "a b" }

[[clusters]]
name = "d"
endpoints = [{ address = "127.0.0.1:9001" }]
health_check = { type = "grpc", expected_statuses = ["6xx"] }
"#;
        let joined = errors(text).join("\n");
        for expected in [
            "`clusters[0].health_check.path`: only HTTP checks take this key",
            "`clusters[0].health_check.expected_statuses`: only HTTP checks take this key",
            "`clusters[0].health_check.timeout`: the check timeout (2s) is longer than its interval (1s)",
            "`clusters[0].health_check.healthy_threshold`: must be at least 1",
            "`clusters[0].outlier_detection.max_ejection`: shorter than `base_ejection` (1m)",
            "`clusters[0].outlier_detection.max_ejected_percent`: 101 is not a percentage",
            "`clusters[0].panic_threshold`: 200 is not a percentage",
            "`clusters[0].sticky.cookie`: invalid cookie name \"a b\"",
            "`clusters[0].sticky`: hashing balancers already give affinity",
            "`clusters[1].health_check.type`: unknown check type \"grpc\"",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }

    #[test]
    fn resilience_settings_settle() {
        let text = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]
retry_budget = { ratio = 0.5, min_per_second = 3 }
circuit_breaker = { failure_ratio = 0.25, min_requests = 4, open_for = "2s", max_concurrent = 8, max_pending = 2 }

[[routes]]
cluster = "c"
timeout = "3s"
retry = { attempts = 3, on = ["5xx", "retriable-status"], retriable_statuses = [429], per_try_timeout = "1s", backoff = { base = "10ms", max = "1s" }, budget = 0.3 }
hedge = { delay = "20ms" }
idempotency = { ttl = "1h", concurrent = "reject" }
fault = { abort_status = 418, abort_header = "x-teapot" }
"#;
        let config = parse_toml(text, "test.toml").expect("valid config");
        let cluster = &config.clusters[0];
        assert_eq!(cluster.retry_budget.ratio, 0.5);
        assert_eq!(cluster.retry_budget.window, std::time::Duration::from_secs(10));
        let breaker = cluster.circuit_breaker.unwrap();
        assert_eq!(
            (breaker.min_requests, breaker.max_concurrent, breaker.max_pending),
            (4, Some(8), 2)
        );
        assert_eq!(breaker.half_open_probes, 3);
        let route = &config.routes[0];
        let retry = route.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, 3);
        assert!(retry.on.server_error && !retry.on.gateway_error && !retry.on.connect_failure);
        assert_eq!(retry.on.statuses, [429]);
        assert_eq!(retry.max_replay_body, 64 * 1024);
        assert_eq!(retry.backoff_max, std::time::Duration::from_secs(1));
        assert_eq!(retry.budget, Some(0.3));
        assert_eq!(route.hedge.unwrap().delay, std::time::Duration::from_millis(20));
        assert_eq!(
            route.idempotency.unwrap().concurrent,
            crate::ConcurrentDuplicate::Reject
        );
        let abort = route.fault.as_ref().unwrap().abort.as_ref().unwrap();
        assert_eq!(abort.status.as_u16(), 418);
        // Without `retry_budget`, the default budget applies.
        let plain = parse_toml(
            "[[clusters]]\nname = \"d\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(plain.clusters[0].retry_budget.ratio, 0.2);
        assert!(plain.clusters[0].circuit_breaker.is_none());
    }

    #[test]
    fn bad_resilience_settings_are_named() {
        let text = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]
circuit_breaker = { failure_ratio = 1.5, half_open_probes = 0, max_pending = 3 }

[[routes]]
name = "r"
cluster = "c"
timeout = "1s"
retry = { attempts = 20, on = ["5xxx", "retriable-status"], per_try_timeout = "2s" }
idempotency = { concurrent = "queue" }
fault = { delay_percent = 150, abort_status = 200 }

[[routes]]
name = "d"
direct = { status = 200 }
retry = {}
"#;
        let joined = errors(text).join("\n");
        for expected in [
            "`clusters[0].circuit_breaker.failure_ratio`: 1.5: use a share",
            "`clusters[0].circuit_breaker.half_open_probes`: must be at least 1",
            "`clusters[0].circuit_breaker.max_pending`: only applies with `max_concurrent`",
            "`routes[0].retry.attempts`: 20 attempts: use 1 to 10",
            "`routes[0].retry.on[0]`: unknown retry condition \"5xxx\"",
            "`routes[0].retry.retriable_statuses`: `retriable-status` is in `on`",
            "`routes[0].retry.per_try_timeout`: longer than the route's `timeout` (1s)",
            "`routes[0].idempotency.concurrent`: unknown choice \"queue\"",
            "`routes[0].fault.delay`: a delay fault needs `delay`",
            "`routes[0].fault.abort_status`: 200: an abort needs an error status",
            "`routes[0].fault.abort_status`: this abort never fires",
            "`routes[1].retry`: only routes with a `cluster` take `retry`",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }

    #[test]
    fn rate_limits_and_ip_filters_settle_and_fail_clearly() {
        let text = r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:8080"
ip_filter = { deny = ["192.0.2.0/24"] }

[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "c"
rate_limit = { key = "client_ip", rate = 100, per = "1s", burst = 200 }
rate_limits = [{ key = ["client_ip", "header:x-user"], rate = 1000, per = "1h", headers = true }]
ip_filter = { allow = ["10.0.0.0/8", "::1"] }
"#;
        let config = parse_toml(text, "test.toml").expect("valid config");
        let route = &config.routes[0];
        assert_eq!(route.rate_limits.len(), 2);
        assert_eq!(route.rate_limits[0].burst, 200);
        assert_eq!(route.rate_limits[1].burst, 1000, "burst defaults to rate");
        assert_eq!(route.rate_limits[1].key.len(), 2);
        assert!(route.rate_limits[1].headers);
        assert_eq!(route.ip_filter.as_ref().unwrap().allow.len(), 2);
        assert_eq!(config.listeners[0].ip_filter.as_ref().unwrap().deny.len(), 1);

        let bad = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "c"
rate_limit = { key = "client_ipp", per = "1s" }
rate_limits = [{ key = ["claim:sub"], rate = 0 }]
ip_filter = { allow = ["10.0.0.0/33"] }
"#;
        let joined = errors(bad).join("\n");
        for expected in [
            "`routes[0].rate_limit.key`: unknown rate-limit key \"client_ipp\"",
            "`routes[0].rate_limit.rate`: a rate limit needs a `rate`",
            "`routes[0].rate_limits[0].key[0]`: \"claim:sub\" keys need the route's `auth`",
            "`routes[0].rate_limits[0].rate`: must be at least 1",
            "`routes[0].ip_filter.allow[0]`: invalid CIDR \"10.0.0.0/33\"",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }

    #[test]
    fn cors_settings_are_checked() {
        let bad = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "c"
cors = { origins = ["*"], credentials = true, methods = ["P UT"] }

[[routes]]
name = "two"
cluster = "c"
cors = { origins = ["app.example.com", "https://a.example.com/path"] }
"#;
        let joined = errors(bad).join("\n");
        for expected in [
            "`routes[0].cors.credentials`: browsers refuse credentials with a \"*\" origin",
            "`routes[0].cors.methods[0]`: invalid method \"P UT\"",
            "`routes[1].cors.origins[0]`: invalid origin \"app.example.com\"",
            "`routes[1].cors.origins[1]`: invalid origin \"https://a.example.com/path\"",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }

    #[test]
    fn auth_settings_are_checked() {
        let bad = r#"
[[clusters]]
name = "c"
endpoints = [{ address = "127.0.0.1:9001" }]

[[routes]]
cluster = "c"
auth = { jwt = { secret = "short", public_key_file = "/nonexistent.pem" } }

[[routes]]
name = "two"
cluster = "c"
auth = { jwt = { public_key_file = "/nonexistent.pem" }, api_keys = { keys = [{ id = "ci", sha256 = "xyz" }] }, basic = { users = [{ name = "alice", hash = "plaintext" }] } }

[[routes]]
name = "three"
cluster = "c"
auth = { require = { claims = { role = "admin" } } }
"#;
        let joined = errors(bad).join("\n");
        for expected in [
            "`routes[0].auth.jwt`: a JWT check needs exactly one key source",
            "`routes[1].auth.jwt.public_key_file`: cannot read /nonexistent.pem",
            "`routes[1].auth.api_keys`: say where the key comes from",
            "`routes[1].auth.api_keys.keys[0].sha256`: expected the key's SHA-256",
            "`routes[1].auth.basic.users[0].hash`: expected an argon2",
            "`routes[2].auth`: `auth` needs at least one of",
            "`routes[2].auth.require.claims`: claims come from JWTs",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }
}
