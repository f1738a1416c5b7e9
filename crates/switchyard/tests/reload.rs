//! Hot reload: SIGHUP, a change of the file, and `PUT /api/config`, all under a
//! steady client load that must see zero failures; bad configs keep the old one.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Full};
use support::client::{client, get, send, Proto};
use support::gateway::has_message;
use support::{Backend, GatewayProcess};

fn config(old: &Backend, new: &Backend, target: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"
{extra}

[[clusters]]
name = "old"
endpoints = [{{ address = "{}" }}]

[[clusters]]
name = "new"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "all"
cluster = "{target}"
"#,
        old.addr, new.addr
    )
}

fn json_body(value: &serde_json::Value) -> support::client::Body {
    BodyExt::boxed(Full::new(bytes::Bytes::from(value.to_string())).map_err(|never| match never {}))
}

async fn backend_now(gw: &GatewayProcess) -> String {
    get(&client(Proto::H1), &gw.url("/"), &[]).await.json()["backend"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let gw = GatewayProcess::start(&config(&old, &new, "old", ""));
    let url = gw.url("/");

    // Client load: keep-alive HTTP/1.1, HTTP/2, and a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for proto in [Proto::H1, Proto::H2, Proto::H1] {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        let fresh_connections = loops.len() == 2;
        loops.push(tokio::spawn(async move {
            let pooled = client(proto);
            // Bounded in count and time (the stop flag) either way.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let c = if fresh_connections {
                    client(proto)
                } else {
                    pooled.clone()
                };
                let req = Request::get(&url).body(support::client::empty()).unwrap();
                let success = match tokio::time::timeout(Duration::from_secs(10), c.request(req)).await {
                    Ok(Ok(r)) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                    _ => false,
                };
                if success {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. SIGHUP after editing the file.
    gw.rewrite_config(&config(&old, &new, "new", ""));
    gw.signal("HUP");
    let reloaded = |trigger: &'static str| {
        move |v: &serde_json::Value| has_message(v, "configuration reloaded") && v["trigger"] == trigger
    };
    assert!(
        gw.wait_log(Duration::from_secs(10), reloaded("SIGHUP")).await,
        "{}",
        gw.dump_logs()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend_now(&gw).await, "new");

    // 2. The admin API, with the same schema as JSON.
    let c = client(Proto::H1);
    let mut running = get(&c, &gw.admin_url("/api/config"), &[]).await.json();
    running["routes"][0]["cluster"] = "old".into();
    let put = Request::put(gw.admin_url("/api/config"))
        .body(json_body(&running))
        .unwrap();
    let reply = send(&c, put).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(backend_now(&gw).await, "old");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed during reloads", ok + failed);
    assert!(ok > 50, "the load loop ran ({ok} requests)");
    assert!(!old.seen().is_empty() && !new.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_are_picked_up_without_a_signal() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let gw = GatewayProcess::start(&config(&old, &new, "old", ""));
    assert_eq!(backend_now(&gw).await, "old");
    gw.rewrite_config(&config(&old, &new, "new", ""));
    let seen = gw
        .wait_log(Duration::from_secs(10), |v| {
            has_message(v, "configuration reloaded") && v["trigger"] == "file change"
        })
        .await;
    assert!(seen, "{}", gw.dump_logs());
    assert_eq!(backend_now(&gw).await, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_keeps_the_running_one() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let gw = GatewayProcess::start(&config(&old, &new, "old", ""));

    // By file + SIGHUP.
    gw.rewrite_config(&config(&old, &new, "missing-cluster", ""));
    gw.signal("HUP");
    let rejected = gw
        .wait_log(Duration::from_secs(10), |v| {
            has_message(v, "reload rejected; keeping the running configuration")
        })
        .await;
    assert!(rejected, "{}", gw.dump_logs());
    assert!(
        gw.dump_logs().contains("no cluster named \\\"missing-cluster\\\""),
        "the log says why"
    );
    assert_eq!(backend_now(&gw).await, "old");

    // By the admin API: 400 with every problem, located by key path.
    let c = client(Proto::H1);
    let bad = serde_json::json!({
        "listeners": [{ "name": "public", "listen": "127.0.0.1:0" }],
        "clusters": [{ "name": "x", "balancer": "round_robbin", "endpoints": [{ "address": "nope" }] }],
        "routes": [{ "name": "all", "cluster": "y", "timeout": "soon" }],
        "colour": "blue"
    });
    let reply = send(
        &c,
        Request::put(gw.admin_url("/api/config")).body(json_body(&bad)).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "invalid_config");
    let paths: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for want in [
        "colour",
        "clusters[0].balancer",
        "clusters[0].endpoints[0].address",
        "routes[0].cluster",
        "routes[0].timeout",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let reply = send(
        &c,
        Request::put(gw.admin_url("/api/config"))
            .body(json_body(&"not a config".into()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(backend_now(&gw).await, "old", "still serving the old config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_add_and_remove_listeners() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let gw = GatewayProcess::start(&config(&old, &new, "old", ""));
    let second = "[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:0\"\n";
    gw.rewrite_config(&format!("{}\n{second}", config(&old, &new, "old", "")));
    gw.signal("HUP");
    let bound = gw
        .wait_log(Duration::from_secs(10), |v| {
            has_message(v, "listening") && v["listener"] == "second"
        })
        .await;
    assert!(bound, "{}", gw.dump_logs());
    let line = gw
        .logs()
        .into_iter()
        .find(|v| has_message(v, "listening") && v["listener"] == "second")
        .unwrap();
    let second_addr = line["address"].as_str().unwrap();
    let reply = get(&client(Proto::H1), &format!("http://{second_addr}/"), &[]).await;
    assert_eq!(reply.status, 200);
    // A keep-alive connection open on the listener that is about to go away.
    let mut open = tokio::net::TcpStream::connect(second_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut open, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut open, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    gw.rewrite_config(&config(&old, &new, "old", ""));
    gw.signal("HUP");
    let stopped = gw
        .wait_log(Duration::from_secs(10), |v| {
            has_message(v, "listener stopped") && v["listener"] == "second"
        })
        .await;
    assert!(stopped, "{}", gw.dump_logs());
    // The socket closes just after the log line.
    let mut refused = false;
    for _ in 0..40 {
        if tokio::net::TcpStream::connect(second_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the removed listener no longer accepts");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut open, &mut rest),
    )
    .await;
    assert!(
        closed.is_ok(),
        "connections of a removed listener are closed, not left serving 404s"
    );
    assert_eq!(backend_now(&gw).await, "old", "the kept listener still serves");
}
