//! The router: finds the route for a request.
//!
//! Built once per listener per config snapshot, then read-only. Precedence is
//! host first (exact host, then wildcards from the longest suffix, then routes
//! without a host), then within a host group the most specific path (exact,
//! template, regex, then prefixes longest first, then none), then the route with
//! more method/header/query conditions, and finally declared order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use switchyard_config::{HostMatch, PathMatch, Route, RouteMatch, TemplateSegment, ValueMatch, ValueMatchKind};

/// The parts of a request routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The requested host, without port; any case.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Routes of one listener, indexed for lookup. `R` is whatever the caller keeps
/// per route (the proxy keeps the route with its resolved cluster).
#[derive(Debug)]
pub struct Router<R = Arc<Route>> {
    routes: Vec<R>,
    exact_hosts: HashMap<String, Vec<usize>>,
    /// (suffix such as `.example.com`, routes), longest suffix first.
    wildcard_hosts: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl<R: AsRef<Route>> Router<R> {
    /// Indexes `routes` (in declared order) for lookup.
    pub fn new(routes: Vec<R>) -> Self {
        let mut router = Router {
            routes,
            exact_hosts: HashMap::new(),
            wildcard_hosts: Vec::new(),
            any_host: Vec::new(),
        };
        for (i, route) in router.routes.iter().enumerate() {
            match &route.as_ref().matcher.host {
                Some(HostMatch::Exact(host)) => router.exact_hosts.entry(host.clone()).or_default().push(i),
                Some(HostMatch::Wildcard(suffix)) => {
                    match router.wildcard_hosts.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, group)) => group.push(i),
                        None => router.wildcard_hosts.push((suffix.clone(), vec![i])),
                    }
                }
                None => router.any_host.push(i),
            }
        }
        router
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let routes = &router.routes;
        let by_specificity = |group: &mut Vec<usize>| {
            // Stable sort: equal specificity keeps declared order.
            group.sort_by_key(|&i| std::cmp::Reverse(specificity(&routes[i].as_ref().matcher)));
        };
        router.exact_hosts.values_mut().for_each(by_specificity);
        router.wildcard_hosts.iter_mut().for_each(|(_, g)| by_specificity(g));
        by_specificity(&mut router.any_host);
        router
    }

    /// Every route, in declared order.
    pub fn routes(&self) -> &[R] {
        &self.routes
    }

    /// The route for `req`, if any.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&R> {
        let host = req.host.map(lowercase);
        let host = host.as_deref();
        let mut query = LazyQuery::new(req.query);
        let in_group = |group: &[usize], query: &mut LazyQuery<'_>| {
            group
                .iter()
                .map(|&i| &self.routes[i])
                .find(|r| matches_request(&r.as_ref().matcher, req, query))
        };
        if let Some(host) = host {
            if let Some(group) = self.exact_hosts.get(host) {
                if let Some(route) = in_group(group, &mut query) {
                    return Some(route);
                }
            }
            for (suffix, group) in &self.wildcard_hosts {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(route) = in_group(group, &mut query) {
                        return Some(route);
                    }
                }
            }
        }
        in_group(&self.any_host, &mut query)
    }
}

/// Orders routes within a host group: higher is tried first.
fn specificity(m: &RouteMatch) -> (u8, usize, usize) {
    let (rank, len) = match &m.path {
        Some(PathMatch::Exact(p)) => (4, p.len()),
        Some(PathMatch::Template(segments)) => (
            3,
            segments
                .iter()
                .filter(|s| matches!(s, TemplateSegment::Literal(_)))
                .count(),
        ),
        Some(PathMatch::Regex(_)) => (2, 0),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        None => (0, 0),
    };
    let conditions = usize::from(!m.methods.is_empty()) + m.headers.len() + m.query.len();
    (rank, len, conditions)
}

fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn matches_request(m: &RouteMatch, req: &RequestView<'_>, query: &mut LazyQuery<'_>) -> bool {
    if let Some(path) = &m.path {
        if !path_matches(path, req.path) {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.contains(req.method) {
        return false;
    }
    let header_ok = |vm: &ValueMatch| {
        let value = req.headers.get(vm.name.as_str()).and_then(|v| v.to_str().ok());
        value_matches(&vm.kind, value)
    };
    if !m.headers.iter().all(header_ok) {
        return false;
    }
    m.query.iter().all(|vm| value_matches(&vm.kind, query.get(&vm.name)))
}

/// Whether `path` satisfies a path matcher (see [`PathMatch`] for the rules).
pub fn path_matches(matcher: &PathMatch, path: &str) -> bool {
    match matcher {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
        PathMatch::Regex(re) => re.is_match(path),
        PathMatch::Template(segments) => template_captures(segments, path).is_some(),
    }
}

/// The `{name}` captures of a template match, or `None` if `path` does not fit.
pub fn template_captures<'a>(segments: &'a [TemplateSegment], path: &'a str) -> Option<Vec<(&'a str, &'a str)>> {
    let rest = path.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let mut captures = Vec::new();
    for segment in segments {
        let part = parts.next()?;
        match segment {
            TemplateSegment::Literal(lit) if lit == part => {}
            TemplateSegment::Literal(_) => return None,
            TemplateSegment::Capture(_) if part.is_empty() => return None,
            TemplateSegment::Capture(name) => captures.push((name.as_str(), part)),
        }
    }
    parts.next().is_none().then_some(captures)
}

fn value_matches(kind: &ValueMatchKind, value: Option<&str>) -> bool {
    match (kind, value) {
        (ValueMatchKind::Present(want), v) => *want == v.is_some(),
        (ValueMatchKind::Exact(expected), Some(v)) => v == expected,
        (ValueMatchKind::Regex(re), Some(v)) => re.is_match(v),
        (_, None) => false,
    }
}

/// Query parameters decoded on first use only (most routes never look).
struct LazyQuery<'a> {
    raw: Option<&'a str>,
    decoded: Option<Vec<(String, String)>>,
}

