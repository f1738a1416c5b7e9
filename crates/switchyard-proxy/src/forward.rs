//! Step 5 of the pipeline for proxied routes, top to bottom:
//!
//! 1. injected faults (`fault`): delay, or answer with an error at once;
//! 2. prepare the upstream request head (rewrite, hop-by-hop, forwarding);
//! 3. decide how the body travels: streamed once, or read ahead so that it can
//!    be sent again (retries, hedging, idempotency keys);
//! 4. idempotency keys: replay a stored answer, wait for or refuse a running
//!    duplicate, or claim the key;
//! 5. the exchange: shed load past the cluster's concurrency limit, then
//!    attempts, each one picking an endpoint (sticky cookie, balancer, another
//!    endpoint than the ones that failed) that the circuit breaker admits,
//!    with backoff between attempts and the cluster's retry budget as a cap;
//! 6. the response head (hop-by-hop, header edits, sticky cookie) and body,
//!    kept for replay when the request claimed an idempotency key.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::uri::Scheme;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use switchyard_balance::{EndpointState, Failure, InFlight};
use switchyard_config::{BalancerKind, ConcurrentDuplicate, HashKey, Retry, Route, Sticky, UpstreamProtocol};
use switchyard_resilience::backoff::Backoff;
use switchyard_resilience::breaker::Permit;
use switchyard_resilience::idempotency::{Begin, ClaimId, IdempotencyStore, StoredResponse};
use switchyard_resilience::Transition;
use tokio::sync::OwnedSemaphorePermit;

use crate::body::{read_ahead, ProxyBody, ReadAhead, RequestBody, TimedBody, UpstreamRequestBody};
use crate::error::{ProxyError, Side};
use crate::grpc;
use crate::headers::{apply_ops, set_forwarding, strip_hop_by_hop, Forwarding};
use crate::pipeline::{rewritten_path_and_query, ConnectionInfo, Outcome, RequestIds};
use crate::request_id::X_REQUEST_ID;
use crate::snapshot::{ClusterRuntime, RouteEntry};
use crate::trace::context::{new_span_id, SpanId};
use crate::trace::{Attribute, RequestTrace, SpanData, SpanKind, TraceContext, TRACEPARENT, TRACESTATE};
use crate::websocket;

/// Largest grpc-web-text request body decoded when no `max_body_size` applies.
const GRPC_WEB_TEXT_MAX: u64 = 4 << 20;

