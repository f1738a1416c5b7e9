//! Cluster mode: gateway processes and a private redis-server on loopback.
//! The nodes list each other (`GET /api/nodes`), a cache purge on one node
//! clears the others, and with Redis stopped each node keeps serving alone
//! until Redis is back and the nodes rejoin by themselves. Hub messages
//! published on one node reach subscribers on every node with the same ids,
//! so a subscriber resumes on any node. A configuration put on one node runs
//! on all; registry instances, idempotency keys and global limits are
//! shared; and Redis restarted under load fails no proxied request.

mod support;

use std::time::{Duration, Instant};

use http::Request;

use support::backend::Backend;
use support::client::{client, full, get, send, HttpClient, Proto};
use support::redis::RedisServer;
use support::sse::SseReader;
use support::GatewayProcess;

fn node(redis: &str, origin: std::net::SocketAddr) -> GatewayProcess {
    cluster_node(
        &redis_at(redis),
        "127.0.0.1:0",
        &format!(
            r#"
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
        ),
    )
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
    let third = node(&redis.url(), origin.addr);
    let c = client(Proto::H1);
    for gw in [&a, &b, &third] {
        wait_for_nodes(&c, gw, 3).await;
    }
    // The relays are up once a publish is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut on_b = subscribe(&c, &b, None).await;
    let mut on_c = subscribe(&c, &third, None).await;
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
    assert_eq!(events(&mut on_c, 2).await, want, "on C, the same ids");
    assert_eq!(events(&mut on_a, 2).await, want, "on A, the same ids");

    // A subscriber of A resumes on B (and on C) from the first id.
    let mut resumed = subscribe(&c, &b, Some(first)).await;
    assert_eq!(events(&mut resumed, 1).await, vec![(second, "two".to_owned())]);
    let mut resumed = subscribe(&c, &third, Some(first)).await;
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
        // The version is recorded just after the snapshot is installed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while config_version(&c, gw).await != "\"2\"" {
            assert!(Instant::now() < deadline, "version 2 not reported by {}", gw.addr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// A node with the shared state of cluster mode in use: a cluster fed by
/// the registry, an idempotent route, a global limit, and a plain route.
fn shared_node(redis: &str, origin: std::net::SocketAddr) -> GatewayProcess {
    cluster_node(
        &redis_at(redis),
        "127.0.0.1:0",
        &format!(
            r#"
[[clusters]]
name = "origin"
endpoints = [{{ address = "{origin}" }}]

[[clusters]]
name = "users"
endpoints_from = {{ registry = "users" }}

[[routes]]
name = "users"
match = {{ path_prefix = "/users" }}
cluster = "users"
retry = {{ attempts = 1 }}

[[routes]]
name = "pay"
match = {{ path_prefix = "/pay" }}
cluster = "origin"
idempotency = {{ ttl = "1m" }}

[[routes]]
name = "limited"
match = {{ path_prefix = "/limited" }}
cluster = "origin"
rate_limit = {{ rate = 10, per = "1m", scope = "global" }}

[[routes]]
name = "busy"
match = {{ path_prefix = "/busy" }}
cluster = "origin"
rate_limit = {{ rate = 100000, per = "1s", scope = "global" }}

[[routes]]
name = "plain"
cluster = "origin"
"#
        ),
    )
}

async fn admin_call(
    c: &HttpClient,
    gw: &GatewayProcess,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(gw.admin_url(path))
        .header("content-type", "application/json")
        .body(full(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    let reply = send(c, request).await;
    (reply.status.as_u16(), reply.json())
}

async fn post(c: &HttpClient, gw: &GatewayProcess, path: &str, key: &str, body: &str) -> support::client::Reply {
    let request = Request::post(gw.url(path))
        .header("idempotency-key", key)
        .body(full(body.to_owned()))
        .unwrap();
    send(c, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_idempotency_keys_and_global_limits_are_shared() {
    let _redis = RedisServer::start();
    let origin = Backend::start("origin").await;
    let user = Backend::start("user").await;
    let nodes: Vec<GatewayProcess> = (0..3).map(|_| shared_node(&_redis.url(), origin.addr)).collect();
    let c = client(Proto::H1);
    for gw in &nodes {
        wait_for_nodes(&c, gw, 3).await;
    }
    let (a, b, third) = (&nodes[0], &nodes[1], &nodes[2]);

    // An instance registered on B serves through A and C.
    let (status, registered) = admin_call(
        &c,
        b,
        "POST",
        "/api/registry/users",
        Some(serde_json::json!({"address": user.addr.to_string(), "ttl": "30s", "metadata": {"zone": "b"}})),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let id = registered["instance"]["id"].as_str().unwrap().to_owned();
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 200).await;
        assert_eq!(
            get(&c, &gw.url("/users/1"), &[]).await.header("x-backend"),
            Some("user")
        );
    }
    let (_, listed) = admin_call(&c, a, "GET", "/api/registry", None).await;
    assert_eq!(listed["shared"], true, "{listed}");
    assert_eq!(listed["services"]["users"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["services"]["users"][0]["metadata"]["zone"], "b", "{listed}");
    // Heartbeats through any node; an unknown id is told to register.
    let (status, beat) = admin_call(&c, third, "PUT", &format!("/api/registry/users/{id}/heartbeat"), None).await;
    assert_eq!(status, 200, "{beat}");
    let (status, unknown) = admin_call(&c, a, "PUT", "/api/registry/users/nobody/heartbeat", None).await;
    assert_eq!(
        (status, &unknown["error"]["code"]),
        (404, &serde_json::json!("unknown_instance"))
    );
    // Deregistered through A: gone everywhere.
    let (status, gone) = admin_call(&c, a, "DELETE", &format!("/api/registry/users/{id}"), None).await;
    assert_eq!(status, 200, "{gone}");
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 503).await;
    }
    // A registration that is not kept alive lapses on every node.
    let (status, _) = admin_call(
        &c,
        third,
        "POST",
        "/api/registry/users",
        Some(serde_json::json!({"id": "brief", "address": user.addr.to_string(), "ttl": "3s"})),
    )
    .await;
    assert_eq!(status, 201);
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 200).await;
    }
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 503).await;
    }

    // An idempotency key used on A is recognised on B and C.
    let seen = || origin.seen().iter().filter(|s| s.path_and_query == "/pay").count();
    let first = post(&c, a, "/pay", "k1", "charge 10").await;
    assert_eq!(first.status, 200);
    assert!(first.header("idempotent-replayed").is_none());
    let again = post(&c, b, "/pay", "k1", "charge 10").await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!((again.status, again.text()), (first.status, first.text()));
    assert_eq!(again.header("x-backend"), Some("origin"), "stored headers come back");
    let other = post(&c, third, "/pay", "k1", "charge 99").await;
    assert_eq!(other.status, 422);
    assert_eq!(seen(), 1, "the origin saw the charge once");
    // Nine concurrent duplicates over the three nodes: one runs.
    origin
        .controls
        .delay_ms
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let replies = futures_util::future::join_all((0..9).map(|i| {
        let c = client(Proto::H1);
        let gw = &nodes[i % 3];
        async move { post(&c, gw, "/pay", "k2", "charge 20").await }
    }))
    .await;
    origin.controls.delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(seen(), 2, "one of the nine duplicates ran");
    assert!(replies.iter().all(|r| r.status == 200 && r.text() == replies[0].text()));
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 8);

    // One global limit of 10 a minute for the three nodes together.
    let mut statuses = Vec::new();
    for i in 0..15 {
        statuses.push(get(&c, &nodes[i % 3].url("/limited"), &[]).await.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
}

/// Sends GETs through `gw` until `stop` (at most 60 s and 200,000
/// requests); returns (answered 200, anything else).
async fn load(gw_url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u64, Vec<String>) {
    let c = client(Proto::H1);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut ok, mut failed) = (0u64, Vec::new());
    for _ in 0..200_000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let request = Request::get(&gw_url).body(support::client::empty()).unwrap();
        match tokio::time::timeout(Duration::from_secs(5), c.request(request)).await {
            Ok(Ok(response)) if response.status() == 200 => {
                use http_body_util::BodyExt;
                match response.into_body().collect().await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{gw_url}: body: {e}")),
                }
            }
            Ok(Ok(response)) => failed.push(format!("{gw_url}: status {}", response.status())),
            Ok(Err(e)) => failed.push(format!("{gw_url}: {e}")),
            Err(_) => failed.push(format!("{gw_url}: no answer in 5 s")),
        }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_fails_no_proxied_request() {
    let mut redis = RedisServer::start();
    let port = redis.addr.port();
    let origin = Backend::start("origin").await;
    let user = Backend::start("user").await;
    let nodes: Vec<GatewayProcess> = (0..3).map(|_| shared_node(&redis.url(), origin.addr)).collect();
    let c = client(Proto::H1);
    for gw in &nodes {
        wait_for_nodes(&c, gw, 3).await;
    }
    let (status, _) = admin_call(
        &c,
        &nodes[0],
        "POST",
        "/api/registry/users",
        Some(serde_json::json!({"id": "u1", "address": user.addr.to_string(), "ttl": "60s"})),
    )
    .await;
    assert_eq!(status, 201);
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 200).await;
    }

    // Plain, registry-fed and globally limited (fail-open) routes, on every
    // node, while Redis goes away and comes back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads: Vec<_> = nodes
        .iter()
        .flat_map(|gw| ["/plain", "/users/1", "/busy"].map(|path| gw.url(path)))
        .map(|url| tokio::spawn(load(url, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();

    // Without Redis: what must be shared is refused, the rest serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = admin_call(
            &c,
            &nodes[1],
            "POST",
            "/api/registry/users",
            Some(serde_json::json!({"id": "u2", "address": user.addr.to_string()})),
        )
        .await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "cluster_unavailable", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "registered without Redis: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = post(&c, &nodes[2], "/pay", "k-down", "x").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "idempotency_unavailable");
    let (_, listed) = admin_call(&c, &nodes[2], "GET", "/api/registry", None).await;
    assert_eq!(listed["shared"], false, "{listed}");
    assert_eq!(
        listed["services"]["users"][0]["id"], "u1",
        "the last state is kept: {listed}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Redis comes back empty (no persistence): the nodes rejoin and write
    // back the registry and configuration they hold.
    let _redis = RedisServer::start_on(port);
    for gw in &nodes {
        wait_for_nodes(&c, gw, 3).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, listed) = admin_call(&c, &nodes[1], "GET", "/api/registry", None).await;
        if listed["shared"] == true && listed["services"]["users"][0]["id"] == "u1" {
            break;
        }
        assert!(Instant::now() < deadline, "the registry was not written back: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = post(&c, &nodes[2], "/pay", "k-up", "x").await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idempotent requests still refused: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut doc = get(&c, &nodes[0].admin_url("/api/config"), &[]).await.json();
    let version = config_version(&c, &nodes[0]).await;
    doc["routes"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"name": "hello", "match": {"path": "/hello"}, "direct": {"status": 200, "body": "hi"}}),
    );
    let reply = put_config(&c, &nodes[0], &doc, &version).await;
    assert_eq!(reply.status, 200, "a shared change after the restart: {}", reply.text());
    for gw in &nodes {
        wait_for_status(&c, gw, "/hello", 200).await;
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for load in loads {
        let (ok, failed) = load.await.unwrap();
        assert!(failed.is_empty(), "failed proxied requests: {failed:?}");
        assert!(ok > 0, "every load loop got answers");
        total += ok;
    }
    eprintln!("{total} proxied requests, none failed, through a Redis restart");
}

/// A node with a hub route and `cluster` as the body of its `[cluster]`.
fn bare_node(cluster: &str) -> GatewayProcess {
    cluster_node(cluster, "127.0.0.1:0", LIVE_ROUTE)
}

/// A hub route every node has.
const LIVE_ROUTE: &str = r#"
[[routes]]
name = "live"
match = { path_prefix = "/live/" }
hub = { publish = [{ topics = ">" }] }
"#;

/// `[cluster]`'s body for the Redis at `redis`.
fn redis_at(redis: &str) -> String {
    format!("redis = \"{redis}\"\nredis_timeout = \"2s\"")
}

/// Starts a node: quiet access log, an admin API, `cluster` as its
/// `[cluster]` table, a `public` listener on `listen`, then `rest`.
fn cluster_node(cluster: &str, listen: &str, rest: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"

[cluster]
{cluster}

[[listeners]]
name = "public"
listen = "{listen}"

{rest}"#
    ))
}

