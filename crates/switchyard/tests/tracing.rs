//! Distributed tracing: W3C trace context is continued (or started) and
//! passed upstream with each attempt's own span id; spans for the request
//! and each attempt reach a loopback OTLP/HTTP receiver with their
//! parent/child ids and attributes; sampling and collector failures never
//! touch the requests.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::client::{client, get, Proto};
use support::{Backend, GatewayProcess};

/// A loopback OTLP/HTTP (JSON) receiver that keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    /// The status it answers with.
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (kept, answer) = (spans.clone(), status.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (kept, answer) = (kept.clone(), answer.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (kept, answer) = (kept.clone(), answer.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/json");
                            assert_eq!(req.headers()["x-collector-key"], "k-123");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export: Value = serde_json::from_slice(&body).unwrap();
                            let resource = &export["resourceSpans"][0];
                            assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "edge-gw");
                            let mut kept = kept.lock().unwrap();
                            for span in resource["scopeSpans"][0]["spans"].as_array().unwrap() {
                                kept.push(span.clone());
                            }
                            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *response.status_mut() =
                                http::StatusCode::from_u16(answer.load(Ordering::Relaxed)).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            status,
            task,
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Value> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| s["traceId"] == trace_id).cloned().collect()
    }

    /// Waits (bounded) until `trace_id` has `count` spans.
    async fn wait_for(&self, trace_id: &str, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            let spans = self.of_trace(trace_id);
            if spans.len() >= count {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "trace {trace_id}: {} spans arrived, expected {count}",
            self.of_trace(trace_id).len()
        );
    }
}

fn attribute<'v>(span: &'v Value, key: &str) -> &'v Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or(&Value::Null)
}

fn gateway(collector: SocketAddr, ratio: f64, endpoints: &[SocketAddr]) -> GatewayProcess {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    GatewayProcess::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[tracing]
otlp_endpoint = "http://{collector}/v1/traces"
sample_ratio = {ratio}
service_name = "edge-gw"
batch_size = 50
batch_timeout = "100ms"
headers = {{ "x-collector-key" = "k-123" }}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
balancer = "round_robin"
endpoints = [{}]

[[routes]]
name = "api"
cluster = "api"
retry = {{ attempts = 2, on = ["5xx"], backoff = {{ base = "1ms", max = "2ms" }} }}
"#,
        endpoints.join(", ")
    ))
}

