//! The response cache of routes with `cache = { ... }` (RFC 9111, as a
//! shared cache), top to bottom:
//!
//! 1. methods other than `GET` and `HEAD`, and WebSocket handshakes, pass
//!    (`BYPASS`); an unsafe method that succeeds forgets what is stored for
//!    its URI;
//! 2. the request's key (the route's key spec) finds the stored response,
//!    through its `Vary` headers;
//! 3. a fresh one is answered (`HIT`), with `Age`, the client's
//!    preconditions (304) and ranges; one within `stale-while-revalidate` is
//!    answered (`STALE`) while one background request refreshes it;
//! 4. otherwise one request per key goes to the origin and concurrent ones
//!    wait for it (`lock_timeout`), then answer from what it stored;
//! 5. the origin is asked for the whole representation with a `GET`, with
//!    the stored response's validators when there is one: a 304 freshens it
//!    (`REVALIDATED`); an error or 5xx answers the stale one when
//!    `stale-if-error` allows (`STALE`);
//! 6. a new response that may be stored streams to the client while it is
//!    kept (`MISS`); one to a `HEAD`, a range or a conditional request is
//!    read first and the answer made from it. Larger than `max_object`: passed
//!    on, not kept.
//!
//! Every answer says what happened in `X-Cache` and `Cache-Status` (RFC 9211).

mod store;
mod storing;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use switchyard_cache::{storable, usable, CacheControl, NotStored, Usable};

use crate::body::{ProxyBody, RequestBody};
use crate::conditional::{self, preconditions, Precondition, Validators};
use crate::error::ProxyError;
use crate::forward::forward;
use crate::pipeline::{ConnectionInfo, Outcome, RequestIds};
use crate::snapshot::{ListenerRuntime, RouteEntry, Snapshot};
use crate::trace::RequestTrace;

use store::{Claim, FetchGuard, Found, Stored};
pub use store::{Purge, ResponseStore, StoreStats};

/// What happened, for clients.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// RFC 9211's account of the same.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Request headers that ask for part of a representation, or for it only
/// under conditions. The gateway asks the origin for the whole thing.
const PARTIAL: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// What the cache did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Status {
    pub(crate) const ALL: [Status; 5] = [Self::Hit, Self::Miss, Self::Stale, Self::Revalidated, Self::Bypass];

    fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Bypass => "bypass",
        }
    }
}

/// A route's cache: its settings, the shared store and its counters.
#[derive(Debug)]
pub(crate) struct RouteCache {
    pub(crate) settings: switchyard_config::RouteCache,
    pub(crate) store: Arc<ResponseStore>,
    /// Requests by [`Status`], in [`Status::ALL`] order.
    pub(crate) counters: [prometheus::IntCounter; 5],
}

/// Where a request that needs the origin goes, and as whom.
pub(crate) struct Origin<'s, 'a> {
    pub(crate) snapshot: &'a Arc<Snapshot>,
    pub(crate) listener: &'s ListenerRuntime,
    pub(crate) entry: &'s RouteEntry,
    pub(crate) conn: &'a Arc<ConnectionInfo>,
    pub(crate) ids: RequestIds<'a>,
    pub(crate) started: Instant,
}

impl RouteCache {
    /// The store key of a request: the route and listener (a route on
    /// several listeners, http and https say, keeps their answers apart),
    /// then what the route's key spec makes of the request, with the host
    /// as the client sent it (port included).
    fn key<B>(&self, origin: &Origin<'_, '_>, req: &Request<B>) -> String {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or_default();
        let route = &origin.entry.route.name;
        let listener = &origin.listener.config.name;
        let mut key = String::with_capacity(route.len() + listener.len() + host.len() + req.uri().path().len() + 16);
        key.push_str(route);
        key.push('@');
        key.push_str(listener);
        key.push('\0');
        self.settings
            .key
            .write_key(&mut key, host, req.uri().path(), req.uri().query(), req.headers());
        key
    }
}

/// Answers `req` on a route with a cache (see the module docs).
pub(crate) async fn serve<'s>(
    cache: &'s RouteCache,
    origin: Origin<'s, '_>,
    req: Request<Incoming>,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let response = lookup(cache, origin, req, outcome).await?;
    if let Some(status) = response.headers().get(&X_CACHE) {
        if let Some(i) = Status::ALL
            .iter()
            .position(|s| s.as_str().as_bytes() == status.as_bytes())
        {
            cache.counters[i].inc();
        }
    }
    Ok(response)
}

