//! End-to-end proxying: routing, rewrites, header rules, request ids and the
//! gateway's own responses, over HTTP/1.1 and HTTP/2 alike.

mod support;

use std::collections::HashSet;

use http::Request;
use support::client::{self, client, empty, get, send, Proto};
use support::{Backend, GatewayProcess};

async fn two_backends_and_gateway(extra_listener_keys: &str) -> (Backend, Backend, GatewayProcess) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let config = format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{extra_listener_keys}

[[clusters]]
name = "a"
endpoints = [{{ address = "{a}" }}]

[[clusters]]
name = "b"
endpoints = [{{ address = "{b}" }}]

[[clusters]]
name = "both"
endpoints = [{{ address = "{a}" }}, {{ address = "{b}" }}]

[[clusters]]
name = "a-over-h2"
protocol = "http2"
endpoints = [{{ address = "{a}" }}]

[[clusters]]
name = "nobody-home"
endpoints = [{{ address = "127.0.0.1:1" }}]

[[routes]]
name = "host-exact"
match = {{ host = "a.example.com" }}
cluster = "a"

[[routes]]
name = "host-wildcard"
match = {{ host = "*.example.com" }}
cluster = "b"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
cluster = "a"
rewrite = {{ prefix = "/internal/" }}
request_headers = {{ set = {{ "x-route" = "api" }}, remove = ["x-drop-me"] }}
response_headers = {{ add = {{ "x-gateway" = "switchyard" }}, remove = ["x-backend"] }}

[[routes]]
name = "users"
match = {{ path = "/users/{{id}}" }}
cluster = "b"
rewrite = {{ path = "/v2/users/{{id}}/profile" }}

[[routes]]
name = "posts-only"
match = {{ path = "/submit", methods = ["POST"] }}
cluster = "b"

[[routes]]
name = "canary"
match = {{ path_prefix = "/feature", headers = [{{ name = "x-canary", value = "yes" }}] }}
cluster = "b"

[[routes]]
name = "debug"
match = {{ path_prefix = "/feature", query = [{{ name = "debug", value = "1" }}] }}
cluster = "b"

[[routes]]
name = "feature"
match = {{ path_prefix = "/feature" }}
cluster = "a"

[[routes]]
name = "rr"
match = {{ path_prefix = "/rr/" }}
cluster = "both"

[[routes]]
name = "hello"
match = {{ path = "/hello" }}
direct = {{ status = 200, body = "hi there", content_type = "text/plain", headers = {{ "x-direct" = "1" }} }}

[[routes]]
name = "moved"
match = {{ path_prefix = "/old/" }}
redirect = {{ prefix = "/new/", status = 308 }}

[[routes]]
name = "to-https"
match = {{ path = "/secure" }}
redirect = {{ scheme = "https", host = "secure.example.com", status = 301 }}

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
cluster = "nobody-home"

[[routes]]
name = "h2-upstream"
match = {{ path_prefix = "/h2up/" }}
cluster = "a-over-h2"

[[routes]]
name = "renamed-host"
match = {{ path_prefix = "/renamed/" }}
cluster = "a"
rewrite = {{ host = "internal.service" }}