/// The request header carrying an idempotency key.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on an answer replayed from the idempotency store.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Proxies `req` to the route's cluster (see the module docs).
pub(crate) async fn forward<'s>(
    entry: &'s RouteEntry,
    listener: &switchyard_config::Listener,
    conn: &ConnectionInfo,
    req: Request<RequestBody>,
    ids: RequestIds<'_>,
    started: Instant,
    outcome: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let RequestIds {
        request_id,
        trace,
        grpc: is_grpc,
    } = ids;
    let route = &entry.route;
    let cluster: &'s ClusterRuntime = entry
        .cluster
        .as_deref()
        .expect("a forward route's cluster exists (validated)");

    // WebSocket handshakes are admitted (and their client side taken) first.
    let mut req = req;
    let websocket = match websocket::requested(&req) {
        Some(handshake) => Some((
            handshake,
            admit_websocket(entry, cluster)?,
            hyper::upgrade::on(&mut req),
        )),
        None => None,
    };

    // gRPC-Web (browsers) becomes gRPC upstream; the browser's content type
    // is kept for the answer.
    let grpc_web = route
        .grpc_web
        .then(|| grpc::web::mode(req.headers()))
        .flatten()
        .zip(req.headers().get(header::CONTENT_TYPE).cloned());

    // 1. Faults.
    if let Some(fault) = &entry.fault {
        let decision = fault.decide(req.headers());
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = decision.abort {
            return Err(ProxyError::FaultInjected { status });
        }
    }
    cluster.budget.record_request(started);
    if let Some(budget) = &entry.budget {
        budget.record_request(started);
    }

    // 2. The head. What balancing needs from the client's request is taken
    // before the head is rewritten.
    let (mut head, body) = req.into_parts();
    let hash_key = hash_key(cluster, &head);
    let pinned = cluster
        .config
        .sticky
        .as_ref()
        .and_then(|sticky| cookie(&head.headers, &sticky.cookie))
        .and_then(|value| cluster.sticky_endpoint(value));
    let idempotency = match (&entry.idempotency, route.idempotency) {
        (Some(store), Some(settings)) => idempotency_key(&head, conn, route)?.map(|key| (store, settings, key)),
        _ => None,
    };
    // A gRPC call's own deadline bounds the whole exchange, like max_duration.
    let call_deadline = is_grpc
        .then(|| grpc::timeout(&head.headers))
        .flatten()
        .map(|t| tokio::time::Instant::from_std(started) + t);
    let path_and_query = prepare_head(&mut head, entry, conn, request_id);
    if let Some((handshake, ..)) = &websocket {
        websocket::prepare_upstream(&mut head, *handshake);
    }
    if let Some((mode, _)) = grpc_web {
        grpc::web::prepare_request(&mut head.headers, mode);
    }
    // The caller's tracestate belongs to its traceparent: dropped with it.
    if trace.context.restarted {
        head.headers.remove(&TRACESTATE);
    }

    // 3. The body.
    let method_retriable = route
        .retry
        .as_ref()
        .is_some_and(|r| r.attempts > 1 && (is_idempotent(&head.method) || r.non_idempotent || idempotency.is_some()));
    let connect_retriable = route
        .retry
        .as_ref()
        .is_some_and(|r| r.attempts > 1 && (r.on.connect_failure || r.on.server_error || r.on.gateway_error));
    let hedge = route
        .hedge
        .filter(|_| matches!(head.method, Method::GET | Method::HEAD) && body.is_end_stream() && websocket.is_none());
    let keep_limit = match (&idempotency, &route.retry) {
        (Some((_, settings, _)), _) => Some(settings.max_body),
        (None, Some(retry)) if connect_retriable || method_retriable => Some(retry.max_replay_body),
        _ if hedge.is_some() => Some(0),
        _ => None,
    };
    // A declared length over the limit is refused before anything is read;
    // a chunked body is counted as it streams.
    let max_body = route.max_body_size.or(listener.max_body_size);
    if let Some(limit) = max_body {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
    }
    let timed = TimedBody::new(body, route.idle_timeout, Side::Downstream)
        .counting(entry.metrics.request_bytes.clone())
        .with_limit(max_body)
        .with_min_rate(listener.min_body_rate);
    let chunked = head.headers.contains_key(header::TRANSFER_ENCODING);
    // A request body transform reads the body whole, up to its limit.
    let mut request_edits = route
        .transform
        .as_ref()
        .and_then(|t| t.request.as_ref().filter(|e| e.edits_body()).map(|e| (t, e)));
    if request_edits.is_some() && !crate::transform::readable(&head.headers) {
        tracing::info!(route = %route.name, reason = "compressed by the client", "transform: request passed untransformed");
        request_edits = None;
    }
    let body = match keep_limit {
        _ if request_edits.is_some() => {
            let (transform, edits) = request_edits.expect("checked just above");
            let limit = transform.max_body;
            match read_ahead(timed, limit).await.map_err(client_body_error)? {
                ReadAhead::Complete(chunks) if chunks.iter().all(|c| c.is_empty()) => Plan::Replay(chunks),
                ReadAhead::Complete(chunks) => {
                    let input = crate::body::concat(chunks);
                    let (output, content_type) =
                        crate::transform::body(edits, &input).map_err(ProxyError::TransformInput)?;
                    crate::transform::retarget(&mut head.headers, &output, content_type);
                    Plan::Replay(vec![output])
                }
                // A keyed request must be read whole: its fingerprint is its body.
                ReadAhead::TooLarge { .. } if idempotency.is_some() => {
                    return Err(ProxyError::IdempotencyBodyTooLarge { limit })
                }
                ReadAhead::TooLarge { prefix, rest } => match transform.on_oversize {
                    switchyard_config::Oversize::Pass => {
                        tracing::info!(
                            route = %route.name,
                            limit,
                            reason = "larger than max_body",
                            "transform: request passed untransformed"
                        );
                        Plan::Prefixed(Some((prefix, rest)))
                    }
                    switchyard_config::Oversize::Refuse => {
                        return Err(ProxyError::TransformTooLarge { side: "request", limit })
                    }
                },
            }
        }
        // A grpc-web-text body (browsers send them whole) is decoded first.
        _ if matches!(grpc_web, Some((grpc::web::Mode::Text, _))) => {
            let limit = max_body.unwrap_or(GRPC_WEB_TEXT_MAX);
            match read_ahead(timed, limit).await.map_err(client_body_error)? {
                ReadAhead::Complete(chunks) => {
                    let decoded = grpc::web::decode_text(&chunks).map_err(ProxyError::BadRequest)?;
                    Plan::Replay(vec![decoded])
                }
                ReadAhead::TooLarge { .. } => return Err(ProxyError::BodyTooLarge { limit }),
            }
        }
        // A chunked body's first chunk is read before anything goes upstream,
        // so that broken framing (a bad chunk size) never reaches it.
        None if chunked => match read_ahead(timed, 0).await.map_err(client_body_error)? {
            // Whole already (an empty chunked body): nothing more to stream.
            ReadAhead::Complete(chunks) => Plan::Replay(chunks),
            ReadAhead::TooLarge { prefix, rest } => Plan::Prefixed(Some((prefix, rest))),
        },
        None => Plan::Once(Some(timed)),
        Some(limit) => match read_ahead(timed, limit).await.map_err(client_body_error)? {
            ReadAhead::Complete(chunks) => Plan::Replay(chunks),
            ReadAhead::TooLarge { prefix, rest } => {
                if idempotency.is_some() {
                    return Err(ProxyError::IdempotencyBodyTooLarge { limit });
                }
                tracing::info!(
                    route = %route.name,
                    limit,
                    "request body larger than max_replay_body: sent once, not retried"
                );
                Plan::Prefixed(Some((prefix, rest)))
            }
        },
    };

    // 4. Idempotency keys.
    let claim = match idempotency {
        Some((store, settings, key)) => {
            let fingerprint = fingerprint(&head.method, &path_and_query, body.replay_chunks().unwrap_or_default());
            match store.begin(&key, fingerprint).await {
                Begin::Proceed(id) => Some(Claim::new(store.clone(), key, id, settings.max_body)),
                Begin::Replay(stored) => return Ok(replayed(&stored)),
                Begin::Mismatch => return Err(ProxyError::IdempotencyMismatch),
                Begin::Full => return Err(ProxyError::IdempotencyStoreFull),
                Begin::Unavailable => return Err(ProxyError::IdempotencyUnavailable),
                Begin::Bypass => None,
                Begin::InProgress => match settings.concurrent {
                    ConcurrentDuplicate::Reject => return Err(ProxyError::IdempotencyInProgress),
                    ConcurrentDuplicate::Wait => match store.wait(&key, route.timeout).await {
                        Some(stored) => return Ok(replayed(&stored)),
                        None => return Err(ProxyError::IdempotencyInProgress),
                    },
                },
            }
        }
        None => None,
    };

    // 5. The exchange.
    let slot = match &cluster.limit {
        Some(limit) => {
            let wait = cluster
                .config
                .circuit_breaker
                .map_or(Duration::ZERO, |cb| cb.pending_timeout);
            Some(limit.acquire(wait).await.map_err(|shed| ProxyError::Overloaded {
                cluster: cluster.config.name.clone(),
                reason: match shed {
                    switchyard_resilience::Shed::Full {
                        max_concurrent,
                        max_pending,
                    } => format!("{max_concurrent} requests in flight and {max_pending} waiting"),
                    switchyard_resilience::Shed::Timeout { waited } => {
                        format!("no request slot came free within {waited:?}")
                    }
                },
            })?)
        }
        None => None,
    };
    let mut exchange = Exchange {
        route,
        route_budget: entry.budget.as_deref(),
        cluster,
        head,
        path_and_query,
        body,
        client_ip: conn.peer.ip(),
        hash_key: hash_key.as_deref(),
        pinned,
        started,
        tried: Vec::new(),
        method_retriable,
        trace,
        attempts: 0,
        call_deadline,
    };
    let done = match hedge {
        Some(hedge) => exchange.hedged(hedge.delay).await?,
        None => exchange.run().await?,
    };
    let index = done.index;
    let endpoint = &cluster.endpoints[index];
    outcome.upstream = Some(endpoint.address());
    outcome.upstream_time = Some(done.rtt);
    cluster.metrics.upstream.observe(done.rtt.as_secs_f64());

    // 6. The response.
    let mut response = done.response;
    let upgraded = match websocket {
        Some((handshake, slot, client)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Some((handshake, slot, client, hyper::upgrade::on(&mut response)))
        }
        // On HTTP/2 any 2xx answer to a CONNECT means "tunnel open": an
        // upstream that answered 200 without upgrading must not look like one.
        Some((websocket::Handshake::ExtendedConnect, ..)) if response.status().is_success() => {
            return Err(ProxyError::Upstream {
                endpoint: endpoint.address().to_owned(),
                source: format!("answered the WebSocket handshake with {}", response.status()).into(),
            });
        }
        // Refused by the upstream: its answer goes back as it is.
        _ => None,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    apply_ops(&mut parts.headers, &route.response_headers);
    if let Some((handshake, slot, client, upstream)) = upgraded {
        let mut answer = Response::from_parts(parts, ProxyBody::empty());
        websocket::client_answer(&mut answer, handshake);
        *answer.version_mut() = Version::default();
        websocket::spawn_tunnel(
            conn.tasks.as_ref(),
            (client, upstream),
            route.websocket,
            entry.metrics.websocket.clone(),
            (slot, done.in_flight, conn.guard.clone()),
            (Arc::from(route.name.as_str()), Arc::from(endpoint.address())),
            entry.drain.clone(),
        );
        return Ok(answer);
    }
    if let Some(sticky) = &cluster.config.sticky {
        if pinned != Some(index) {
            parts
                .headers
                .append(header::SET_COOKIE, sticky_cookie(sticky, endpoint));
        }
    }
    // The client's connection decides its own version; hyper fills it in.
    parts.version = Version::default();
    let body = TimedBody::new(body, route.idle_timeout, Side::Upstream).with_deadline(exchange.end_of_exchange());
    let guards = Guards {
        in_flight: done.in_flight,
        slot,
    };
    // A gRPC call cut by its deadline ends with a status, not a reset.
    let cut_by_deadline =
        is_grpc && exchange.end_of_exchange().is_some() && !parts.headers.contains_key(&grpc::GRPC_STATUS);
    if cut_by_deadline || grpc_web.is_some() {
        let mut body = guards.body(Vec::new(), body);
        if cut_by_deadline {
            body = ProxyBody::translated(body, grpc::DeadlineTrailers::new);
        }
        if let Some((mode, content_type)) = grpc_web {
            grpc::web::prepare_response(&mut parts.headers, &content_type);
            let metrics = entry.metrics.grpc.clone();
            body = ProxyBody::translated(body, |b| grpc::web::WebBody::new(b, mode).counting(metrics));
        }
        return Ok(Response::from_parts(parts, body));
    }
    match claim {
        Some(claim) if !parts.status.is_server_error() => claim.keep(parts, body, guards).await,
        // A failed answer is not kept: a repeat of the request runs afresh
        // (the claim is released as it drops).
        _ => Ok(Response::from_parts(parts, guards.body(Vec::new(), body))),
    }
}

