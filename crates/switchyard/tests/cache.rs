//! The response cache against an origin that counts its hits: freshness and
//! expiry, each Cache-Control directive, Vary, keys, revalidation with ETag
//! and Last-Modified (and 304s to clients), stale-while-revalidate,
//! stale-if-error, coalescing of concurrent misses, purges by key, prefix and
//! tag, eviction under the byte bound, ranges and HEAD from stored responses,
//! large bodies streamed while kept, and invalidation by unsafe methods.
//!
//! The origin's behaviour comes from the query (`cc` is its Cache-Control,
//! `etag`, `lm`, `vary`, `tags`, `size`, `delay`), and it counts requests
//! by path, so each test uses paths of its own.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use support::client::{client, empty, get, send, Proto};
use support::{metric, GatewayProcess};

/// A fixed Last-Modified date.
const MODIFIED: &str = "Sun, 01 Nov 2026 10:00:00 GMT";

#[derive(Default)]
struct OriginState {
    /// Full answers (200s) by path.
    full: Mutex<HashMap<String, usize>>,
    /// 304 answers by path.
    not_modified: Mutex<HashMap<String, usize>>,
    /// Every request head, in order.
    heads: Mutex<Vec<http::request::Parts>>,
    /// While set, every answer is a 503.
    failing: AtomicBool,
    /// While set, connections are closed without an answer.
    refusing: AtomicBool,
    /// `/stream/` answers send their first half, then wait for this.
    release: Notify,
}

/// The origin's state lives as long as the test process, so that a
/// streamed answer may hold on to it.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    state: &'static OriginState,
}

impl Origin {
    fn full(&self, path: &str) -> usize {
        self.state.full.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn not_modified(&self, path: &str) -> usize {
        self.state.not_modified.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn heads(&self, path: &str) -> Vec<http::request::Parts> {
        self.state
            .heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.uri.path() == path)
            .cloned()
            .collect()
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.replace("%20", " ").replace("%3D", "=").replace("%2C", ","),
            )
        })
        .collect()
}

/// The body of the `n`th full answer for `path` (or `size` bytes).
fn body_of(path: &str, n: usize, size: Option<usize>) -> Bytes {
    match size {
        Some(size) => Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        None => Bytes::from(format!("{path} #{n}")),
    }
}

