//! Cluster mode, first part: three gateway processes and a private
//! redis-server on loopback. The nodes list each other (`GET /api/nodes`), a
//! cache purge on one node clears the others, and with Redis stopped each
//! node keeps serving alone (purges apply locally and say so) until Redis is
//! back and the nodes rejoin by themselves. Hub messages published on one
//! node reach subscribers on every node with the same ids, so a subscriber
//! resumes on any node, and a node that joins later has the history.

mod support;

use std::time::{Duration, Instant};

use http::Request;

use support::backend::Backend;
use support::client::{client, full, get, send, HttpClient, Proto};
use support::redis::RedisServer;
use support::sse::SseReader;
use support::GatewayProcess;

fn node(redis: &str, origin: std::net::SocketAddr) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"

[cluster]
redis = "{redis}"
redis_timeout = "200ms"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "origin"
endpoints = [{{ address = "{origin}" }}]

[[routes]]
name = "live"
match = {{ path_prefix = "/live/" }}
hub = {{ publish = [{{ topics = ">" }}] }}

[[routes]]
name = "pages"
cluster = "origin"
cache = {{ ttl = "60s" }}
"#
    ))
}

/// The page through `gw` with the public host every node serves.
async fn page(c: &HttpClient, gw: &GatewayProcess) -> String {
    let reply = get(c, &gw.url("/news"), &[("host", "www.example")]).await;
    assert_eq!(reply.status, 200);
    reply.header("x-cache").unwrap().to_owned()
}