/// Checks that a WebSocket may open through the route now, and takes its place.
fn admit_websocket(entry: &RouteEntry, cluster: &ClusterRuntime) -> Result<websocket::Slot, ProxyError> {
    let settings = &entry.route.websocket;
    if !settings.enabled {
        return Err(ProxyError::BadRequest(
            "WebSocket upgrades are not enabled on this route",
        ));
    }
    if cluster.config.protocol == UpstreamProtocol::Http2 {
        return Err(ProxyError::WebSocketUpstream {
            cluster: cluster.config.name.clone(),
        });
    }
    websocket::Slot::admit(&entry.websockets, settings.max_connections, &entry.metrics.websocket).ok_or_else(|| {
        ProxyError::WebSocketLimit {
            route: entry.route.name.clone(),
            limit: settings.max_connections.unwrap_or_default(),
        }
    })
}

/// How the request body travels.
enum Plan {
    /// Streamed as it arrives; one attempt only.
    Once(Option<TimedBody<RequestBody>>),
    /// Read ahead to its end: sent again on each attempt.
    Replay(Vec<Bytes>),
    /// Too big to keep: the chunks read so far, then the stream; one attempt.
    Prefixed(Option<(Vec<Bytes>, TimedBody<RequestBody>)>),
}

impl Plan {
    fn replay_chunks(&self) -> Option<&[Bytes]> {
        match self {
            Plan::Replay(chunks) => Some(chunks),
            _ => None,
        }
    }