async fn lookup<'s>(
    cache: &'s RouteCache,
    origin: Origin<'s, '_>,
    req: Request<Incoming>,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let key = cache.key(&origin, &req);
    let method = req.method().clone();
    if !(method == Method::GET || method == Method::HEAD) || crate::websocket::requested(&req).is_some() {
        let response = send(&origin, req.map(Either::Left), outcome).await?;
        let status = response.status();
        if !method.is_safe() && (status.is_success() || status.is_redirection()) {
            cache.store.invalidate(&key);
        }
        return Ok(mark(response, Status::Bypass, "fwd=bypass"));
    }

    let request_cc = CacheControl::parse(req.headers());
    let head = method == Method::HEAD;
    let usable_now = |stored: &Stored| {
        usable(
            &stored.control,
            &request_cc,
            stored.age(Instant::now()),
            stored.lifetime,
        )
    };
    let mut stale = None;
    let mut stale_if_error = false;
    match cache.store.find(&key, req.headers()) {
        Found::Stored(stored) => match usable_now(&stored) {
            Usable::Fresh => return answer(&stored, req.headers(), head, Status::Hit),
            Usable::StaleWhileRevalidate => {
                refresh(&origin, &req, &key);
                return answer(&stored, req.headers(), head, Status::Stale);
            }
            Usable::Revalidate {
                stale_if_error: allowed,
            } => {
                stale_if_error = allowed;
                stale = Some(stored);
            }
        },
        // Lately not storable: straight to the origin, as the client asked.
        Found::Pass if !request_cc.only_if_cached => {
            let response = send(&origin, req.map(Either::Left), outcome).await?;
            return Ok(mark(response, Status::Miss, "fwd=uri-miss; detail=uncacheable"));
        }
        Found::Pass | Found::Nothing => {}
    }
    if request_cc.only_if_cached {
        return Err(ProxyError::NotCached);
    }

    // One request per key to the origin; the others wait for its answer.
    let guard = match cache.store.claim(&key) {
        Claim::Fetch(guard) => Some(guard),
        Claim::Wait(mut done) => {
            let _ = tokio::time::timeout(cache.settings.lock_timeout, done.changed()).await;
            if let Found::Stored(stored) = cache.store.find(&key, req.headers()) {
                match usable_now(&stored) {
                    Usable::Fresh => return answer(&stored, req.headers(), head, Status::Hit),
                    Usable::Revalidate {
                        stale_if_error: allowed,
                    } => {
                        stale_if_error = allowed;
                        stale = Some(stored);
                    }
                    Usable::StaleWhileRevalidate => stale = Some(stored),
                }
            }
            None
        }
    };
    let fetch = Fetch {
        generation: cache.store.generation(),
        key,
        stale,
        stale_if_error,
        guard,
    };
    fetch.run(cache, &origin, req.map(Either::Left), outcome).await
}

/// A trip to the origin for a key.
struct Fetch {
    key: String,
    /// The store's generation when the fetch began (a purge since then
    /// keeps what it gets from being stored).
    generation: u64,
    /// The stored response being revalidated, if any.
    stale: Option<Arc<Stored>>,
    /// Whether `stale` may answer if the origin fails.
    stale_if_error: bool,
    /// The claim on the key, released once the answer is stored or not.
    guard: Option<FetchGuard>,
}

