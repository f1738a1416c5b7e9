//! Service discovery: clusters that take their endpoints from the service
//! registry (instances register, heartbeat and expire through the admin
//! API) or from DNS records served by a small nameserver on loopback.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use support::client::{client, get, send, HttpClient, Proto};
use support::{Backend, GatewayProcess};

async fn admin(c: &HttpClient, gw: &GatewayProcess, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(gw.admin_url(path))
        .header("content-type", "application/json")
        .body(match body {
            Some(body) => support::client::full(body.to_string()),
            None => support::client::empty(),
        })
        .unwrap();
    let reply = send(c, request).await;
    (reply.status.as_u16(), reply.json())
}

/// Endpoint addresses of `cluster` as `GET /api/clusters` shows them.
async fn cluster_endpoints(c: &HttpClient, gw: &GatewayProcess, cluster: &str) -> Vec<String> {
    let (_, clusters) = admin(c, gw, "GET", "/api/clusters", None).await;
    let mut addresses: Vec<String> = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    addresses.sort();
    addresses
}

/// Polls until `cluster` has exactly `want` endpoints (bounded).
async fn wait_for_endpoints(c: &HttpClient, gw: &GatewayProcess, cluster: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let mut last = Vec::new();
    for _ in 0..100 {
        last = cluster_endpoints(c, gw, cluster).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cluster {cluster} has {last:?}, expected {want:?}");
}

fn registry_gateway() -> GatewayProcess {
    GatewayProcess::start(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "users"
balancer = "round_robin"
endpoints_from = { registry = "users" }

[[routes]]
name = "users"
cluster = "users"
retry = { attempts = 1 }
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_instances_register_heartbeat_expire_and_deregister() {
    let gw = registry_gateway();
    let c = client(Proto::H1);
    let backend = Backend::start("one").await;

    // No instance yet: the cluster is empty and says so.
    let empty = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(empty.status, 503, "{}", empty.text());

    let (status, registered) = admin(
        &c,
        &gw,
        "POST",
        "/api/registry/users",
        Some(json!({"address": backend.addr.ip().to_string(), "port": backend.addr.port(), "ttl": "1500ms", "metadata": {"zone": "a"}})),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let id = registered["instance"]["id"].as_str().unwrap().to_owned();
    assert_eq!(registered["instance"]["address"], backend.addr.to_string());
    assert_eq!(registered["instance"]["metadata"]["zone"], "a");
    wait_for_endpoints(&c, &gw, "users", &[backend.addr.to_string()]).await;
    assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);

    // Heartbeats keep it past its TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, beat) = admin(&c, &gw, "PUT", &format!("/api/registry/users/{id}/heartbeat"), None).await;
        assert_eq!(status, 200, "{beat}");
    }
    assert_eq!(
        cluster_endpoints(&c, &gw, "users").await,
        vec![backend.addr.to_string()]
    );
    let (_, listed) = admin(&c, &gw, "GET", "/api/registry", None).await;
    assert_eq!(listed["services"]["users"][0]["id"], id.as_str());

    // Without them it lapses, and a late heartbeat is told to register again.
    wait_for_endpoints(&c, &gw, "users", &[]).await;
    let (status, late) = admin(&c, &gw, "PUT", &format!("/api/registry/users/{id}/heartbeat"), None).await;
    assert_eq!(status, 404, "{late}");
    assert_eq!(late["error"]["code"], "unknown_instance");
    assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 503);

    // Register with a chosen id, then deregister.
    let (status, _) = admin(
        &c,
        &gw,
        "POST",
        "/api/registry/users",
        Some(json!({"id": "users-a", "address": backend.addr.to_string(), "ttl": "30s"})),
    )
    .await;
    assert_eq!(status, 201);
    wait_for_endpoints(&c, &gw, "users", &[backend.addr.to_string()]).await;
    let (status, _) = admin(&c, &gw, "DELETE", "/api/registry/users/users-a", None).await;
    assert_eq!(status, 200);
    wait_for_endpoints(&c, &gw, "users", &[]).await;
    let (status, _) = admin(&c, &gw, "DELETE", "/api/registry/users/users-a", None).await;
    assert_eq!(status, 404);

    // Bad registrations name the problem.
    for (body, needle) in [
        (json!({"address": "no-port"}), "host:port"),
        (json!({"address": "127.0.0.1:1", "ttl": "forever"}), "ttl"),
        (json!({"address": "127.0.0.1:1", "weight": 0}), "weight"),
        (json!({"address": "127.0.0.1:1", "colour": "red"}), "colour"),
    ] {
        let (status, refused) = admin(&c, &gw, "POST", "/api/registry/users", Some(body)).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_registration");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_follows_the_registry_under_load_without_failed_requests() {
    let gw = registry_gateway();
    let c = client(Proto::H1);
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let register =
        |i: usize, ttl: &str| json!({"id": format!("users-{i}"), "address": backends[i].addr.to_string(), "ttl": ttl});
    assert_eq!(
        admin(&c, &gw, "POST", "/api/registry/users", Some(register(0, "30s")))
            .await
            .0,
        201
    );
    wait_for_endpoints(&c, &gw, "users", &[backends[0].addr.to_string()]).await;

    // Load: requests back to back until told to stop (at most 20 s or 200,000).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, sent, url) = (stop.clone(), sent.clone(), gw.url("/load"));
        load.push(tokio::spawn(async move {
            let c = client(Proto::H1);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            // By status and the gateway's error code, for a useful message.
            let mut failures: HashMap<String, usize> = HashMap::new();
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                if sent.fetch_add(1, Ordering::Relaxed) >= 200_000 {
                    break;
                }
                let reply = get(&c, &url, &[]).await;
                if reply.status != 200 {
                    let body: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
                    let code = body
                        .as_ref()
                        .and_then(|b| b["error"]["code"].as_str())
                        .unwrap_or("-")
                        .to_owned();
                    *failures.entry(format!("{} {code}", reply.status.as_u16())).or_default() += 1;
                }
            }
            failures
        }));
    }

    // Instances come: b and c join with short TTLs and heartbeats (c's is
    // longer: it must outlive a slow heartbeat on a loaded machine, or the
    // cluster could lose every instance at once and answer 503).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, ttl) in [(1, "2s"), (2, "3s")] {
        assert_eq!(
            admin(&c, &gw, "POST", "/api/registry/users", Some(register(i, ttl)))
                .await
                .0,
            201
        );
    }
    let all: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    wait_for_endpoints(&c, &gw, "users", &all).await;
    let seen_before: Vec<usize> = backends.iter().map(|b| b.seen().len()).collect();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in [1, 2] {
            let path = format!("/api/registry/users/users-{i}/heartbeat");
            assert_eq!(admin(&c, &gw, "PUT", &path, None).await.0, 200);
        }
    }
    let seen_after: Vec<usize> = backends.iter().map(|b| b.seen().len()).collect();
    for i in 0..3 {
        assert!(
            seen_after[i] > seen_before[i],
            "backend {i} got no traffic while registered: {seen_before:?} -> {seen_after:?}"
        );
    }

    // Instances go: a deregisters (then shuts down), b stops heartbeating
    // and lapses; c stays.
    assert_eq!(
        admin(&c, &gw, "DELETE", "/api/registry/users/users-0", None).await.0,
        200
    );
    let mut heartbeats = 0;
    let remaining = [backends[2].addr.to_string()];
    loop {
        let path = "/api/registry/users/users-2/heartbeat";
        assert_eq!(admin(&c, &gw, "PUT", path, None).await.0, 200);
        if cluster_endpoints(&c, &gw, "users").await == remaining {
            break;
        }
        heartbeats += 1;
        assert!(heartbeats < 50, "b never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let [a, b, c_backend] = backends;
    // Requests already sent to `a` finish before it goes away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().await;
    let c_before = c_backend.seen().len();
    let b_before = b.seen().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c_backend.seen().len() > c_before, "the remaining instance serves");
    assert_eq!(b.seen().len(), b_before, "a lapsed instance gets no new requests");

    stop.store(true, Ordering::Relaxed);
    let mut failures: HashMap<String, usize> = HashMap::new();
    for task in load {
        for (status, n) in task.await.unwrap() {
            *failures.entry(status).or_default() += n;
        }
    }
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 100, "the load loop ran ({total} requests)");
    assert!(
        failures.is_empty(),
        "failed requests while instances came and went: {failures:?} of {total}"
    );
}