    /// The body of the next attempt; `None` when the body was sent already
    /// and cannot be sent again.
    fn next(&mut self) -> Option<(UpstreamRequestBody, Option<tokio::sync::oneshot::Receiver<()>>)> {
        match self {
            Plan::Replay(chunks) => Some((UpstreamRequestBody::replay(chunks), None)),
            Plan::Once(body) => body.take().map(|body| {
                let (body, sent) = body.signal_completion();
                (UpstreamRequestBody::stream(body), sent)
            }),
            Plan::Prefixed(parts) => parts
                .take()
                .map(|(prefix, rest)| (UpstreamRequestBody::prefixed(prefix, rest), None)),
        }
    }
}

/// What holds capacity until the response body is done.
struct Guards {
    in_flight: InFlight,
    slot: Option<OwnedSemaphorePermit>,
}

impl Guards {
    fn body(self, prefix: Vec<Bytes>, body: TimedBody<Incoming>) -> ProxyBody {
        ProxyBody::upstream_prefixed(prefix, body, self.in_flight, self.slot)
    }
}

/// An attempt ready to go.
struct Prepared {
    request: Request<UpstreamRequestBody>,
    index: usize,
    permit: Option<Permit>,
    /// Resolves when a streamed body has been sent (the route timeout counts
    /// from there); `None` for a body read ahead.
    body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The attempt's span id (its `traceparent` parent id) and number.
    span_id: SpanId,
    number: u32,
}

/// A finished attempt that produced the answer.
struct Done {
    index: usize,
    response: Response<Incoming>,
    in_flight: InFlight,
    rtt: Duration,
}

/// One attempt's result.
struct Attempt {
    index: usize,
    in_flight: InFlight,
    result: Result<Response<Incoming>, ProxyError>,
    rtt: Duration,
}

/// The attempts of one client request.
struct Exchange<'s, 'r> {
    route: &'s Route,
    route_budget: Option<&'s switchyard_resilience::RetryBudget>,
    cluster: &'s ClusterRuntime,
    head: Parts,
    /// The target sent upstream (after the route's rewrite).
    path_and_query: http::uri::PathAndQuery,
    body: Plan,
    client_ip: std::net::IpAddr,
    hash_key: Option<&'r [u8]>,
    /// The endpoint a sticky cookie names.
    pinned: Option<usize>,
    started: Instant,
    /// Endpoints tried so far (the next attempt prefers another).
    tried: Vec<usize>,
    /// Whether the method (or the route, or an idempotency key) allows
    /// retrying after the request may have reached the upstream.
    method_retriable: bool,
    trace: &'r RequestTrace,
    /// Attempts prepared so far.
    attempts: u32,
    /// The end a gRPC client set for its call (`grpc-timeout`).
    call_deadline: Option<tokio::time::Instant>,
}