async fn purge(c: &HttpClient, gw: &GatewayProcess) -> serde_json::Value {
    let request = Request::post(gw.admin_url("/api/cache/purge"))
        .body(full(r#"{"keys": ["www.example/news"]}"#))
        .unwrap();
    let reply = send(c, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// Waits (at most 15 s) until `gw` lists `count` nodes in the cluster.
async fn wait_for_nodes(c: &HttpClient, gw: &GatewayProcess, count: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = get(c, &gw.admin_url("/api/nodes"), &[]).await.json();
        if nodes["cluster"] == true && nodes["nodes"].as_array().map(Vec::len) == Some(count) {
            return nodes;
        }
        assert!(Instant::now() < deadline, "{count} nodes not listed: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 5 s) until the page through `gw` is a miss again.
async fn wait_for_miss(c: &HttpClient, gw: &GatewayProcess) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while page(c, gw).await != "MISS" {
        assert!(Instant::now() < deadline, "the purge did not reach {}", gw.addr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_list_each_other_and_purges_reach_every_node() {
    let mut redis = RedisServer::start();
    let port = redis.addr.port();
    let origin = Backend::start("origin").await;
    let nodes: Vec<GatewayProcess> = (0..3).map(|_| node(&redis.url(), origin.addr)).collect();
    let c = client(Proto::H1);

    let listed = wait_for_nodes(&c, &nodes[0], 3).await;
    let list = listed["nodes"].as_array().unwrap();
    assert_eq!(list[0]["this"], true);
    assert!(list.iter().all(|n| n["version"] == 1), "{listed}");
    assert!(
        list[1..].iter().all(|n| n["heartbeat_age_ms"].as_u64() < Some(5000)),
        "{listed}"
    );

    // Each node keeps its own copy.
    for gw in &nodes {
        page(&c, gw).await;
        assert_eq!(page(&c, gw).await, "HIT");
    }
    // A purge on the third clears all three.
    let answer = purge(&c, &nodes[2]).await;
    assert_eq!(answer["purged"], 1);
    assert_eq!(answer["nodes"], "all nodes");
    for gw in &nodes {
        wait_for_miss(&c, gw).await;
        assert_eq!(page(&c, gw).await, "HIT");
    }

    // Without Redis: every node serves on; a purge applies where it is made.
    redis.stop();
    for gw in &nodes {
        assert_eq!(page(&c, gw).await, "HIT", "served from the node's own store");
    }
    let answer = purge(&c, &nodes[2]).await;
    assert_eq!(answer["purged"], 1);
    assert!(
        answer["nodes"].as_str().unwrap().starts_with("this node only"),
        "{answer}"
    );
    assert_eq!(page(&c, &nodes[2]).await, "MISS");
    assert_eq!(page(&c, &nodes[0]).await, "HIT", "the others were not told");

    // Redis back: the nodes rejoin, and purges reach everyone again.
    let _redis = RedisServer::start_on(port);
    for gw in &nodes {
        wait_for_nodes(&c, gw, 3).await;
    }
    let answer = purge(&c, &nodes[0]).await;
    assert_eq!(answer["nodes"], "all nodes", "{answer}");
    for gw in &nodes {
        wait_for_miss(&c, gw).await;
    }
}

#[tokio::test]
async fn a_single_node_lists_itself() {
    let origin = Backend::start("origin").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "origin"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "pages"
cluster = "origin"
cache = {{ ttl = "60s" }}
"#,
        origin.addr
    ));
    let c = client(Proto::H1);
    let nodes = get(&c, &gw.admin_url("/api/nodes"), &[]).await.json();
    assert_eq!(nodes["cluster"], false);
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(nodes["nodes"][0]["this"], true);
    page(&c, &gw).await;
    let answer = purge(&c, &gw).await;
    assert_eq!(answer["nodes"], "this node (no cluster mode)");
}

/// A subscriber of `news` on `gw`, resuming after `last` if given.
async fn subscribe(c: &HttpClient, gw: &GatewayProcess, last: Option<u64>) -> SseReader {
    let last = last.map(|id| id.to_string());
    let headers: Vec<(&str, &str)> = last.iter().map(|id| ("last-event-id", id.as_str())).collect();
    SseReader::open(c, &gw.url("/live/news"), &headers).await
}

/// The next `n` events' ids and data.
async fn events(reader: &mut SseReader, n: usize) -> Vec<(u64, String)> {
    reader
        .take(n)
        .await
        .into_iter()
        .map(|e| (e.id.unwrap(), e.data))
        .collect()
}

async fn publish(c: &HttpClient, gw: &GatewayProcess, data: &str) -> support::client::Reply {
    send(
        c,
        Request::post(gw.url("/live/news")).body(full(data.to_owned())).unwrap(),
    )
    .await
}

#[tokio::test]
async fn hub_messages_reach_every_node_with_the_same_ids() {
    let mut redis = RedisServer::start();
    let origin = Backend::start("origin").await;
    let a = node(&redis.url(), origin.addr);
    let b = node(&redis.url(), origin.addr);
    let c = client(Proto::H1);
    wait_for_nodes(&c, &a, 2).await;
    wait_for_nodes(&c, &b, 2).await;
    // The relays are up once a publish is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut on_b = subscribe(&c, &b, None).await;
    let mut on_a = subscribe(&c, &a, None).await;
    let first = loop {
        let reply = publish(&c, &a, "one").await;
        if reply.status == 200 {
            break reply.json()["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "publishing never accepted: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let second = publish(&c, &b, "two").await.json()["id"].as_u64().unwrap();
    assert!(second > first);
    let want = vec![(first, "one".to_owned()), (second, "two".to_owned())];
    assert_eq!(events(&mut on_b, 2).await, want, "on B, published on A then B");
    assert_eq!(events(&mut on_a, 2).await, want, "on A, the same ids");

    // A subscriber of A resumes on B from the first id.
    let mut resumed = subscribe(&c, &b, Some(first)).await;
    assert_eq!(events(&mut resumed, 1).await, vec![(second, "two".to_owned())]);

    // A node that joins later has the history from the stream.
    let late = node(&redis.url(), origin.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&c, &late.url("/live/news?since=0&timeout=0"), &[]).await;
        let ids: Vec<u64> = reply.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        if ids == [first, second] {
            break;
        }
        assert!(Instant::now() < deadline, "the late node's history: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without Redis a publish is refused, not delivered to some nodes only.
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = publish(&c, &a, "three").await;
        if reply.status == 503 {
            assert_eq!(reply.json()["error"]["code"], "cluster_unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted without Redis: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn config_version(c: &HttpClient, gw: &GatewayProcess) -> String {
    let reply = get(c, &gw.admin_url("/api/config"), &[]).await;
    reply.header("etag").unwrap_or_default().to_owned()
}

async fn put_config(
    c: &HttpClient,
    gw: &GatewayProcess,
    doc: &serde_json::Value,
    if_match: &str,
) -> support::client::Reply {
    let request = Request::put(gw.admin_url("/api/config"))
        .header("content-type", "application/json")
        .header("if-match", if_match)
        .body(full(doc.to_string()))
        .unwrap();
    send(c, request).await
}

/// Waits (at most 10 s) until `path` through `gw` answers `status`.
async fn wait_for_status(c: &HttpClient, gw: &GatewayProcess, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(c, &gw.url(path), &[]).await.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {} never answered {status}",
            gw.addr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_config_put_on_one_node_runs_on_every_node() {
    let mut redis = RedisServer::start();
    let origin = Backend::start("origin").await;
    let nodes: Vec<GatewayProcess> = (0..3).map(|_| node(&redis.url(), origin.addr)).collect();
    let c = client(Proto::H1);
    // The first node's configuration is the shared version 1 everywhere.
    for gw in &nodes {
        wait_for_nodes(&c, gw, 3).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while config_version(&c, gw).await != "\"1\"" {
            assert!(Instant::now() < deadline, "shared version 1 not known on {}", gw.addr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A route added through node A runs on B and C.
    let mut doc = get(&c, &nodes[0].admin_url("/api/config"), &[]).await.json();
    doc["routes"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "hello",
        "match": {"path": "/hello"},
        "direct": {"status": 200, "body": "hi"}
    }));
    let reply = put_config(&c, &nodes[0], &doc, "\"1\"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["version"], 2);
    for gw in &nodes {
        wait_for_status(&c, gw, "/hello", 200).await;
        assert_eq!(config_version(&c, gw).await, "\"2\"");
    }

    // A writer that read version 1 is refused, not silently applied.
    let stale = put_config(&c, &nodes[1], &doc, "\"1\"").await;
    assert_eq!(stale.status, 412, "{}", stale.text());
    assert_eq!(stale.json()["error"]["code"], "version_conflict");

    // A node that starts later, from its own file, runs the shared version.
    let late = node(&redis.url(), origin.addr);
    wait_for_status(&c, &late, "/hello", 200).await;

    // Without Redis a change is refused and the running one stays.
    redis.stop();
    let refused = put_config(&c, &nodes[0], &doc, "\"2\"").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "cluster_unavailable");
    assert_eq!(get(&c, &nodes[0].url("/hello"), &[]).await.status, 200);
}
