//! Cache keys (what makes two requests "the same") and `Vary` (what of the
//! request a stored response depends on).

use http::header::{ACCEPT_ENCODING, COOKIE, VARY};
use http::{HeaderMap, HeaderName};

/// Which query parameters are part of the key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryKey {
    /// All of them, as sent.
    #[default]
    All,
    /// None: `/a?x=1` and `/a?y=2` are one object.
    Ignore,
    /// Only these.
    Include(Vec<String>),
    /// All but these (tracking parameters, say).
    Exclude(Vec<String>),
}

/// How a route builds its keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySpec {
    /// Without the host, every host shares one object per path.
    pub ignore_host: bool,
    pub query: QueryKey,
    /// Parameters in name order, so that `?a=1&b=2` and `?b=2&a=1` match.
    pub sort_query: bool,
    /// Request headers whose values are part of the key.
    pub headers: Vec<HeaderName>,
    /// Cookies whose values are part of the key.
    pub cookies: Vec<String>,
}

impl KeySpec {
    /// The key of a request: `host` + `path` + `?query` as the spec keeps
    /// it, then the chosen headers and cookies. Purges name keys by the
    /// part before any header or cookie (`host/path?query`).
    pub fn key(&self, host: &str, path: &str, query: Option<&str>, headers: &HeaderMap) -> String {
        let mut key = String::with_capacity(host.len() + path.len() + query.map_or(0, str::len) + 1);
        self.write_key(&mut key, host, path, query, headers);
        key
    }

    /// [`KeySpec::key`], appended to `key` (which may hold a prefix).
    pub fn write_key(&self, key: &mut String, host: &str, path: &str, query: Option<&str>, headers: &HeaderMap) {
        if !self.ignore_host {
            key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        }
        key.push_str(path);
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            let mut pairs: Vec<&str> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let name = pair.split('=').next().unwrap_or_default();
                    match &self.query {
                        QueryKey::All => true,
                        QueryKey::Ignore => false,
                        QueryKey::Include(names) => names.iter().any(|n| n == name),
                        QueryKey::Exclude(names) => !names.iter().any(|n| n == name),
                    }
                })
                .collect();
            if self.sort_query {
                pairs.sort_unstable();
            }
            if !pairs.is_empty() {
                key.push('?');
                key.push_str(&pairs.join("&"));
            }
        }
        // Each value after a separator that cannot appear in one (\u{1});
        // an absent header or cookie reads \u{2}, so it differs from an empty one.
        for name in &self.headers {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                key.push('\u{2}');
            }
            for value in values {
                key.push('\u{1}');
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        for name in &self.cookies {
            key.push('\n');
            key.push_str("cookie:");
            key.push_str(name);
            key.push('=');
            let mut found = false;
            for value in cookies(headers, name) {
                found = true;
                key.push('\u{1}');
                key.push_str(value);
            }
            if !found {
                key.push('\u{2}');
            }
        }
    }
}

/// Every value of cookie `name` in the request's `Cookie` headers (a
/// repeated name is keyed whole: origins differ on which one wins).
fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v)
        })
}

/// The request header names a response varies on (`Vary`), lower-case and
/// sorted; `*` is not representable (such responses are not stored).
pub fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// What a request says for each of `names`, normalised so that requests a
/// response would treat alike match: `Accept-Encoding` becomes the coding
/// the request would get (`br`, `zstd`, `gzip` or `identity`), other values
/// are joined with whitespace runs collapsed.
pub fn vary_values(request: &HeaderMap, names: &[HeaderName]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            if *name == ACCEPT_ENCODING {
                return preferred_encoding(request).to_owned();
            }
            let joined: Vec<&str> = request.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            joined.join(",").split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// The codings a request's `Accept-Encoding` lists, as (lower-case name,
/// q-value), in the order given; a missing or unreadable q counts as 1 and 0.
pub fn accepted_codings(request: &HeaderMap) -> Vec<(String, f32)> {
    request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim().to_ascii_lowercase();
            if name.is_empty() {
                return None;
            }
            let q = parts
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .map(|q| q.trim().parse::<f32>().unwrap_or(0.0))
                })
                .unwrap_or(1.0);
            Some((name, q))
        })
        .collect()
}

