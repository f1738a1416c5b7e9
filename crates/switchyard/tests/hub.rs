//! The pub/sub hub: SSE resume after a disconnect gets exactly the missed
//! messages in order; WebSocket and long-poll clients get the same stream;
//! publish and subscribe rules (with identities from API keys); a slow
//! consumer misses messages (and is told) or is disconnected without slowing
//! the others; per-topic order under concurrent publishers; patterns;
//! bounded history; message limits; metrics.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use support::client::{client, empty, full, get, send, HttpClient, Proto};
use support::sse::SseReader;
use support::{metric, GatewayProcess};

const BACKEND: &str = "backend-key";
const ALICE: &str = "alice-key";

fn gateway() -> GatewayProcess {
    GatewayProcess::start(
        r#"
[access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[routes]]
name = "hub"
match = { path_prefix = "/hub/" }
auth = { api_keys = { header = "x-api-key", keys = [{ id = "backend", sha256 = "26e5026bae501dfb3ca603d61c961884aed8e12c1eb49ee8d03a11071df0f4a7" }, { id = "alice", sha256 = "72ee9d4355ccb9d3a4c9dbf37382e38e75c1b1a225b5bd1f729ee91bbda30c20" }] } }
hub = { history = 5, heartbeat = "200ms", publish = [{ topics = ">", identities = ["backend"] }], subscribe = [{ topics = "public.>" }, { topics = "user.{identity}.>" }] }

[[routes]]
name = "tight"
match = { path_prefix = "/tight/" }
hub = { queue = 64, publish = [{ topics = ">" }] }

[[routes]]
name = "members"
match = { path_prefix = "/jwt/" }
auth = { jwt = { secret = "0123456789abcdef0123456789abcdef" } }
hub = { publish = [{ topics = ">" }] }

[[routes]]
name = "wide"
match = { path_prefix = "/wide/" }
hub = { history = 1000, queue = 1024, publish = [{ topics = ">" }] }

[[routes]]
name = "strict"
match = { path_prefix = "/strict/" }
hub = { queue = 64, slow_consumer = "disconnect", publish = [{ topics = ">" }] }
"#,
    )
}

async fn publish(
    c: &HttpClient,
    gw: &GatewayProcess,
    path: &str,
    key: Option<&str>,
    data: &str,
) -> support::client::Reply {
    let mut builder = Request::post(gw.url(path));
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    send(c, builder.body(full(data.to_owned())).unwrap()).await
}