impl<'s> Exchange<'s, '_> {
    /// The end of the whole exchange (`max_duration`).
    fn end_of_exchange(&self) -> Option<tokio::time::Instant> {
        let max_duration = self
            .route
            .max_duration
            .map(|max| tokio::time::Instant::from_std(self.started) + max);
        match (max_duration, self.call_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Attempts until one succeeds, the failure is not worth retrying, or
    /// attempts, time or budget run out.
    async fn run(&mut self) -> Result<Done, ProxyError> {
        let retry = self.route.retry.as_ref();
        let attempts = retry.map_or(1, |r| r.attempts);
        // With a body read ahead, the route timeout (all attempts together)
        // starts now; a streamed body starts it when the upload ends.
        let headers_deadline = match self.body {
            Plan::Replay(_) => Some(Instant::now() + self.route.timeout),
            _ => None,
        };
        let mut attempt = {
            let prepared = self.prepare()?;
            self.send(prepared, headers_deadline).await
        };
        let mut retries = 0;
        loop {
            let reason = retry.and_then(|r| retry_reason(r, &attempt.result, self.method_retriable));
            let Some(reason) = reason.filter(|_| retries + 1 < attempts && matches!(self.body, Plan::Replay(_))) else {
                return finish(attempt);
            };
            let now = Instant::now();
            let wait = retry.map_or(Duration::ZERO, |r| {
                Backoff {
                    base: r.backoff_base,
                    max: r.backoff_max,
                }
                .delay(retries)
            });
            let out_of_time = headers_deadline.is_some_and(|d| now + wait >= d)
                || self
                    .end_of_exchange()
                    .is_some_and(|end| tokio::time::Instant::from_std(now + wait) >= end);
            if out_of_time {
                return finish(attempt);
            }
            if !self.budget_allows(now) {
                self.cluster.metrics.budget_exhausted.inc();
                tracing::info!(
                    cluster = %self.cluster.config.name,
                    route = %self.route.name,
                    reason,
                    "retry budget exhausted: not retrying"
                );
                return finish(attempt);
            }
            tracing::debug!(
                route = %self.route.name,
                endpoint = self.cluster.endpoints[attempt.index].address(),
                reason,
                retry = retries + 1,
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            self.cluster.metrics.retries.inc();
            tokio::time::sleep(wait).await;
            // No endpoint for the retry (breaker open, none available): the
            // last attempt's answer stands.
            let Ok(prepared) = self.prepare() else {
                return finish(attempt);
            };
            attempt = self.send(prepared, headers_deadline).await;
            retries += 1;
        }
    }

    /// The first attempt, and after `delay` without an answer a second one to
    /// another endpoint; the first good answer wins (GET and HEAD only).
    async fn hedged(&mut self, delay: Duration) -> Result<Done, ProxyError> {
        let headers_deadline = Some(Instant::now() + self.route.timeout);
        let prepared = self.prepare()?;
        let first = self.send(prepared, headers_deadline);
        tokio::pin!(first);
        tokio::select! {
            attempt = &mut first => return finish(attempt),
            () = tokio::time::sleep(delay) => {}
        }
        if !self.budget_allows(Instant::now()) {
            self.cluster.metrics.budget_exhausted.inc();
            return finish(first.await);
        }
        let Ok(prepared) = self.prepare() else {
            return finish(first.await);
        };
        tracing::debug!(route = %self.route.name, after_ms = delay.as_millis() as u64, "hedging");
        self.cluster.metrics.retries.inc();
        let second = self.send(prepared, headers_deadline);
        tokio::pin!(second);
        let (winner, other) = tokio::select! {
            attempt = &mut first => (attempt, Either::Second),
            attempt = &mut second => (attempt, Either::First),
        };
        if is_good(&winner.result) {
            return finish(winner);
        }
        // The faster one failed: the other may still answer well.
        let other = match other {
            Either::First => first.await,
            Either::Second => second.await,
        };
        finish(if is_good(&other.result) { other } else { winner })
    }

    /// Takes one retry from the route's budget (if it has one) and the
    /// cluster's; `false`: no retry.
    fn budget_allows(&self, now: Instant) -> bool {
        self.route_budget.is_none_or(|b| b.try_retry(now)) && self.cluster.budget.try_retry(now)
    }

    /// Picks an endpoint the breaker admits and builds the request for it.
    fn prepare(&mut self) -> Result<Prepared, ProxyError> {
        let (index, permit) = self.pick()?;
        let (body, body_sent) = self
            .body
            .next()
            .ok_or(ProxyError::BadRequest("the request body was already sent"))?;
        // Only a body kept for replay allows another attempt: only then is
        // there a next pick to steer (and a list worth allocating).
        if matches!(self.body, Plan::Replay(_)) {
            self.tried.push(index);
        }
        let mut request = self.request_for(index, body)?;
        let span_id = new_span_id();
        if let Some(traceparent) = self.trace.upstream_header(&span_id) {
            request.headers_mut().insert(TRACEPARENT.clone(), traceparent);
        }
        self.attempts += 1;
        Ok(Prepared {
            request,
            index,
            permit,
            body_sent,
            span_id,
            number: self.attempts,
        })
    }

    /// The request head for endpoint `index`, with `body`.
    fn request_for(
        &mut self,
        index: usize,
        body: UpstreamRequestBody,
    ) -> Result<Request<UpstreamRequestBody>, ProxyError> {
        let scheme = match self.cluster.config.tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(self.cluster.authorities[index].clone())
            .path_and_query(self.path_and_query.clone())
            .build()
            .map_err(|_| ProxyError::BadRequest("the rewritten request target is invalid"))?;
        let mut request = Request::new(body);
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = self.head.version;
        // Only a replayable body can be sent again: otherwise this is the one
        // attempt, and the headers move rather than copy.
        *request.headers_mut() = match self.body {
            Plan::Replay(_) => self.head.headers.clone(),
            _ => std::mem::take(&mut self.head.headers),
        };
        Ok(request)
    }

    /// Chooses the endpoint of the next attempt and takes its breaker permit.
    fn pick(&self) -> Result<(usize, Option<Permit>), ProxyError> {
        let cluster = self.cluster;
        let ctx = cluster.pick_context(self.client_ip, self.hash_key);
        let no_endpoint = || ProxyError::NoHealthyEndpoint {
            cluster: cluster.config.name.clone(),
        };
        // A cluster-wide breaker decides before any endpoint is chosen.
        let cluster_permit = match &cluster.breaker {
            Some(breaker) => {
                let admission = breaker.admit(ctx.now);
                log_transition(cluster, None, admission.transition);
                match admission.permit {
                    Some(permit) => Some(permit),
                    None => {
                        return Err(ProxyError::CircuitOpen {
                            cluster: cluster.config.name.clone(),
                            retry_after: admission.retry_after,
                        })
                    }
                }
            }
            None => None,
        };
        let first = self
            .pinned
            .filter(|&i| self.tried.is_empty() && ctx.usable(&cluster.endpoints[i]))
            .or_else(|| cluster.balancer.pick(&cluster.endpoints, &ctx))
            .ok_or_else(no_endpoint)?;
        let index = if self.tried.contains(&first) {
            cluster.next_untried(first, &ctx, &self.tried).unwrap_or(first)
        } else {
            first
        };
        if cluster.endpoint_breakers.is_empty() {
            return Ok((index, cluster_permit));
        }
        // Per-endpoint breakers: an open one is skipped like an unavailable
        // endpoint; when every candidate is open, the cluster is.
        let n = cluster.endpoints.len();
        let mut retry_after = Duration::MAX;
        for candidate in (0..n).map(|offset| (index + offset) % n) {
            if candidate != index && (!ctx.usable(&cluster.endpoints[candidate]) || self.tried.contains(&candidate)) {
                continue;
            }
            let admission = cluster.endpoint_breakers[candidate].admit(ctx.now);
            log_transition(cluster, Some(candidate), admission.transition);
            match admission.permit {
                Some(permit) => return Ok((candidate, Some(permit))),
                None => retry_after = retry_after.min(admission.retry_after),
            }
        }
        Err(ProxyError::CircuitOpen {
            cluster: cluster.config.name.clone(),
            retry_after,
        })
    }

    /// Sends `request` to endpoint `index` and waits for response headers
    /// under the route's deadlines; records the outcome for outlier detection
    /// and the breaker.
    fn send(
        &self,
        prepared: Prepared,
        headers_deadline: Option<Instant>,
    ) -> impl std::future::Future<Output = Attempt> + 's {
        let Prepared {
            request,
            index,
            permit,
            body_sent,
            span_id,
            number,
        } = prepared;
        // What the attempt's span needs, taken only for a recorded trace.
        let span = self.trace.recorder.clone().map(|tracer| {
            let method = request.method().clone();
            (tracer, self.trace.context.clone(), method, SystemTime::now())
        });
        // Only what lives as long as the snapshot is captured, not `self`:
        // a hedge runs two of these while the exchange prepares the second.
        let cluster: &'s ClusterRuntime = self.cluster;
        let endpoint = &cluster.endpoints[index];
        let in_flight = endpoint.begin();
        let route_timeout = self.route.timeout;
        let per_try = self.route.retry.as_ref().and_then(|r| r.per_try_timeout);
        let max_duration = self.route.max_duration;
        let end_of_exchange = self.end_of_exchange();
        async move {
            let sent = Instant::now();
            let per_try_deadline = per_try.map(|t| sent + t);
            let headers_timeout = async {
                match headers_deadline {
                    Some(at) => {
                        let at = per_try_deadline.map_or(at, |p| p.min(at));
                        tokio::time::sleep_until(at.into()).await;
                    }
                    None => {
                        if let Some(sent) = body_sent {
                            let _ = sent.await;
                        }
                        tokio::time::sleep(per_try.map_or(route_timeout, |p| p.min(route_timeout))).await;
                    }
                }
            };
            let exchange_deadline = async {
                match end_of_exchange {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = cluster.client.request(request) => {
                    result.map_err(|e| ProxyError::from_upstream(endpoint.address(), e))
                }
                () = headers_timeout => Err(ProxyError::UpstreamTimeout {
                    endpoint: endpoint.address().to_owned(),
                    timeout: per_try.unwrap_or(route_timeout),
                }),
                () = exchange_deadline => Err(ProxyError::UpstreamTimeout {
                    endpoint: endpoint.address().to_owned(),
                    timeout: max_duration.unwrap_or(route_timeout),
                }),
            };
            let received = Instant::now();
            let rtt = received - sent;
            if let Some((tracer, context, method, start)) = span {
                tracer.record(attempt_span(
                    &context,
                    span_id,
                    number,
                    &method,
                    endpoint.address(),
                    (start, start + rtt),
                    &result,
                ));
            }
            let failure = match &result {
                Ok(response) if response.status().is_server_error() => Some(Failure::ServerError),
                Ok(_) => None,
                Err(error) => error.endpoint_failure(),
            };
            // A client-side error says nothing about the endpoint: not counted,
            // and the breaker permit is dropped without a verdict.
            if result.is_ok() || failure.is_some() {
                if result.is_ok() {
                    endpoint.observe_latency(rtt, received);
                }
                record_outcome(cluster, endpoint, failure);
                if let Some(permit) = permit {
                    let transition = permit.finish(failure.is_none(), received);
                    log_breaker(cluster, Some(endpoint.address()), transition);
                }
            }
            Attempt {
                index,
                in_flight,
                result,
                rtt,
            }
        }
    }
}

enum Either {
    First,
    Second,
}

/// The client span of one upstream attempt, a child of the request's span.
fn attempt_span(
    context: &TraceContext,
    span_id: SpanId,
    number: u32,
    method: &Method,
    endpoint: &str,
    (start, end): (SystemTime, SystemTime),
    result: &Result<Response<Incoming>, ProxyError>,
) -> SpanData {
    let mut attributes = vec![
        ("http.request.method", Attribute::Str(method.to_string())),
        ("server.address", Attribute::Str(endpoint.to_owned())),
        ("switchyard.attempt", Attribute::Int(i64::from(number))),
    ];
    let error = match result {
        Ok(response) => {
            let status = response.status();
            attributes.push(("http.response.status_code", Attribute::Int(i64::from(status.as_u16()))));
            status
                .is_server_error()
                .then(|| format!("upstream answered {}", status.as_u16()))
        }
        Err(error) => {
            attributes.push(("error.type", Attribute::Str(error.code().to_owned())));
            Some(error.to_string())
        }
    };
    SpanData {
        trace_id: context.trace_id,
        span_id,
        parent: Some(context.span_id),
        name: format!("{method} upstream"),
        kind: SpanKind::Client,
        start,
        end,
        attributes,
        error,
    }
}

/// The answer of a finished attempt, or its error.
fn finish(attempt: Attempt) -> Result<Done, ProxyError> {
    Ok(Done {
        index: attempt.index,
        response: attempt.result?,
        in_flight: attempt.in_flight,
        rtt: attempt.rtt,
    })
}

/// Whether an attempt's result is an answer worth keeping (for hedging).
fn is_good(result: &Result<Response<Incoming>, ProxyError>) -> bool {
    result.as_ref().is_ok_and(|r| !r.status().is_server_error())
}

/// Why `result` should be retried under `retry`, if it should.
fn retry_reason(
    retry: &Retry,
    result: &Result<Response<Incoming>, ProxyError>,
    method_retriable: bool,
) -> Option<&'static str> {
    let on = &retry.on;
    let broad = on.server_error || on.gateway_error;
    match result {
        // Nothing reached the upstream: safe for any method.
        Err(ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamConnectTimeout { .. }) => {
            (on.connect_failure || broad).then_some("connect-failure")
        }
        Err(_) if !method_retriable => None,
        Err(ProxyError::Upstream { .. }) => (on.reset || broad).then_some("reset"),
        Err(ProxyError::UpstreamTimeout { .. }) => broad.then_some("timeout"),
        Err(_) => None,
        Ok(_) if !method_retriable => None,
        Ok(response) => {
            let status = response.status();
            if on.server_error && status.is_server_error() {
                Some("5xx")
            } else if on.gateway_error
                && matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                )
            {
                Some("gateway-error")
            } else if on.statuses.contains(&status.as_u16()) {
                Some("retriable-status")
            } else if on.grpc_unavailable && response.headers().get("grpc-status").is_some_and(|v| v == "14") {
                Some("grpc-unavailable")
            } else {
                None
            }
        }
    }
}

