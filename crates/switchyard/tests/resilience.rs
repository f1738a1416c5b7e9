//! Failure handling against real flaky backends: retries hide a flaky endpoint,
//! the retry budget caps load during an outage, non-idempotent requests are not
//! retried without opt-in, the circuit breaker fails fast and recovers,
//! concurrency limits shed load, idempotency keys replay, hedging beats a slow
//! endpoint, and faults are injected on demand.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Full};
use support::client::{client, get, send, Body, HttpClient, Proto, Reply};
use support::gateway::has_message;
use support::{Backend, GatewayProcess};

/// A gateway with cluster `api` over `backends` (plus `cluster_extra`) and the
/// given `[[routes]]` (all to `api`).
fn config(backends: &[&Backend], cluster_extra: &str, routes: &str) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{}]
{cluster_extra}

{routes}
"#,
        endpoints.join(", ")
    )
}

fn text_body(text: &str) -> Body {
    BodyExt::boxed(Full::new(bytes::Bytes::from(text.to_owned())).map_err(|never| match never {}))
}

async fn request(client: &HttpClient, method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(client, builder.body(text_body(body)).unwrap()).await
}

fn error_code(reply: &Reply) -> String {
    reply.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_endpoint_from_gets() {
    let flaky = Backend::start("flaky").await;
    let steady = Backend::start("steady").await;
    flaky.controls.flaky_percent.store(30, Ordering::Relaxed);
    let routes = r#"
[[routes]]
name = "retried"
match = { path_prefix = "/retried" }
cluster = "api"
retry = { attempts = 3, on = ["5xx"], backoff = { base = "1ms", max = "5ms" } }

[[routes]]
name = "bare"
match = { path_prefix = "/bare" }
cluster = "api"
"#;
    let gw = GatewayProcess::start(&config(&[&flaky, &steady], "", routes));

    // Without retries the flaky endpoint's 503s reach clients...
    let client = client(Proto::H1);
    let mut bare_failures = 0;
    for _ in 0..40 {
        if get(&client, &gw.url("/bare"), &[]).await.status != 200 {
            bare_failures += 1;
        }
    }
    assert!(bare_failures > 0, "the flaky endpoint fails some requests");

    // ...with them, none do, from several concurrent clients.
    let flaky_before = flaky.seen().len();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let url = gw.url("/retried");
            tokio::spawn(async move {
                let client = support::client::client(Proto::H1);
                let mut statuses = HashMap::new();
                for _ in 0..50 {
                    *statuses
                        .entry(get(&client, &url, &[]).await.status.as_u16())
                        .or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    let mut statuses = HashMap::new();
    for worker in workers {
        for (status, n) in worker.await.unwrap() {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    assert_eq!(statuses, HashMap::from([(200, 200)]), "every GET succeeded");
    let flaky_seen = flaky.seen().len() - flaky_before;
    assert!(flaky_seen >= 50, "the flaky endpoint took its share ({flaky_seen})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_upstream_load_during_an_outage() {
    let down = Backend::start("down").await;
    down.controls.fail_with.store(503, Ordering::Relaxed);
    let routes = r#"
[[routes]]
cluster = "api"
retry = { attempts = 5, on = ["5xx"], backoff = { base = "1ms", max = "2ms" } }
"#;
    let gw = GatewayProcess::start(&config(
        &[&down],
        r#"retry_budget = { ratio = 0.1, min_per_second = 1, window = "10s" }"#,
        routes,
    ));
    let client = client(Proto::H1);
    let requests = 200;
    for _ in 0..requests {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 503);
    }
    let seen = down.seen().len();
    // 200 requests, at most 10% of them retried plus the 1/s x 10s floor:
    // 230, against 1000 if every request took its 5 attempts.
    assert!(seen > requests, "some retries happened ({seen})");
    assert!(seen <= 230, "the budget held: the backend saw {seen} requests");
    assert!(
        gw.count_logs(|v| has_message(v, "retry budget exhausted: not retrying")) > 0,
        "{}",
        gw.dump_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_budget_caps_its_retries_below_the_clusters() {
    let down = Backend::start("down").await;
    down.controls.fail_with.store(503, Ordering::Relaxed);
    // The cluster's default budget (20% + 10/s) would allow 140 retries here.
    let routes = r#"
[[routes]]
cluster = "api"
retry = { attempts = 5, on = ["5xx"], backoff = { base = "1ms", max = "2ms" }, budget = 0.05 }
"#;
    let gw = GatewayProcess::start(&config(&[&down], "", routes));
    let client = client(Proto::H1);
    for _ in 0..200 {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 503);
    }
    let seen = down.seen().len();
    // 5% of 200 plus the route floor of 1/s x 10s: 20 retries.
    assert!(
        (201..=220).contains(&seen),
        "the route budget held: {seen} upstream requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_only_with_opt_in() {
    let down = Backend::start("down").await;
    down.controls.fail_with.store(503, Ordering::Relaxed);
    let routes = r#"
[[routes]]
name = "plain"
match = { path_prefix = "/plain" }
cluster = "api"
retry = { attempts = 3, on = ["5xx"], backoff = { base = "1ms" } }

[[routes]]
name = "opted-in"
match = { path_prefix = "/opted-in" }
cluster = "api"
retry = { attempts = 3, on = ["5xx"], backoff = { base = "1ms" }, non_idempotent = true }
"#;
    let gw = GatewayProcess::start(&config(&[&down], "", routes));
    let client = client(Proto::H1);
    let count = |path: &str| down.seen().iter().filter(|s| s.path_and_query == path).count();

    assert_eq!(
        request(&client, "POST", &gw.url("/plain/a"), &[], "x").await.status,
        503
    );
    assert_eq!(count("/plain/a"), 1, "a POST is not retried");
    assert_eq!(request(&client, "PUT", &gw.url("/plain/b"), &[], "x").await.status, 503);
    assert_eq!(count("/plain/b"), 3, "a PUT is idempotent: retried");
    assert_eq!(
        request(&client, "POST", &gw.url("/opted-in/c"), &[], "x").await.status,
        503
    );
    assert_eq!(count("/opted-in/c"), 3, "the route opted in");
    // The replayed body reached the upstream each time.
    let bodies: Vec<&str> = down
        .seen()
        .iter()
        .filter(|s| s.path_and_query == "/opted-in/c")
        .map(|s| {
            if s.headers.get("content-length").is_some_and(|v| v == "1") {
                "x"
            } else {
                "?"
            }
        })
        .collect();
    assert_eq!(bodies, ["x", "x", "x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_fails_fast_while_open_then_probes_and_closes() {
    let backend = Backend::start("b").await;
    // A hanging backend: every request would wait for the route timeout.
    backend.controls.delay_ms.store(2_000, Ordering::Relaxed);
    let routes = r#"
[[routes]]
cluster = "api"
timeout = "200ms"
"#;
    let gw = GatewayProcess::start(&config(
        &[&backend],
        r#"circuit_breaker = { consecutive_failures = 3, open_for = "2s", half_open_probes = 1 }"#,
        routes,
    ));
    let client = client(Proto::H1);
    for _ in 0..3 {
        let reply = get(&client, &gw.url("/"), &[]).await;
        assert_eq!(
            (reply.status.as_u16(), error_code(&reply)),
            (504, "upstream_timeout".to_owned())
        );
    }
    // Open: answered at once by the gateway, not forwarded.
    let seen_when_opened = backend.seen().len();
    for _ in 0..20 {
        let reply = get(&client, &gw.url("/"), &[]).await;
        assert_eq!(reply.status, 503);
        assert_eq!(error_code(&reply), "circuit_open");
        let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");
    }
    assert_eq!(
        backend.seen().len(),
        seen_when_opened,
        "nothing was forwarded while open"
    );
    assert!(gw.count_logs(|v| has_message(v, "circuit breaker opened")) == 1);

    // The backend recovers; after open_for a probe goes through and closes it.
    backend.controls.delay_ms.store(0, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&client, &gw.url("/"), &[]).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(error_code(&reply), "circuit_open");
        assert!(Instant::now() < deadline, "the breaker did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 200);
    }
    assert!(gw.count_logs(|v| has_message(v, "circuit breaker half-open: probing")) >= 1);
    assert!(gw.count_logs(|v| has_message(v, "circuit breaker closed")) == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_endpoint_breaker_steers_around_the_failing_endpoint() {
    let bad = Backend::start("bad").await;
    let good = Backend::start("good").await;
    bad.controls.fail_with.store(500, Ordering::Relaxed);
    let gw = GatewayProcess::start(&config(
        &[&bad, &good],
        r#"circuit_breaker = { consecutive_failures = 2, open_for = "30s", per_endpoint = true }"#,
        "[[routes]]\ncluster = \"api\"\n",
    ));
    let client = client(Proto::H1);
    let mut failures = 0;
    for _ in 0..30 {
        if get(&client, &gw.url("/"), &[]).await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "two failures open the bad endpoint's breaker; the rest go to good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_shed_load_with_a_reason() {
    let backend = Backend::start("b").await;
    backend.controls.delay_ms.store(300, Ordering::Relaxed);
    let gw = GatewayProcess::start(&config(
        &[&backend],
        r#"circuit_breaker = { max_concurrent = 2, max_pending = 1, pending_timeout = "50ms" }"#,
        "[[routes]]\ncluster = \"api\"\n",
    ));
    let url = gw.url("/");
    let replies = futures_util::future::join_all((0..6).map(|_| {
        let url = url.clone();
        async move { get(&client(Proto::H1), &url, &[]).await }
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let shed: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + shed.len(), 6);
    assert!(ok >= 2, "the two slots served");
    assert!(shed.len() >= 3, "the rest were shed ({} of 6)", shed.len());
    for reply in shed {
        assert_eq!(error_code(reply), "overloaded");
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("2 requests in flight") || message.contains("no request slot came free"),
            "{message}"
        );
    }
    assert!(backend.seen().len() <= 3, "shed requests never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_stored_answer() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
name = "wait"
match = { path_prefix = "/upload" }
cluster = "api"
idempotency = { ttl = "1m" }

[[routes]]
name = "reject"
match = { path_prefix = "/reject" }
cluster = "api"
idempotency = { concurrent = "reject" }
"#;
    let gw = GatewayProcess::start(&config(&[&backend], "", routes));
    let client = client(Proto::H1);
    let url = gw.url("/upload");
    let count = |path: &str| backend.seen().iter().filter(|s| s.path_and_query == path).count();

    let first = request(&client, "POST", &url, &[("idempotency-key", "k1")], "hello").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["received"], 5);
    assert!(first.header("idempotent-replayed").is_none());
    let again = request(&client, "POST", &url, &[("idempotency-key", "k1")], "hello").await;
    assert_eq!((again.status, again.text()), (first.status, first.text()));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("x-backend"), Some("b"), "stored headers come back too");
    assert_eq!(count("/upload"), 1, "the backend saw the request once");

    let other_body = request(&client, "POST", &url, &[("idempotency-key", "k1")], "bye").await;
    assert_eq!(other_body.status, 422);
    assert_eq!(error_code(&other_body), "idempotency_key_reused");
    // Without a key, nothing is kept.
    request(&client, "POST", &url, &[], "hello").await;
    assert_eq!(count("/upload"), 2);

    // 20 concurrent duplicates: one reaches the backend, all get its answer.
    backend.controls.delay_ms.store(300, Ordering::Relaxed);
    let replies = futures_util::future::join_all((0..20).map(|_| {
        let url = url.clone();
        async move {
            let client = support::client::client(Proto::H1);
            request(&client, "POST", &url, &[("idempotency-key", "k2")], "twenty").await
        }
    }))
    .await;
    assert_eq!(count("/upload"), 3, "one of the 20 duplicates ran");
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["received"], 6);
    }
    let replayed = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_some())
        .count();
    assert_eq!(replayed, 19);

    // With `concurrent = "reject"`, a duplicate of a running request gets 409.
    let rurl = gw.url("/reject");
    backend.controls.delay_ms.store(2_000, Ordering::Relaxed);
    let (a, b) = tokio::join!(
        request(&client, "POST", &rurl, &[("idempotency-key", "k3")], "x"),
        async {
            // The duplicate goes once the first is at the backend (which
            // records a request before its delay).
            for _ in 0..500 {
                if count("/reject") == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let client = support::client::client(Proto::H1);
            request(&client, "POST", &rurl, &[("idempotency-key", "k3")], "x").await
        }
    );
    backend.controls.delay_ms.store(0, Ordering::Relaxed);
    assert_eq!(a.status, 200);
    assert_eq!(
        (b.status.as_u16(), error_code(&b)),
        (409, "idempotency_in_progress".to_owned())
    );

    let bad_key = request(&client, "POST", &url, &[("idempotency-key", "")], "x").await;
    assert_eq!(bad_key.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_from_the_fast_endpoint() {
    let slow = Backend::start("slow").await;
    let fast = Backend::start("fast").await;
    slow.controls.delay_ms.store(1_000, Ordering::Relaxed);
    let routes = r#"
[[routes]]
cluster = "api"
hedge = { delay = "30ms" }
"#;
    let gw = GatewayProcess::start(&config(&[&slow, &fast], "", routes));
    let client = client(Proto::H1);
    for _ in 0..6 {
        let reply = get(&client, &gw.url("/"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.header("x-backend")), (200, Some("fast")));
    }
    assert!(
        !slow.seen().is_empty(),
        "some requests went to the slow endpoint first and were hedged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_on_to_another_endpoint() {
    let hung = Backend::start("hung").await;
    let fine = Backend::start("fine").await;
    hung.controls.delay_ms.store(5_000, Ordering::Relaxed);
    let routes = r#"
[[routes]]
cluster = "api"
timeout = "3s"
retry = { attempts = 2, on = ["gateway-error"], per_try_timeout = "500ms", backoff = { base = "1ms" } }
"#;
    let gw = GatewayProcess::start(&config(&[&hung, &fine], "", routes));
    let client = client(Proto::H1);
    for _ in 0..4 {
        let reply = get(&client, &gw.url("/"), &[]).await;
        assert_eq!((reply.status.as_u16(), reply.header("x-backend")), (200, Some("fine")));
    }
    assert!(
        !hung.seen().is_empty(),
        "the hung endpoint was tried first by some requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_sent_once_and_not_retried() {
    let down = Backend::start("down").await;
    down.controls.fail_with.store(503, Ordering::Relaxed);
    let routes = r#"
[[routes]]
cluster = "api"
retry = { attempts = 3, on = ["5xx"], backoff = { base = "1ms" }, max_replay_body = "16B" }
"#;
    let gw = GatewayProcess::start(&config(&[&down], "", routes));
    let client = client(Proto::H1);
    let big = "x".repeat(1000);
    assert_eq!(request(&client, "PUT", &gw.url("/big"), &[], &big).await.status, 503);
    assert_eq!(down.seen().len(), 1, "a body over max_replay_body is not retried");
    assert!(
        gw.wait_log(Duration::from_secs(2), |v| has_message(
            v,
            "request body larger than max_replay_body: sent once, not retried"
        ))
        .await
    );
    assert_eq!(
        request(&client, "PUT", &gw.url("/small"), &[], "tiny").await.status,
        503
    );
    assert_eq!(down.seen().len(), 4, "a small one is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_by_header_or_share() {
    let backend = Backend::start("b").await;
    let routes = r#"
[[routes]]
name = "on-demand"
match = { path_prefix = "/on-demand" }
cluster = "api"
fault = { abort_status = 418, abort_header = "x-fault-abort", delay = "10ms", delay_header = "x-fault-delay" }

[[routes]]
name = "always"
match = { path_prefix = "/always" }
cluster = "api"
fault = { abort_status = 503, abort_percent = 100 }
"#;
    let gw = GatewayProcess::start(&config(&[&backend], "", routes));
    let client = client(Proto::H1);
    assert_eq!(get(&client, &gw.url("/on-demand"), &[]).await.status, 200);
    assert_eq!(
        get(&client, &gw.url("/on-demand"), &[("x-fault-delay", "1")])
            .await
            .status,
        200,
        "a delay still forwards"
    );
    let aborted = get(&client, &gw.url("/on-demand"), &[("x-fault-abort", "yes")]).await;
    assert_eq!(
        (aborted.status.as_u16(), error_code(&aborted)),
        (418, "fault_injected".to_owned())
    );
    let overridden = get(&client, &gw.url("/on-demand"), &[("x-fault-abort", "429")]).await;
    assert_eq!(overridden.status, 429);
    for _ in 0..5 {
        assert_eq!(get(&client, &gw.url("/always"), &[]).await.status, 503);
    }
    assert_eq!(backend.seen().len(), 2, "aborted requests never reach the backend");
}
