//! How long a response stays fresh and how old a stored one is
//! (RFC 9111 section 4.2), and whether a shared cache may store it at all
//! (section 3).

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

use crate::control::CacheControl;

/// Statuses a cache may store with a freshness it chose itself (the route's
/// default), RFC 9110 section 15.1 ("heuristically cacheable"). Others are
/// stored only with explicit freshness.
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    /// The request carried `Authorization` and the response did not say a
    /// shared cache may reuse it (`public`, `s-maxage` or `must-revalidate`).
    Authorization,
    /// `Set-Cookie`: one client's session is not handed to another.
    SetCookie,
    /// `Vary: *`: no later request can match.
    VaryStar,
    /// Neither the response nor the route gives it a lifetime.
    NoFreshness,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary-star",
            Self::NoFreshness => "no-freshness",
        }
    }
}

/// Whether a shared cache may store this response to this request, and for
/// how long it is fresh (`default_ttl`: the route's lifetime for responses
/// that give none).
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    default_ttl: Option<Duration>,
) -> Result<Duration, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Err(NotStored::Status);
    }
    let req = CacheControl::parse(request);
    let cc = CacheControl::parse(response);
    if cc.no_store || req.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if request.contains_key(AUTHORIZATION) && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_star(response) {
        return Err(NotStored::VaryStar);
    }
    let explicit = explicit_lifetime(&cc, response);
    let heuristic = HEURISTIC.contains(&status.as_u16()) || cc.public;
    match explicit {
        Some(lifetime) => Ok(lifetime),
        None if heuristic => default_ttl.ok_or(NotStored::NoFreshness),
        None => Err(NotStored::Status),
    }
}

