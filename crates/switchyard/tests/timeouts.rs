//! Every timeout, observed from outside: upstream response (504), upstream
//! connect (504), stalled upstream body, stalled client body (408), the whole
//! exchange (`max_duration`), slow request headers (slowloris) and idle
//! keep-alive connections.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use support::client::{client, empty, get, raw, Proto};
use support::{Backend, GatewayProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(upstream: &str, listener_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
header_read_timeout = "300ms"
{listener_extra}

[[clusters]]
name = "up"
endpoints = [{{ address = "{upstream}" }}]
connect_timeout = "300ms"

[[routes]]
name = "all"
cluster = "up"
timeout = "400ms"
idle_timeout = "400ms"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_and_the_gateway_keeps_serving() {
    let backend = Backend::start("slow").await;
    let gw = GatewayProcess::start(&config(&backend.addr.to_string(), ""));
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        let reply = get(&c, &gw.url("/slow/3000"), &[]).await;
        assert_eq!(reply.status, 504, "{proto:?}");
        let body = reply.json();
        assert_eq!(body["error"]["code"], "upstream_timeout");
        assert_eq!(body["error"]["request_id"], reply.header("x-request-id").unwrap());
        assert_eq!(
            get(&c, &gw.url("/slow/10"), &[]).await.status,
            200,
            "{proto:?}: still serving"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_connect_times_out_with_504() {
    // A listener that never accepts, with its accept queue already full: the
    // kernel drops further SYNs, so a connect attempt hangs until our timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let blackhole = socket.listen(0).unwrap();
    let addr = blackhole.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), s.connect(addr)).await {
            fillers.push(stream);
        }
    }
    let gw = GatewayProcess::start(&config(&addr.to_string(), ""));
    let reply = get(&client(Proto::H1), &gw.url("/"), &[]).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "upstream_connect_timeout");
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_body_is_cut_after_the_idle_timeout() {
    let backend = Backend::start("stall").await;
    let gw = GatewayProcess::start(&config(&backend.addr.to_string(), ""));
    let c = client(Proto::H1);
    let response = c
        .request(Request::get(gw.url("/stall")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "headers arrive before the stall");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    let collected = result.expect("the gateway ends the stalled body instead of hanging");
    assert!(collected.is_err(), "a cut body is an error, not a clean end");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_body_gets_408() {
    let backend = Backend::start("upload").await;
    let gw = GatewayProcess::start(&config(&backend.addr.to_string(), ""));
    let request = b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = raw(gw.addr(), request, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"client_timeout\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_bounds_the_whole_exchange() {
    let backend = Backend::start("trickle").await;
    // Generous header and idle timeouts: only `max_duration` can end these.
    let cfg = config(&backend.addr.to_string(), "").replace(
        "timeout = \"400ms\"\nidle_timeout = \"400ms\"",
        "timeout = \"20s\"\nidle_timeout = \"20s\"\nmax_duration = \"700ms\"",
    );
    assert!(cfg.contains("max_duration"), "{cfg}");
    let gw = GatewayProcess::start(&cfg);
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        // Headers too late: 504 although the route's `timeout` is 20s.
        let reply = get(&c, &gw.url("/slow/5000"), &[]).await;
        assert_eq!(reply.status, 504, "{proto:?}");
        assert_eq!(reply.json()["error"]["code"], "upstream_timeout");

        // A steady stream (never idle) of 3s is cut at 700ms: the body errs
        // after some, not all, of its chunks.
        let response = c
            .request(Request::get(gw.url("/trickle/30")).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{proto:?}");
        let mut body = response.into_body();
        let mut received = 0;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
                    Some(Err(_)) => return false,
                    None => return true,
                }
            }
        })
        .await
        .expect("the gateway cuts the stream instead of letting it run");
        assert!(!ended, "{proto:?}: a cut stream ends in an error, not a clean end");
        assert!(received > 0 && received < 30 * 5, "{proto:?}: {received} bytes");

        // Short exchanges are untouched.
        assert_eq!(get(&c, &gw.url("/trickle/2"), &[]).await.status, 200, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_off() {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(&backend.addr.to_string(), ""));
    // Timed from before the connection: the header timeout runs from accept.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is closed, not held open");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed by the header timeout, not at once"
    );
    assert!(backend.seen().is_empty(), "nothing reached the upstream");
    // And it still serves well-behaved clients.
    assert_eq!(get(&client(Proto::H1), &gw.url("/"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let backend = Backend::start("b").await;
    // Header timeout long, idle timeout short: the idle reaper is what closes it.
    let cfg = config(&backend.addr.to_string(), "idle_timeout = \"300ms\"")
        .replace("header_read_timeout = \"300ms\"", "header_read_timeout = \"30s\"");
    let gw = GatewayProcess::start(&cfg);
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "an idle keep-alive connection is closed by the gateway");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request before going idle was answered: {text}"
    );
}