fn dns_gateway(nameserver: std::net::SocketAddr, from: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "users"
balancer = "round_robin"
endpoints_from = {{ {from}, resolver = "{nameserver}", min_refresh = "100ms", max_refresh = "5s" }}

[[routes]]
name = "users"
cluster = "users"
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_follows_a_records_and_keeps_them_when_the_nameserver_fails() {
    // Two backends on one port, on two loopback addresses, as A records give.
    let first = Backend::start_on("first", "127.0.0.2:0".parse().unwrap()).await;
    let port = first.addr.port();
    let second = Backend::start_on("second", format!("127.0.0.3:{port}").parse().unwrap()).await;
    let ns = support::dns::start().await;
    let ip = |b: &Backend| match b.addr.ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("{other}"),
    };
    ns.zone.lock().unwrap().a.insert("users.test".into(), vec![ip(&first)]);

    let gw = dns_gateway(ns.addr, &format!("dns = \"users.test\", port = {port}"));
    let c = client(Proto::H1);
    // The first answer is there before the configuration serves.
    assert_eq!(cluster_endpoints(&c, &gw, "users").await, vec![first.addr.to_string()]);
    let reply = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(reply.header("x-backend"), Some("first"));

    // The records change: the cluster follows within a TTL or so.
    ns.zone
        .lock()
        .unwrap()
        .a
        .insert("users.test".into(), vec![ip(&first), ip(&second)]);
    wait_for_endpoints(&c, &gw, "users", &[first.addr.to_string(), second.addr.to_string()]).await;
    let mut backends_seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let reply = get(&c, &gw.url("/"), &[]).await;
        assert_eq!(reply.status, 200);
        backends_seen.insert(reply.header("x-backend").unwrap().to_owned());
    }
    assert_eq!(backends_seen.len(), 2, "both addresses take traffic: {backends_seen:?}");

    // A failing nameserver keeps the last answer.
    ns.zone.lock().unwrap().failing = true;
    assert!(
        gw.wait_log(Duration::from_secs(10), |l| support::gateway::has_message(
            l,
            "DNS discovery: lookup failed; keeping the last answer"
        ))
        .await,
        "{}",
        gw.dump_logs()
    );
    assert_eq!(cluster_endpoints(&c, &gw, "users").await.len(), 2);
    assert_eq!(get(&c, &gw.url("/"), &[]).await.status, 200);

    // It answers again, with one address gone.
    {
        let mut zone = ns.zone.lock().unwrap();
        zone.failing = false;
        zone.a.insert("users.test".into(), vec![ip(&second)]);
    }
    wait_for_endpoints(&c, &gw, "users", &[second.addr.to_string()]).await;
    for _ in 0..3 {
        let reply = get(&c, &gw.url("/"), &[]).await;
        assert_eq!(reply.header("x-backend"), Some("second"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_follows_srv_records_with_their_ports_and_priorities() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let ns = support::dns::start().await;
    {
        let mut zone = ns.zone.lock().unwrap();
        zone.a.insert("host.test".into(), vec![std::net::Ipv4Addr::LOCALHOST]);
        zone.srv.insert(
            "_http._tcp.users.test".into(),
            vec![
                (10, 5, backends[0].addr.port(), "host.test".into()),
                (10, 1, backends[1].addr.port(), "host.test".into()),
                // A backup: a worse priority is used only without the better.
                (20, 1, backends[2].addr.port(), "host.test".into()),
            ],
        );
    }
    let gw = dns_gateway(ns.addr, "dns = \"_http._tcp.users.test\", record = \"srv\"");
    let c = client(Proto::H1);
    let primaries = [backends[0].addr.to_string(), backends[1].addr.to_string()];
    assert_eq!(cluster_endpoints(&c, &gw, "users").await, {
        let mut p = primaries.to_vec();
        p.sort();
        p
    });
    let (_, clusters) = admin(&c, &gw, "GET", "/api/clusters", None).await;
    let weights: Vec<u64> = clusters["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["weight"].as_u64().unwrap())
        .collect();
    assert!(
        weights.contains(&5) && weights.contains(&1),
        "SRV weights carried: {weights:?}"
    );

    // The primaries go: the backup takes over.
    ns.zone
        .lock()
        .unwrap()
        .srv
        .get_mut("_http._tcp.users.test")
        .unwrap()
        .retain(|(priority, ..)| *priority == 20);
    wait_for_endpoints(&c, &gw, "users", &[backends[2].addr.to_string()]).await;
    let reply = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(reply.header("x-backend"), Some("c"));
}

#[test]
fn endpoints_from_is_checked_with_precise_errors() {
    let check = |cluster: &str| {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\n[[clusters]]\nname = \"users\"\n{cluster}\n\n[[routes]]\ncluster = \"users\"\n"
        );
        match switchyard_config::parse_toml(&text, "test.toml") {
            Ok(_) => String::new(),
            Err(diagnostics) => diagnostics.to_string(),
        }
    };
    assert_eq!(check("endpoints_from = { registry = \"users\" }"), "");
    assert_eq!(check("endpoints_from = { dns = \"users.internal\", port = 8080 }"), "");
    let both = check("endpoints = [{ address = \"127.0.0.1:1\" }]\nendpoints_from = { registry = \"users\" }");
    assert!(both.contains("not both"), "{both}");
    let no_port = check("endpoints_from = { dns = \"users.internal\" }");
    assert!(no_port.contains("clusters[0].endpoints_from.port"), "{no_port}");
    let srv_port = check("endpoints_from = { dns = \"_x._tcp.users\", record = \"srv\", port = 1 }");
    assert!(srv_port.contains("SRV records carry their own ports"), "{srv_port}");
    let record = check("endpoints_from = { dns = \"users\", port = 1, record = \"aaaa\" }");
    assert!(record.contains("unknown DNS record kind"), "{record}");
    let resolver = check("endpoints_from = { dns = \"users\", port = 1, resolver = \"nameserver\" }");
    assert!(resolver.contains("not a nameserver address"), "{resolver}");
    let neither = check("endpoints_from = { }");
    assert!(neither.contains("needs `registry"), "{neither}");
    let unknown = check("endpoints_from = { consul = \"users\" }");
    assert!(unknown.contains("consul"), "{unknown}");
}
