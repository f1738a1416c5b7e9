//! WebSocket connections through the gateway, to a tokio-tungstenite echo
//! server: every message kind (text, binary, ping/pong, fragmented, 16 MiB),
//! close codes both ways, an upstream that vanishes, balancing, the route's
//! idle timeout and connection limit, metrics, and WebSocket over HTTP/2
//! (RFC 8441 extended CONNECT).

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use support::client::{client, get, Proto};
use support::ws::{config, EchoServer};
use support::GatewayProcess;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PATIENCE: Duration = Duration::from_secs(10);

fn gateway(endpoints: &[&EchoServer], websocket: &str) -> GatewayProcess {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ address = \"{}\" }}", e.addr))
        .collect();
    GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[access_log]
enabled = false

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "echo"
endpoints = [{}]

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws", methods = ["GET"] }}
cluster = "echo"
{websocket}

[[routes]]
name = "closed"
match = {{ path_prefix = "/no-ws" }}
cluster = "echo"
websocket = {{ enabled = false }}
"#,
        endpoints.join(", ")
    ))
}

async fn connect(gw: &GatewayProcess) -> Ws {
    let url = format!("ws://{}/ws", gw.addr());
    let (ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config()), false)
        .await
        .expect("WebSocket handshake through the gateway");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next data or close message (pongs included), within the patience.
async fn next<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a message in time")
        .expect("the connection is open")
        .expect("a valid message")
}

/// Sends an RFC 8441 extended CONNECT for `/ws` over a fresh h2c connection
/// to the gateway; returns the response.
async fn extended_connect(gw: &GatewayProcess, headers: &[(&str, &str)]) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    // The server's SETTINGS (which enable extended CONNECT) arrive just after
    // the handshake: try until they have.
    for _ in 0..50 {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!("http://{}/ws", gw.addr()));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(Empty::<Bytes>::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        match sender.send_request(req).await {
            Ok(response) => return response,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("the extended CONNECT could not be sent");
}

#[tokio::test]
async fn every_kind_of_message_passes_both_ways() {
    let echo = EchoServer::start("echo-1").await;
    let gw = gateway(&[&echo], "");
    let mut ws = connect(&gw).await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));

    let binary: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));

    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::Pong(Bytes::from_static(b"are you there")));

    // A text message in three fragments arrives whole at the server.
    let parts = ["frag", "men", "ted"];
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(Bytes::from(part.as_bytes().to_vec()), opcode, i == parts.len() - 1);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));

    // 16 MiB in one message, both ways, byte for byte.
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(echoed) => assert!(echoed == big, "the 16 MiB message came back changed"),
        other => panic!("expected the 16 MiB message back, got {other:?}"),
    }

    // The upstream saw the gateway's forwarding headers on the handshake.
    ws.send(Message::text("who")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("echo-1 127.0.0.1"));

    // A client close with its own code comes back with that code.
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "client done".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Library(4001)),
        other => panic!("expected the close echo, got {other:?}"),
    }
    // Then the connection ends.
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the connection closes");
    assert!(end.is_none(), "no message after the close handshake: {end:?}");
}

#[tokio::test]
async fn a_server_close_reaches_the_client_and_a_vanished_upstream_ends_it() {
    let echo = EchoServer::start("echo-1").await;
    let gw = gateway(&[&echo], "");

    let mut ws = connect(&gw).await;
    ws.send(Message::text("close 4002")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4002));
            assert_eq!(frame.reason.as_str(), "server says bye");
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the connection closes");
    assert!(end.is_none(), "{end:?}");

    // The upstream drops the connection without a close frame (a crash):
    // the client's connection ends too instead of hanging.
    let mut ws = connect(&gw).await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("ping"));
    echo.drop_connections();
    let end = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the connection ends");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test]
