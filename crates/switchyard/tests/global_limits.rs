//! Rate limits shared by two gateway processes through a private Redis: one
//! limit, exact counts across nodes; fail open or closed when Redis stops;
//! recovery when it comes back.

mod support;

use std::time::{Duration, Instant};

use support::client::{client, get, Proto};
use support::gateway::has_message;
use support::redis::RedisServer;
use support::{Backend, GatewayProcess};

fn config(backend: &Backend, redis: &str) -> String {
    format!(
        r#"
[cluster]
redis = "{redis}"
redis_timeout = "2s"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "open"
match = {{ path_prefix = "/open" }}
cluster = "api"
rate_limit = {{ rate = 5, per = "1m", scope = "global", headers = true }}

[[routes]]
name = "closed"
match = {{ path_prefix = "/closed" }}
cluster = "api"
rate_limit = {{ rate = 5, per = "1m", scope = "global", on_redis_error = "deny" }}
"#,
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit() {
    let redis = RedisServer::start();
    let backend = Backend::start("b").await;
    let one = GatewayProcess::start(&config(&backend, &redis.url()));
    let two = GatewayProcess::start(&config(&backend, &redis.url()));
    let client = client(Proto::H1);
    for _ in 0..3 {
        assert_eq!(get(&client, &one.url("/open"), &[]).await.status, 200);
    }
    let fourth = get(&client, &two.url("/open"), &[]).await;
    assert_eq!(fourth.status, 200);
    assert_eq!(
        fourth.header("ratelimit-remaining"),
        Some("1"),
        "the other node's requests count"
    );
    assert_eq!(get(&client, &two.url("/open"), &[]).await.status, 200);
    for gateway in [&one, &two] {
        let refused = get(&client, &gateway.url("/open"), &[]).await;
        assert_eq!(refused.status, 429);
        // Whole seconds rounded up from the first request: 11 on a slow run.
        assert!(
            matches!(refused.header("retry-after"), Some("11" | "12")),
            "{:?}",
            refused.headers
        );
    }
    assert_eq!(backend.seen().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_fails_open_or_closed_and_recovery_is_automatic() {
    let mut redis = RedisServer::start();
    let port = redis.addr.port();
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&config(&backend, &redis.url()));
    let client = client(Proto::H1);
    assert_eq!(get(&client, &gw.url("/closed"), &[]).await.status, 200);

    redis.stop();
    for _ in 0..8 {
        assert_eq!(get(&client, &gw.url("/open"), &[]).await.status, 200, "fails open");
    }
    let denied = get(&client, &gw.url("/closed"), &[]).await;
    assert_eq!(denied.status, 503, "fails closed");
    assert_eq!(denied.json()["error"]["code"], "rate_limit_unavailable");
    assert!(
        gw.wait_log(Duration::from_secs(5), |v| has_message(
            v,
            "rate limit store unreachable"
        ))
        .await
    );

    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &gw.url("/closed"), &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "the gateway did not reconnect to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Limits hold again: the restarted Redis started with empty buckets.
    let url = gw.url("/open");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&client, &url, &[]).await.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
}
