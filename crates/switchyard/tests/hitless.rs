//! Hitless operations, first part: configuration reloads and a listener
//! added at run time close no open connection. 50 WebSocket connections and
//! 20 SSE subscribers exchange messages continuously through 10 reloads
//! (each changing the routes) and the addition of a listener; none closes
//! and no message is lost or repeated.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use support::client::{client, full, get, send, Proto};
use support::sse::SseReader;
use support::ws::{config as ws_config, EchoServer};
use support::GatewayProcess;
use tokio_tungstenite::tungstenite::Message;

/// The configuration of reload `n`: the same WebSocket and hub routes, plus
/// `n` other routes, and (from `with_second`) a second listener.
fn config(echo: std::net::SocketAddr, n: usize, second: Option<u16>) -> String {
    let extra: String = (0..n)
        .map(|i| {
            format!(
                "[[routes]]\nname = \"extra-{i}\"\nmatch = {{ path = \"/extra/{i}\" }}\ndirect = {{ status = 200, body = \"{i}\" }}\n\n"
            )
        })
        .collect();
    let second = second
        .map(|port| format!("[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:{port}\"\n\n"))
        .unwrap_or_default();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[access_log]
enabled = false

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

{second}
[[clusters]]
name = "echo"
endpoints = [{{ address = "{echo}" }}]

[[routes]]
name = "ws"
match = {{ path = "/ws" }}
cluster = "echo"

[[routes]]
name = "live"
match = {{ path_prefix = "/live/" }}
hub = {{ history = 1000, publish = [{{ topics = ">" }}] }}

{extra}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_a_new_listener_close_no_connection_and_lose_no_message() {
    let echo = EchoServer::start("echo").await;
    let gw = GatewayProcess::start(&config(echo.addr, 0, None));
    let stop = Arc::new(AtomicBool::new(false));

    // 50 WebSocket connections, each sending numbered messages and checking
    // every echo comes back in order (at most 60 s and 100,000 messages each).
    let echoed = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for c in 0..50 {
        let url = format!("ws://{}/ws", gw.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
            .await
            .expect("WebSocket handshake");
        let (stop, echoed) = (stop.clone(), echoed.clone());
        sockets.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline && n < 100_000 {
                let text = format!("{c}:{n}");
                ws.send(Message::text(text.clone()))
                    .await
                    .map_err(|e| format!("connection {c}: send {n}: {e}"))?;
                let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .map_err(|_| format!("connection {c}: no echo of {n} in 10 s"))?;
                match answer {
                    Some(Ok(Message::Text(got))) if got.as_str() == text => {}
                    other => return Err(format!("connection {c}: after {n}: {other:?}")),
                }
                echoed.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = ws.close(None).await;
            Ok::<u64, String>(n)
        }));
    }

    // 20 SSE subscribers of one topic, and a publisher.
    let c = client(Proto::H1);
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(SseReader::open(&c, &gw.url("/live/ticks"), &[]).await);
    }
    let publisher = {
        let (stop, url) = (stop.clone(), gw.url("/live/ticks"));
        tokio::spawn(async move {
            let c = client(Proto::H1);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 5_000 {
                let reply = send(&c, Request::post(&url).body(full(format!("tick {sent}"))).unwrap()).await;
                assert_eq!(reply.status, 200, "publish {sent}: {}", reply.text());
                sent += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };

    // 10 reloads, each changing the routes; a listener added at the fifth.
    let second = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for n in 1..=10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        gw.rewrite_config(&config(echo.addr, n, (n >= 5).then_some(second)));
        gw.signal("HUP");
        // The file watcher and SIGHUP may each reload: wait for the change.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while get(&c, &gw.url(&format!("/extra/{}", n - 1)), &[]).await.status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {n} not seen: {}",
                gw.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let via_second = get(&c, &format!("http://127.0.0.1:{second}/extra/0"), &[]).await;
    assert_eq!(via_second.status, 200, "the added listener serves");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    let mut exchanged = 0;
    for socket in sockets {
        let n = socket.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0);
        exchanged += n;
    }
    // Every subscriber got every message, in order, with no gap.
    for (i, reader) in readers.iter_mut().enumerate() {
        let events = reader.take(sent as usize).await;
        let data: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        let want: Vec<String> = (0..sent).map(|k| format!("tick {k}")).collect();
        assert_eq!(data, want, "subscriber {i}");
    }
    eprintln!(
        "through 10 reloads and a new listener: {exchanged} WebSocket echoes on 50 connections, {sent} messages to each of 20 SSE subscribers"
    );
}

fn drain_config(echo: std::net::SocketAddr, tcp_echo: std::net::SocketAddr, with_old: bool) -> String {
    let old = if with_old {
        "[[routes]]\nname = \"old\"\nmatch = { path = \"/old\" }\ncluster = \"echo\"\n\n\
         [[routes]]\nname = \"oldhub\"\nlistener = \"public\"\nmatch = { path_prefix = \"/oldhub/\" }\nhub = { publish = [{ topics = \">\" }] }\n\n\
         [[listeners]]\nname = \"oldtcp\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"tcpecho\"\n"
    } else {
        ""
    };
    format!(
        r#"
[runtime]
removed_route_grace = "3s"

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "echo"
endpoints = [{{ address = "{echo}" }}]

[[clusters]]
name = "tcpecho"
endpoints = [{{ address = "{tcp_echo}" }}]

[[routes]]
name = "ws"
listener = "public"
match = {{ path = "/ws" }}
cluster = "echo"

{old}"#
    )
}

/// A TCP server that echoes what it reads, on an ephemeral port.
async fn tcp_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_drains_its_websockets_event_streams_and_tcp_connections_on_the_grace_period() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = EchoServer::start("echo").await;
    let raw_echo = tcp_echo().await;
    let gw = GatewayProcess::start(&drain_config(echo.addr, raw_echo, true));
    let connect = |path: &'static str| {
        let url = format!("ws://{}{path}", gw.addr());
        async move {
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
                .await
                .expect("WebSocket handshake")
                .0
        }
    };
    let mut kept = connect("/ws").await;
    let mut removed = connect("/old").await;
    let c = client(Proto::H1);
    // An SSE subscriber of a hub route, and a connection through a tcp
    // listener, both removed by the reload too.
    let mut subscriber = SseReader::open(&client(Proto::H1), &gw.url("/oldhub/news"), &[]).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.listeners["oldtcp"]).await.unwrap();
    let mut buffer = [0u8; 5];
    tcp.write_all(b"hello").await.unwrap();
    tcp.read_exact(&mut buffer).await.unwrap();
    assert_eq!(&buffer, b"hello");
    let published = http::Request::post(gw.url("/oldhub/news"))
        .body(full("before"))
        .unwrap();
    assert_eq!(send(&c, published).await.status, 200);
    assert_eq!(subscriber.next().await.unwrap().data, "before");

    gw.rewrite_config(&drain_config(echo.addr, raw_echo, false));
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&c, &gw.url("/old"), &[]).await.status != 404 {
        assert!(std::time::Instant::now() < deadline, "the reload was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The admin API lists what drains, while it drains.
    let processes = get(&c, &gw.admin_url("/api/processes"), &[]).await.json();
    let draining = processes["this"]["draining_routes"].as_array().unwrap().clone();
    assert!(
        draining.iter().any(|d| d["route"] == "old" && d["websockets"] == 1),
        "{processes}"
    );
    assert!(
        draining
            .iter()
            .any(|d| d["listener"] == "oldtcp" && d["cluster"] == "tcpecho"),
        "{processes}"
    );
    // New requests no longer reach the route, but its open connection
    // still flows during the grace period.
    removed.send(Message::text("still here")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), removed.next())
        .await
        .unwrap();
    assert!(
        matches!(echoed, Some(Ok(Message::Text(ref t))) if t.as_str() == "still here"),
        "{echoed:?}"
    );
    tcp.write_all(b"again").await.unwrap();
    tcp.read_exact(&mut buffer).await.unwrap();
    assert_eq!(&buffer, b"again", "the tcp connection flows during the grace period");
    // Then it is closed (not before the grace period: it just answered).
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match removed.next().await {
                Some(Ok(Message::Text(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the removed route's connection closes after the grace period");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let ended = tokio::time::timeout(Duration::from_secs(15), subscriber.next()).await;
    assert!(matches!(ended, Ok(None)), "the event stream ends cleanly: {ended:?}");
    let closed = tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the tcp connection is closed: {closed:?}"
    );
    // The route that stayed is untouched.
    kept.send(Message::text("fine")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), kept.next()).await.unwrap();
    assert!(
        matches!(echoed, Some(Ok(Message::Text(ref t))) if t.as_str() == "fine"),
        "{echoed:?}"
    );

    assert!(
        gw.wait_log(Duration::from_secs(5), |v| {
            support::gateway::has_message(
                v,
                "route removed: its WebSocket connections drain for the grace period, then close",
            ) && v["route"] == "old"
        })
        .await,
        "{}",
        gw.dump_logs()
    );
    let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        support::metric(
            &scrape,
            r#"switchyard_websocket_connections_total{result="drained",route="old"}"#
        ),
        1.0
    );
    assert_eq!(
        support::metric(
            &scrape,
            r#"switchyard_streams_drained_total{kind="sse",route="oldhub"}"#
        ),
        1.0
    );
    assert_eq!(
        support::metric(
            &scrape,
            r#"switchyard_l4_connections_total{listener="oldtcp",result="drained"}"#
        ),
        1.0
    );
}

/// A configuration change to one route rebuilds nothing of the clusters it
/// does not touch: the health an active check found, the pooled upstream
/// connection, and cached responses all carry over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_keeps_the_state_of_unrelated_clusters() {
    let backend = support::Backend::start("steady").await;
    // An address nobody listens on: the first health check marks it down,
    // and the next check is an hour away.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = |changing_path: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "steady"
endpoints = [{{ address = "{backend}" }}, {{ address = "{dead}" }}]
health_check = {{ path = "/healthz", interval = "1h", jitter = "50ms", timeout = "2s", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[routes]]
name = "cached"
match = {{ path_prefix = "/cached/" }}
cluster = "steady"
cache = {{ ttl = "10m" }}

[[routes]]
name = "steady"
match = {{ path_prefix = "/steady/" }}
cluster = "steady"

[[routes]]
name = "changing"
match = {{ path = "{changing_path}" }}
direct = {{ status = 200, body = "changing" }}
"#,
            backend = backend.addr
        )
    };
    let gw = GatewayProcess::start(&config("/v1"));
    let http = client(Proto::H1);
    let dead_is_down = |clusters: &serde_json::Value| {
        clusters["clusters"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == dead.to_string() && e["healthy"] == false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let clusters = get(&http, &gw.admin_url("/api/clusters"), &[]).await.json();
        if dead_is_down(&clusters) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the check never ran: {clusters}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&http, &gw.url("/cached/a"), &[]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(&http, &gw.url("/cached/a"), &[]).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(get(&http, &gw.url("/steady/1"), &[]).await.status, 200);
    let pooled = backend.seen().last().unwrap().peer;

    // Only the `changing` route changes.
    gw.rewrite_config(&config("/v2"));
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(&http, &gw.url("/v2"), &[]).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "the reload did not apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let clusters = get(&http, &gw.admin_url("/api/clusters"), &[]).await.json();
    assert!(dead_is_down(&clusters), "health state was rebuilt: {clusters}");
    assert_eq!(
        get(&http, &gw.url("/cached/a"), &[]).await.header("x-cache"),
        Some("HIT"),
        "the cache was emptied"
    );
    assert_eq!(get(&http, &gw.url("/steady/2"), &[]).await.status, 200);
    assert_eq!(
        backend.seen().last().unwrap().peer,
        pooled,
        "the pooled upstream connection was not reused"
    );
}

/// Moving a listener to another address: the new address accepts, the old
/// one stops accepting, and a WebSocket opened on the old address keeps
/// flowing (its listener drains; it does not cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_listener_keeps_its_open_connections() {
    let echo = EchoServer::start("echo").await;
    let config = |port: u16| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[clusters]]\nname = \"echo\"\nendpoints = [{{ address = \"{}\" }}]\n\n\
             [[routes]]\nname = \"ws\"\nmatch = {{ path = \"/ws\" }}\ncluster = \"echo\"\n",
            echo.addr
        )
    };
    let first = support::redis::RedisServer::free_port();
    let gw = GatewayProcess::start(&config(first));
    let url = format!("ws://127.0.0.1:{first}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
        .await
        .expect("WebSocket handshake");

    let second = support::redis::RedisServer::free_port();
    gw.rewrite_config(&config(second));
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", second)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the new address never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old address stops accepting...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", first)).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the old address still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... while the connection made there still flows, both ways.
    for i in 0..5 {
        let text = format!("moved-{i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap();
        assert!(
            matches!(echoed, Some(Ok(Message::Text(ref t))) if t.as_str() == text),
            "{echoed:?}"
        );
    }
    let url = format!("ws://127.0.0.1:{second}/ws");
    let (mut moved, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
        .await
        .expect("WebSocket handshake on the new address");
    moved.send(Message::text("new")).await.unwrap();
    assert!(matches!(moved.next().await, Some(Ok(Message::Text(ref t))) if t.as_str() == "new"));
}
