//! The admin API: probes, the bearer token, and the running configuration.

mod support;

use http::Request;
use support::client::{client, get, send, Proto};
use support::{Backend, GatewayProcess};

const TOKEN: &str = "a-long-enough-admin-token";

async fn gateway(admin_extra: &str) -> (Backend, GatewayProcess) {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin_extra}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "up"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "all"
cluster = "up"
"#,
        backend.addr
    ));
    (backend, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_unknown_paths_are_json_errors() {
    let (_backend, gw) = gateway("").await;
    let c = client(Proto::H1);
    let live = get(&c, &gw.admin_url("/live"), &[]).await;
    assert_eq!(
        (live.status.as_u16(), live.json()["status"].as_str()),
        (200, Some("live"))
    );
    let ready = get(&c, &gw.admin_url("/ready"), &[]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
    let missing = get(&c, &gw.admin_url("/nope"), &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
    let wrong_method = send(
        &c,
        Request::delete(gw.admin_url("/api/config"))
            .body(support::client::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_probes_and_is_never_echoed() {
    let (_backend, gw) = gateway(&format!("token = \"{TOKEN}\"")).await;
    let c = client(Proto::H1);
    assert_eq!(
        get(&c, &gw.admin_url("/live"), &[]).await.status,
        200,
        "probes need no token"
    );
    assert_eq!(get(&c, &gw.admin_url("/ready"), &[]).await.status, 200);

    let denied = get(&c, &gw.admin_url("/api/config"), &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["code"], "unauthorized");
    let wrong = get(
        &c,
        &gw.admin_url("/api/config"),
        &[("authorization", "Bearer not-the-token-at-all")],
    )
    .await;
    assert_eq!(wrong.status, 401);

    let bearer = format!("Bearer {TOKEN}");
    let config = get(&c, &gw.admin_url("/api/config"), &[("authorization", &bearer)]).await;
    assert_eq!(config.status, 200);
    assert!(
        !config.text().contains(TOKEN),
        "the token is redacted: {}",
        config.text()
    );
    assert_eq!(config.json()["admin"]["token"], "<redacted>");

    // Sending the served config back keeps the running token.
    let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::Full::new(config.body.clone()),
        |never| match never {},
    ));
    let put = Request::put(gw.admin_url("/api/config"))
        .header("authorization", &bearer)
        .body(body)
        .unwrap();
    assert_eq!(send(&c, put).await.status, 200);
    let again = get(&c, &gw.admin_url("/api/config"), &[("authorization", &bearer)]).await;
    assert_eq!(again.status, 200, "the token still works after the round trip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_listed_and_a_dry_run_shows_the_diff_without_applying() {
    let (_backend, gw) = gateway("").await;
    let c = client(Proto::H1);
    let routes = get(&c, &gw.admin_url("/api/routes"), &[]).await.json();
    assert_eq!(routes["routes"][0]["name"], "all");
    assert_eq!(routes["routes"][0]["action"]["cluster"], "up");
    assert_eq!(routes["routes"][0]["timeout_ms"], 30_000);

    let mut proposed = get(&c, &gw.admin_url("/api/config"), &[]).await.json();
    proposed["routes"][0]["timeout"] = "5s".into();
    proposed["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "extra", "match": {"path_prefix": "/x"}, "direct": {"status": 204}}));
    let put = |body: serde_json::Value, query: &'static str| {
        let (c, url) = (c.clone(), gw.admin_url(&format!("/api/config{query}")));
        async move {
            use http_body_util::BodyExt;
            let body = http_body_util::Full::new(bytes::Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed();
            send(&c, Request::put(url).body(body).unwrap()).await
        }
    };
    let dry = put(proposed.clone(), "?dry_run=true").await;
    assert_eq!(dry.status, 200);
    let answer = dry.json();
    assert_eq!(answer["status"], "valid");
    assert_eq!(answer["diff"]["routes"]["added"], serde_json::json!(["extra"]));
    assert_eq!(answer["diff"]["routes"]["changed"], serde_json::json!(["all"]));
    assert_eq!(answer["diff"]["clusters"]["changed"], serde_json::json!([]));
    // Nothing was applied.
    let still = get(&c, &gw.admin_url("/api/routes"), &[]).await.json();
    assert_eq!(still["routes"].as_array().unwrap().len(), 1);
    assert_eq!(still["routes"][0]["timeout_ms"], 30_000);

    let mut broken = proposed.clone();
    broken["routes"][1]["direct"]["status"] = 99.into();
    let refused = put(broken, "?dry_run=true").await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["dry_run"], true);

    assert_eq!(put(proposed, "").await.status, 200);
    let applied = get(&c, &gw.admin_url("/api/routes"), &[]).await.json();
    assert_eq!(applied["routes"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time() {
    let (_backend, gw) = gateway("").await;
    let c = client(Proto::H1);
    let put = |body: &'static str| {
        let (c, url) = (c.clone(), gw.admin_url("/api/log-level"));
        async move {
            use http_body_util::BodyExt;
            let body = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed();
            send(&c, Request::put(url).body(body).unwrap()).await
        }
    };
    // A request with two Host headers is refused and logged at debug level.
    let two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let rejected = |v: &serde_json::Value| v["message"] == "request rejected";

    assert_eq!(
        get(&c, &gw.admin_url("/api/log-level"), &[]).await.json()["level"],
        "info"
    );
    support::client::raw(gw.addr(), two_hosts, std::time::Duration::from_secs(2)).await;
    assert_eq!(gw.count_logs(rejected), 0, "debug lines are off at info");

    let bad = put(r#"{"level": "info,=="}"#).await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()["error"]["code"].as_str()),
        (400, Some("invalid_log_level"))
    );
    assert_eq!(put(r#"{"level": "debug"}"#).await.status, 200);
    assert_eq!(
        get(&c, &gw.admin_url("/api/log-level"), &[]).await.json()["level"],
        "debug"
    );
    support::client::raw(gw.addr(), two_hosts, std::time::Duration::from_secs(2)).await;
    assert!(
        gw.wait_log(std::time::Duration::from_secs(5), rejected).await,
        "debug lines appear after the change"
    );
}