/// The q-value `codings` give `coding` (named, else through `*`; 0 if neither).
pub fn coding_q(codings: &[(String, f32)], coding: &str) -> f32 {
    codings
        .iter()
        .find(|(n, _)| n == coding)
        .or_else(|| codings.iter().find(|(n, _)| n == "*"))
        .map_or(0.0, |(_, q)| *q)
}

/// The content coding among `br`, `zstd` and `gzip` a request accepts,
/// best q-value first (ties in that order), else `identity`.
pub fn preferred_encoding(request: &HeaderMap) -> &'static str {
    let codings = accepted_codings(request);
    let mut best = ("identity", 0.0f32);
    for coding in ["br", "zstd", "gzip"] {
        let q = coding_q(&codings, coding);
        if q > best.1 {
            best = (coding, q);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn keys_follow_the_spec() {
        let none = HeaderMap::new();
        let all = KeySpec::default();
        assert_eq!(
            all.key("Example.COM", "/a", Some("y=2&x=1"), &none),
            "example.com/a?y=2&x=1"
        );
        let sorted = KeySpec {
            sort_query: true,
            ..KeySpec::default()
        };
        assert_eq!(sorted.key("h", "/a", Some("y=2&x=1"), &none), "h/a?x=1&y=2");
        let ignore = KeySpec {
            query: QueryKey::Ignore,
            ignore_host: true,
            ..KeySpec::default()
        };
        assert_eq!(ignore.key("h", "/a", Some("y=2"), &none), "/a");
        let include = KeySpec {
            query: QueryKey::Include(vec!["page".into()]),
            ..KeySpec::default()
        };
        assert_eq!(include.key("h", "/a", Some("utm=1&page=2"), &none), "h/a?page=2");
        let exclude = KeySpec {
            query: QueryKey::Exclude(vec!["utm_source".into()]),
            ..KeySpec::default()
        };
        assert_eq!(exclude.key("h", "/a", Some("utm_source=x&id=7"), &none), "h/a?id=7");
        let personal = KeySpec {
            headers: vec![HeaderName::from_static("x-tenant")],
            cookies: vec!["lang".into()],
            ..KeySpec::default()
        };
        let req = headers(&[("x-tenant", "acme"), ("cookie", "a=1; lang=fr")]);
        assert_eq!(
            personal.key("h", "/a", None, &req),
            "h/a\nx-tenant:\u{1}acme\ncookie:lang=\u{1}fr"
        );
        // Absent and empty differ; split values do not run together; every
        // occurrence of a repeated cookie counts.
        let empty = headers(&[("x-tenant", ""), ("cookie", "lang=en; lang=x")]);
        assert_eq!(
            personal.key("h", "/a", None, &empty),
            "h/a\nx-tenant:\u{1}\ncookie:lang=\u{1}en\u{1}x"
        );
        assert_eq!(
            personal.key("h", "/a", None, &none),
            "h/a\nx-tenant:\u{2}\ncookie:lang=\u{2}"
        );
        let mut split = HeaderMap::new();
        split.append("x-tenant", http::HeaderValue::from_static("ac"));
        split.append("x-tenant", http::HeaderValue::from_static("me"));
        assert_ne!(
            personal.key("h", "/a", None, &split),
            personal.key("h", "/a", None, &req)
        );
    }

    #[test]
    fn vary_is_normalised_on_accept_encoding() {
        let names = vary_names(&headers(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "accept-encoding"),
        ]));
        assert_eq!(names, [ACCEPT_ENCODING, HeaderName::from_static("accept-language")]);
        let a = headers(&[("accept-encoding", "gzip, deflate, br"), ("accept-language", "en,  fr")]);
        let b = headers(&[
            ("accept-encoding", "br;q=1.0, gzip;q=0.8"),
            ("accept-language", "en, fr"),
        ]);
        assert_eq!(vary_values(&a, &names), vary_values(&b, &names));
        assert_eq!(vary_values(&a, &names)[0], "br");
        assert_eq!(
            preferred_encoding(&headers(&[("accept-encoding", "gzip;q=0.5, zstd")])),
            "zstd"
        );
        assert_eq!(
            preferred_encoding(&headers(&[("accept-encoding", "identity")])),
            "identity"
        );
        assert_eq!(preferred_encoding(&headers(&[("accept-encoding", "*")])), "br");
        assert_eq!(preferred_encoding(&HeaderMap::new()), "identity");
    }
}
