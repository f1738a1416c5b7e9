//! Aggregate routes and body transforms against real JSON and XML services
//! on loopback: parallel calls (proved by a barrier all calls must reach
//! together, not by timing), dependent calls, required and optional
//! failures, per-call timeouts, forwarded headers, limits; each transform
//! kind, an XML round trip, oversized bodies, and path-to-query mapping.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use support::client::{client, full, get, send, Proto, Reply};
use support::GatewayProcess;

/// What a service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

/// A JSON (or XML) service on loopback answering by `handler`, after an
/// optional delay, or once `barrier` has been reached by every party.
struct Service {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    async fn start(
        delay: Duration,
        barrier: Option<Arc<tokio::sync::Barrier>>,
        handler: impl Fn(&Seen) -> (u16, &'static str, Vec<u8>) + Send + Sync + 'static,
    ) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (seen_task, handler_task) = (seen.clone(), handler.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, handler, barrier) = (seen_task.clone(), handler_task.clone(), barrier.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, handler, barrier) = (seen.clone(), handler.clone(), barrier.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let request = Seen {
                                path_and_query: parts.uri.path_and_query().unwrap().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(request.clone());
                            if let Some(barrier) = barrier {
                                // Every party must be here at once; a
                                // gateway calling one at a time never is.
                                if tokio::time::timeout(Duration::from_secs(5), barrier.wait())
                                    .await
                                    .is_err()
                                {
                                    let body = br#"{"met": false}"#.to_vec();
                                    return Ok::<_, std::convert::Infallible>(reply(500, "application/json", body));
                                }
                            }
                            tokio::time::sleep(delay).await;
                            let (status, content_type, body) = handler(&request);
                            Ok::<_, std::convert::Infallible>(reply(status, content_type, body))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Service { addr, seen, task }
    }

    /// A service answering `body` as JSON with status 200.
    async fn json(body: Value) -> Service {
        Service::start(Duration::ZERO, None, move |_| {
            (200, "application/json", body.to_string().into_bytes())
        })
        .await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn reply(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A gateway with one cluster per service (`name = address`) and `routes`.
fn gateway(services: &[(&str, SocketAddr)], routes: &str) -> GatewayProcess {
    let clusters: String = services
        .iter()
        .map(|(name, addr)| format!("[[clusters]]\nname = \"{name}\"\nendpoints = [{{ address = \"{addr}\" }}]\n\n"))
        .collect();
    GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

{clusters}
{routes}
"#
    ))
}

fn code(reply: &Reply) -> String {
    reply.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_in_parallel_and_get_the_clients_headers() {
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let mut services = Vec::new();
    for name in ["profile", "orders", "offers"] {
        services.push(
            Service::start(Duration::ZERO, Some(barrier.clone()), move |seen| {
                let body = json!({"service": name, "path": seen.path_and_query, "met": true});
                (200, "application/json", body.to_string().into_bytes())
            })
            .await,
        );
    }
    let gw = gateway(
        &[
            ("profile", services[0].addr),
            ("orders", services[1].addr),
            ("offers", services[2].addr),
        ],
        r#"
[[routes]]
name = "home"
match = { path = "/home/{user}" }
aggregate = { timeout = "10s", calls = [
  { name = "profile", cluster = "profile", path = "/users/{path.user}" },
  { name = "orders", cluster = "orders", path = "/orders?user={path.user}&limit={query.limit}" },
  { name = "offers", cluster = "offers", path = "/offers/{header.x-region}" },
] }
"#,
    );
    let c = client(Proto::H1);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = get(
        &c,
        &gw.url("/home/ada%20l?limit=5"),
        &[
            ("authorization", "Bearer t0ken"),
            ("x-region", "eu/west"),
            ("traceparent", traceparent),
            ("x-request-id", "req-42"),
            ("x-private", "not forwarded"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let answer = reply.json();
    for name in ["profile", "orders", "offers"] {
        assert_eq!(
            answer[name]["met"], true,
            "all three calls were in flight at once: {answer}"
        );
    }
    assert_eq!(answer["profile"]["path"], "/users/ada%20l");
    assert_eq!(answer["orders"]["path"], "/orders?user=ada%20l&limit=5");
    assert_eq!(answer["offers"]["path"], "/offers/eu%2Fwest", "values are escaped");
    assert!(answer.get("errors").is_none(), "{answer}");
    for service in &services {
        let seen = &service.seen()[0];
        assert_eq!(seen.headers["authorization"], "Bearer t0ken");
        assert_eq!(seen.headers["x-request-id"], "req-42");
        let parent = seen.headers["traceparent"].to_str().unwrap();
        assert!(parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{parent}");
        assert!(!seen.headers.contains_key("x-private"));
    }

    // Each call counts in metrics under its own name, beside the route.
    let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    for (route, cluster) in [("home", "-"), ("home.profile", "profile"), ("home.offers", "offers")] {
        let needle = format!(
            r#"switchyard_requests_total{{cluster="{cluster}",method="GET",route="{route}",status_class="2xx"}}"#
        );
        assert_eq!(support::metric(&scrape, &needle), 1.0, "{needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_uses_a_field_of_an_earlier_answer() {
    let orders = Service::json(json!({"id": 5, "customer_id": "c-9", "lines": [{"sku": "x1"}]})).await;
    let customers = Service::start(Duration::ZERO, None, |seen| {
        let body = json!({"id": seen.path_and_query.trim_start_matches("/customers/"), "name": "Ada"});
        (200, "application/json", body.to_string().into_bytes())
    })
    .await;
    let stock = Service::json(json!({"available": 3})).await;
    let gw = gateway(
        &[
            ("orders", orders.addr),
            ("customers", customers.addr),
            ("stock", stock.addr),
        ],
        r#"
[[routes]]
name = "summary"
match = { path = "/orders/{id}/summary" }
aggregate = { calls = [
  { name = "customer", cluster = "customers", path = "/customers/{call.order/customer_id}" },
  { name = "stock", cluster = "stock", path = "/stock/{call.order/lines/0/sku}?order={call.order/id}" },
  { name = "order", cluster = "orders", path = "/orders/{path.id}" },
] }
"#,
    );
    let reply = get(&client(Proto::H1), &gw.url("/orders/5/summary"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["order"]["customer_id"], "c-9");
    assert_eq!(answer["customer"], json!({"id": "c-9", "name": "Ada"}));
    assert_eq!(answer["stock"]["available"], 3);
    assert_eq!(customers.seen()[0].path_and_query, "/customers/c-9");
    assert_eq!(stock.seen()[0].path_and_query, "/stock/x1?order=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_follow_required_and_optional() {
    let ok = Service::json(json!({"id": 1})).await;
    let down = Service::start(Duration::ZERO, None, |_| (503, "application/json", b"{}".to_vec())).await;
    let slow = Service::start(Duration::from_secs(3), None, |_| {
        (200, "application/json", b"{}".to_vec())
    })
    .await;
    let html = Service::start(Duration::ZERO, None, |_| (200, "text/html", b"<html>".to_vec())).await;
    let big = Service::start(Duration::ZERO, None, |_| {
        (
            200,
            "application/json",
            format!("\"{}\"", "x".repeat(4096)).into_bytes(),
        )
    })
    .await;
    let gw = gateway(
        &[
            ("ok", ok.addr),
            ("down", down.addr),
            ("slow", slow.addr),
            ("html", html.addr),
            ("big", big.addr),
        ],
        r#"
[[routes]]
name = "partial"
match = { path = "/partial" }
aggregate = { max_response = "1KiB", calls = [
  { name = "main", cluster = "ok", path = "/main" },
  { name = "recs", cluster = "down", path = "/recs", required = false },
  { name = "after_recs", cluster = "ok", path = "/x/{call.recs/id}", required = false },
  { name = "late", cluster = "slow", path = "/late", timeout = "200ms", required = false },
  { name = "page", cluster = "html", path = "/page", required = false },
  { name = "huge", cluster = "big", path = "/huge", required = false },
] }

[[routes]]
name = "strict"
match = { path = "/strict" }
aggregate = { calls = [
  { name = "main", cluster = "ok", path = "/main" },
  { name = "recs", cluster = "down", path = "/recs" },
] }

[[routes]]
name = "needs-input"
match = { path = "/needs-input" }
aggregate = { calls = [{ name = "main", cluster = "ok", path = "/main?q={query.q}" }] }

[[routes]]
name = "out-of-time"
match = { path = "/out-of-time" }
aggregate = { timeout = "300ms", calls = [{ name = "late", cluster = "slow", path = "/late" }] }
"#,
    );
    let c = client(Proto::H1);
    let reply = get(&c, &gw.url("/partial"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["main"], json!({"id": 1}));
    for name in ["recs", "after_recs", "late", "page", "huge"] {
        assert_eq!(answer[name], Value::Null, "{name}: {answer}");
        assert!(answer["errors"][name]["error"].is_string(), "{name}: {answer}");
    }
    assert_eq!(answer["errors"]["recs"]["status"], 503);
    let text = |name: &str| answer["errors"][name]["error"].as_str().unwrap().to_owned();
    assert!(text("after_recs").contains("\"recs\""), "{answer}");
    assert_eq!(answer["errors"]["late"]["status"], 504, "{answer}");
    assert!(text("page").contains("not JSON"), "{answer}");
    assert!(text("huge").contains("max_response"), "{answer}");
    assert!(
        ok.seen().iter().all(|s| s.path_and_query != "/x/"),
        "a call whose input failed is not made"
    );

    let strict = get(&c, &gw.url("/strict"), &[]).await;
    assert_eq!(strict.status, 502, "{}", strict.text());
    assert_eq!(code(&strict), "aggregate_call_failed");
    let message = strict.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("\"recs\"") && message.contains("503"), "{message}");

    let missing = get(&c, &gw.url("/needs-input"), &[]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(code(&missing), "aggregate_bad_request");
    assert!(missing.text().contains("\\\"q\\\""), "{}", missing.text());

    // A value that would change the resource named is refused.
    for bad in ["..", "."] {
        let walked = get(&c, &gw.url(&format!("/needs-input?q={bad}")), &[]).await;
        assert_eq!(walked.status, 400, "{bad}: {}", walked.text());
        assert_eq!(code(&walked), "aggregate_bad_request");
    }
    assert!(ok.seen().iter().all(|s| !s.path_and_query.contains("q=.")));
    let fine = get(&c, &gw.url("/needs-input?q=a/b%3Fc"), &[]).await;
    assert_eq!(fine.status, 200, "{}", fine.text());
    assert!(ok.seen().iter().any(|s| s.path_and_query == "/main?q=a%2Fb%3Fc"));

    let late = get(&c, &gw.url("/out-of-time"), &[]).await;
    assert_eq!(late.status, 504, "{}", late.text());
    assert_eq!(code(&late), "aggregate_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_edits_and_status_mapping_on_real_responses() {
    let users = Service::start(Duration::ZERO, None, |seen| match seen.path_and_query.as_str() {
        "/v1/user?id=7&verbose=1" => {
            let body = json!({"data": {"user": {"id": 7, "full_name": "Ada", "password_hash": "x"}, "tags": ["a"]}});
            (200, "application/json", body.to_string().into_bytes())
        }
        _ => (404, "application/json", br#"{"data": {"user": null}}"#.to_vec()),
    })
    .await;
    let gw = gateway(
        &[("users", users.addr)],
        r#"
[[routes]]
name = "users"
match = { path = "/users/{id}" }
cluster = "users"
rewrite = { path = "/v1/user?id={id}" }
transform = { response = { unwrap = "/data", remove = ["/user/password_hash"], rename = { "/user/full_name" = "/user/name" }, move = { "/user/id" = "/id" }, set = { "/source" = "gateway", "/tags/-" = "b" }, wrap = "result", status = { "404" = 200 } } }

[[routes]]
name = "search"
match = { path = "/search" }
cluster = "users"
rewrite = { path = "/v2/find", query = { remove = ["utm_source"], rename = { q = "term" }, set = { version = "2" } } }
"#,
    );
    let c = client(Proto::H1);
    let reply = get(&c, &gw.url("/users/7?verbose=1"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        json!({"result": {"user": {"name": "Ada"}, "id": 7, "tags": ["a", "b"], "source": "gateway"}})
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(
        users.seen()[0].path_and_query,
        "/v1/user?id=7&verbose=1",
        "path captures map into the query"
    );
    // Query parameters renamed, removed and set on the way.
    get(&c, &gw.url("/search?q=red%20shoes&utm_source=ad&page=2&version=1"), &[]).await;
    assert!(
        users
            .seen()
            .iter()
            .any(|s| s.path_and_query == "/v2/find?term=red+shoes&page=2&version=2"),
        "{:?}",
        users
            .seen()
            .iter()
            .map(|s| s.path_and_query.clone())
            .collect::<Vec<_>>()
    );
    let missing = get(&c, &gw.url("/users/8"), &[]).await;
    assert_eq!(missing.status, 200, "404 is mapped to 200");
    assert_eq!(missing.json()["result"]["user"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_xml_service_offered_as_json() {
    // The service echoes the XML it gets, as XML: JSON in, XML upstream,
    // XML back, JSON out.
    let legacy = Service::start(Duration::ZERO, None, |seen| (200, "text/xml", seen.body.to_vec())).await;
    let gw = gateway(
        &[("legacy", legacy.addr)],
        r#"
[[routes]]
name = "soap"
match = { path = "/orders" }
cluster = "legacy"
transform = { request = { set = { "/channel" = "api" }, to_xml = "order" }, response = { from_xml = true, unwrap = "/order" } }
"#,
    );
    let sent = json!({"@id": "17", "item": [{"sku": "a", "qty": 2}, {"sku": "b & c", "qty": 1}], "note": null});
    let request = Request::post(gw.url("/orders"))
        .header("content-type", "application/json")
        .body(full(sent.to_string()))
        .unwrap();
    let reply = send(&client(Proto::H1), request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let upstream = &legacy.seen()[0];
    assert_eq!(upstream.headers["content-type"], "application/xml; charset=utf-8");
    let xml = String::from_utf8(upstream.body.to_vec()).unwrap();
    assert!(xml.contains("<order id=\"17\">"), "{xml}");
    assert!(xml.contains("<sku>b &amp; c</sku>"), "{xml}");
    assert_eq!(
        upstream.headers["content-length"],
        upstream.body.len().to_string().as_str()
    );
    // XML has no numbers: they come back as strings (the documented mapping).
    assert_eq!(
        reply.json(),
        json!({"@id": "17", "item": [{"sku": "a", "qty": "2"}, {"sku": "b & c", "qty": "1"}], "note": null, "channel": "api"})
    );

    // A body that is not JSON is refused with the reason.
    let request = Request::post(gw.url("/orders")).body(full("not json")).unwrap();
    let refused = send(&client(Proto::H1), request).await;
    assert_eq!(refused.status, 400);
    assert_eq!(code(&refused), "transform_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_pass_or_are_refused() {
    let echo = Service::start(Duration::ZERO, None, |seen| {
        (200, "application/json", seen.body.to_vec())
    })
    .await;
    let gw = gateway(
        &[("echo", echo.addr)],
        r#"
[[routes]]
name = "pass"
match = { path = "/pass" }
cluster = "echo"
transform = { max_body = "1KiB", request = { set = { "/seen" = true } }, response = { set = { "/edited" = true } } }

[[routes]]
name = "refuse"
match = { path = "/refuse" }
cluster = "echo"
transform = { max_body = "1KiB", on_oversize = "refuse", request = { set = { "/seen" = true } } }

[[routes]]
name = "refuse-response"
match = { path = "/refuse-response" }
cluster = "echo"
transform = { max_body = "1KiB", on_oversize = "refuse", response = { set = { "/edited" = true } } }
"#,
    );
    let c = client(Proto::H1);
    let post = |path: &str, body: String| {
        Request::post(gw.url(path))
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap()
    };
    let small = json!({"a": 1}).to_string();
    let large = json!({"a": "x".repeat(2048)}).to_string();

    let reply = send(&c, post("/pass", small.clone())).await;
    assert_eq!(reply.json(), json!({"a": 1, "seen": true, "edited": true}));
    let reply = send(&c, post("/pass", large.clone())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), large, "over max_body both ways: passed untouched");

    let reply = send(&c, post("/refuse", large.clone())).await;
    assert_eq!(reply.status, 413);
    assert_eq!(code(&reply), "transform_too_large");
    let reply = send(&c, post("/refuse-response", large)).await;
    assert_eq!(reply.status, 502);
    assert_eq!(code(&reply), "transform_too_large");
    let reply = send(&c, post("/refuse-response", small)).await;
    assert_eq!(reply.json(), json!({"a": 1, "edited": true}));
}
