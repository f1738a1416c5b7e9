//! CORS (the Fetch standard's cross-origin rules) for a route: preflight
//! requests are answered at the gateway, and actual requests get the
//! `Access-Control-*` response headers when their origin is allowed.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

/// A route's CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    pub origins: Origins,
    /// Methods allowed beyond the simple ones (GET, HEAD, POST are always fine
    /// for actual requests; preflights must name one of these).
    pub methods: Vec<Method>,
    /// Request headers allowed (lower case); empty: none beyond the safelisted.
    pub headers: Vec<HeaderName>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<HeaderName>,
    pub credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<Duration>,
}

/// Which origins may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Any origin (`*`; never with credentials).
    Any,
    /// Exact origins (`https://app.example.com`) and subdomain patterns
    /// (`https://*.example.com`), lower case.
    List(Vec<String>),
}

/// What to do with a preflight request.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Answer 204 with these headers.
    Allowed(HeaderMap),
    /// Refuse, and why.
    Denied(String),
}

impl CorsPolicy {
    /// Whether `origin` may call.
    pub fn allows_origin(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => {
                let origin = origin.to_ascii_lowercase();
                list.iter().any(|allowed| match allowed.split_once("://*.") {
                    Some((scheme, domain)) => origin
                        .strip_prefix(scheme)
                        .and_then(|rest| rest.strip_prefix("://"))
                        .is_some_and(|host| host.ends_with(&format!(".{domain}"))),
                    None => *allowed == origin,
                })
            }
        }
    }

    /// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight.
    pub fn preflight(&self, headers: &HeaderMap) -> Preflight {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Preflight::Denied("no Origin header".into());
        };
        if !self.allows_origin(origin) {
            return Preflight::Denied(format!("origin {origin} is not allowed"));
        }
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
        let Some(method) = requested else {
            return Preflight::Denied("Access-Control-Request-Method is not a method".into());
        };
        let simple = matches!(method, Method::GET | Method::HEAD | Method::POST);
        if !simple && !self.methods.contains(&method) {
            return Preflight::Denied(format!("method {method} is not allowed"));
        }
        let requested_headers: Vec<String> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(refused) = requested_headers
            .iter()
            .find(|h| !self.headers.iter().any(|allowed| allowed.as_str() == h.as_str()))
        {
            return Preflight::Denied(format!("request header {refused} is not allowed"));
        }
        let mut out = HeaderMap::new();
        self.allow_origin(&mut out, origin);
        let mut methods: Vec<&str> = vec!["GET", "HEAD", "POST"];
        methods.extend(
            self.methods
                .iter()
                .map(Method::as_str)
                .filter(|m| !["GET", "HEAD", "POST"].contains(m)),
        );
        insert_list(&mut out, header::ACCESS_CONTROL_ALLOW_METHODS, &methods);
        if !requested_headers.is_empty() {
            let names: Vec<&str> = requested_headers.iter().map(String::as_str).collect();
            insert_list(&mut out, header::ACCESS_CONTROL_ALLOW_HEADERS, &names);
        }
        if let Some(max_age) = self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age.as_secs()));
        }
        out.append(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        Preflight::Allowed(out)
    }

    /// Adds the response headers for an actual request from `origin` (none
    /// when the origin is not allowed: the browser then withholds the answer).
    pub fn apply(&self, origin: Option<&str>, response: &mut HeaderMap) {
        if !matches!(self.origins, Origins::Any) || self.credentials {
            response.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin.filter(|o| self.allows_origin(o)) else {
            return;
        };
        self.allow_origin(response, origin);
        if !self.expose_headers.is_empty() {
            let names: Vec<&str> = self.expose_headers.iter().map(HeaderName::as_str).collect();
            insert_list(response, header::ACCESS_CONTROL_EXPOSE_HEADERS, &names);
        }
    }

    fn allow_origin(&self, out: &mut HeaderMap, origin: &str) {
        let value = match (&self.origins, self.credentials) {
            (Origins::Any, false) => HeaderValue::from_static("*"),
            _ => HeaderValue::from_str(origin).unwrap_or_else(|_| HeaderValue::from_static("null")),
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

fn insert_list(out: &mut HeaderMap, name: HeaderName, items: &[&str]) {
    if let Ok(value) = HeaderValue::from_str(&items.join(", ")) {
        out.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: Origins, credentials: bool) -> CorsPolicy {
        CorsPolicy {
            origins,
            methods: vec![Method::PUT, Method::DELETE],
            headers: vec![
                HeaderName::from_static("content-type"),
                HeaderName::from_static("x-api-key"),
            ],
            expose_headers: vec![HeaderName::from_static("x-request-id")],
            credentials,
            max_age: Some(Duration::from_secs(600)),
        }
    }

    fn preflight_headers(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, method.parse().unwrap());
        if !headers.is_empty() {
            h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, headers.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let p = policy(
            Origins::List(vec!["https://app.example.com".into(), "https://*.example.org".into()]),
            false,
        );
        assert!(p.allows_origin("https://app.example.com"));
        assert!(p.allows_origin("HTTPS://APP.EXAMPLE.COM"));
        assert!(!p.allows_origin("http://app.example.com"), "the scheme counts");
        assert!(!p.allows_origin("https://app.example.com.evil.net"));
        assert!(p.allows_origin("https://a.b.example.org"));
        assert!(
            !p.allows_origin("https://example.org"),
            "a subdomain pattern needs a subdomain"
        );
        assert!(!p.allows_origin("https://evilexample.org"));
    }

    #[test]
    fn preflights_are_answered_or_refused_with_a_reason() {
        let p = policy(Origins::List(vec!["https://app.example.com".into()]), true);
        match p.preflight(&preflight_headers(
            "https://app.example.com",
            "PUT",
            "Content-Type, X-Api-Key",
        )) {
            Preflight::Allowed(h) => {
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST, PUT, DELETE");
                assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-api-key");
                assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
            }
            other => panic!("expected an allowed preflight, got {other:?}"),
        }
        let denied = |origin, method, headers| match p.preflight(&preflight_headers(origin, method, headers)) {
            Preflight::Denied(why) => why,
            Preflight::Allowed(_) => panic!("expected a refusal"),
        };
        assert!(denied("https://evil.example", "GET", "").contains("origin"));
        assert!(denied("https://app.example.com", "PATCH", "").contains("method PATCH"));
        assert!(denied("https://app.example.com", "GET", "x-secret").contains("x-secret"));
    }

    #[test]
    fn actual_responses_get_headers_only_for_allowed_origins() {
        let any = policy(Origins::Any, false);
        let mut h = HeaderMap::new();
        any.apply(Some("https://whoever.example"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert!(
            h.get(header::VARY).is_none(),
            "a wildcard answer does not vary by origin"
        );

        let listed = policy(Origins::List(vec!["https://app.example.com".into()]), false);
        let mut h = HeaderMap::new();
        listed.apply(Some("https://other.example"), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(h[header::VARY], "Origin", "caches must key on the origin");
        let mut h = HeaderMap::new();
        listed.apply(Some("https://app.example.com"), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    }
}