[[routes]]
name = "hop"
match = {{ path = "/hop" }}
cluster = "a"
"#,
        a = a.addr,
        b = b.addr
    );
    (a, b, GatewayProcess::start(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matrix_over_http1_and_http2() {
    let (_a, _b, gw) = two_backends_and_gateway("").await;
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        let route = |method: &str, path: &str, host: Option<&str>, headers: &[(&str, &str)]| {
            let mut builder = Request::builder().method(method).uri(gw.url(path));
            if let Some(host) = host {
                builder = builder.header("host", host);
            }
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            builder.body(empty()).unwrap()
        };
        let cases: Vec<(Request<client::Body>, &str, &str)> = vec![
            (route("GET", "/api/users", None, &[]), "a", "/internal/users"),
            (route("GET", "/users/42", None, &[]), "b", "/v2/users/42/profile"),
            (route("POST", "/submit", None, &[]), "b", "/submit"),
            (
                route("GET", "/feature/x", None, &[("x-canary", "yes")]),
                "b",
                "/feature/x",
            ),
            (route("GET", "/feature/x?debug=1", None, &[]), "b", "/feature/x"),
            (route("GET", "/feature/x", None, &[]), "a", "/feature/x"),
            (route("GET", "/hop", None, &[]), "a", "/hop"),
        ];
        for (req, backend, path) in cases {
            let what = format!("{proto:?} {} {}", req.method(), req.uri());
            let reply = send(&c, req).await;
            assert_eq!(reply.status, 200, "{what}: {}", reply.text());
            if path == "/hop" {
                continue;
            }
            let body = reply.json();
            assert_eq!(body["backend"], backend, "{what}");
            assert_eq!(body["path"], path, "{what}");
        }
        if proto == Proto::H1 {
            // Host routing (HTTP/1.1 Host header).
            for (host, backend) in [
                ("a.example.com", "a"),
                ("A.Example.com:8080", "a"),
                ("x.example.com", "b"),
            ] {
                let reply = send(&c, route("GET", "/anything", Some(host), &[])).await;
                assert_eq!(reply.json()["backend"], backend, "host {host}");
            }
        }
        // No route: JSON 404 with the request id.
        let reply = get(&c, &gw.url("/submit"), &[]).await;
        assert_eq!(reply.status, 404, "{proto:?} GET /submit is POST-only");
        let body = reply.json();
        assert_eq!(body["error"]["code"], "no_route");
        assert_eq!(body["error"]["request_id"], reply.header("x-request-id").unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_rewrites_and_gateway_answers() {
    let (a, _b, gw) = two_backends_and_gateway("").await;
    let c = client(Proto::H1);

    let reply = get(
        &c,
        &gw.url("/api/x"),
        &[("x-drop-me", "1"), ("x-request-id", "given-id-1")],
    )
    .await;
    assert_eq!(reply.header("x-gateway"), Some("switchyard"), "response header added");
    assert_eq!(reply.header("x-backend"), None, "response header removed");
    assert_eq!(
        reply.header("x-request-id"),
        Some("given-id-1"),
        "request id passed through to the client"
    );
    let seen = a.seen().pop().unwrap();
    assert_eq!(seen.headers["x-route"], "api");
    assert!(!seen.headers.contains_key("x-drop-me"));
    assert_eq!(seen.headers["x-request-id"], "given-id-1");
    assert_eq!(seen.headers["host"], gw.addr().to_string(), "Host preserved by default");

    // A generated id reaches both the upstream and the client.
    let reply = get(&c, &gw.url("/api/y"), &[]).await;
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(a.seen().pop().unwrap().headers["x-request-id"], id.as_str());

    let reply = get(&c, &gw.url("/hello"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "hi there"));
    assert_eq!(reply.header("x-direct"), Some("1"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));

    let reply = get(&c, &gw.url("/old/page?q=1"), &[]).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some(format!("http://{}/new/page?q=1", gw.addr()).as_str())
    );
    let reply = get(&c, &gw.url("/secure"), &[]).await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("https://secure.example.com/secure"));

    let reply = get(&c, &gw.url("/dead"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_connect_failed");
    assert!(
        !reply.text().contains("127.0.0.1:1"),
        "the client is not told internal addresses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_do_not_cross() {
    let (a, _b, gw) = two_backends_and_gateway("").await;
    let c = client(Proto::H1);
    let reply = get(
        &c,
        &gw.url("/hop"),
        &[
            ("connection", "x-client-secret"),
            ("x-client-secret", "1"),
            ("keep-alive", "timeout=9"),
            ("te", "trailers"),
            ("proxy-connection", "x"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = a.seen().pop().unwrap();
    for name in ["x-client-secret", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the upstream");
    }
    assert_eq!(seen.headers["te"], "trailers", "TE: trailers is end-to-end");
    assert_eq!(seen.headers["via"], "1.1 switchyard");
    // The upstream's hop-by-hop headers do not reach the client.
    assert_eq!(reply.header("x-upstream-secret"), None);
    assert_eq!(reply.header("keep-alive"), None);
    assert_eq!(reply.header("x-upstream-public"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_trust_only_configured_proxies() {
    let spoof = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=203.0.113.7"),
    ];

    let (a, _b, untrusting) = two_backends_and_gateway("").await;
    get(&client(Proto::H1), &untrusting.url("/api/x"), &spoof).await;
    let seen = a.seen().pop().unwrap();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "a client cannot claim another address"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], untrusting.addr().to_string());
    let forwarded = seen.headers["forwarded"].to_str().unwrap();
    assert!(forwarded.starts_with("for=127.0.0.1;"), "{forwarded}");

    let (a, _b, trusting) = two_backends_and_gateway("trusted_proxies = [\"127.0.0.0/8\"]").await;
    get(&client(Proto::H1), &trusting.url("/api/x"), &spoof).await;
    let seen = a.seen().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    let forwarded = seen.headers["forwarded"].to_str().unwrap();
    assert!(forwarded.starts_with("for=203.0.113.7, for=127.0.0.1;"), "{forwarded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_both_protocols() {
    let (_a, _b, gw) = two_backends_and_gateway("").await;
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..20 {
            let reply = get(&c, &gw.url("/rr/x"), &[]).await;
            *counts
                .entry(reply.json()["backend"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("a"), Some(&10), "{proto:?} {counts:?}");
        assert_eq!(counts.get("b"), Some(&10), "{proto:?} {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (a, _b, gw) = two_backends_and_gateway("").await;
    let c = client(Proto::H1);
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/api/x"), &[]).await.status, 200);
    }
    let seen = a.seen();
    assert_eq!(seen.len(), 10);
    let connections: HashSet<_> = seen.iter().map(|s| s.peer).collect();
    // One, or two when the pool got a connection back a moment after the
    // next request had asked (it is returned by a task of its own).
    assert!(
        connections.len() <= 2,
        "sequential requests share keep-alive upstream connections: {} for 10 requests",
        connections.len()
    );
    let ids: HashSet<_> = seen
        .iter()
        .map(|s| s.headers["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 10, "every request has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_records_each_request() {
    let (_a, _b, gw) = two_backends_and_gateway("").await;
    let reply = get(
        &client(Proto::H1),
        &gw.url("/api/logged?x=1"),
        &[("x-request-id", "log-me-1")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let found = gw
        .wait_log(std::time::Duration::from_secs(5), |v| {
            support::gateway::is_access(v) && v["request_id"] == "log-me-1"
        })
        .await;
    assert!(found, "no access log line; logs:\n{}", gw.dump_logs());
    let line = gw.logs().into_iter().find(|v| v["request_id"] == "log-me-1").unwrap();
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/logged");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "api");
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["bytes"], reply.body.len() as u64);
    assert!(line["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["duration_ms"].as_f64().is_some());
    assert_eq!(
        line["outcome"], "complete",
        "a fully delivered body is logged as complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_http2_with_pooled_connections() {
    let (a, _b, gw) = two_backends_and_gateway("").await;
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        for _ in 0..5 {
            let reply = get(&c, &gw.url("/h2up/x"), &[]).await;
            assert_eq!(reply.status, 200, "{proto:?}: {}", reply.text());
        }
    }
    let seen = a.seen();
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "the upstream was spoken to in HTTP/2"
    );
    let connections: HashSet<_> = seen.iter().map(|s| s.peer).collect();
    assert_eq!(
        connections.len(),
        1,
        "one multiplexed upstream connection serves them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_preserved_or_rewritten_per_route() {
    let (a, _b, gw) = two_backends_and_gateway("").await;
    let c = client(Proto::H1);
    get(&c, &gw.url("/renamed/x"), &[("host", "public.example.org")]).await;
    let seen = a.seen().pop().unwrap();
    assert_eq!(seen.headers["host"], "internal.service", "rewritten for this route");
    assert_eq!(
        seen.headers["x-forwarded-host"], "public.example.org",
        "the original host is still reported"
    );
    get(&c, &gw.url("/api/x"), &[("host", "public.example.org")]).await;
    assert_eq!(
        a.seen().pop().unwrap().headers["host"],
        "public.example.org",
        "preserved by default"
    );
}
