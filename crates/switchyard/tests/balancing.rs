//! Balancing with real backends: active health checks take a killed endpoint
//! out and bring it back, outlier detection ejects a failing one, panic mode
//! spreads load when too few are left, least_response_time avoids a slow
//! endpoint, and sticky cookies hold across reloads. Endpoint state is read
//! back through `GET /api/clusters`.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{client, get, HttpClient, Proto};
use support::gateway::has_message;
use support::{Backend, GatewayProcess};

/// A gateway config with an admin listener, one listener, and cluster `api`
/// (with `cluster_extra` lines) over `backends`, routed from `/`.
fn config(backends: &[&Backend], cluster_extra: &str) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{}]
{cluster_extra}

[[routes]]
name = "all"
cluster = "api"
"#,
        endpoints.join(", ")
    )
}

/// The state of endpoint `address` of cluster `api`, from the admin API.
async fn endpoint_state(gw: &GatewayProcess, address: std::net::SocketAddr) -> Value {
    let clusters = get(&client(Proto::H1), &gw.admin_url("/api/clusters"), &[])
        .await
        .json();
    let api = clusters["clusters"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "api"))
        .cloned()
        .unwrap_or_else(|| panic!("cluster api in {clusters}"));
    api["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == address.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {address} in {api}"))
}