async fn origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state: &'static OriginState = Box::leak(Box::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // While refusing, the connection is dropped without an answer.
            let service = service_fn(move |req: Request<Incoming>| async move {
                if state.refusing.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("refusing"));
                }
                Ok(answer(state, req).await)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Origin { addr, state }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(state: &'static OriginState, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let path = req.uri().path().to_owned();
    state.heads.lock().unwrap().push(req.clone_parts());
    if let Some(delay) = q.get("delay") {
        tokio::time::sleep(Duration::from_millis(delay.parse().unwrap())).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down")).boxed())
            .unwrap();
    }
    let mut head = Response::builder().header("content-type", "text/plain");
    if let Some(cc) = q.get("cc") {
        head = head.header("cache-control", cc.as_str());
    }
    let etag = q.get("etag").map(|e| format!("\"{e}\""));
    if let Some(etag) = &etag {
        head = head.header("etag", etag.as_str());
    }
    if q.contains_key("lm") {
        head = head.header("last-modified", MODIFIED);
    }
    if let Some(vary) = q.get("vary") {
        head = head.header("vary", vary.as_str());
    }
    if let Some(tags) = q.get("tags") {
        head = head.header("surrogate-key", tags.as_str());
    }
    if let Some(secs) = q.get("expires") {
        let now = SystemTime::now();
        head = head.header("date", httpdate::fmt_http_date(now)).header(
            "expires",
            httpdate::fmt_http_date(now + Duration::from_secs(secs.parse().unwrap())),
        );
    }
    if q.contains_key("cookie") {
        head = head.header("set-cookie", "session=abc");
    }
    let unchanged = match (&etag, req.headers().get("if-none-match")) {
        (Some(etag), Some(sent)) => sent.to_str().unwrap() == etag,
        (None, None) => q.contains_key("lm") && req.headers().get("if-modified-since").is_some_and(|v| v == MODIFIED),
        _ => false,
    };
    if unchanged {
        *state.not_modified.lock().unwrap().entry(path).or_default() += 1;
        return head.status(304).body(Full::new(Bytes::new()).boxed()).unwrap();
    }
    let n = {
        let mut full = state.full.lock().unwrap();
        let n = full.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let status: u16 = q.get("status").map_or(200, |s| s.parse().unwrap());
    let mut body = body_of(&path, n, q.get("size").map(|s| s.parse().unwrap()));
    if let Some(vary) = q.get("vary") {
        let value = req.headers().get(vary.as_str()).map(|v| v.to_str().unwrap().to_owned());
        body = Bytes::from(format!("{path} #{n} for {}", value.unwrap_or_default()));
    }
    if path.contains("/stream/") {
        // The first half now, the rest when the test says.
        let (first, rest) = (body.slice(..body.len() / 2), body.slice(body.len() / 2..));
        let frames = futures_util::stream::unfold(0, move |step| {
            let (first, rest) = (first.clone(), rest.clone());
            async move {
                match step {
                    0 => Some((Ok::<_, Infallible>(Frame::data(first)), 1)),
                    1 => {
                        state.release.notified().await;
                        Some((Ok(Frame::data(rest)), 2))
                    }
                    _ => None,
                }
            }
        });
        return head.status(status).body(StreamBody::new(frames).boxed()).unwrap();
    }
    head.status(status).body(Full::new(body).boxed()).unwrap()
}

trait CloneParts {
    fn clone_parts(&self) -> http::request::Parts;
}

impl CloneParts for Request<Incoming> {
    fn clone_parts(&self) -> http::request::Parts {
        let mut builder = Request::builder()
            .method(self.method())
            .uri(self.uri())
            .version(self.version());
        for (name, value) in self.headers() {
            builder = builder.header(name, value);
        }
        builder.body(()).unwrap().into_parts().0
    }
}

fn gateway(origin: &Origin, store: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"

[cache]
{store}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "origin"
endpoints = [{{ address = "{addr}" }}]

[[routes]]
name = "cached"
match = {{ path_prefix = "/c/" }}
cluster = "origin"
cache = {{ tag_header = "surrogate-key", max_object = "2MiB", lock_timeout = "10s" }}

[[routes]]
name = "defaults"
match = {{ path_prefix = "/ttl/" }}
cluster = "origin"
cache = {{ ttl = "60s", stale_if_error = "60s" }}

[[routes]]
name = "keyed"
match = {{ path_prefix = "/k/" }}
cluster = "origin"
cache = {{ ttl = "60s", key = {{ query_exclude = ["utm_source"], sort_query = true, headers = ["x-tenant"] }} }}

[[routes]]
name = "members"
match = {{ path_prefix = "/auth/" }}
cluster = "origin"
auth = {{ api_keys = {{ header = "x-api-key", keys = [{{ id = "k", sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" }}] }} }}
cache = {{ ttl = "60s" }}

[[routes]]
name = "zipped"
match = {{ path_prefix = "/z/" }}
cluster = "origin"
cache = {{}}
compression = {{ algorithms = ["gzip", "br"] }}

[[routes]]
name = "small"
match = {{ path_prefix = "/small/" }}
cluster = "origin"
cache = {{ ttl = "60s", max_object = "64KiB" }}
"#,
        addr = origin.addr,
    ))
}

async fn cached_gateway() -> (Origin, GatewayProcess) {
    let origin = origin().await;
    let gw = gateway(&origin, "");
    (origin, gw)
}

#[tokio::test]
async fn fresh_responses_are_served_until_they_expire() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    // Two seconds of life: the origin's Date has whole seconds, so a
    // response can arrive up to a second old (RFC 9111 apparent age).
    let url = gw.url("/c/fresh?cc=max-age%3D2");
    let first = get(&c, &url, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(
        first.header("cache-status"),
        Some("switchyard; fwd=uri-miss; stored; ttl=2")
    );
    let second = get(&c, &url, &[]).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert!(
        matches!(second.header("age"), Some("0" | "1")),
        "{:?}",
        second.header("age")
    );
    assert!(second
        .header("cache-status")
        .unwrap()
        .starts_with("switchyard; hit; ttl="));
    assert_eq!(
        second.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    assert_eq!(origin.full("/c/fresh"), 1);

    // Over h2 too, from the same stored response.
    let h2 = get(&client(Proto::H2), &url, &[]).await;
    assert_eq!(h2.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/c/fresh"), 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = get(&c, &url, &[]).await;
    assert_eq!(
        expired.header("x-cache"),
        Some("MISS"),
        "stale without validators: fetched again"
    );
    assert_eq!(expired.text(), "/c/fresh #2");
    assert_eq!(origin.full("/c/fresh"), 2);

    // Expires (with Date) gives a lifetime too.
    let url = gw.url("/c/expires?expires=60");
    get(&c, &url, &[]).await;
    assert_eq!(get(&c, &url, &[]).await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/c/expires"), 1);

    let scrape = reqwest_metrics(&gw).await;
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_cache_requests_total{route="cached",status="hit"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_cache_requests_total{route="cached",status="miss"}"#
        ),
        3.0
    );
    assert!(metric(&scrape, "switchyard_cache_stored_bytes") > 0.0);
}

async fn reqwest_metrics(gw: &GatewayProcess) -> String {
    get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text()
}

#[tokio::test]
async fn each_directive_decides_what_is_stored() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    // (path, query, request headers, origin answers for two requests)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], usize);
    let cases: &[Case] = &[
        ("/c/d/max-age", "cc=max-age%3D60", &[], 1),
        ("/c/d/s-maxage", "cc=s-maxage%3D60,max-age%3D0", &[], 1),
        ("/c/d/no-store", "cc=no-store,max-age%3D60", &[], 2),
        ("/c/d/private", "cc=private,max-age%3D60", &[], 2),
        ("/c/d/no-cache", "cc=no-cache,max-age%3D60", &[], 2),
        ("/c/d/must-revalidate", "cc=must-revalidate,max-age%3D0", &[], 2),
        ("/c/d/no-freshness", "cc=public", &[], 2),
        ("/c/d/expired", "expires=0", &[], 2),
        ("/c/d/set-cookie", "cc=max-age%3D60&cookie=1", &[], 2),
        ("/c/d/auth", "cc=max-age%3D60", &[("authorization", "Bearer x")], 2),
        (
            "/c/d/auth-public",
            "cc=public,max-age%3D60",
            &[("authorization", "Bearer x")],
            1,
        ),
        (
            "/c/d/request-no-store",
            "cc=max-age%3D60",
            &[("cache-control", "no-store")],
            2,
        ),
        (
            "/c/d/request-no-cache",
            "cc=max-age%3D60",
            &[("cache-control", "no-cache")],
            2,
        ),
        ("/c/d/pragma", "cc=max-age%3D60", &[("pragma", "no-cache")], 2),
        (
            "/c/d/request-max-age",
            "cc=max-age%3D60",
            &[("cache-control", "max-age=0")],
            2,
        ),
        ("/ttl/d/route-default", "", &[], 1),
        ("/ttl/d/route-default-404", "status=404", &[], 1),
        ("/ttl/d/not-heuristic", "status=500", &[], 2),
    ];
    for (path, query, headers, expected) in cases {
        let url = gw.url(&format!("{path}?{query}"));
        for _ in 0..2 {
            get(&c, &url, headers).await;
        }
        assert_eq!(origin.full(path), *expected, "{path}?{query} with {headers:?}");
    }
    // Why a response was not kept is in Cache-Status.
    let reply = get(&c, &gw.url("/c/d/why?cc=private"), &[]).await;
    assert_eq!(
        reply.header("cache-status"),
        Some("switchyard; fwd=uri-miss; detail=private")
    );
}

#[tokio::test]
async fn revalidation_with_validators_and_304s_to_clients() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    for (path, validator) in [("/c/etag", "etag=v1"), ("/c/lm", "lm=1")] {
        // Two seconds, so the 304 (whose Date has whole seconds) leaves
        // the entry fresh for the next request.
        let url = gw.url(&format!("{path}?cc=max-age%3D2&{validator}"));
        let first = get(&c, &url, &[]).await;
        assert_eq!(first.header("x-cache"), Some("MISS"));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let again = get(&c, &url, &[]).await;
        assert_eq!(again.header("x-cache"), Some("REVALIDATED"), "{path}");
        assert_eq!(again.status, 200);
        assert_eq!(again.body, first.body, "{path}: the stored body, freshened");
        assert_eq!((origin.full(path), origin.not_modified(path)), (1, 1), "{path}");
        let asked = origin.heads(path).pop().unwrap();
        match validator {
            "etag=v1" => assert_eq!(asked.headers["if-none-match"], "\"v1\""),
            _ => assert_eq!(asked.headers["if-modified-since"], MODIFIED),
        }
        // Fresh again after the 304.
        assert_eq!(get(&c, &url, &[]).await.header("x-cache"), Some("HIT"), "{path}");
    }

    // Clients' own validators get 304s from the stored response.
    let url = gw.url("/c/etag?cc=max-age%3D2&etag=v1");
    let reply = get(&c, &url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("etag"), Some("\"v1\""));
    assert!(reply.body.is_empty());
    let reply = get(&c, &url, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(reply.status, 200);
    let url = gw.url("/c/lm?cc=max-age%3D2&lm=1");
    assert_eq!(get(&c, &url, &[("if-modified-since", MODIFIED)]).await.status, 304);
    assert_eq!(get(&c, &url, &[("if-match", "\"other\"")]).await.status, 412);
    // The gateway asked the origin for whole responses only.
    assert_eq!((origin.full("/c/etag"), origin.full("/c/lm")), (1, 1));

    // A client's conditional miss: the origin is asked without the
    // client's validators, the response is kept, the client gets its 304.
    let url = gw.url("/c/cond-miss?cc=max-age%3D60&etag=v7");
    let reply = get(&c, &url, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("x-cache"), Some("MISS"));
    assert!(origin.heads("/c/cond-miss")[0].headers.get("if-none-match").is_none());
    assert_eq!(get(&c, &url, &[]).await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/c/cond-miss"), 1);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    // Two seconds, so the refreshed response (whose Date has whole
    // seconds) is still fresh when the test asks for it.
    let url = gw.url("/c/swr?cc=max-age%3D2,stale-while-revalidate%3D30&delay=200");
    assert_eq!(get(&c, &url, &[]).await.text(), "/c/swr #1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&c, &url, &[]).await;
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.text(), "/c/swr #1", "the stored response, not the refresh");
    // Stored 2.1 s ago, and up to a second old on arrival by its Date.
    assert!(
        matches!(stale.header("age"), Some("2" | "3")),
        "{:?}",
        stale.header("age")
    );
    // The background refresh lands.
    for _ in 0..50 {
        if origin.full("/c/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.full("/c/swr"), 2, "one background refresh");
    let mut refreshed = None;
    for _ in 0..50 {
        let reply = get(&c, &url, &[]).await;
        if reply.header("x-cache") == Some("HIT") {
            refreshed = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refreshed.expect("the refreshed response is stored").text(), "/c/swr #2");
    assert_eq!(origin.full("/c/swr"), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_while_the_origin_fails() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let from_response = gw.url("/c/sie?cc=max-age%3D1,stale-if-error%3D60");
    let from_route = gw.url("/ttl/sie?cc=max-age%3D1");
    let without = gw.url("/c/no-sie?cc=max-age%3D1");
    for url in [&from_response, &from_route, &without] {
        assert_eq!(get(&c, url, &[]).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.state.failing.store(true, Ordering::SeqCst);
    for (url, path) in [(&from_response, "/c/sie"), (&from_route, "/ttl/sie")] {
        let reply = get(&c, url, &[]).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("x-cache"), Some("STALE"), "{path}");
        assert_eq!(reply.text(), format!("{path} #1"));
    }
    assert_eq!(
        get(&c, &without, &[]).await.status,
        503,
        "no stale-if-error: the error passes"
    );

    // The origin accepting and closing connections without an answer.
    origin.state.failing.store(false, Ordering::SeqCst);
    origin.state.refusing.store(true, Ordering::SeqCst);
    let reply = get(&c, &from_response, &[]).await;
    assert_eq!((reply.status, reply.header("x-cache")), (StatusCode::OK, Some("STALE")));
    assert_eq!(get(&c, &without, &[]).await.status, 502);
    assert_eq!(origin.full("/c/sie"), 1);
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let (origin, gw) = cached_gateway().await;
    let url = gw.url("/c/herd?cc=max-age%3D60&delay=300");
    let c = client(Proto::H1);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url, &[]).await })
        })
        .collect();
    let mut statuses = HashMap::new();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "/c/herd #1");
        *statuses.entry(reply.header("x-cache").unwrap().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        origin.full("/c/herd"),
        1,
        "one origin request for 100 concurrent misses"
    );
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("HIT"), Some(&99), "{statuses:?}");
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/c/lang?cc=max-age%3D60&vary=accept-language");
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&c, &url, &en).await.text(), "/c/lang #1 for en");
    assert_eq!(get(&c, &url, &fr).await.text(), "/c/lang #2 for fr");
    let hit = get(&c, &url, &en).await;
    assert_eq!(
        (hit.header("x-cache"), hit.text().as_str()),
        (Some("HIT"), "/c/lang #1 for en")
    );
    let hit = get(&c, &url, &fr).await;
    assert_eq!(
        (hit.header("x-cache"), hit.text().as_str()),
        (Some("HIT"), "/c/lang #2 for fr")
    );
    assert_eq!(origin.full("/c/lang"), 2);

    // Accept-Encoding is compared by the coding it selects.
    let url = gw.url("/c/enc?cc=max-age%3D60&vary=accept-encoding");
    get(&c, &url, &[("accept-encoding", "gzip")]).await;
    let same = get(&c, &url, &[("accept-encoding", "deflate, gzip;q=0.8")]).await;
    assert_eq!(same.header("x-cache"), Some("HIT"));
    let other = get(&c, &url, &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(other.header("x-cache"), Some("MISS"));
    assert_eq!(origin.full("/c/enc"), 2);
}

#[tokio::test]
async fn keys_follow_the_route_key_settings() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let t1 = [("x-tenant", "one")];
    get(&c, &gw.url("/k/p?a=1&b=2"), &t1).await;
    // Sorted, without the excluded parameter: the same object.
    let same = get(&c, &gw.url("/k/p?b=2&utm_source=mail&a=1"), &t1).await;
    assert_eq!(same.header("x-cache"), Some("HIT"));
    // Another tenant or another value: another object.
    let other_tenant = get(&c, &gw.url("/k/p?a=1&b=2"), &[("x-tenant", "two")]).await;
    assert_eq!(other_tenant.header("x-cache"), Some("MISS"));
    let other_query = get(&c, &gw.url("/k/p?a=1&b=3"), &t1).await;
    assert_eq!(other_query.header("x-cache"), Some("MISS"));
    assert_eq!(origin.full("/k/p"), 3);
}

#[tokio::test]
async fn purges_by_key_prefix_and_tag() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let paths = [
        ("/c/p/1", "tags=red"),
        ("/c/p/2", "tags=red%20blue"),
        ("/c/q/3", "tags=blue"),
        ("/c/q/4", "tags=green"),
        ("/c/r/5", ""),
    ];
    let url = |path: &str, tags: &str| gw.url(&format!("{path}?cc=max-age%3D60&{tags}"));
    let status = |reply: support::client::Reply| reply.header("x-cache").unwrap().to_owned();
    for (path, tags) in paths {
        get(&c, &url(path, tags), &[]).await;
        assert_eq!(status(get(&c, &url(path, tags), &[]).await), "HIT");
    }
    let stats = get(&c, &gw.admin_url("/api/cache"), &[]).await.json();
    assert_eq!(stats["entries"], 5, "{stats}");

    let purge = |body: &str| {
        let request = Request::post(gw.admin_url("/api/cache/purge"))
            .header("content-type", "application/json")
            .body(support::client::full(body.to_owned()))
            .unwrap();
        send(&c, request)
    };
    // By exact key: host (as sent, port included), path and query as the
    // route keys them.
    let host = format!("127.0.0.1:{}", gw.addr().port());
    let reply = purge(&format!(r#"{{"keys": ["{host}/c/r/5?cc=max-age%3D60"]}}"#)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["purged"], 1);
    assert_eq!(status(get(&c, &url("/c/r/5", ""), &[]).await), "MISS");

    let reply = purge(r#"{"tags": ["red"]}"#).await;
    assert_eq!(reply.json()["purged"], 2);
    assert_eq!(status(get(&c, &url("/c/p/1", "tags=red"), &[]).await), "MISS");
    assert_eq!(status(get(&c, &url("/c/p/2", "tags=red%20blue"), &[]).await), "MISS");
    assert_eq!(status(get(&c, &url("/c/q/3", "tags=blue"), &[]).await), "HIT");

    let reply = purge(&format!(r#"{{"prefixes": ["{host}/c/q/"]}}"#)).await;
    assert_eq!(reply.json()["purged"], 2);
    assert_eq!(status(get(&c, &url("/c/q/3", "tags=blue"), &[]).await), "MISS");
    assert_eq!(status(get(&c, &url("/c/q/4", "tags=green"), &[]).await), "MISS");
    assert_eq!(origin.full("/c/q/4"), 2);

    // Bad purges are refused with what was expected.
    for (body, needle) in [
        ("{}", "at least one entry"),
        (r#"{"keys": "x"}"#, "invalid type"),
        (r#"{"key": ["x"]}"#, "unknown field `key`"),
        (r#"{"prefixes": [""]}"#, "would name everything"),
        ("not json", "expected"),
    ] {
        let reply = purge(body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert!(reply.text().contains(needle), "{body}: {}", reply.text());
    }
}

#[tokio::test]
async fn the_byte_bound_evicts_and_resists_scans() {
    let origin = origin().await;
    let gw = gateway(&origin, r#"max_size = "1MiB""#);
    let c = client(Proto::H1);
    // Fill more than half of the store (where frequencies start to count),
    // then ask for one object often.
    for i in 0..10 {
        get(&c, &gw.url(&format!("/c/filler/{i}?cc=max-age%3D600&size=65536")), &[]).await;
    }
    // The store applies its bookkeeping in batches (at most every 300 ms
    // under load); reading its figures applies it now, so the test does not
    // depend on timing.
    let stats_url = gw.admin_url("/api/cache");
    let settle = || get(&c, &stats_url, &[]);
    settle().await;
    let hot = gw.url("/c/hot?cc=max-age%3D600&size=65536");
    for _ in 0..30 {
        get(&c, &hot, &[]).await;
    }
    settle().await;
    // A scan of 40 objects of 64 KiB, each asked once: 2.5 times the bound.
    for i in 0..40 {
        let reply = get(&c, &gw.url(&format!("/c/cold/{i}?cc=max-age%3D600&size=65536")), &[]).await;
        assert_eq!(reply.body.len(), 65536);
    }
    let stats = get(&c, &gw.admin_url("/api/cache"), &[]).await.json();
    let bytes = stats["bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() < 51, "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    // The often-asked object is still there, though a plain LRU would
    // have let the scan push it out.
    assert_eq!(get(&c, &hot, &[]).await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/c/hot"), 1);
    let scrape = reqwest_metrics(&gw).await;
    assert!(metric(&scrape, "switchyard_cache_evictions_total") > 0.0);
}

#[tokio::test]
async fn ranges_and_head_from_stored_responses() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/c/bytes?cc=max-age%3D60&etag=b1&size=1000");
    let whole = body_of("", 0, Some(1000));
    // The first request asks for a range: the origin is asked for all of it.
    let first = get(&c, &url, &[("range", "bytes=10-19")]).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(first.body, whole.slice(10..20));
    assert!(origin.heads("/c/bytes")[0].headers.get("range").is_none());

    let suffix = get(&c, &url, &[("range", "bytes=-5")]).await;
    assert_eq!(
        (suffix.status, suffix.header("x-cache")),
        (StatusCode::PARTIAL_CONTENT, Some("HIT"))
    );
    assert_eq!(suffix.body, whole.slice(995..));
    let multi = get(&c, &url, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(multi.status, 206);
    assert!(multi
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges; boundary="));
    assert!(multi.text().contains("content-range: bytes 5-6/1000"));
    assert_eq!(get(&c, &url, &[("range", "bytes=2000-")]).await.status, 416);
    // If-Range with another tag: the whole response.
    let changed = get(&c, &url, &[("range", "bytes=0-1"), ("if-range", "\"b0\"")]).await;
    assert_eq!((changed.status, changed.body.len()), (StatusCode::OK, 1000));

    let head = send(&c, Request::head(&url).body(empty()).unwrap()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    assert_eq!(head.header("x-cache"), Some("HIT"));
    assert!(head.body.is_empty());
    assert_eq!(origin.full("/c/bytes"), 1);

    // A HEAD miss is fetched as a GET and kept.
    let url = gw.url("/c/head-first?cc=max-age%3D60");
    let head = send(&c, Request::head(&url).body(empty()).unwrap()).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(origin.heads("/c/head-first")[0].method, http::Method::GET);
    assert_eq!(get(&c, &url, &[]).await.text(), "/c/head-first #1");
}

#[tokio::test]
async fn large_bodies_stream_while_stored_and_oversized_pass() {
    let origin = origin().await;
    let gw = gateway(&origin, "");
    let c = client(Proto::H1);
    let url = gw.url("/c/stream/big?cc=max-age%3D60&size=1500000");
    let whole = body_of("", 0, Some(1_500_000));
    let response = c.request(Request::get(&url).body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    let mut body = response.into_body();
    // The first half arrives while the origin still holds the second.
    let mut received = Vec::new();
    while received.len() < 750_000 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first half streams before the origin sends the rest")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    origin.state.release.notify_one();
    received.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    assert_eq!(received, whole);
    let hit = get(&c, &url, &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.body, whole);
    assert_eq!(origin.full("/c/stream/big"), 1);

    // Over the route's max_object (64 KiB): passed on, never kept.
    let origin = self::origin().await;
    let gw = gateway(&origin, "");
    let url = gw.url("/small/big?size=100000");
    for detail in ["too-large", "uncacheable"] {
        let reply = get(&c, &url, &[]).await;
        assert_eq!(reply.body.len(), 100_000);
        assert_eq!(reply.header("x-cache"), Some("MISS"));
        assert_eq!(
            reply.header("cache-status").unwrap(),
            format!("switchyard; fwd=uri-miss; detail={detail}")
        );
    }
    assert_eq!(origin.full("/small/big"), 2);

    // Of unknown length (chunked), found too large while it streams: the
    // client still gets all of it.
    origin.state.release.notify_one();
    let reply = get(&c, &gw.url("/small/stream/big?size=100000"), &[]).await;
    assert_eq!(reply.body, body_of("", 0, Some(100_000)));
    origin.state.release.notify_one();
    let again = get(&c, &gw.url("/small/stream/big?size=100000"), &[]).await;
    assert_eq!(
        again.header("cache-status"),
        Some("switchyard; fwd=uri-miss; detail=uncacheable")
    );
}

#[tokio::test]
async fn unsafe_methods_pass_and_invalidate() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/c/doc?cc=max-age%3D60");
    get(&c, &url, &[]).await;
    assert_eq!(get(&c, &url, &[]).await.header("x-cache"), Some("HIT"));
    let post = send(&c, Request::post(&url).body(empty()).unwrap()).await;
    assert_eq!(post.header("x-cache"), Some("BYPASS"));
    let after = get(&c, &url, &[]).await;
    assert_eq!(after.header("x-cache"), Some("MISS"), "the POST invalidated it");
    assert_eq!(origin.full("/c/doc"), 3);

    // only-if-cached: nothing stored is a 504.
    let reply = get(&c, &gw.url("/c/never"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "not_cached");
    assert_eq!(origin.full("/c/never"), 0);
}

#[tokio::test]
async fn the_store_outlives_reloads() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/c/kept?cc=max-age%3D60");
    get(&c, &url, &[]).await;
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    gw.rewrite_config(&config.replace("lock_timeout = \"10s\"", "lock_timeout = \"9s\""));
    assert!(
        gw.wait_log(Duration::from_secs(10), |v| support::gateway::has_message(
            v,
            "configuration reloaded"
        ))
        .await,
        "{}",
        gw.dump_logs()
    );
    assert_eq!(get(&c, &url, &[]).await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/c/kept"), 1);
}

#[tokio::test]
async fn empty_bodies_are_stored() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    for (path, query) in [("/c/empty", "size=0"), ("/c/no-content", "status=204")] {
        let url = gw.url(&format!("{path}?cc=max-age%3D60&{query}"));
        let first = get(&c, &url, &[]).await;
        assert!(first.body.is_empty(), "{path}");
        let second = get(&c, &url, &[]).await;
        assert_eq!(second.header("x-cache"), Some("HIT"), "{path}");
        assert_eq!(origin.full(path), 1, "{path}");
    }
    let no_content = get(&c, &gw.url("/c/no-content?cc=max-age%3D60&status=204"), &[]).await;
    assert_eq!(no_content.status, 204);
    assert_eq!(no_content.header("content-length"), None, "a 204 has no Content-Length");
}

#[tokio::test]
async fn a_stalled_client_holds_up_nobody() {
    let (origin, gw) = cached_gateway().await;
    let url = gw.url("/c/stall?cc=max-age%3D60&size=1500000&delay=100");
    // The first client reads the head, then stops reading.
    let stalled = client(Proto::H1)
        .request(Request::get(&url).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(stalled.headers()["x-cache"], "MISS");
    // The response is stored at the origin's pace all the same.
    let c = client(Proto::H1);
    let mut hit = None;
    for _ in 0..100 {
        let reply = get(&c, &url, &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), 1_500_000);
        if reply.header("x-cache") == Some("HIT") {
            hit = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hit.is_some(), "stored while the first client stalls");
    assert_eq!(origin.full("/c/stall"), 1);
    // And the stalled client still gets all of it when it reads.
    let body = stalled.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, body_of("", 0, Some(1_500_000)));
}

#[tokio::test]
async fn uncacheable_responses_keep_the_clients_semantics() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/c/mine?cc=private&etag=m1&size=100");
    // The first request learns it cannot be stored; a matching validator
    // still gets a 304.
    let first = get(&c, &url, &[("if-none-match", "\"m1\"")]).await;
    assert_eq!(first.status, 304);
    assert_eq!(
        first.header("cache-status"),
        Some("switchyard; fwd=uri-miss; detail=private")
    );
    // Later ones go to the origin as the client sent them.
    let ranged = get(&c, &url, &[("range", "bytes=0-9")]).await;
    assert_eq!(
        ranged.header("cache-status"),
        Some("switchyard; fwd=uri-miss; detail=uncacheable")
    );
    let head = send(&c, Request::head(&url).body(empty()).unwrap()).await;
    assert!(head.body.is_empty());
    let heads = origin.heads("/c/mine");
    assert_eq!(heads.len(), 3);
    assert_eq!(heads[1].headers["range"], "bytes=0-9", "Range passed on");
    assert_eq!(heads[2].method, http::Method::HEAD, "HEAD passed on");
}

#[tokio::test]
async fn routes_with_gateway_auth_share_only_public_responses() {
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let key = [("x-api-key", "secret")];
    assert_eq!(get(&c, &gw.url("/auth/x"), &[]).await.status, 401, "auth runs first");
    let personal = gw.url("/auth/personal?cc=max-age%3D60");
    get(&c, &personal, &key).await;
    let again = get(&c, &personal, &key).await;
    assert_eq!(
        again.header("cache-status"),
        Some("switchyard; fwd=uri-miss; detail=authorization")
    );
    assert_eq!(origin.full("/auth/personal"), 2);
    let shared = gw.url("/auth/shared?cc=public,max-age%3D60");
    get(&c, &shared, &key).await;
    assert_eq!(get(&c, &shared, &key).await.header("x-cache"), Some("HIT"));
    assert_eq!(origin.full("/auth/shared"), 1);
}

#[tokio::test]
async fn compressed_variants_are_stored_once_per_coding() {
    use async_compression::tokio::write::GzipDecoder;
    use tokio::io::AsyncWriteExt;
    let (origin, gw) = cached_gateway().await;
    let c = client(Proto::H1);
    let url = gw.url("/z/page?cc=max-age%3D60&size=5000");
    let whole = body_of("", 0, Some(5000));
    let gzip = [("accept-encoding", "gzip")];
    let first = get(&c, &url, &gzip).await;
    assert_eq!(
        (first.header("x-cache"), first.header("content-encoding")),
        (Some("MISS"), Some("gzip"))
    );
    let hit = get(&c, &url, &gzip).await;
    assert_eq!(
        (hit.header("x-cache"), hit.header("content-encoding")),
        (Some("HIT"), Some("gzip"))
    );
    assert_eq!(hit.body, first.body, "the stored compressed bytes");
    let mut decoder = GzipDecoder::new(Vec::new());
    decoder.write_all(&hit.body).await.unwrap();
    decoder.shutdown().await.unwrap();
    assert_eq!(decoder.into_inner(), whole);
    assert_eq!(origin.full("/z/page"), 1);
    // Another coding, and none: their own variants.
    let br = get(&c, &url, &[("accept-encoding", "br")]).await;
    assert_eq!(
        (br.header("x-cache"), br.header("content-encoding")),
        (Some("MISS"), Some("br"))
    );
    get(&c, &url, &[]).await;
    let plain = get(&c, &url, &[]).await;
    assert_eq!(
        (plain.header("x-cache"), plain.header("content-encoding")),
        (Some("HIT"), None)
    );
    assert_eq!(plain.body, whole);
    assert_eq!(origin.full("/z/page"), 3);
}