impl Fetch {
    async fn run<'s>(
        self,
        cache: &RouteCache,
        origin: &Origin<'s, '_>,
        req: Request<RequestBody>,
        outcome: &mut Outcome<'s>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut head, body) = req.into_parts();
        let client = head.headers.clone();
        let client_head = head.method == Method::HEAD;
        // The whole representation, as a GET, with the stored validators,
        // and asked in the one coding the stored variant stands for.
        for name in &PARTIAL {
            head.headers.remove(name);
        }
        head.method = Method::GET;
        head.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(switchyard_cache::preferred_encoding(&client)),
        );
        if let Some(stored) = &self.stale {
            if let Some(etag) = stored.headers.get(header::ETAG) {
                head.headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
                head.headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let request_time = SystemTime::now();
        let result = send(origin, Request::from_parts(head, body), outcome).await;
        let response_time = SystemTime::now();

        let stale = self.stale.as_ref().filter(|_| self.stale_if_error);
        let response = match (result, stale) {
            (Err(error), Some(stale)) => {
                tracing::debug!(%error, "origin failed: answering with the stored response (stale-if-error)");
                return answer(stale, &client, client_head, Status::Stale);
            }
            (Ok(response), Some(stale)) if is_origin_error(response.status()) => {
                return answer(stale, &client, client_head, Status::Stale);
            }
            (result, _) => result?,
        };

        let settings = &cache.settings;
        let store = &cache.store;
        if response.status() == StatusCode::NOT_MODIFIED {
            if let Some(stored) = &self.stale {
                let fresh = freshen(settings, stored, response.headers(), request_time, response_time);
                return match fresh {
                    Some(fresh) => {
                        let fresh = Arc::new(fresh);
                        store.insert(&self.key, &client, fresh.clone(), self.generation);
                        answer(&fresh, &client, client_head, Status::Revalidated)
                    }
                    None => {
                        store.invalidate(&self.key);
                        answer(stored, &client, client_head, Status::Revalidated)
                    }
                };
            }
        }

        let gateway_auth = origin.entry.auth.is_some();
        let lifetime = match storable(
            &Method::GET,
            &client,
            response.status(),
            response.headers(),
            settings.ttl,
        )
        .and_then(|lifetime| shared_despite_auth(gateway_auth, response.headers()).map(|()| lifetime))
        {
            Ok(lifetime) => lifetime,
            Err(reason) => {
                // Reasons of the response (not of this request) hold for
                // the next requests of the key too.
                let of_response = match reason {
                    NotStored::Authorization => false,
                    NotStored::NoStore => CacheControl::parse(response.headers()).no_store,
                    _ => true,
                };
                if of_response {
                    store.pass(&self.key);
                }
                return Ok(passed(response, &client, client_head, reason.as_str()));
            }
        };
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > settings.max_object) {
            store.pass(&self.key);
            return Ok(passed(response, &client, client_head, "too-large"));
        }
        // On a route that compresses, the compressed form is what is
        // stored (a variant per coding, `Vary: Accept-Encoding`): hits are
        // not compressed again.
        let response = match &origin.entry.route.compression {
            Some(compression) => match crate::compress::Negotiated::of(compression, &Method::GET, &client) {
                Some(negotiated) => crate::compress::apply(compression, &negotiated, response),
                None => response,
            },
            None => response,
        };
        let (mut parts, body) = response.into_parts();
        let stored = Stored::from_head(settings, &parts, lifetime, request_time, response_time);
        if let Some(tag) = &settings.tag_header {
            parts.headers.remove(tag);
        }

        // Nothing to read (Content-Length 0, 204): stored at once.
        if body.is_end_stream() {
            let stored = Arc::new(stored);
            store.insert(&self.key, &client, stored.clone(), self.generation);
            return answer(&stored, &client, client_head, Status::Miss);
        }
        // A HEAD, a range or a conditional request is answered from the
        // whole body; other requests get it as it comes.
        let whole_first = client_head || PARTIAL.iter().any(|name| client.contains_key(name));
        if whole_first {
            let endpoint = outcome.upstream.unwrap_or("-");
            return match collect(body, settings.max_object, endpoint).await? {
                Collected::Whole(bytes) => {
                    let stored = Arc::new(stored.with_body(bytes));
                    store.insert(&self.key, &client, stored.clone(), self.generation);
                    answer(&stored, &client, client_head, Status::Miss)
                }
                Collected::TooLarge(body) => {
                    store.pass(&self.key);
                    Ok(passed(
                        Response::from_parts(parts, body),
                        &client,
                        client_head,
                        "too-large",
                    ))
                }
            };
        }
        let sink = storing::Sink {
            store: store.clone(),
            key: self.key,
            request: client,
            stored,
            limit: settings.max_object,
            generation: self.generation,
            guard: self.guard,
        };
        let body = storing::start(body, sink);
        let detail = format!("fwd=uri-miss; stored; ttl={}", lifetime.as_secs());
        Ok(mark(Response::from_parts(parts, body), Status::Miss, &detail))
    }
}

/// On a route with the gateway's own authentication, a response is shared
/// between callers only if it says a shared cache may (as RFC 9111 section
/// 3.5 asks for requests with `Authorization`).
fn shared_despite_auth(gateway_auth: bool, response: &HeaderMap) -> Result<(), NotStored> {
    if !gateway_auth {
        return Ok(());
    }
    let cc = CacheControl::parse(response);
    if cc.public || cc.s_maxage.is_some() || cc.must_revalidate {
        Ok(())
    } else {
        Err(NotStored::Authorization)
    }
}