/// `traceparent` parts: (trace id, parent id, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    (fields[1].to_owned(), fields[2].to_owned(), fields[3].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_request_and_its_attempts_reach_the_collector_with_their_ids() {
    let collector = Collector::start().await;
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.controls.fail_with.store(503, Ordering::Relaxed);
    let gw = gateway(collector.addr, 1.0, &[good.addr, bad.addr]);
    let c = client(Proto::H1);

    // A caller's trace is continued; round robin sends one of two requests to
    // the failing endpoint first, so one of them retries.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    for _ in 0..2 {
        let reply = get(
            &c,
            &gw.url("/orders/7"),
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // 2 server spans, 3 client spans (1 + 2 attempts).
    let spans = collector.wait_for(trace_id, 5).await;
    let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 2).collect();
    let clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!((servers.len(), clients.len()), (2, 3), "{spans:#?}");
    for server in &servers {
        assert_eq!(
            server["parentSpanId"], caller_span,
            "the server span's parent is the caller's span"
        );
        assert_eq!(server["name"], "GET api");
        assert_eq!(attribute(server, "http.response.status_code")["intValue"], "200");
        assert_eq!(attribute(server, "url.path")["stringValue"], "/orders/7");
        assert_eq!(attribute(server, "switchyard.route")["stringValue"], "api");
        assert_eq!(server["status"]["code"], 0);
        let start: u128 = server["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = server["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(end >= start);
    }
    for client in &clients {
        assert!(
            servers.iter().any(|s| s["spanId"] == client["parentSpanId"]),
            "each attempt is a child of a request span: {client}"
        );
    }
    // The retried request: two attempts under one server span, the first
    // failed (503 from `bad`), the second good.
    let retried = servers
        .iter()
        .find(|s| clients.iter().filter(|c| c["parentSpanId"] == s["spanId"]).count() == 2)
        .expect("one request retried");
    let mut attempts: Vec<&&Value> = clients
        .iter()
        .filter(|c| c["parentSpanId"] == retried["spanId"])
        .collect();
    attempts.sort_by_key(|c| {
        attribute(c, "switchyard.attempt")["intValue"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert_eq!(attribute(attempts[0], "http.response.status_code")["intValue"], "503");
    assert_eq!(attempts[0]["status"]["code"], 2, "a 503 attempt is an error");
    assert_eq!(
        attribute(attempts[0], "server.address")["stringValue"],
        bad.addr.to_string()
    );
    assert_eq!(attribute(attempts[1], "http.response.status_code")["intValue"], "200");
    assert_eq!(
        attribute(attempts[1], "server.address")["stringValue"],
        good.addr.to_string()
    );

    // Upstreams saw the trace with the attempt's span as parent, and the
    // caller's tracestate untouched.
    let attempt_ids: Vec<&str> = clients.iter().map(|c| c["spanId"].as_str().unwrap()).collect();
    let upstream_seen: Vec<_> = good.seen().into_iter().chain(bad.seen()).collect();
    assert_eq!(upstream_seen.len(), 3);
    for seen in &upstream_seen {
        let (seen_trace, parent, flags) = parts(seen.headers["traceparent"].to_str().unwrap());
        assert_eq!(seen_trace, trace_id);
        assert_eq!(flags, "01");
        assert!(attempt_ids.contains(&parent.as_str()), "{parent} is an attempt span");
        assert_eq!(seen.headers["tracestate"], "vendor=abc");
    }

    // The access log carries the trace id.
    assert!(
        gw.wait_log(Duration::from_secs(5), |l| support::gateway::is_access(l)
            && l["trace_id"] == trace_id)
            .await,
        "{}",
        gw.dump_logs()
    );

    // Without a traceparent the gateway starts the trace.
    let before = good.seen().len();
    let mut fresh = None;
    for _ in 0..4 {
        get(&c, &gw.url("/fresh"), &[("tracestate", "orphan=1")]).await;
        if good.seen().len() > before {
            fresh = good.seen().last().cloned();
            break;
        }
    }
    let fresh = fresh.expect("a request reached the good endpoint");
    let (new_trace, parent, flags) = parts(fresh.headers["traceparent"].to_str().unwrap());
    assert_ne!(new_trace, trace_id);
    assert_eq!(flags, "01", "sample_ratio 1 records every new trace");
    assert!(
        fresh.headers.get("tracestate").is_some(),
        "a tracestate without traceparent passes as sent"
    );
    let spans = collector.wait_for(&new_trace, 2).await;
    let root = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert!(
        root.get("parentSpanId").is_none(),
        "a new trace's root has no parent: {root}"
    );
    assert!(spans.iter().any(|s| s["spanId"] == parent.as_str()));
    assert!(
        gw.wait_log(Duration::from_secs(5), |l| support::gateway::is_access(l)
            && l["trace_id"] == new_trace.as_str())
            .await
    );

    let metrics = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_trace_spans_total{result=\"exported\"}")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_callers_flag_and_a_failing_collector_costs_nothing() {
    let collector = Collector::start().await;
    let backend = Backend::start("b").await;
    let gw = gateway(collector.addr, 0.0, &[backend.addr]);
    let c = client(Proto::H1);

    // Ratio 0: new traces are not recorded, and say so upstream.
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/x"), &[]).await.status, 200);
    }
    for seen in backend.seen() {
        let (_, _, flags) = parts(seen.headers["traceparent"].to_str().unwrap());
        assert_eq!(flags, "00");
    }
    // A caller that records wins over the ratio; one that does not is not recorded.
    let sampled = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = "1af7651916cd43dd8448eb211c80319c";
    get(
        &c,
        &gw.url("/x"),
        &[("traceparent", &format!("00-{sampled}-b7ad6b7169203331-01"))],
    )
    .await;
    get(
        &c,
        &gw.url("/x"),
        &[("traceparent", &format!("00-{unsampled}-b7ad6b7169203331-00"))],
    )
    .await;
    collector.wait_for(sampled, 2).await;
    // Batches go out every 100 ms: anything else recorded would be there by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let traces: std::collections::HashSet<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s["traceId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(traces.len(), 1, "only the caller-sampled trace is recorded: {traces:?}");

    // The collector fails: requests are untouched, the failure is counted.
    collector.status.store(503, Ordering::Relaxed);
    for i in 0..20 {
        let traceparent = format!("00-{sampled}-{:016x}-01", i + 1);
        assert_eq!(
            get(&c, &gw.url("/x"), &[("traceparent", &traceparent)]).await.status,
            200
        );
    }
    let mut failed = 0.0;
    for _ in 0..50 {
        let metrics = get(&c, &gw.admin_url("/metrics"), &[]).await.text();
        failed = metrics
            .lines()
            .find(|l| l.starts_with("switchyard_trace_spans_total{result=\"failed\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if failed >= 40.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed >= 40.0,
        "20 requests x 2 spans counted as failed exports, got {failed}"
    );
    assert!(
        gw.wait_log(Duration::from_secs(5), |l| support::gateway::has_message(
            l,
            "span export failed; these spans are dropped"
        ))
        .await
    );
}

#[test]
fn tracing_settings_are_checked() {
    let check = |section: &str| {
        let text = format!(
            "{section}\n[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n\n[[clusters]]\nname = \"c\"\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n\n[[routes]]\ncluster = \"c\"\n"
        );
        match switchyard_config::parse_toml(&text, "t.toml") {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        }
    };
    assert_eq!(
        check("[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\""),
        ""
    );
    assert!(check("[tracing]\nsample_ratio = 0.5").contains("needs `otlp_endpoint`"));
    assert!(check("[tracing]\notlp_endpoint = \"udp://x\"").contains("not an http:// or https://"));
    assert!(check("[tracing]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 2.0").contains("between 0 and 1"));
    assert!(check("[tracing]\notlp_endpoint = \"http://c:4318\"\nbatch_size = 0").contains("batch_size"));
    let line = check("[tracing]\notlp_endpoint = \"http://c:4318\"\nsampling = 1");
    assert!(line.contains("t.toml:3"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_calls_are_child_spans_of_the_request() {
    let collector = Collector::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let gw = GatewayProcess::start(&format!(
        r#"
[tracing]
otlp_endpoint = "http://{}/v1/traces"
service_name = "edge-gw"
batch_timeout = "100ms"
headers = {{ "x-collector-key" = "k-123" }}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "one"
endpoints = [{{ address = "{}" }}]

[[clusters]]
name = "two"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "home"
aggregate = {{ calls = [
  {{ name = "a", cluster = "one", path = "/a" }},
  {{ name = "b", cluster = "two", path = "/b/{{call.a/path}}" }},
] }}
"#,
        collector.addr, one.addr, two.addr
    ));
    let trace_id = "5cf92f3577b34da6a3ce929d0e0e4737";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = get(&client(Proto::H1), &gw.url("/home"), &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["b"]["path"], "/b/%2Fa", "b used a's answer");
    let spans = collector.wait_for(trace_id, 3).await;
    let servers: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 2).collect();
    let clients: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!((servers.len(), clients.len()), (1, 2), "{spans:#?}");
    let mut upstreams: Vec<String> = Vec::new();
    for span in &clients {
        assert_eq!(
            span["parentSpanId"], servers[0]["spanId"],
            "each call is a child of the request"
        );
        upstreams.push(
            attribute(span, "server.address")["stringValue"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    upstreams.sort();
    let mut want = vec![one.addr.to_string(), two.addr.to_string()];
    want.sort();
    assert_eq!(upstreams, want);
    // Each upstream saw the trace, with its own call's attempt as parent.
    for backend in [&one, &two] {
        let span = clients
            .iter()
            .find(|s| attribute(s, "server.address")["stringValue"] == backend.addr.to_string())
            .unwrap();
        let (seen_trace, parent, _) = parts(backend.seen()[0].headers["traceparent"].to_str().unwrap());
        assert_eq!(seen_trace, trace_id);
        assert_eq!(parent, span["spanId"].as_str().unwrap());
    }
}
