//! Cluster mode, first part: three gateway processes and a private
//! redis-server on loopback. The nodes list each other (`GET /api/nodes`), a
//! cache purge on one node clears the others, and with Redis stopped each
//! node keeps serving alone (purges apply locally and say so) until Redis is
//! back and the nodes rejoin by themselves.

mod support;

use std::time::{Duration, Instant};

use http::Request;

use support::backend::Backend;
use support::client::{client, full, get, send, HttpClient, Proto};
use support::redis::RedisServer;
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