/// Methods RFC 9110 defines as idempotent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Rewrites the head for the upstream: path, hop-by-hop and forwarding
/// headers, Host, request id, header edits, protocol.
/// Returns the path and query to send.
fn prepare_head(
    head: &mut Parts,
    entry: &RouteEntry,
    conn: &ConnectionInfo,
    request_id: &HeaderValue,
) -> http::uri::PathAndQuery {
    let route = &entry.route;
    let cluster = entry.cluster.as_deref().expect("a forward route has a cluster");
    // The client's host as a header value: a cheap clone of its Host header, or
    // made from the URI authority (HTTP/2, absolute-form requests).
    let original_host = match head.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => head.headers.get(header::HOST).cloned(),
    };
    let path_and_query = rewritten_path_and_query(entry, &head.uri);

    strip_hop_by_hop(&mut head.headers);
    set_forwarding(
        &mut head.headers,
        &Forwarding {
            peer: conn.peer.ip(),
            peer_value: &conn.peer_value,
            trusted: conn.trusted,
            proto: if conn.tls.is_some() { "https" } else { "http" },
            host: original_host.as_ref(),
            version: head.version,
        },
    );
    match route.rewrite.host.clone().or(original_host) {
        Some(host) => head.headers.insert(header::HOST, host),
        // No host from the client (HTTP/1.0): the client library fills in the endpoint's.
        None => head.headers.remove(header::HOST),
    };
    head.headers.insert(X_REQUEST_ID, request_id.clone());
    apply_ops(&mut head.headers, &route.request_headers);
    head.version = match cluster.config.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    path_and_query
}

