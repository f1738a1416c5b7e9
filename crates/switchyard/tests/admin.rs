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

    // The dashboard page (no data) also takes the token from its query or
    // its cookie, so a browser can open it; data paths never do.
    assert_eq!(get(&c, &gw.admin_url("/"), &[]).await.status, 401);
    let page = get(&c, &gw.admin_url(&format!("/?token={TOKEN}")), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let cookie = format!("theme=dark; switchyard_admin_token={TOKEN}");
    assert_eq!(get(&c, &gw.admin_url("/"), &[("cookie", &cookie)]).await.status, 200);
    let by_cookie = get(&c, &gw.admin_url("/api/config"), &[("cookie", &cookie)]).await;
    assert_eq!(by_cookie.status, 401, "data paths need the header");
    let by_query = get(&c, &gw.admin_url(&format!("/api/config?token={TOKEN}")), &[]).await;
    assert_eq!(by_query.status, 401);
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

/// `PUT /api/config` with `If-Match`.
async fn put_config(
    c: &support::client::HttpClient,
    url: String,
    body: &serde_json::Value,
    if_match: Option<&str>,
) -> support::client::Reply {
    let mut request = Request::put(url);
    if let Some(version) = if_match {
        request = request.header("if-match", version);
    }
    send(c, request.body(support::client::full(body.to_string())).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_is_versioned_and_writes_can_be_conditional() {
    let (_backend, gw) = gateway("").await;
    let c = client(Proto::H1);
    let current = get(&c, &gw.admin_url("/api/config"), &[]).await;
    assert_eq!(current.header("etag"), Some("\"1\""));
    let mut proposed = current.json();
    proposed["routes"][0]["timeout"] = "5s".into();

    // Two writers read version 1; the first to write wins, the second is told.
    let first = put_config(&c, gw.admin_url("/api/config"), &proposed, Some("\"1\"")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["version"], 2);
    assert_eq!(first.header("etag"), Some("\"2\""));
    proposed["routes"][0]["timeout"] = "7s".into();
    let second = put_config(&c, gw.admin_url("/api/config"), &proposed, Some("\"1\"")).await;
    assert_eq!(second.status, 412, "{}", second.text());
    assert_eq!(second.json()["error"]["code"], "version_conflict");
    let routes = get(&c, &gw.admin_url("/api/routes"), &[]).await.json();
    assert_eq!(
        routes["routes"][0]["timeout_ms"], 5_000,
        "the conflicting write changed nothing"
    );

    // Unconditional writes still apply; a malformed If-Match is refused.
    let third = put_config(&c, gw.admin_url("/api/config"), &proposed, None).await;
    assert_eq!(third.json()["version"], 3);
    let bad = put_config(&c, gw.admin_url("/api/config"), &proposed, Some("soon")).await;
    assert_eq!(bad.status, 400);
    let metrics = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("switchyard_config_version 3"), "{metrics}");
    // The dashboard figures list the reloads, the refused one included.
    let stats = get(&c, &gw.admin_url("/api/stats"), &[]).await.json();
    let reloads = stats["reloads"].as_array().unwrap();
    assert_eq!(reloads.len(), 4, "{reloads:?}");
    assert_eq!(reloads[2]["applied"], false);
    assert!(reloads[2]["detail"].as_str().unwrap().contains("version conflict"));
    assert_eq!(stats["version"], 3);
}

/// Every path and method the OpenAPI document lists answers (not 404 or
/// 405), and every path the admin API serves is in the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_api() {
    let (_backend, gw) = gateway("").await;
    let c = client(Proto::H1);
    let doc = get(&c, &gw.admin_url("/api/openapi.json"), &[]).await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                operation["responses"].is_object(),
                "{method} {path} documents its responses"
            );
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = switchyard_admin::ENDPOINTS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served, "the OpenAPI paths are the admin API's");

    // Each documented operation answers with a status it documents.
    for (method, path) in &documented {
        let concrete = path.replace("{service}", "users").replace("{id}", "users-1");
        let body = match (method.as_str(), path.as_str()) {
            ("PUT", "/api/config") => get(&c, &gw.admin_url("/api/config"), &[]).await.text(),
            ("PUT", "/api/log-level") => r#"{"level": "info"}"#.to_owned(),
            ("POST", _) => r#"{"id": "users-1", "address": "127.0.0.1:9", "ttl": "30s"}"#.to_owned(),
            _ => String::new(),
        };
        let request = Request::builder().method(method.as_str()).uri(gw.admin_url(&concrete));
        let reply = if path == "/api/stream" {
            // An endless stream: its head is enough.
            let request = request.body(support::client::empty()).unwrap();
            let response = tokio::time::timeout(std::time::Duration::from_secs(5), c.request(request))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            response.status().as_u16()
        } else {
            send(&c, request.body(support::client::full(body)).unwrap())
                .await
                .status
                .as_u16()
        };
        let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(
            responses.get(reply.to_string()).is_some(),
            "{method} {concrete} answered {reply}, which the document does not list: {responses}"
        );
        assert!(reply != 404 || path.contains("{id}"), "{method} {concrete} is served");
        assert_ne!(reply, 405, "{method} {concrete} is allowed");
    }
}
