//! `GET /metrics`: the exposition passes `promtool check metrics` after mixed
//! traffic, and the counters match the requests sent.

mod support;

use std::process::{Command, Stdio};

use http::Request;
use support::client::{client, get, send, Proto};
use support::{Backend, GatewayProcess};

/// The value of the sample `name{labels}` (labels in the order the text
/// format prints them: sorted by name).
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_is_valid_and_counts_what_happened() {
    let backend = Backend::start("b").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "ok"
match = {{ path_prefix = "/ok" }}
cluster = "api"
rate_limit = {{ rate = 1000, per = "1s" }}

[[routes]]
name = "status"
match = {{ path_prefix = "/status/" }}
cluster = "api"
"#,
        backend.addr
    ));
    let c = client(Proto::H1);
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/ok"), &[]).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/status/503"), &[]).await.status, 503);
    }
    for _ in 0..2 {
        let post = Request::post(gw.url("/ok"))
            .body(support::client::full(vec![b'x'; 100]))
            .unwrap();
        assert_eq!(send(&c, post).await.status, 200);
    }
    assert_eq!(get(&c, &gw.url("/nowhere"), &[]).await.status, 404);

    let scrape = get(&c, &gw.admin_url("/metrics"), &[]).await;
    assert_eq!(scrape.status, 200);
    assert!(scrape
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = scrape.text();

    let requests = |route: &str, method: &str, class: &str, cluster: &str| {
        sample(
            &text,
            &format!(
                "switchyard_requests_total{{cluster=\"{cluster}\",method=\"{method}\",route=\"{route}\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(requests("ok", "GET", "2xx", "api"), Some(10.0), "{text}");
    assert_eq!(requests("ok", "POST", "2xx", "api"), Some(2.0));
    assert_eq!(requests("status", "GET", "5xx", "api"), Some(3.0));
    assert_eq!(requests("-", "GET", "4xx", "-"), Some(1.0), "unrouted requests");
    assert_eq!(
        sample(&text, "switchyard_request_duration_seconds_count{route=\"ok\"}"),
        Some(12.0)
    );
    assert_eq!(
        sample(&text, "switchyard_upstream_response_seconds_count{cluster=\"api\"}"),
        Some(15.0)
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_rate_limit_decisions_total{decision=\"allowed\",route=\"ok\"}"
        ),
        Some(12.0)
    );
    let endpoint = format!("{{cluster=\"api\",endpoint=\"{}\"}}", backend.addr);
    assert_eq!(
        sample(&text, &format!("switchyard_endpoint_available{endpoint}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("switchyard_endpoint_in_flight{endpoint}")),
        Some(0.0)
    );
    assert!(sample(&text, &format!("switchyard_endpoint_latency_ewma_seconds{endpoint}")).unwrap() > 0.0);
    assert_eq!(
        sample(&text, "switchyard_config_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "switchyard_config_version"), Some(1.0));
    assert!(
        sample(
            &text,
            "switchyard_connections_total{listener=\"public\",result=\"accepted\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(&text, "switchyard_response_body_bytes_total{route=\"ok\"}").unwrap() > 0.0,
        "body bytes are counted"
    );
    assert_eq!(
        sample(&text, "switchyard_request_body_bytes_total{route=\"ok\"}"),
        Some(200.0),
        "request body bytes are counted"
    );
    assert!(
        !text.contains("/nowhere") && !text.contains("127.0.0.1\",method"),
        "no raw paths or client addresses"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package): run scripts/test.sh, which installs it");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