impl<'a> LazyQuery<'a> {
    fn new(raw: Option<&'a str>) -> Self {
        Self { raw, decoded: None }
    }

    fn get(&mut self, name: &str) -> Option<&str> {
        let raw = self.raw;
        let pairs = self.decoded.get_or_insert_with(|| {
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default()
        });
        pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml_routes: &str) -> Router {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[clusters]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:2\" }}]\n{toml_routes}"
        );
        let config = switchyard_config::parse_toml(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        Router::new(config.routes)
    }

    fn find<'r>(
        r: &'r Router,
        method: &str,
        host: Option<&str>,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'r str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let view = RequestView {
            method: &method,
            host,
            path,
            query,
            headers: &map,
        };
        r.find(&view).map(|route| route.name.as_str())
    }

    const ROUTES: &str = r#"
[[routes]]
name = "catch-all"
cluster = "c"
[[routes]]
name = "api-prefix"
match = { path_prefix = "/api" }
cluster = "c"
[[routes]]
name = "api-v2-prefix"
match = { path_prefix = "/api/v2/" }
cluster = "c"
[[routes]]
name = "health-exact"
match = { path = "/api/health" }
cluster = "c"
[[routes]]
name = "user-template"
match = { path = "/users/{id}/orders" }
cluster = "c"
[[routes]]
name = "regex"
match = { path_regex = "/files/[0-9]+\\.txt" }
cluster = "c"
[[routes]]
name = "post-only"
match = { path_prefix = "/api/", methods = ["POST"] }
cluster = "c"
[[routes]]
name = "canary"
match = { path_prefix = "/api/", headers = [{ name = "x-canary", value = "1" }] }
cluster = "c"
[[routes]]
name = "debug-query"
match = { path_prefix = "/api/", query = [{ name = "debug", value = "on" }] }
cluster = "c"
[[routes]]
name = "exact-host"
match = { host = "api.example.com" }
cluster = "c"
[[routes]]
name = "exact-host-path"
match = { host = "api.example.com", path_prefix = "/admin/" }
cluster = "c"
[[routes]]
name = "wild"
match = { host = "*.example.com" }
cluster = "c"
[[routes]]
name = "deeper-wild"
match = { host = "*.eu.example.com" }
cluster = "c"
"#;

    #[test]
    fn routing_matrix() {
        let r = router(ROUTES);
        // (method, host, target, headers, expected route)
        type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("GET", None, "/", &[], "catch-all"),
            ("GET", None, "/api", &[], "api-prefix"),
            ("GET", None, "/api/x", &[], "api-prefix"),
            ("GET", None, "/apix", &[], "catch-all"),
            ("GET", None, "/api/v2/users", &[], "api-v2-prefix"),
            ("GET", None, "/api/health", &[], "health-exact"),
            ("GET", None, "/users/42/orders", &[], "user-template"),
            ("GET", None, "/users//orders", &[], "catch-all"),
            ("GET", None, "/users/42/orders/x", &[], "catch-all"),
            ("GET", None, "/files/12.txt", &[], "regex"),
            ("GET", None, "/files/12.txt.bak", &[], "catch-all"),
            ("POST", None, "/api/x", &[], "post-only"),
            ("GET", None, "/api/x", &[("x-canary", "1")], "canary"),
            ("GET", None, "/api/x", &[("x-canary", "2")], "api-prefix"),
            ("GET", None, "/api/x?debug=on", &[], "debug-query"),
            ("GET", None, "/api/x?debug=off", &[], "api-prefix"),
            ("GET", Some("api.example.com"), "/", &[], "exact-host"),
            ("GET", Some("API.Example.COM"), "/admin/x", &[], "exact-host-path"),
            ("GET", Some("www.example.com"), "/", &[], "wild"),
            ("GET", Some("a.b.example.com"), "/", &[], "wild"),
            ("GET", Some("x.eu.example.com"), "/", &[], "deeper-wild"),
            ("GET", Some("example.com"), "/api/x", &[], "api-prefix"),
            ("GET", Some("other.org"), "/", &[], "catch-all"),
        ];
        for (method, host, target, headers, want) in cases {
            assert_eq!(
                find(&r, method, *host, target, headers),
                Some(*want),
                "{method} {host:?} {target} {headers:?}"
            );
        }
    }

    #[test]
    fn declared_order_breaks_ties() {
        let r = router(
            "[[routes]]\nname = \"first\"\nmatch = { path_prefix = \"/a/\" }\ncluster = \"c\"\n\
             [[routes]]\nname = \"second\"\nmatch = { path_prefix = \"/b/\" }\ncluster = \"c\"\n\
             [[routes]]\nname = \"third\"\nmatch = { path_prefix = \"/a/\" }\ncluster = \"c\"\n",
        );
        assert_eq!(find(&r, "GET", None, "/a/x", &[]), Some("first"));
    }

    #[test]
    fn no_route_without_catch_all() {
        let r = router("[[routes]]\nname = \"only\"\nmatch = { path = \"/x\" }\ncluster = \"c\"\n");
        assert_eq!(find(&r, "GET", None, "/y", &[]), None);
    }

    #[test]
    fn template_captures_names_and_values() {
        let segments = vec![
            TemplateSegment::Literal("users".into()),
            TemplateSegment::Capture("id".into()),
        ];
        assert_eq!(template_captures(&segments, "/users/7"), Some(vec![("id", "7")]));
        assert_eq!(template_captures(&segments, "/users"), None);
        assert_eq!(template_captures(&segments, "/users/7/x"), None);
    }
}