/// Counts how an exchange with `endpoint` ended; an ejection it causes is
/// logged and ends by itself after its time.
pub(crate) fn record_outcome(cluster: &ClusterRuntime, endpoint: &Arc<EndpointState>, failure: Option<Failure>) {
    let health = &cluster.health;
    let Some(ejection) = health.record(endpoint, failure, Instant::now(), cluster.outlier.as_ref()) else {
        return;
    };
    let cluster = &cluster.config.name;
    tracing::warn!(
        %cluster,
        endpoint = endpoint.address(),
        failures = ejection.failures,
        last_failure = failure.map_or("-", Failure::as_str),
        ejection = ejection.count,
        seconds = ejection.length.as_secs_f64(),
        "endpoint ejected"
    );
    let (health, endpoint, cluster) = (health.clone(), endpoint.clone(), cluster.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(ejection.length).await;
        if health.readmit(&endpoint, Instant::now()) {
            tracing::info!(%cluster, endpoint = endpoint.address(), "endpoint readmitted");
        }
    });
}

fn log_transition(cluster: &ClusterRuntime, endpoint: Option<usize>, transition: Option<Transition>) {
    let address = endpoint.map(|i| cluster.endpoints[i].address());
    log_breaker(cluster, address, transition);
}

/// Logs and counts a breaker's state change.
fn log_breaker(runtime: &ClusterRuntime, endpoint: Option<&str>, transition: Option<Transition>) {
    let Some(transition) = transition else { return };
    let cluster = &runtime.config.name;
    let endpoint = endpoint.unwrap_or("-");
    let counter = match &transition {
        Transition::Opened { .. } | Transition::Reopened => &runtime.metrics.opened,
        Transition::HalfOpened => &runtime.metrics.half_opened,
        Transition::Closed => &runtime.metrics.closed,
    };
    counter.inc();
    match transition {
        Transition::Opened { reason } => {
            tracing::warn!(%cluster, endpoint, %reason, state = "open", "circuit breaker opened")
        }
        Transition::Reopened => {
            tracing::warn!(%cluster, endpoint, state = "open", "circuit breaker reopened: a probe failed")
        }
        Transition::HalfOpened => {
            tracing::info!(%cluster, endpoint, state = "half_open", "circuit breaker half-open: probing")
        }
        Transition::Closed => tracing::info!(%cluster, endpoint, state = "closed", "circuit breaker closed"),
    }
}