/// Polls the admin API until endpoint `address` satisfies `pred`; the last
/// state seen goes into the failure message.
async fn wait_for_endpoint(
    gw: &GatewayProcess,
    address: std::net::SocketAddr,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let state = endpoint_state(gw, address).await;
        if pred(&state) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "endpoint {address} did not reach the expected state in {timeout:?}; last: {state}\nlogs:\n{}",
            gw.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The backend that answered a request (from the `x-backend` header).
async fn who(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let reply = get(client, url, headers).await;
    let backend = reply.header("x-backend").unwrap_or("-").to_owned();
    (reply.status.as_u16(), backend)
}

/// One request of a background load: when it started, its status and backend.
type Record = (Instant, u16, String);

/// Steady client load from `workers` tasks until `stop` is set (bounded to
/// 60 seconds and 50,000 requests in all).
fn spawn_load(url: String, workers: usize, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<Record>>> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..workers {
        let (url, stop, records) = (url.clone(), stop.clone(), records.clone());
        tokio::spawn(async move {
            let client = client(Proto::H1);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && records.lock().unwrap().len() < 50_000 {
                let started = Instant::now();
                let (status, backend) = who(&client, &url, &[]).await;
                records.lock().unwrap().push((started, status, backend));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_taken_out_and_comes_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &[&a, &b],
        r#"health_check = { path = "/healthz", interval = "200ms", timeout = "150ms", healthy_threshold = 1, unhealthy_threshold = 2 }"#,
    ));
    let b_addr = b.addr;
    wait_for_endpoint(&gw, b_addr, Duration::from_secs(5), |e| e["healthy"] == true).await;

    let stop = Arc::new(AtomicBool::new(false));
    let records = spawn_load(gw.url("/"), 4, stop.clone());
    let served_by = |name: &str, since: Instant| {
        records
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, status, backend)| *at >= since && *status == 200 && backend == name)
            .count()
    };
    let t0 = Instant::now();
    while served_by("b", t0) < 20 {
        assert!(t0.elapsed() < Duration::from_secs(10), "b gets traffic before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    b.kill().await;
    let down = wait_for_endpoint(&gw, b_addr, Duration::from_secs(5), |e| e["healthy"] == false).await;
    assert!(
        down["health_check_failure"]
            .as_str()
            .is_some_and(|why| why.contains("connect failed")),
        "{down}"
    );
    let out_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let b = Backend::start_on("b", b_addr).await;
    wait_for_endpoint(&gw, b_addr, Duration::from_secs(5), |e| e["healthy"] == true).await;
    let back_at = Instant::now();
    while served_by("b", back_at) < 20 {
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "b gets traffic again after it comes back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let records = records.lock().unwrap();
    let after: Vec<&Record> = records.iter().filter(|(at, ..)| *at >= out_at).collect();
    let failed: Vec<&&Record> = after.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(after.len() > 100, "the load kept running ({} requests)", after.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after the endpoint was taken out: {:?}",
        failed.len(),
        after.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        gw.count_logs(|v| has_message(v, "endpoint unhealthy")) >= 1
            && gw.count_logs(|v| has_message(v, "endpoint healthy again")) >= 1,
        "health transitions are logged:\n{}",
        gw.dump_logs()
    );
    assert!(!b.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_take_out_an_endpoint_that_refuses_connections() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(
        &[&a, &b],
        r#"health_check = { type = "tcp", interval = "500ms", timeout = "500ms", unhealthy_threshold = 1 }"#,
    ));
    let b_addr = b.kill().await;
    let state = wait_for_endpoint(&gw, b_addr, Duration::from_secs(5), |e| e["available"] == false).await;
    assert_eq!(state["healthy"], false, "{state}");
    let client = client(Proto::H1);
    for _ in 0..10 {
        assert_eq!(who(&client, &gw.url("/"), &[]).await, (200, "a".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.controls.fail_with.store(500, Ordering::Relaxed);
    let gw = GatewayProcess::start(&config(
        &[&a, &b],
        r#"outlier_detection = { consecutive_failures = 3, base_ejection = "3s" }"#,
    ));
    let client = client(Proto::H1);
    let url = gw.url("/");

    // Round robin alternates: b's third 500 in a row ejects it.
    let mut failures = 0;
    for _ in 0..6 {
        let (status, _) = who(&client, &url, &[]).await;
        if status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "b answered every other request with 500 until ejected");
    let ejected = endpoint_state(&gw, b.addr).await;
    assert_eq!(ejected["available"], false, "{ejected}");
    assert_eq!(
        ejected["healthy"], true,
        "ejection is not a health-check verdict: {ejected}"
    );
    assert_eq!(ejected["ejections"], 1, "{ejected}");
    let reason = ejected["ejected"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("3 failures in a row") && reason.contains("5xx"),
        "{ejected}"
    );
    assert!(ejected["error_rate"].as_f64().unwrap() > 0.99, "{ejected}");
    for _ in 0..10 {
        assert_eq!(who(&client, &url, &[]).await, (200, "a".to_owned()), "b is ejected");
    }
    assert!(
        gw.count_logs(|v| has_message(v, "endpoint ejected")) == 1,
        "{}",
        gw.dump_logs()
    );

    b.controls.fail_with.store(0, Ordering::Relaxed);
    wait_for_endpoint(&gw, b.addr, Duration::from_secs(15), |e| e["available"] == true).await;
    let backends: Vec<String> = futures_util::future::join_all((0..10).map(|_| who(&client, &url, &[])))
        .await
        .into_iter()
        .map(|(_, backend)| backend)
        .collect();
    assert!(backends.iter().any(|b| b == "b"), "b is back in rotation: {backends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_spreads_over_every_endpoint_when_too_few_are_healthy() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let check =
        r#"health_check = { path = "/healthz", interval = "500ms", timeout = "500ms", unhealthy_threshold = 1 }"#;
    let gw = GatewayProcess::start(&config(&refs, check));
    let strict = GatewayProcess::start(&config(&refs, &format!("{check}\npanic_threshold = 0")));
    for backend in &backends[1..] {
        backend.controls.sick.store(true, Ordering::Relaxed);
    }
    for gateway in [&gw, &strict] {
        for backend in &backends[1..] {
            wait_for_endpoint(gateway, backend.addr, Duration::from_secs(5), |e| e["healthy"] == false).await;
        }
    }

    // One of three (33%) is below the default 50% threshold: spread over all.
    let client = client(Proto::H1);
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let (status, backend) = who(&client, &gw.url("/"), &[]).await;
        assert_eq!(status, 200);
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "every endpoint takes traffic in panic mode: {seen:?}");
    let clusters = get(&client, &gw.admin_url("/api/clusters"), &[]).await.json();
    let api = &clusters["clusters"][0];
    assert_eq!(api["in_panic"], true, "{api}");
    assert!(api["panic_picks"].as_u64().unwrap() >= 30, "{api}");
    assert_eq!(api["endpoints_available"], 1, "{api}");

    // With panic mode off, only the healthy endpoint serves.
    for _ in 0..10 {
        assert_eq!(who(&client, &strict.url("/"), &[]).await, (200, "a".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_less_traffic_under_least_response_time() {
    let fast = Backend::start("fast").await;
    let slow = Backend::start("slow").await;
    // Far slower than scheduling noise on a loaded machine.
    slow.controls.delay_ms.store(150, Ordering::Relaxed);
    let gw = GatewayProcess::start(&config(&[&fast, &slow], r#"balancer = "least_response_time""#));
    let url = gw.url("/");
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (url, counts) = (url.clone(), counts.clone());
            tokio::spawn(async move {
                let client = client(Proto::H1);
                for _ in 0..40 {
                    let (status, backend) = who(&client, &url, &[]).await;
                    assert_eq!(status, 200);
                    *counts.lock().unwrap().entry(backend).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts = counts.lock().unwrap();
    let (fast_n, slow_n) = (counts["fast"], counts.get("slow").copied().unwrap_or(0));
    assert_eq!(fast_n + slow_n, 320);
    assert!(
        slow_n * 5 < fast_n,
        "the slow endpoint should get well under a sixth of the traffic: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookies_hold_across_reloads_and_fall_back_when_unhealthy() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let extra = r#"sticky = { cookie = "sy", ttl = "1h" }
health_check = { path = "/healthz", interval = "500ms", timeout = "500ms", unhealthy_threshold = 1 }"#;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = GatewayProcess::start(&config(&refs, extra));
    let client = client(Proto::H1);
    let url = gw.url("/");

    let first = get(&client, &url, &[]).await;
    let set_cookie = first
        .header("set-cookie")
        .expect("the first answer pins the client")
        .to_owned();
    assert!(
        set_cookie.starts_with("sy=") && set_cookie.contains("Max-Age=3600") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    let pinned = first.header("x-backend").unwrap().to_owned();
    for _ in 0..12 {
        let reply = get(&client, &url, &[("cookie", &format!("other=1; {pair}"))]).await;
        assert_eq!(reply.header("x-backend"), Some(pinned.as_str()));
        assert!(reply.header("set-cookie").is_none(), "a held pin is not re-sent");
    }

    // The same endpoints in reverse order: the cookie names the endpoint, not
    // its position.
    let reversed: Vec<&Backend> = backends.iter().rev().collect();
    gw.rewrite_config(&config(&reversed, extra));
    gw.signal("HUP");
    assert!(
        gw.wait_log(Duration::from_secs(5), |v| has_message(v, "configuration reloaded"))
            .await
    );
    for _ in 0..6 {
        assert_eq!(who(&client, &url, &[("cookie", &pair)]).await.1, pinned);
    }

    // The pinned endpoint fails its checks: the client moves, and is re-pinned.
    let pinned_backend = backends.iter().find(|b| b.name == pinned).unwrap();
    pinned_backend.controls.sick.store(true, Ordering::Relaxed);
    wait_for_endpoint(&gw, pinned_backend.addr, Duration::from_secs(5), |e| {
        e["healthy"] == false
    })
    .await;
    let moved = get(&client, &url, &[("cookie", &pair)]).await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.header("x-backend"), Some(pinned.as_str()));
    let new_cookie = moved.header("set-cookie").expect("re-pinned");
    assert_ne!(new_cookie.split(';').next().unwrap(), pair);

    // A cookie naming no endpoint is ignored and replaced.
    let stray = get(&client, &url, &[("cookie", "sy=zzzz")]).await;
    assert_eq!(stray.status, 200);
    assert!(stray.header("set-cookie").is_some());
}
