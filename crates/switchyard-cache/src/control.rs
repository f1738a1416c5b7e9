//! `Cache-Control` (RFC 9111 section 5.2), requests' and responses'
//! directives in one parsed form, plus HTTP/1.0's `Pragma: no-cache`.

use std::time::Duration;

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// The directives a shared cache acts on. Unknown directives are ignored,
/// as RFC 9111 asks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// `no-cache` (qualified or not: a list of fields is treated as the
    /// whole response needing revalidation, the conservative reading).
    pub no_cache: bool,
    /// `private` (qualified or not): a shared cache does not store it.
    pub private: bool,
    pub public: bool,
    pub max_age: Option<Duration>,
    pub s_maxage: Option<Duration>,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    /// RFC 5861 extensions.
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    /// Request only: `max-stale` (`Some(None)`: any staleness).
    pub max_stale: Option<Option<Duration>>,
    pub min_fresh: Option<Duration>,
    pub only_if_cached: bool,
}

impl CacheControl {
    /// The directives of every `Cache-Control` field of `headers`; for a
    /// request without one, `Pragma: no-cache` counts as `no-cache`.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        let mut seen_any = false;
        let mut max_age_conflict = false;
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for (name, argument) in directives(text) {
                seen_any = true;
                let seconds = argument.as_deref().and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "no-transform" => cc.no_transform = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    // An unreadable or conflicting max-age makes the response
                    // stale (RFC 9111 sections 4.2.1 and 5.2.2.1).
                    "max-age" => {
                        let age = seconds.unwrap_or(Duration::ZERO);
                        if cc.max_age.is_some_and(|previous| previous != age) {
                            max_age_conflict = true;
                        }
                        cc.max_age.get_or_insert(age);
                    }
                    "s-maxage" => {
                        cc.s_maxage.get_or_insert(seconds.unwrap_or(Duration::ZERO));
                    }
                    "stale-while-revalidate" => cc.stale_while_revalidate = seconds.or(cc.stale_while_revalidate),
                    "stale-if-error" => cc.stale_if_error = seconds.or(cc.stale_if_error),
                    "max-stale" => cc.max_stale = Some(seconds),
                    "min-fresh" => cc.min_fresh = seconds.or(cc.min_fresh),
                    _ => {}
                }
            }
        }
        if max_age_conflict {
            cc.max_age = Some(Duration::ZERO);
        }
        if !seen_any {
            let pragma_no_cache = headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
            cc.no_cache = pragma_no_cache;
        }
        cc
    }
}

/// `delta-seconds`: digits only; values too large to hold saturate.
fn delta_seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)))
}

/// The `name[=argument]` items of one field value, commas inside quoted
/// arguments included; quotes are removed from arguments.
fn directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut item = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut push = |item: &mut String| {
        let raw = std::mem::take(item);
        let raw = raw.trim();
        if raw.is_empty() {
            return;
        }
        match raw.split_once('=') {
            Some((name, argument)) => {
                let argument = argument.trim();
                let argument = argument
                    .strip_prefix('"')
                    .and_then(|a| a.strip_suffix('"'))
                    .unwrap_or(argument)
                    .replace("\\\"", "\"");
                out.push((name.trim().to_owned(), Some(argument)));
            }
            None => out.push((raw.to_owned(), None)),
        }
    };
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            push(&mut item);
            continue;
        }
        item.push(c);
    }
    push(&mut item);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(values: &[&'static str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_static(v));
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn response_directives() {
        let c = cc(&[
            "public, max-age=60, s-maxage=\"120\"",
            "must-revalidate, stale-while-revalidate=30",
        ]);
        assert!(c.public && c.must_revalidate);
        assert_eq!(c.max_age, Some(Duration::from_secs(60)));
        assert_eq!(c.s_maxage, Some(Duration::from_secs(120)));
        assert_eq!(c.stale_while_revalidate, Some(Duration::from_secs(30)));
        let c = cc(&["private=\"set-cookie, x-user\", no-cache=\"a,b\", stale-if-error=300"]);
        assert!(c.private && c.no_cache);
        assert_eq!(c.stale_if_error, Some(Duration::from_secs(300)));
        assert!(cc(&["No-Store"]).no_store, "names are case-insensitive");
    }

    #[test]
    fn bad_or_conflicting_max_age_means_stale() {
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(Duration::ZERO));
        assert_eq!(cc(&["max-age=-5"]).max_age, Some(Duration::ZERO));
        assert_eq!(cc(&["max-age=10, max-age=20"]).max_age, Some(Duration::ZERO));
        assert_eq!(cc(&["max-age=10, max-age=10"]).max_age, Some(Duration::from_secs(10)));
        assert_eq!(
            cc(&["max-age=99999999999999999999999"]).max_age,
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn request_directives_and_pragma() {
        let c = cc(&["max-stale, min-fresh=5, only-if-cached"]);
        assert_eq!(c.max_stale, Some(None));
        assert_eq!(c.min_fresh, Some(Duration::from_secs(5)));
        assert!(c.only_if_cached);
        assert_eq!(cc(&["max-stale=30"]).max_stale, Some(Some(Duration::from_secs(30))));

        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(CacheControl::parse(&headers).no_cache);
        // Cache-Control wins over Pragma.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!CacheControl::parse(&headers).no_cache);
    }
}