/// The key a `consistent_hash` cluster hashes for the request; `None` means
/// the client address (the default key, and the fallback when the header or
/// cookie is absent).
fn hash_key(cluster: &ClusterRuntime, head: &Parts) -> Option<Vec<u8>> {
    if cluster.config.balancer != BalancerKind::ConsistentHash {
        return None;
    }
    match &cluster.config.hash_key {
        HashKey::ClientIp => None,
        HashKey::Path => Some(head.uri.path().as_bytes().to_vec()),
        HashKey::Header(name) => head.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie(&head.headers, name).map(|v| v.as_bytes().to_vec()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'r>(headers: &'r http::HeaderMap, name: &str) -> Option<&'r str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` pinning the client to `endpoint` (by its stable id, so the
/// cookie survives reordering and reloads).
fn sticky_cookie(sticky: &Sticky, endpoint: &EndpointState) -> HeaderValue {
    let mut value = format!(
        "{}={:016x}; Path=/; HttpOnly; SameSite=Lax",
        sticky.cookie,
        endpoint.id()
    );
    if let Some(ttl) = sticky.ttl {
        value.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
    }
    HeaderValue::from_str(&value).expect("a validated cookie name and a hex id make a valid header value")
}

fn client_body_error(error: crate::body::BodyError) -> ProxyError {
    if let crate::body::BodyError::TooLarge { limit, .. } = error {
        return ProxyError::BodyTooLarge { limit };
    }
    if error.is_idle() {
        ProxyError::ClientTimeout
    } else {
        ProxyError::ClientBody {
            source: Box::new(error),
        }
    }
}

/// The store key of a request's idempotency key: the route, the client's
/// identity and the key. The identity is a hash of the `Authorization`
/// header when there is one (the same credentials, the same client), else the
/// client address.
fn idempotency_key(head: &Parts, conn: &ConnectionInfo, route: &Route) -> Result<Option<String>, ProxyError> {
    let Some(value) = head.headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or(ProxyError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ))?;
    let identity = match head.headers.get(header::AUTHORIZATION) {
        Some(credentials) => format!("auth:{:016x}", switchyard_balance::hash::fnv1a(credentials.as_bytes())),
        None => format!("ip:{}", conn.peer.ip()),
    };
    Ok(Some(format!("{}\n{identity}\n{key}", route.name)))
}

/// What makes two requests "the same" for an idempotency key: method, target
/// and body.
fn fingerprint(method: &Method, target: &http::uri::PathAndQuery, body: &[Bytes]) -> u64 {
    let mut bytes = Vec::with_capacity(64 + body.iter().map(Bytes::len).sum::<usize>());
    bytes.extend_from_slice(method.as_str().as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(target.as_str().as_bytes());
    bytes.push(b'\n');
    for chunk in body {
        bytes.extend_from_slice(chunk);
    }
    switchyard_balance::hash::fnv1a(&bytes)
}

/// A stored answer, marked as a replay.
fn replayed(stored: &StoredResponse) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers.clone();
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// A claimed idempotency key: completed with the answer, or released when
/// dropped without one (so that a repeat runs afresh).
struct Claim {
    store: Arc<dyn IdempotencyStore>,
    key: Option<String>,
    id: ClaimId,
    max_body: u64,
}

impl Claim {
    fn new(store: Arc<dyn IdempotencyStore>, key: String, id: ClaimId, max_body: u64) -> Self {
        Self {
            store,
            key: Some(key),
            id,
            max_body,
        }
    }

    /// Reads the answer's body (up to the limit), stores the answer, and
    /// sends it on. An answer too big to keep is streamed and not stored.
    async fn keep(
        mut self,
        parts: http::response::Parts,
        body: TimedBody<Incoming>,
        guards: Guards,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let key = self.key.take().expect("a claim is kept once");
        match read_ahead(body, self.max_body).await {
            Ok(ReadAhead::Complete(chunks)) => {
                let body = crate::body::concat(chunks);
                let stored = StoredResponse {
                    status: parts.status,
                    headers: parts.headers.clone(),
                    body: body.clone(),
                };
                self.store.complete(&key, self.id, stored).await;
                drop(guards);
                Ok(Response::from_parts(parts, ProxyBody::full(body)))
            }
            Ok(ReadAhead::TooLarge { prefix, rest }) => {
                tracing::info!(
                    limit = self.max_body,
                    "response larger than idempotency.max_body: sent, not kept for replay"
                );
                self.store.abandon(&key, self.id).await;
                Ok(Response::from_parts(parts, guards.body(prefix, rest)))
            }
            Err(error) => {
                self.store.abandon(&key, self.id).await;
                Err(ProxyError::Upstream {
                    endpoint: "-".into(),
                    source: Box::new(error),
                })
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let (store, id) = (self.store.clone(), self.id);
            // Released in the background: a drop cannot wait.
            tokio::spawn(async move { store.abandon(&key, id).await });
        }
    }
}