/// A response passed on without being stored: the client's preconditions
/// still apply to it (a 304 for a matching validator), and a `HEAD` gets
/// no body.
fn passed(response: Response<ProxyBody>, client: &HeaderMap, head: bool, reason: &str) -> Response<ProxyBody> {
    let response = if response.status() == StatusCode::OK
        && preconditions(client, &Validators::of(response.headers())) == Precondition::NotModified
    {
        conditional::not_modified(response.headers())
    } else if head {
        response.map(|_| ProxyBody::empty())
    } else {
        response
    };
    mark(response, Status::Miss, &format!("fwd=uri-miss; detail={reason}"))
}

/// Proxies `req` to the route's cluster.
async fn send<'s>(
    origin: &Origin<'s, '_>,
    req: Request<RequestBody>,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    forward(
        origin.entry,
        &origin.listener.config,
        origin.conn,
        req,
        origin.ids,
        origin.started,
        outcome,
    )
    .await
}

/// Statuses that count as the origin failing (RFC 5861 section 4).
fn is_origin_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

impl Stored {
    /// What is kept of a response head that may be stored.
    fn from_head(
        settings: &switchyard_config::RouteCache,
        parts: &http::response::Parts,
        lifetime: Duration,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Self {
        let mut headers = parts.headers.clone();
        let initial_age = switchyard_cache::initial_age(&headers, request_time, response_time);
        let mut control = CacheControl::parse(&headers);
        control.stale_while_revalidate = control.stale_while_revalidate.or(settings.stale_while_revalidate);
        control.stale_if_error = control.stale_if_error.or(settings.stale_if_error);
        let tags = settings
            .tag_header
            .as_ref()
            .map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split([' ', ',']))
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(name) = &settings.tag_header {
            headers.remove(name);
        }
        for name in [header::AGE, header::CONTENT_LENGTH, header::TRANSFER_ENCODING] {
            headers.remove(name);
        }
        let vary = switchyard_cache::vary_names(&parts.headers).into_boxed_slice();
        Stored {
            status: parts.status,
            headers,
            body: Bytes::new(),
            control,
            lifetime,
            initial_age,
            stored_at: Instant::now(),
            tags,
            vary,
        }
    }

    fn with_body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// The stored response updated by a 304 (RFC 9111 section 4.3.4), or
/// `None` when the updated head may no longer be stored.
fn freshen(
    settings: &switchyard_config::RouteCache,
    stored: &Stored,
    update: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Option<Stored> {
    let mut headers = stored.headers.clone();
    for name in update.keys() {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            continue;
        }
        headers.remove(name);
        for value in update.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    // Without a Date of its own, the 304 is dated now (RFC 9110 section
    // 6.6.1): the stored Date would make the response look old.
    if !update.contains_key(header::DATE) {
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time)) {
            headers.insert(header::DATE, date);
        }
    }
    // Whether the updated response may be stored is the response's call;
    // the request that happened to revalidate it does not matter.
    let lifetime = storable(&Method::GET, &HeaderMap::new(), stored.status, &headers, settings.ttl).ok()?;
    let mut parts = Response::new(()).into_parts().0;
    parts.status = stored.status;
    parts.headers = headers;
    let mut fresh = Stored::from_head(settings, &parts, lifetime, request_time, response_time);
    // The tags came with the stored response, not with the 304.
    if fresh.tags.is_empty() {
        fresh.tags = stored.tags.clone();
    }
    Some(fresh.with_body(stored.body.clone()))
}

/// The answer to a request with headers `request` from `stored`.
fn answer(stored: &Stored, request: &HeaderMap, head: bool, status: Status) -> Result<Response<ProxyBody>, ProxyError> {
    let mut headers = stored.headers.clone();
    let age = stored.age(Instant::now());
    let (code, body) = if stored.status == StatusCode::OK {
        let held = Validators::of(&stored.headers);
        match preconditions(request, &held) {
            Precondition::Failed => return Err(ProxyError::PreconditionFailed),
            Precondition::NotModified => {
                let mut response = conditional::not_modified(&headers);
                stamp(response.headers_mut(), stored, age, status);
                return Ok(response);
            }
            Precondition::Proceed => {}
        }
        let (code, plan) = conditional::plan(request, &held, stored.body.len() as u64, &mut headers)?;
        headers
            .entry(header::ACCEPT_RANGES)
            .or_insert(HeaderValue::from_static("bytes"));
        let body = if head {
            ProxyBody::empty()
        } else {
            conditional::sliced(&stored.body, plan)
        };
        (code, body)
    } else {
        if stored.status != StatusCode::NO_CONTENT {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        }
        let body = if head {
            ProxyBody::empty()
        } else {
            ProxyBody::full(stored.body.clone())
        };
        (stored.status, body)
    };
    stamp(&mut headers, stored, age, status);
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    Ok(response)
}