#[tokio::test]
async fn sse_resume_delivers_exactly_the_missed_messages() {
    let gw = gateway();
    let c = client(Proto::H1);
    let url = gw.url("/hub/public.news");
    let mut sub = SseReader::open(&c, &url, &[("x-api-key", ALICE)]).await;
    for i in 1..=3 {
        assert_eq!(
            publish(&c, &gw, "/hub/public.news", Some(BACKEND), &format!("m{i}"))
                .await
                .status,
            200
        );
    }
    let got = sub.take(3).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    let last = got[2].id.unwrap();
    drop(sub);
    for i in 4..=6 {
        publish(&c, &gw, "/hub/public.news", Some(BACKEND), &format!("m{i}")).await;
    }
    let last_text = last.to_string();
    let mut resumed = SseReader::open(&c, &url, &[("x-api-key", ALICE), ("last-event-id", &last_text)]).await;
    let missed = resumed.take(3).await;
    assert_eq!(
        missed.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["m4", "m5", "m6"]
    );
    assert!(missed.windows(2).all(|w| w[0].id < w[1].id), "{missed:?}");
    publish(&c, &gw, "/hub/public.news", Some(BACKEND), "m7").await;
    assert_eq!(resumed.take(1).await[0].data, "m7", "then live, with no repeat");

    // Multi-line data and an event type survive SSE framing.
    let reply = send(
        &c,
        Request::post(gw.url("/hub/public.news?event=alert"))
            .header("x-api-key", BACKEND)
            .body(full("line one\nline two"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let event = resumed.take(1).await.remove(0);
    assert_eq!(event.event.as_deref(), Some("alert"));
    assert_eq!(event.data, "line one\nline two");
}

#[tokio::test]
async fn websocket_and_long_poll_clients_get_the_same_stream() {
    let gw = gateway();
    let c = client(Proto::H1);
    let mut sse = SseReader::open(&c, &gw.url("/hub/public.feed"), &[("x-api-key", ALICE)]).await;
    let mut request = format!("ws://{}/hub/public.feed", gw.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("x-api-key", ALICE.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // A long poll waiting from now.
    let since = {
        let reply = get(&c, &gw.url("/hub/public.feed?timeout=0"), &[("x-api-key", ALICE)]).await;
        reply.json()["last_id"].as_u64().unwrap()
    };

    // The backend publishes over its own WebSocket, and over HTTP.
    let mut request = format!("ws://{}/hub/public.other", gw.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("x-api-key", BACKEND.parse().unwrap());
    let (mut backend, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for i in 1..=3 {
        let frame = serde_json::json!({"type": "publish", "topic": "public.feed", "data": format!("w{i}")});
        backend.send(WsMessage::text(frame.to_string())).await.unwrap();
        let answer = next_json(&mut backend).await;
        assert_eq!(answer["type"], "published", "{answer}");
    }
    for i in 4..=5 {
        publish(&c, &gw, "/hub/public.feed", Some(BACKEND), &format!("w{i}")).await;
    }

    let from_sse: Vec<(u64, String)> = sse.take(5).await.into_iter().map(|e| (e.id.unwrap(), e.data)).collect();
    let mut from_ws = Vec::new();
    while from_ws.len() < 5 {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "message" {
            assert_eq!(frame["topic"], "public.feed");
            from_ws.push((
                frame["id"].as_u64().unwrap(),
                frame["data"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let mut from_poll = Vec::new();
    let mut cursor = since;
    while from_poll.len() < 5 {
        let reply = get(
            &c,
            &gw.url(&format!("/hub/public.feed?since={cursor}&timeout=5")),
            &[("x-api-key", ALICE)],
        )
        .await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        for m in body["messages"].as_array().unwrap() {
            from_poll.push((m["id"].as_u64().unwrap(), m["data"].as_str().unwrap().to_owned()));
        }
        cursor = body["last_id"].as_u64().unwrap();
    }
    let want: Vec<String> = (1..=5).map(|i| format!("w{i}")).collect();
    assert_eq!(from_sse.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(), want);
    assert_eq!(from_ws, from_sse, "the WebSocket client got the same ids and data");
    assert_eq!(from_poll, from_sse, "the long-poll client got the same ids and data");

    // A long poll with nothing new returns empty when its time is up.
    let reply = get(
        &c,
        &gw.url(&format!("/hub/public.feed?since={cursor}&timeout=1")),
        &[("x-api-key", ALICE)],
    )
    .await;
    assert_eq!(reply.json()["messages"].as_array().unwrap().len(), 0);
    assert_eq!(reply.json()["last_id"], cursor);
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("open")
            .expect("a frame");
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn publish_and_subscribe_rules_are_enforced() {
    let gw = gateway();
    let c = client(Proto::H1);
    assert_eq!(
        publish(&c, &gw, "/hub/public.news", None, "x").await.status,
        401,
        "no key"
    );
    let refused = publish(&c, &gw, "/hub/public.news", Some(ALICE), "x").await;
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .text()
            .contains("publishing to \\\"public.news\\\" is not allowed"),
        "{}",
        refused.text()
    );

    let subscribe = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let request = Request::get(url)
                .header("accept", "text/event-stream")
                .header("x-api-key", ALICE)
                .body(empty())
                .unwrap();
            c.request(request).await.unwrap().status()
        }
    };
    assert_eq!(subscribe("/hub/public.news").await, 200);
    assert_eq!(subscribe("/hub/user.alice.inbox").await, 200, "her own topics");
    assert_eq!(subscribe("/hub/user.bob.inbox").await, 403, "not another user's");
    assert_eq!(subscribe("/hub/user.*.inbox").await, 403, "not a pattern over users");
    assert_eq!(subscribe("/hub/secret.x").await, 403);

    // Over a WebSocket the same rules answer with error frames.
    let mut request = format!("ws://{}/hub/public.news", gw.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("x-api-key", ALICE.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(WsMessage::text(r#"{"type":"subscribe","topics":["user.bob.inbox"]}"#))
        .await
        .unwrap();
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["type"], "error");
    assert!(
        answer["message"].as_str().unwrap().contains("user.bob.inbox"),
        "{answer}"
    );
    ws.send(WsMessage::text(
        r#"{"type":"publish","topic":"public.news","data":"x"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "error");
    ws.send(WsMessage::text("not json")).await.unwrap();
    assert!(next_json(&mut ws).await["message"]
        .as_str()
        .unwrap()
        .starts_with("not a hub command"));

    // Bad publishes.
    let pattern = publish(&c, &gw, "/hub/public.*", Some(BACKEND), "x").await;
    assert_eq!(
        (pattern.status.as_u16(), pattern.json()["error"]["code"].as_str()),
        (400, Some("invalid_hub_request"))
    );
    let big = publish(&c, &gw, "/hub/public.big", Some(BACKEND), &"x".repeat(70_000)).await;
    assert_eq!(big.status, 413);
    let binary = send(
        &c,
        Request::post(gw.url("/hub/public.bin"))
            .header("x-api-key", BACKEND)
            .body(full(Bytes::from_static(&[0xff, 0xfe])))
            .unwrap(),
    )
    .await;
    assert_eq!(binary.status, 400);
    assert!(binary.text().contains("UTF-8"));
}

#[tokio::test]
async fn a_slow_consumer_misses_messages_without_slowing_others() {
    let gw = gateway();
    let c = client(Proto::H1);
    let message = "x".repeat(8 * 1024);
    // The slow one stops reading once subscribed; the fast one reads on.
    let mut slow = SseReader::open(&client(Proto::H1), &gw.url("/tight/t"), &[]).await;
    let mut fast = SseReader::open(&client(Proto::H1), &gw.url("/tight/t"), &[]).await;
    let count = 1500;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < count {
            let event = fast.next().await.expect("open");
            assert_eq!(event.event, None, "the fast reader never lags: {event:?}");
            ids.push(event.id.unwrap());
        }
        ids
    });
    for _ in 0..count {
        assert_eq!(publish(&c, &gw, "/tight/t", None, &message).await.status, 200);
    }
    let ids = reader.await.unwrap();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "every message, in order");

    // The slow one was told what it missed, and what it got is in order.
    let mut received = Vec::new();
    let mut missed = 0;
    while received.len() + (missed as usize) < count {
        let event = slow.next().await.expect("open");
        match event.event.as_deref() {
            Some("lagged") => {
                let n: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                missed += n["missed"].as_u64().unwrap();
            }
            None => received.push(event.id.unwrap()),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(missed > 0, "a reader that stopped fell behind");
    assert!(received.windows(2).all(|w| w[0] < w[1]));

    // With `disconnect`, a slow subscriber is closed instead.
    let mut strict = SseReader::open(&client(Proto::H1), &gw.url("/strict/t"), &[]).await;
    for _ in 0..count {
        publish(&c, &gw, "/strict/t", None, &message).await;
    }
    let mut last = None;
    while let Some(event) = strict.next().await {
        last = Some(event);
    }
    assert_eq!(
        last.unwrap().event.as_deref(),
        Some("disconnected"),
        "the stream ends with a notice"
    );

    let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        metric(
            &scrape,
            r#"switchyard_hub_dropped_total{reason="lagged",route="tight"}"#
        ) > 0.0
    );
    assert_eq!(
        metric(
            &scrape,
            r#"switchyard_hub_dropped_total{reason="disconnected",route="strict"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn order_per_topic_holds_under_concurrent_publishers() {
    let gw = gateway();
    let c = client(Proto::H1);
    let mut sub = SseReader::open(&c, &gw.url("/tight/orders"), &[]).await;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let c = client(Proto::H1);
            let url = gw.url("/tight/orders");
            tokio::spawn(async move {
                for n in 0..50 {
                    let request = Request::post(&url).body(full(format!("{p}-{n}"))).unwrap();
                    assert_eq!(send(&c, request).await.status, 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let events = sub.take(200).await;
    assert!(
        events.windows(2).all(|w| w[0].id < w[1].id),
        "ids rise in delivery order"
    );
    for p in 0..4 {
        let own: Vec<u32> = events
            .iter()
            .filter_map(|e| e.data.strip_prefix(&format!("{p}-")))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            own,
            (0..50).collect::<Vec<_>>(),
            "publisher {p}'s messages in its order"
        );
    }
}

#[tokio::test]
async fn patterns_history_and_metrics() {
    let gw = gateway();
    let c = client(Proto::H1);
    let mut all_public = SseReader::open(&c, &gw.url("/hub/public.*"), &[("x-api-key", ALICE)]).await;
    for (topic, data) in [
        ("public.a", "1"),
        ("other.x", "2"),
        ("public.b", "3"),
        ("public.a.deep", "4"),
    ] {
        publish(&c, &gw, &format!("/hub/{topic}"), Some(BACKEND), data).await;
    }
    publish(&c, &gw, "/hub/public.c", Some(BACKEND), "5").await;
    let got: Vec<String> = all_public.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["1", "3", "5"], "one segment under public, nothing else");

    // History keeps the last 5 of a topic.
    for i in 1..=8 {
        publish(&c, &gw, "/hub/public.log", Some(BACKEND), &format!("h{i}")).await;
    }
    let reply = get(&c, &gw.url("/hub/public.log?since=0"), &[("x-api-key", ALICE)]).await;
    let data: Vec<String> = reply.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(data, ["h4", "h5", "h6", "h7", "h8"]);

    let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&scrape, r#"switchyard_hub_messages_published_total{route="hub"}"#),
        13.0
    );
    assert_eq!(
        metric(&scrape, r#"switchyard_hub_subscribers{route="hub",transport="sse"}"#),
        1.0
    );
    assert!(
        metric(
            &scrape,
            r#"switchyard_hub_deliveries_total{route="hub",transport="sse"}"#
        ) >= 3.0
    );
    assert_eq!(
        metric(&scrape, r#"switchyard_hub_topic_subscribers{route="hub",topic="*"}"#),
        1.0
    );
    drop(all_public);
    // The gauge follows the disconnect.
    let mut gone = false;
    for _ in 0..50 {
        let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
        if metric(&scrape, r#"switchyard_hub_subscribers{route="hub",transport="sse"}"#) == 0.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the subscriber gauge drops when the client leaves");
}

#[tokio::test]
async fn resume_across_topics_and_patterns_has_no_gaps() {
    let gw = gateway();
    let c = client(Proto::H1);
    let url = gw.url("/wide/x?topic=a.one&topic=b.*");
    let mut first = SseReader::open(&c, &url, &[]).await;
    // Two publishers on three topics at once; every id they get back.
    let publishers: Vec<_> = ["a.one", "b.two", "b.three"]
        .into_iter()
        .map(|topic| {
            let c = client(Proto::H1);
            let url = gw.url(&format!("/wide/{topic}"));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..60 {
                    let reply = send(&c, Request::post(&url).body(full(format!("{n}"))).unwrap()).await;
                    ids.push(reply.json()["id"].as_u64().unwrap());
                }
                ids
            })
        })
        .collect();
    // Read part of the stream, leave, and resume from the last id seen.
    let seen: Vec<u64> = first.take(70).await.into_iter().map(|e| e.id.unwrap()).collect();
    drop(first);
    let mut published = Vec::new();
    for publisher in publishers {
        published.extend(publisher.await.unwrap());
    }
    published.sort_unstable();
    let last = seen.last().unwrap().to_string();
    let mut resumed = SseReader::open(&c, &url, &[("last-event-id", &last)]).await;
    let rest: Vec<u64> = resumed
        .take(published.len() - seen.len())
        .await
        .into_iter()
        .map(|e| e.id.unwrap())
        .collect();
    let all: Vec<u64> = seen.iter().chain(&rest).copied().collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "ids rise across topics: {all:?}");
    assert_eq!(all, published, "every message once, none lost at the resume");

    // A long poll from the last id sees nothing new, and says where it is.
    let end = *all.last().unwrap();
    let reply = get(
        &c,
        &gw.url(&format!("/wide/x?topic=a.one&topic=b.*&since={end}&timeout=0")),
        &[],
    )
    .await;
    assert_eq!(reply.json()["messages"].as_array().unwrap().len(), 0);
    assert!(reply.json()["last_id"].as_u64().unwrap() >= end);
}

#[tokio::test]
async fn sessions_end_when_their_token_expires() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let gw = gateway();
    let c = client(Proto::H1);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "carol", "exp": exp}),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let mut sse = SseReader::open(&c, &gw.url("/jwt/news"), &[("authorization", &bearer)]).await;
    let event = sse.next().await.expect("a notice before the end");
    assert_eq!(event.event.as_deref(), Some("expired"));
    assert!(sse.next().await.is_none(), "then the stream ends");

    let mut request = format!("ws://{}/jwt/news", gw.addr()).into_client_request().unwrap();
    let exp = exp + 2;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "carol", "exp": exp}),
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            if let Ok(WsMessage::Close(Some(close))) = frame {
                return close.reason.to_string();
            }
        }
        String::new()
    })
    .await
    .expect("closed within 10s");
    assert_eq!(closed, "the credential expired");
}