/// The lifetime the response itself gives: `s-maxage`, then `max-age`, then
/// `Expires` minus `Date` (an unreadable `Expires` means already expired).
pub fn explicit_lifetime(cc: &CacheControl, response: &HeaderMap) -> Option<Duration> {
    if let Some(lifetime) = cc.s_maxage.or(cc.max_age) {
        return Some(lifetime);
    }
    let expires = response.get(EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return Some(Duration::ZERO);
    };
    let date = date(response).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

fn date(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

fn vary_star(response: &HeaderMap) -> bool {
    response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*")
}

/// The age a response had when it arrived (RFC 9111 section 4.2.3's
/// `corrected_initial_age`), from its `Date` and `Age` and the times the
/// request went out and the response came back.
pub fn initial_age(response: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let apparent = date(response)
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = response
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    apparent.max(age_value + delay)
}

/// What a stored response's age and lifetime allow now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Fresh for the request: serve it.
    Fresh,
    /// Stale, but within `stale-while-revalidate`: serve it and refresh it
    /// in the background.
    StaleWhileRevalidate,
    /// Must be revalidated (or fetched) before use; if the origin then
    /// fails, it may still be served while within `stale-if-error`.
    Revalidate { stale_if_error: bool },
}

/// Decides how a stored response of `age` and `lifetime`, with response
/// directives `stored`, may answer a request with directives `request`.
pub fn usable(stored: &CacheControl, request: &CacheControl, age: Duration, lifetime: Duration) -> Usable {
    let must_revalidate = stored.must_revalidate || stored.proxy_revalidate || stored.s_maxage.is_some();
    let sie = |over: Duration| {
        !must_revalidate
            && stored
                .stale_if_error
                .or(request.stale_if_error)
                .is_some_and(|window| over <= window)
    };
    if stored.no_cache || request.no_cache {
        return Usable::Revalidate {
            stale_if_error: sie(age.saturating_sub(lifetime)),
        };
    }
    // The request's own limits on age.
    let mut fresh_for = lifetime;
    if let Some(max_age) = request.max_age {
        fresh_for = fresh_for.min(max_age);
    }
    let needed = request.min_fresh.unwrap_or(Duration::ZERO);
    if age + needed < fresh_for {
        return Usable::Fresh;
    }
    let over = (age + needed).saturating_sub(fresh_for);
    if !must_revalidate {
        let allowed = match request.max_stale {
            Some(None) => true,
            Some(Some(limit)) => over <= limit,
            None => false,
        };
        if allowed {
            return Usable::Fresh;
        }
        if stored.stale_while_revalidate.is_some_and(|window| over <= window) {
            return Usable::StaleWhileRevalidate;
        }
    }
    Usable::Revalidate {
        stale_if_error: sie(over),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const TTL: Option<Duration> = Some(Duration::from_secs(60));

    fn store(req: &[(&'static str, &str)], status: u16, resp: &[(&'static str, &str)]) -> Result<Duration, NotStored> {
        storable(
            &Method::GET,
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(resp),
            TTL,
        )
    }

    #[test]
    fn what_a_shared_cache_stores() {
        let secs = |s: u64| -> Result<Duration, NotStored> { Ok(Duration::from_secs(s)) };
        assert_eq!(store(&[], 200, &[]), secs(60), "the route's default");
        assert_eq!(store(&[], 200, &[("cache-control", "max-age=5")]), secs(5));
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=5, s-maxage=50")]),
            secs(50)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[("cache-control", "no-store")], 200, &[]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "private")]),
            Err(NotStored::Private)
        );
        assert_eq!(store(&[], 200, &[("set-cookie", "a=b")]), Err(NotStored::SetCookie));
        assert_eq!(store(&[], 200, &[("vary", "accept, *")]), Err(NotStored::VaryStar));
        assert_eq!(store(&[], 404, &[]), secs(60), "404 is heuristically cacheable");
        assert_eq!(store(&[], 500, &[]), Err(NotStored::Status));
        assert_eq!(store(&[], 500, &[("cache-control", "max-age=3")]), secs(3));
        assert_eq!(
            store(&[], 206, &[("cache-control", "max-age=3")]),
            Err(NotStored::Status)
        );
        // Authorization: only with the response's permission.
        let auth = [("authorization", "Bearer x")];
        assert_eq!(store(&auth, 200, &[]), Err(NotStored::Authorization));
        assert_eq!(store(&auth, 200, &[("cache-control", "public")]), secs(60));
        assert_eq!(store(&auth, 200, &[("cache-control", "s-maxage=9")]), secs(9));
        assert_eq!(
            store(&auth, 200, &[("cache-control", "must-revalidate, max-age=4")]),
            secs(4)
        );
        // Expires relative to Date; an unreadable one is already expired.
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let expires = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_030));
        assert_eq!(
            store(&[], 200, &[("date", date.as_str()), ("expires", expires.as_str())]),
            secs(30)
        );
        assert_eq!(store(&[], 200, &[("expires", "0")]), secs(0));
        assert_eq!(
            storable(&Method::POST, &HeaderMap::new(), StatusCode::OK, &HeaderMap::new(), TTL),
            Err(NotStored::Method)
        );
        assert_eq!(
            storable(&Method::GET, &HeaderMap::new(), StatusCode::OK, &HeaderMap::new(), None),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn initial_age_takes_the_larger_estimate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000);
        let sent = now - Duration::from_secs(2);
        let date = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(
            initial_age(&headers(&[("date", date.as_str())]), sent, now),
            Duration::from_secs(10)
        );
        assert_eq!(
            initial_age(&headers(&[("date", date.as_str()), ("age", "30")]), sent, now),
            Duration::from_secs(32)
        );
        assert_eq!(initial_age(&HeaderMap::new(), sent, now), Duration::from_secs(2));
    }

    #[test]
    fn freshness_staleness_and_request_limits() {
        let cc = |v: &'static str| CacheControl::parse(&headers(&[("cache-control", v)]));
        let none = CacheControl::default();
        let s = Duration::from_secs;
        assert_eq!(usable(&none, &none, s(10), s(60)), Usable::Fresh);
        assert_eq!(
            usable(&none, &none, s(60), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        let swr = cc("max-age=60, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(usable(&swr, &none, s(80), s(60)), Usable::StaleWhileRevalidate);
        assert_eq!(
            usable(&swr, &none, s(100), s(60)),
            Usable::Revalidate { stale_if_error: true }
        );
        assert_eq!(
            usable(&swr, &none, s(700), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        // must-revalidate forbids serving stale in any form.
        let strict = cc("max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(
            usable(&strict, &none, s(70), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        // The request's own limits.
        assert_eq!(
            usable(&none, &cc("max-age=5"), s(10), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        assert_eq!(
            usable(&none, &cc("min-fresh=55"), s(10), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        assert_eq!(usable(&none, &cc("max-stale=20"), s(70), s(60)), Usable::Fresh);
        assert_eq!(usable(&none, &cc("max-stale"), s(7000), s(60)), Usable::Fresh);
        assert_eq!(
            usable(&none, &cc("no-cache"), s(1), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
        assert_eq!(
            usable(&cc("no-cache"), &none, s(1), s(60)),
            Usable::Revalidate { stale_if_error: false }
        );
    }
}
