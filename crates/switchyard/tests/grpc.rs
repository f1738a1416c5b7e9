//! gRPC through the gateway to a tonic service: unary, server, client and
//! bidirectional streaming with trailers intact, error statuses, deadlines
//! kept by the gateway, gateway-made errors as gRPC statuses, and the
//! statuses counted in metrics; gRPC-Web from an HTTP/1.1 client, binary
//! and text.

mod support;

use std::time::{Duration, Instant};

use support::client::{client, get, Proto};
use support::grpc::{start_server, Echo, EchoClient, IGNORE_DEADLINE};
use support::GatewayProcess;
use tonic::Code;

fn gateway(upstream: std::net::SocketAddr) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "grpc"
protocol = "http2"
endpoints = [{{ address = "{upstream}" }}]

[[clusters]]
name = "gone"
protocol = "http2"
endpoints = [{{ address = "127.0.0.1:1" }}]

[[routes]]
name = "echo"
match = {{ path_prefix = "/test.Echo/" }}
cluster = "grpc"
grpc_web = true

[[routes]]
name = "broken"
match = {{ path_prefix = "/test.Broken/" }}
cluster = "gone"
"#
    ))
}

#[tokio::test]
async fn every_call_kind_passes_with_its_statuses() {
    let (upstream, server) = start_server().await;
    let gw = gateway(upstream);
    let echo = EchoClient::connect(gw.addr()).await;

    let reply = echo.unary(Echo::new("hello")).await.expect("unary call");
    assert_eq!(reply.message, "hello");

    // Server streaming: five messages, 20 ms apart at the source (arrival
    // times are reported; the bidi call below proves messages are not held).
    let started = Instant::now();
    let mut stream = echo.server_stream_raw(5).await.expect("server stream");
    let mut arrivals = Vec::new();
    while let Some(message) = stream.message().await.expect("a stream message") {
        arrivals.push((message.message, started.elapsed()));
    }
    let names: Vec<&str> = arrivals.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["0", "1", "2", "3", "4"]);
    eprintln!("server-stream arrivals through the gateway: {arrivals:?}");
    // Trailers made it: the stream ended with status OK.
    assert!(stream.trailers().await.is_ok());

    let joined = echo
        .client_stream(vec![Echo::new("a"), Echo::new("b"), Echo::new("c")])
        .await
        .expect("client stream");
    assert_eq!(joined.message, "a,b,c");

    // Bidirectional: each answer comes back before the next message goes.
    let (sender, mut replies) = echo.bidi().await.expect("bidi call");
    for word in ["one", "two", "three"] {
        sender.send(Echo::new(word)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("an answer in time")
            .expect("a message")
            .expect("not the end");
        assert_eq!(reply.message, word);
    }
    drop(sender);
    assert!(replies.message().await.expect("a clean end").is_none());

    // An upstream error status arrives with its message.
    let status = echo
        .unary(Echo::new("no such thing").with_code(Code::NotFound))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing");

    // The upstream's own deadline handling sees the caller's grpc-timeout.
    let status = echo
        .unary_with_timeout(
            Echo::new("slow").with_delay(Duration::from_millis(500)),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let forwarded = server.last_grpc_timeout().expect("grpc-timeout reached the upstream");
    assert_eq!(
        support::grpc::parse_grpc_timeout(&forwarded),
        Some(Duration::from_millis(100))
    );

    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    for (code, at_least) in [("OK", 4.0), ("NOT_FOUND", 1.0), ("DEADLINE_EXCEEDED", 1.0)] {
        let needle = format!(r#"switchyard_grpc_calls_total{{grpc_code="{code}",route="echo"}}"#);
        let value: f64 = scrape
            .lines()
            .find(|l| l.starts_with(&needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in\n{scrape}"));
        assert!(value >= at_least, "{needle} = {value}");
    }
}

#[tokio::test]
async fn the_gateway_keeps_deadlines_and_answers_in_grpc() {
    let (upstream, _server) = start_server().await;
    let gw = gateway(upstream);
    let echo = EchoClient::connect(gw.addr()).await;

    // An upstream that ignores the deadline: the gateway ends the call at it.
    let started = Instant::now();
    let status = echo
        .unary_with_timeout(
            Echo::new(IGNORE_DEADLINE).with_delay(Duration::from_secs(3)),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(waited < Duration::from_millis(1500), "the gateway waited {waited:?}");

    // A stream cut by the deadline ends with DEADLINE_EXCEEDED, not a reset
    // (the upstream streams on; only unary calls check deadlines there).
    let mut request = tonic::Request::new(support::grpc::Count { n: 100 });
    request.set_timeout(Duration::from_millis(200));
    let mut stream = echo.server_stream_request(request).await.expect("the stream starts");
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without its deadline"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        received < 100,
        "all {received} messages came: the deadline did not cut the stream"
    );

    // Errors the gateway makes itself are gRPC statuses, not JSON: no
    // endpoint answers, and no route matches.
    let status = echo.unary_at("/test.Broken/Unary", Echo::new("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = echo.unary_at("/test.Nowhere/Unary", Echo::new("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("no route"), "{status:?}");
}

/// A gRPC message frame: flag 0, length, the encoded message.
fn frame(message: &Echo) -> Vec<u8> {
    use prost::Message as _;
    let payload = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Splits a gRPC-Web response body into its frames: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes after the last frame");
    out
}

#[tokio::test]
async fn grpc_web_calls_from_http1_in_binary_and_text() {
    use base64::Engine as _;
    use prost::Message as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (upstream, _server) = start_server().await;
    let gw = gateway(upstream);
    let http = client(Proto::H1);
    let url = gw.url("/test.Echo/Unary");

    let call = |content_type: &'static str, body: Vec<u8>| {
        let request = http::Request::post(&url)
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(support::client::full(body))
            .unwrap();
        support::client::send(&http, request)
    };

    // Binary: the message frame, then the trailers as a 0x80 frame.
    let reply = call("application/grpc-web+proto", frame(&Echo::new("from a browser"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc-web+proto"));
    let parts = frames(&reply.body);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].0, 0);
    assert_eq!(Echo::decode(&parts[0].1[..]).unwrap().message, "from a browser");
    assert_eq!(parts[1].0, 0x80);
    let trailers = String::from_utf8(parts[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");

    // Text: the same, base64 both ways.
    let body = b64.encode(frame(&Echo::new("as text"))).into_bytes();
    let reply = call("application/grpc-web-text+proto", body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc-web-text+proto"));
    let decoded = b64.decode(&reply.body).expect("a base64 answer");
    let parts = frames(&decoded);
    assert_eq!(Echo::decode(&parts[0].1[..]).unwrap().message, "as text");
    assert_eq!(parts[1].0, 0x80);

    // An error status comes back readable by the browser.
    let failing = Echo::new("missing").with_code(Code::NotFound);
    let reply = call("application/grpc-web+proto", frame(&failing)).await;
    assert_eq!(reply.status, 200);
    let in_headers = reply.header("grpc-status").map(str::to_owned);
    let in_body = frames(&reply.body)
        .into_iter()
        .find(|(flag, _)| *flag == 0x80)
        .map(|(_, block)| String::from_utf8(block).unwrap());
    let status = in_headers.or_else(|| {
        in_body.and_then(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("grpc-status:").map(|v| v.trim().to_owned()))
        })
    });
    assert_eq!(status.as_deref(), Some("5"));

    // Statuses that travel in the body's last frame are counted too.
    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    let ok = r#"switchyard_grpc_calls_total{grpc_code="OK",route="echo"} 2"#;
    let not_found = r#"switchyard_grpc_calls_total{grpc_code="NOT_FOUND",route="echo"} 1"#;
    assert!(scrape.lines().any(|l| l == ok), "no `{ok}` in\n{scrape}");
    assert!(scrape.lines().any(|l| l == not_found), "no `{not_found}` in\n{scrape}");
}

/// A server-streaming call on a route a reload removes keeps streaming
/// during `removed_route_grace`, then ends with UNAVAILABLE (which clients
/// retry), counted and logged.
#[tokio::test]
async fn a_stream_of_a_removed_route_ends_with_unavailable_after_the_grace_period() {
    let (upstream, _server) = start_server().await;
    let config = |with_echo: bool| {
        let echo = if with_echo {
            "[[routes]]\nname = \"echo\"\nmatch = { path_prefix = \"/test.Echo/\" }\ncluster = \"grpc\"\n"
        } else {
            ""
        };
        format!(
            "[runtime]\nremoved_route_grace = \"2s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[clusters]]\nname = \"grpc\"\nprotocol = \"http2\"\nendpoints = [{{ address = \"{upstream}\" }}]\n\n{echo}"
        )
    };
    let gw = GatewayProcess::start(&config(true));
    let echo = EchoClient::connect(gw.addr()).await;
    // 100,000 messages 20 ms apart: the stream outlasts the test.
    let mut inbound = echo.server_stream_raw(100_000).await.expect("stream opens");
    for _ in 0..3 {
        inbound.message().await.expect("a message").expect("stream open");
    }

    gw.rewrite_config(&config(false));
    gw.signal("HUP");
    assert!(
        gw.wait_log(Duration::from_secs(10), |v| support::gateway::has_message(
            v,
            "configuration reloaded"
        ))
        .await
    );
    // New calls no longer find the route...
    let refused = echo.unary(Echo::new("new")).await.expect_err("the route is gone");
    assert_ne!(refused.code(), Code::Ok);
    // ... while the open stream goes on, then ends with UNAVAILABLE.
    let mut after_reload = 0;
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => after_reload += 1,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within the grace period and a margin");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("removed"), "{status:?}");
    assert!(after_reload > 0, "the stream flowed during the grace period");

    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        support::metric(&scrape, r#"switchyard_streams_drained_total{kind="grpc",route="echo"}"#),
        1.0
    );
}