/// A test CA with a server certificate for 127.0.0.1 and a client
/// certificate, as PEM files (`ca.pem`, `server.pem|key`, `client.pem|key`).
fn pki() -> tempfile::TempDir {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Switchyard Redis CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    for (name, sans) in [
        ("server", vec!["127.0.0.1".to_owned()]),
        ("client", vec!["node".to_owned()]),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    dir
}

#[tokio::test]
async fn nodes_reach_redis_over_mutual_tls_with_a_password() {
    let pki = pki();
    let file = |name: &str| pki.path().join(name).display().to_string();
    let port = RedisServer::free_port();
    let _redis = RedisServer::start_with(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "yes",
            "--requirepass",
            "s3cret",
        ],
    );
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/0");
    let with_client_cert = format!(
        "redis = \"{url}\"\nredis_timeout = \"2s\"\ntls = {{ ca = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    );
    let a = bare_node(&with_client_cert);
    let b = bare_node(&with_client_cert);
    let c = client(Proto::H1);
    let listed = wait_for_nodes(&c, &a, 2).await;
    assert_eq!(
        listed["redis"],
        format!("rediss://***@127.0.0.1:{port}/0"),
        "the password is not shown: {listed}"
    );
    // A message published on A reaches B through Redis over TLS.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let reply = publish(&c, &a, "over tls").await;
        if reply.status == 200 {
            break reply.json()["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "publishing never accepted: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let polled = get(&c, &b.url(&format!("/live/news?since={}&timeout=5", id - 1)), &[]).await;
    assert_eq!(polled.json()["messages"][0]["data"], "over tls", "{}", polled.text());

    // Without its client certificate a node is refused, keeps serving
    // alone, and says why.
    let refused = bare_node(&format!(
        "redis = \"{url}\"\nredis_timeout = \"2s\"\ntls = {{ ca = \"{}\" }}",
        file("ca.pem")
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = get(&c, &refused.admin_url("/api/nodes"), &[]).await.json();
        let error = nodes["error"].as_str().unwrap_or_default().to_owned();
        if error.starts_with("not connected: ") && error != "not connected: connecting" {
            assert_eq!(nodes["cluster"], true);
            assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
            break;
        }
        assert!(Instant::now() < deadline, "no reason given: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_primary_is_found_through_sentinel() {
    let primary = RedisServer::start();
    let sentinel = support::redis::Sentinel::start(primary.addr.port());
    let through_sentinel = bare_node(&format!(
        "redis = \"redis://primary/0\"\nredis_timeout = \"2s\"\nsentinel = {{ master = \"mymaster\", addresses = [\"{}\"] }}",
        sentinel.addr
    ));
    let direct = bare_node(&format!("redis = \"{}\"\nredis_timeout = \"2s\"", primary.url()));
    let c = client(Proto::H1);
    // They see each other: the Sentinel named the same primary.
    wait_for_nodes(&c, &through_sentinel, 2).await;
    wait_for_nodes(&c, &direct, 2).await;
}

#[tokio::test]
async fn each_node_keeps_its_own_addresses_under_the_shared_configuration() {
    let _redis = RedisServer::start();
    let node_on = |port: u16| cluster_node(&redis_at(&_redis.url()), &format!("127.0.0.1:{port}"), LIVE_ROUTE);
    let (port_a, port_b) = (RedisServer::free_port(), RedisServer::free_port());
    let a = node_on(port_a);
    let b = node_on(port_b);
    let c = client(Proto::H1);
    wait_for_nodes(&c, &a, 2).await;
    wait_for_nodes(&c, &b, 2).await;
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while config_version(&c, gw).await != "\"1\"" {
            assert!(Instant::now() < deadline, "shared version 1 not known on {}", gw.addr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A's document (with A's address) put through A runs on B at B's address.
    let mut doc = get(&c, &a.admin_url("/api/config"), &[]).await.json();
    assert_eq!(doc["listeners"][0]["listen"], format!("127.0.0.1:{port_a}"));
    doc["routes"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"name": "hello", "match": {"path": "/hello"}, "direct": {"status": 200, "body": "hi"}}),
    );
    let reply = put_config(&c, &a, &doc, "\"1\"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_for_status(&c, &b, "/hello", 200).await;
    let on_b = get(&c, &b.admin_url("/api/config"), &[]).await.json();
    assert_eq!(on_b["listeners"][0]["listen"], format!("127.0.0.1:{port_b}"), "{on_b}");
    // Put through B, with A's address in it: B still listens where it did.
    let mut doc = on_b;
    doc["listeners"][0]["listen"] = format!("127.0.0.1:{port_a}").into();
    doc["routes"].as_array_mut().unwrap().remove(0);
    let reply = put_config(&c, &b, &doc, "\"2\"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_for_status(&c, &a, "/hello", 404).await;
    wait_for_status(&c, &b, "/hello", 404).await;
    assert_eq!(b.addr().port(), port_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outlive_an_outage_longer_than_their_ttl() {
    let redis = RedisServer::start();
    let origin = Backend::start("origin").await;
    let user = Backend::start("user").await;
    let nodes: Vec<GatewayProcess> = (0..2).map(|_| shared_node(&redis.url(), origin.addr)).collect();
    let c = client(Proto::H1);
    for gw in &nodes {
        wait_for_nodes(&c, gw, 2).await;
    }
    let (status, _) = admin_call(
        &c,
        &nodes[0],
        "POST",
        "/api/registry/users",
        Some(serde_json::json!({"id": "u", "address": user.addr.to_string(), "ttl": "2s"})),
    )
    .await;
    assert_eq!(status, 201);
    for gw in &nodes {
        wait_for_status(&c, gw, "/users/1", 200).await;
    }

    // Redis freezes (its data kept) for twice the TTL: no heartbeat lands,
    // while Redis's clock runs on.
    redis.pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = admin_call(&c, &nodes[1], "PUT", "/api/registry/users/u/heartbeat", None).await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "heartbeats still accepted with Redis frozen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Every node still routes to the instance it knew.
    for gw in &nodes {
        assert_eq!(get(&c, &gw.url("/users/1"), &[]).await.status, 200);
    }
    redis.resume();

    // Back: the instance was given its TTL again, so the client's next
    // heartbeat finds it (never 404, "register again").
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = admin_call(&c, &nodes[1], "PUT", "/api/registry/users/u/heartbeat", None).await;
        assert_ne!(status, 404, "the instance expired over the outage: {body}");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "heartbeats never accepted again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for gw in &nodes {
        assert_eq!(get(&c, &gw.url("/users/1"), &[]).await.status, 200);
    }
}