async fn connections_are_balanced_and_limited_per_route() {
    let a = EchoServer::start("a").await;
    let b = EchoServer::start("b").await;
    let gw = gateway(&[&a, &b], "websocket = { max_connections = 2 }");

    let mut first = connect(&gw).await;
    let mut second = connect(&gw).await;
    let mut names = Vec::new();
    for ws in [&mut first, &mut second] {
        ws.send(Message::text("who")).await.unwrap();
        names.push(
            next(ws)
                .await
                .into_text()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    names.sort();
    assert_eq!(names, ["a", "b"], "round robin spreads connections");

    // A third is refused with the gateway's JSON error...
    let url = format!("ws://{}/ws", gw.addr());
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("websocket_limit"), "{body}");
        }
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    // ...until one closes (the close handshake, then the TCP connection).
    first.close(None).await.unwrap();
    while tokio::time::timeout(PATIENCE, first.next()).await.unwrap().is_some() {}
    drop(first);
    // The place comes free once the gateway sees the connection end.
    let active = r#"switchyard_websocket_connections_active{route="ws"} "#;
    let mut freed = false;
    for _ in 0..250 {
        let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
        if scrape.lines().any(|l| l == format!("{active}1")) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the closed connection's place was not given back");
    let third = tokio_tungstenite::connect_async(url.clone())
        .await
        .ok()
        .map(|(ws, _)| ws);
    let mut third = third.expect("a place came free after a close");
    third.send(Message::text("again")).await.unwrap();
    assert_eq!(next(&mut third).await, Message::text("again"));

    // A route with WebSocket turned off says so.
    let closed = format!("ws://{}/no-ws", gw.addr());
    match tokio_tungstenite::connect_async(closed).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST)
        }
        other => panic!("expected a 400, got {:?}", other.map(|(_, r)| r.status())),
    }

    // Metrics count what happened.
    let scrape = get(&client(Proto::H1), &gw.admin_url("/metrics"), &[]).await.text();
    let value = |needle: &str| support::metric(&scrape, needle);
    assert_eq!(
        value(r#"switchyard_websocket_connections_total{result="opened",route="ws"}"#),
        3.0
    );
    assert_eq!(
        value(r#"switchyard_websocket_connections_total{result="refused",route="ws"}"#),
        1.0
    );
    assert_eq!(value(r#"switchyard_websocket_connections_active{route="ws"}"#), 2.0);
    assert!(value(r#"switchyard_websocket_bytes_total{direction="from_client",route="ws"}"#) > 0.0);
    assert!(value(r#"switchyard_websocket_bytes_total{direction="to_client",route="ws"}"#) > 0.0);
}

#[tokio::test]
async fn a_quiet_connection_is_closed_after_the_idle_timeout() {
    let echo = EchoServer::start("echo").await;
    let gw = gateway(&[&echo], r#"websocket = { idle_timeout = "1s" }"#);
    let mut busy = connect(&gw).await;
    let mut quiet = connect(&gw).await;
    // One keeps talking (every 200 ms for 2 s: far inside its idle timeout
    // even on a slow run) while the other says nothing.
    for _ in 0..10 {
        busy.send(Message::text("tick")).await.unwrap();
        assert_eq!(next(&mut busy).await, Message::text("tick"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(2), quiet.next())
        .await
        .expect("the quiet connection was closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    busy.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut busy).await, Message::text("still here"));
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let echo = EchoServer::start("echo").await;
    let gw = gateway(&[&echo], "");
    let mut response = extended_connect(&gw, &[("sec-websocket-version", "13")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(&mut response).await.expect("an upgraded stream");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(config())).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("over h2"));
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));
    ws.close(None).await.unwrap();
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
}

#[tokio::test]
async fn an_upstream_that_does_not_upgrade_is_a_failure_on_http2_and_its_answer_on_http1() {
    // A plain HTTP server answers the handshake with 200 instead of 101.
    let plain = support::Backend::start("plain").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
max_connections = 2

[[clusters]]
name = "plain"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "ws"
cluster = "plain"
"#,
        plain.addr
    ));
    // HTTP/1.1: the upstream's answer goes back as it is (the client's
    // handshake fails on it).
    let url = format!("ws://{}/ws", gw.addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), StatusCode::OK),
        other => panic!("expected the upstream's 200, got {:?}", other.map(|(_, r)| r.status())),
    }
    // HTTP/2: a 200 would read as "tunnel open", so the gateway answers 502.
    let response = extended_connect(&gw, &[]).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn open_websockets_count_against_the_listeners_connection_limit() {
    let echo = EchoServer::start("echo").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"
max_connections = 2

[[clusters]]
name = "echo"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "ws"
cluster = "echo"
"#,
        echo.addr
    ));
    let mut first = connect(&gw).await;
    let mut second = connect(&gw).await;
    // Both sockets are upgraded (hyper has let go of them), yet they still
    // hold the listener's two places: a third connection is closed at once.
    let url = format!("ws://{}/ws", gw.addr());
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "a third connection got in"
    );
    for ws in [&mut first, &mut second] {
        ws.send(Message::text("still open")).await.unwrap();
        assert_eq!(next(ws).await, Message::text("still open"));
    }
}