/// `Age`, `X-Cache` and `Cache-Status` of an answer from the store.
fn stamp(headers: &mut HeaderMap, stored: &Stored, age: Duration, status: Status) {
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    let ttl = stored.lifetime.as_secs() as i64 - age.as_secs() as i64;
    let detail = match status {
        Status::Hit => format!("switchyard; hit; ttl={ttl}"),
        Status::Stale => format!("switchyard; hit; ttl={ttl}; detail=stale"),
        Status::Revalidated => format!("switchyard; fwd=stale; fwd-status=304; ttl={ttl}"),
        Status::Miss => format!("switchyard; fwd=uri-miss; stored; ttl={ttl}"),
        Status::Bypass => "switchyard; fwd=bypass".to_owned(),
    };
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    if let Ok(value) = HeaderValue::from_str(&detail) {
        headers.insert(CACHE_STATUS.clone(), value);
    }
}

/// Marks a response the store did not answer.
fn mark(mut response: Response<ProxyBody>, status: Status, detail: &str) -> Response<ProxyBody> {
    let headers = response.headers_mut();
    headers.insert(X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    if let Ok(value) = HeaderValue::from_str(&format!("switchyard; {detail}")) {
        headers.insert(CACHE_STATUS.clone(), value);
    }
    response
}

/// A body read whole, or found too large (then still sendable).
enum Collected {
    Whole(Bytes),
    TooLarge(ProxyBody),
}

async fn collect(mut body: ProxyBody, limit: u64, endpoint: &str) -> Result<Collected, ProxyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ProxyError::Upstream {
            endpoint: endpoint.to_owned(),
            source: Box::new(error),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        chunks.push(data);
        if total > limit {
            let prefix = futures_util::stream::iter(chunks.into_iter().map(|c| Ok(http_body::Frame::data(c))));
            let rest = http_body_util::BodyStream::new(body);
            return Ok(Collected::TooLarge(ProxyBody::stream(futures_util::StreamExt::chain(
                prefix, rest,
            ))));
        }
    }
    Ok(Collected::Whole(join(chunks, total as usize)))
}

/// One buffer of `chunks` (no copy for one chunk).
fn join(mut chunks: Vec<Bytes>, total: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut out = BytesMut::with_capacity(total);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

/// Refreshes the stored response for `key` in the background (one refresh
/// per key at a time), while the client gets the stale one.
fn refresh(origin: &Origin<'_, '_>, req: &Request<Incoming>, key: &str) {
    let Some(cache) = &origin.entry.cache else { return };
    let Some(guard) = cache.store.try_claim(key) else {
        return;
    };
    let Some(index) = origin
        .listener
        .router
        .routes()
        .iter()
        .position(|entry| std::ptr::eq(entry, origin.entry))
    else {
        return;
    };
    let snapshot = origin.snapshot.clone();
    let conn = origin.conn.clone();
    let mut request = Request::new(Either::Right(http_body_util::Empty::new()));
    *request.uri_mut() = req.uri().clone();
    *request.version_mut() = req.version();
    *request.headers_mut() = req.headers().clone();
    let key = key.to_owned();
    let task = async move {
        let Some(listener) = snapshot.listeners.get(&*conn.listener) else {
            return;
        };
        let Some(entry) = listener.router.routes().get(index) else {
            return;
        };
        let Some(cache) = &entry.cache else { return };
        let request_id = crate::request_id::from_request_or_new(&HeaderMap::new());
        let trace = RequestTrace::new(&HeaderMap::new(), snapshot.tracer.as_ref());
        let origin = Origin {
            snapshot: &snapshot,
            listener,
            entry,
            conn: &conn,
            ids: RequestIds {
                request_id: &request_id,
                trace: &trace,
                grpc: false,
            },
            started: Instant::now(),
        };
        let stale = match cache.store.find(&key, request.headers()) {
            Found::Stored(stored) => Some(stored),
            Found::Pass | Found::Nothing => None,
        };
        let fetch = Fetch {
            generation: cache.store.generation(),
            stale,
            stale_if_error: false,
            key,
            guard: Some(guard),
        };
        let mut outcome = Outcome::default();
        match fetch.run(cache, &origin, request, &mut outcome).await {
            // Reading the body to its end stores it.
            Ok(response) => {
                if let Err(error) = response.into_body().collect().await {
                    tracing::debug!(%error, "background refresh: the response body failed");
                }
            }
            Err(error) => tracing::debug!(%error, "background refresh failed"),
        }
    };
    match &origin.conn.tasks {
        Some(tasks) => drop(tasks.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}
