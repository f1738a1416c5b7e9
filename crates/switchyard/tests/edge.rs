//! Edge security with real clients and backends: rate limits (exact counts at
//! the boundary, refill, keys, headers) and IP allow/deny lists, with and
//! without trusted proxies.

mod support;

use std::time::Duration;

use support::client::{client, get, Proto, Reply};
use support::{Backend, GatewayProcess};

fn config(backend: &Backend, listener_extra: &str, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{listener_extra}

[[clusters]]
name = "api"
endpoints = [{{ address = "{}" }}]

{routes}
"#,
        backend.addr
    )
}

fn code(reply: &Reply) -> String {
    reply.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_exactly_and_say_so_in_headers() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
name = "limited"
match = { path_prefix = "/limited" }
cluster = "api"
rate_limit = { key = "client_ip", rate = 5, per = "1m", headers = true }

[[routes]]
name = "open"
match = { path_prefix = "/open" }
cluster = "api"
"#;
    let gw = GatewayProcess::start(&config(&backend, "", routes));
    let client = client(Proto::H1);
    for expected_remaining in (0..5).rev() {
        let reply = get(&client, &gw.url("/limited"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit-limit"), Some("5"));
        assert_eq!(
            reply.header("ratelimit-remaining"),
            Some(expected_remaining.to_string().as_str())
        );
    }
    let refused = get(&client, &gw.url("/limited"), &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(code(&refused), "rate_limited");
    // One token comes back every 12 s (5 per minute); whole seconds, rounded
    // up, from the first request (a second earlier on a slow run).
    assert!(
        matches!(refused.header("retry-after"), Some("11" | "12")),
        "{:?}",
        refused.headers
    );
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert!(
        matches!(refused.header("ratelimit-reset"), Some("59" | "60")),
        "{:?}",
        refused.headers
    );
    assert_eq!(backend.seen().len(), 5, "refused requests never reach the backend");
    // Other routes are not limited, and carry no headers.
    let open = get(&client, &gw.url("/open"), &[]).await;
    assert_eq!(open.status, 200);
    assert!(open.header("ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_refill_over_time_and_keys_are_separate() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
cluster = "api"
rate_limits = [
  { key = "header:x-user", rate = 1, per = "1s", burst = 1 },
  { key = "client_ip", rate = 1000, per = "1h" },
]
"#;
    let gw = GatewayProcess::start(&config(&backend, "", routes));
    let client = client(Proto::H1);
    let url = gw.url("/");
    assert_eq!(get(&client, &url, &[("x-user", "alice")]).await.status, 200);
    assert_eq!(get(&client, &url, &[("x-user", "alice")]).await.status, 429);
    assert_eq!(
        get(&client, &url, &[("x-user", "bob")]).await.status,
        200,
        "bob has his own bucket"
    );
    // One token a second (a slow test run cannot refill the bucket between
    // two requests): after 1.1 s alice may go again, once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&client, &url, &[("x-user", "alice")]).await.status, 200);
    assert_eq!(get(&client, &url, &[("x-user", "alice")]).await.status, 429);
    // Without the header the client address is the key: not a shared bucket
    // that everyone without the header would drain, and not unlimited either.
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(get(&client, &url, &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_filters_judge_the_real_client_only_behind_trusted_proxies() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
name = "internal"
match = { path_prefix = "/internal" }
cluster = "api"
ip_filter = { allow = ["10.0.0.0/8"] }

[[routes]]
name = "public"
match = { path_prefix = "/public" }
cluster = "api"
ip_filter = { deny = ["203.0.113.0/24"] }
"#;
    // Direct clients: the socket address (127.0.0.1) is judged, and a forged
    // X-Forwarded-For changes nothing.
    let direct = GatewayProcess::start(&config(&backend, "", routes));
    let client = client(Proto::H1);
    let forged = [("x-forwarded-for", "10.1.2.3")];
    let refused = get(&client, &direct.url("/internal"), &forged).await;
    assert_eq!((refused.status.as_u16(), code(&refused)), (403, "ip_denied".to_owned()));
    assert_eq!(
        get(&client, &direct.url("/public"), &[("x-forwarded-for", "203.0.113.5")])
            .await
            .status,
        200
    );

    // Behind a trusted proxy (127.0.0.1), the address it recorded is judged.
    let proxied = GatewayProcess::start(&config(&backend, r#"trusted_proxies = ["127.0.0.1"]"#, routes));
    assert_eq!(
        get(&client, &proxied.url("/internal"), &[("x-forwarded-for", "10.1.2.3")])
            .await
            .status,
        200
    );
    let denied = get(&client, &proxied.url("/public"), &[("x-forwarded-for", "203.0.113.5")]).await;
    assert_eq!(denied.status, 403);
    assert!(denied.json()["error"]["message"].as_str().unwrap().contains("route"));
    // The nearest untrusted hop is the client: a client cannot hide behind
    // an address it prepends itself.
    let chained = get(
        &client,
        &proxied.url("/public"),
        &[("x-forwarded-for", "10.9.9.9, 203.0.113.5")],
    )
    .await;
    assert_eq!(chained.status, 403);
    assert_eq!(get(&client, &proxied.url("/public"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_filter_covers_every_route() {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &backend,
        r#"ip_filter = { deny = ["127.0.0.0/8"] }"#,
        "[[routes]]\ncluster = \"api\"\n",
    ));
    let reply = get(&client(Proto::H1), &gw.url("/anything"), &[]).await;
    assert_eq!((reply.status.as_u16(), code(&reply)), (403, "ip_denied".to_owned()));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("listener"));
    assert!(backend.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_target_limits_answer_413_and_414() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
name = "small"
match = { path_prefix = "/upload" }
cluster = "api"
max_body_size = "1KiB"

[[routes]]
name = "rest"
cluster = "api"
"#;
    let gw = GatewayProcess::start(&config(
        &backend,
        "max_body_size = \"4KiB\"\nmax_uri_length = \"64B\"",
        routes,
    ));
    let addr = gw.addr();
    // A declared length over the route's limit: refused before any byte is read.
    let declared = support::client::raw(
        addr,
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{}",
            "x".repeat(2000)
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("body_too_large"), "{declared}");
    // A chunked body is counted as it streams.
    let chunk = "y".repeat(600);
    let chunked = support::client::raw(
        addr,
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // Within the limit, and the listener's limit for other routes.
    let fits = support::client::raw(
        addr,
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{}",
            "z".repeat(1000)
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let listener_limit = support::client::raw(
        addr,
        b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(listener_limit.starts_with("HTTP/1.1 413"), "{listener_limit}");

    let long = get(&client(Proto::H1), &gw.url(&format!("/{}", "a".repeat(100))), &[]).await;
    assert_eq!((long.status.as_u16(), code(&long)), (414, "uri_too_long".to_owned()));
    assert_eq!(get(&client(Proto::H1), &gw.url("/short"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_close_extra_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &backend,
        "max_connections = 10\nmax_connections_per_ip = 2",
        "[[routes]]\ncluster = \"api\"\n",
    ));
    let addr = gw.addr();
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The third from the same address is closed before anything is read.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed without an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // When one closes, there is room again.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = support::client::raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_at_the_gateway() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
cluster = "api"
cors = { origins = ["https://app.example.com"], methods = ["PUT"], headers = ["content-type"], expose_headers = ["x-request-id"], credentials = true, max_age = "10m" }
rate_limit = { rate = 3, per = "1m" }
"#;
    let gw = GatewayProcess::start(&config(&backend, "", routes));
    let client = client(Proto::H1);
    let url = gw.url("/things");
    let preflight = support::client::send(
        &client,
        http::Request::builder()
            .method("OPTIONS")
            .uri(&url)
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "Content-Type")
            .body(support::client::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(preflight.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(preflight.header("access-control-allow-headers"), Some("content-type"));
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert!(backend.seen().is_empty(), "preflights do not reach the upstream");

    let refused = support::client::send(
        &client,
        http::Request::builder()
            .method("OPTIONS")
            .uri(&url)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "PUT")
            .body(support::client::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (refused.status.as_u16(), code(&refused)),
        (403, "cors_denied".to_owned())
    );

    let actual = get(&client, &url, &[("origin", "https://app.example.com")]).await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(actual.header("access-control-expose-headers"), Some("x-request-id"));
    let foreign = get(&client, &url, &[("origin", "https://evil.example")]).await;
    assert!(foreign.header("access-control-allow-origin").is_none());
    // Gateway errors carry the CORS headers too, so the page can read them
    // (preflights took no tokens: this is the fourth actual request).
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    let limited = get(&client, &url, &[("origin", "https://app.example.com")]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawling_request_body_is_cut_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &backend,
        "min_body_rate = \"1KiB\"\nbody_rate_grace = \"500ms\"",
        "[[routes]]\ncluster = \"api\"\n",
    ));
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // 10 bytes every 100 ms: never idle, but 100 B/s against a 1 KiB/s floor.
    let mut answer = Vec::new();
    for _ in 0..40 {
        if stream.write_all(b"a\r\n0123456789\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || !answer.is_empty() {
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_balancer_names_the_client() {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &backend,
        "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true",
        "[[routes]]\ncluster = \"api\"\nip_filter = { deny = [\"203.0.113.0/24\"] }\n",
    ));
    let raw = |bytes: Vec<u8>| support::client::raw(gw.addr(), &bytes.leak()[..], Duration::from_secs(3));
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    let v1_denied = raw([b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n".as_slice(), request].concat()).await;
    assert!(v1_denied.starts_with("HTTP/1.1 403"), "{v1_denied}");
    let v1_ok = raw([b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 80\r\n".as_slice(), request].concat()).await;
    assert!(v1_ok.starts_with("HTTP/1.1 200"), "{v1_ok}");
    assert_eq!(backend.seen().pop().unwrap().headers["x-forwarded-for"], "198.51.100.7");

    // Version 2 (binary): TCP over IPv4, 198.51.100.9:4000 -> 127.0.0.1:80.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x0f, 0xa0, 0, 80]);
    let v2_ok = raw([v2.as_slice(), request].concat()).await;
    assert!(v2_ok.starts_with("HTTP/1.1 200"), "{v2_ok}");
    assert_eq!(backend.seen().pop().unwrap().headers["x-forwarded-for"], "198.51.100.9");

    // A trusted peer that sends no valid header is cut off without an answer.
    let garbage = raw(request.to_vec()).await;
    assert!(garbage.is_empty(), "{garbage}");
}
