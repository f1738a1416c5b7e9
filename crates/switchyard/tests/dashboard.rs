//! The admin dashboard (`GET /` on the admin listener) in a real browser:
//! headless Chromium opens it with `?token=`, and the page must take the
//! token, stream `/api/stream` and show figures that move while traffic
//! flows. Chromium is driven over the DevTools protocol (CDP) on a
//! WebSocket; screenshots in light and dark mode land in
//! `target/test-artifacts/` for a person to look at.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::client::{client, get, Proto};
use support::{Backend, GatewayProcess};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "dash-secret-0123456789";

/// The Chromium binary on PATH (Debian calls it `chromium`, others
/// `chromium-browser`).
fn chromium_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "neither `chromium` nor `chromium-browser` is on PATH: the dashboard test needs headless \
         Chromium. Run scripts/test.sh, which installs it (Debian package `chromium`)."
    );
}

/// A headless Chromium started by this test; killed (this process only,
/// through its handle) when dropped, on panic too.
struct Chromium {
    child: Child,
    /// The browser's DevTools WebSocket address.
    ws_url: String,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Self {
        let binary = chromium_binary();
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1440,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        // Keep draining stderr for the browser's whole life, so it never
        // blocks on a full pipe, and hand over the DevTools address.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (pipe, sink) = (child.stderr.take().expect("piped stderr"), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut chromium = Chromium {
            child,
            ws_url: String::new(),
            stderr,
            _profile: profile,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => chromium.ws_url = url,
            Err(_) => panic!(
                "Chromium printed no `DevTools listening on ws://...` line within 30s (exit: {:?}); stderr:\n{}",
                chromium.child.try_wait(),
                chromium.stderr()
            ),
        }
        chromium
    }

    /// Waits up to `timeout` for the browser to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol connection to the browser, talking to one page
/// through a flattened session.
struct Cdp {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
    /// Every event received so far (`{"method", "params"}`).
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(ws_url))
            .await
            .expect("DevTools WebSocket connects within 10s")
            .expect("DevTools WebSocket handshake");
        Cdp {
            socket,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    /// Sends `method` (to the attached page, if any) and waits for its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// [`Cdp::call`], with the protocol's error as `Err` (transport trouble
    /// and time-outs still panic).
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let send = self.socket.send(Message::Text(message.to_string().into()));
        tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .unwrap_or_else(|_| panic!("sending {method} timed out"))
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30s"))
                .unwrap_or_else(|| panic!("DevTools connection closed while waiting for {method}"))
                .unwrap_or_else(|e| panic!("DevTools connection failed while waiting for {method}: {e}"));
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if reply["id"] == id {
                return match reply.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
            if reply.get("method").is_some() {
                self.events.push(reply);
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise): its value, or
    /// why it failed (a page still loading has no document to read yet).
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|error| panic!("evaluating {expression}: {error}"))
    }

    /// Evaluates `expression` every 200ms until `done` accepts its value.
    async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        expression: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.try_eval(expression).await;
            if let Ok(value) = &value {
                if done(value) {
                    return value.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last seen: {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the whole page, in `scheme` (`light` or `dark`).
    async fn screenshot(&mut self, scheme: &str) -> Vec<u8> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
        // Let a frame render with the new scheme, and size the view to the page.
        let height = self
            .eval("new Promise(r => requestAnimationFrame(() => r(document.documentElement.scrollHeight)))")
            .await
            .as_u64()
            .expect("page height");
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1440, "height": height.clamp(600, 4000), "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        png
    }
}

/// What the test reads off the page, in one evaluation.
const READ_PAGE: &str = r##"(() => {
  const q = (s) => document.querySelector(s);
  if (!q("#updates")) return { loading: location.href };
  const num = (s) => { const e = q(s); return e && e.dataset.value !== undefined ? Number(e.dataset.value) : null; };
  return {
    href: location.href,
    status: q("#status").dataset.state,
    error: q("#error").textContent,
    updates: Number(q("#updates").textContent),
    version: q("#version").textContent,
    api_rate: num('[data-route="api"] [data-field="rate"]'),
    api_requests: num('[data-route="api"] [data-field="requests"]'),
    api_p50: num('[data-route="api"] [data-field="p50"]'),
    status_errors: num('[data-route="status"] [data-field="errors"]'),
    mix_5xx: !!q('[data-route="status"] [data-field="mix"] [data-class="5xx"]'),
    dead_state: q('[data-cluster="web"] [data-endpoint="DEAD"]')?.dataset.state ?? null,
    failed_reloads: document.querySelectorAll('#reloads li[data-applied="false"]').length,
    hub_subscribers: num('[data-hub="events"] [data-field="subscribers"]'),
    hub_published: num('[data-hub="events"] [data-field="published"]'),
    nodes: document.querySelectorAll("#nodes tr[data-node]").length,
    nodes_up: [...document.querySelectorAll('#nodes [data-field="state"]')].filter((e) => e.textContent === "up").length,
    this_node: document.querySelectorAll('#nodes tr[data-this="true"]').length,
    nodes_note: q("#nodes-note").textContent,
    this_pid: Number(q('#processes tr[data-role="this process"]')?.dataset.pid ?? 0),
    this_state: q('#processes tr[data-role="this process"] [data-field="state"]')?.textContent ?? null,
    previous_pid: Number(q('#processes tr[data-role="previous process"]')?.dataset.pid ?? 0),
    previous_state: q('#processes tr[data-role="previous process"] [data-field="state"]')?.textContent ?? null,
    sparkline_points: Number(q("#sparkline").dataset.points || 0),
    background: getComputedStyle(document.body).backgroundColor,
  };
})()"##;

fn config(backend: std::net::SocketAddr, dead: std::net::SocketAddr, redis: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[cluster]
redis = "{redis}"
redis_timeout = "2s"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "api"
endpoints = [{{ address = "{backend}" }}]

[[clusters]]
name = "web"
endpoints = [{{ address = "{backend}" }}, {{ address = "{dead}" }}]
health_check = {{ path = "/healthz", interval = "300ms", timeout = "200ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
cluster = "api"

[[routes]]
name = "status"
match = {{ path_prefix = "/status/" }}
cluster = "api"

[[routes]]
name = "web"
match = {{ path_prefix = "/web/" }}
cluster = "web"

[[routes]]
name = "events"
match = {{ path_prefix = "/events/" }}
hub = {{ publish = [{{ topics = ">" }}] }}
"#
    )
}

/// A process started by an upgrade (not our child), stopped by its pid.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", &self.0.to_string()])
            .status();
    }
}

/// Where screenshots go: `target/test-artifacts/` of the workspace.
fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_streams_live_figures_in_a_real_browser() {
    let binary = chromium_binary();
    let backend = Backend::start("b").await;
    // An address nobody listens on: the health check marks it down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Cluster mode with a second node, which joins once the page is live.
    let redis = support::redis::RedisServer::start();
    let gw = GatewayProcess::start(&config(backend.addr, dead, &redis.url()));

    let started = Instant::now();
    let mut chromium = Chromium::start();
    let mut cdp = Cdp::connect(&chromium.ws_url).await;
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"})).await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().expect("a session id").to_owned());
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call("Log.enable", json!({})).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1440, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "light"}]}),
    )
    .await;
    let navigated = cdp
        .call(
            "Page.navigate",
            json!({"url": gw.admin_url(&format!("/?token={TOKEN}"))}),
        )
        .await;
    assert!(navigated["errorText"].is_null(), "navigation failed: {navigated}");

    // Background traffic while the page is watched: a request every 20ms
    // over three routes (one answering 503) until the checks are done, and
    // at most 1500 requests or 30s whatever happens.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, urls) = (
            stop.clone(),
            [gw.url("/api/items"), gw.url("/status/503"), gw.url("/web/page")],
        );
        tokio::spawn(async move {
            let c = client(Proto::H1);
            let deadline = Instant::now() + Duration::from_secs(30);
            for i in 0..1500 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                get(&c, &urls[i % urls.len()], &[]).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let read_page = READ_PAGE.replace("DEAD", &dead.to_string());
    // Live, with a request rate and a latency on the route that gets traffic.
    let first = cdp
        .wait_for(
            "the dashboard shows a request rate",
            Duration::from_secs(20),
            &read_page,
            |v| {
                v["status"] == "live"
                    && v["updates"].as_u64() >= Some(2)
                    && v["api_rate"].as_f64() > Some(0.0)
                    && v["api_p50"].as_f64() > Some(0.0)
            },
        )
        .await;
    assert!(
        !first["href"].as_str().unwrap().contains("token"),
        "the token is dropped from the address bar: {first}"
    );
    assert_eq!(first["version"], "1", "{first}");
    assert!(first["api_requests"].as_f64() > Some(0.0), "{first}");

    // The nodes panel: this node, then the second one when it joins.
    assert_eq!(first["this_node"], 1, "{first}");
    let peer = GatewayProcess::start(&config(backend.addr, dead, &redis.url()));
    let nodes = cdp
        .wait_for(
            "the nodes panel lists both nodes, up",
            Duration::from_secs(20),
            &read_page,
            |v| v["nodes"] == 2 && v["nodes_up"] == 2,
        )
        .await;
    assert!(
        nodes["nodes_note"].as_str().unwrap().starts_with("cluster mode"),
        "{nodes}"
    );

    // ... and the figures move: more events, more requests counted.
    let second = cdp
        .wait_for("the dashboard updates", Duration::from_secs(15), &read_page, |v| {
            v["updates"].as_u64() >= Some(first["updates"].as_u64().unwrap() + 2)
                && v["api_requests"].as_f64() > first["api_requests"].as_f64()
        })
        .await;
    assert_eq!(second["status"], "live", "{second}");

    // A hub with a subscriber and messages shows both.
    let subscriber = client(Proto::H1)
        .request(
            http::Request::get(gw.url("/events/news"))
                .header("accept", "text/event-stream")
                .body(support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(subscriber.status(), 200);
    let publisher = client(Proto::H1);
    for i in 0..3 {
        let request = http::Request::post(gw.url("/events/news"))
            .body(support::client::full(format!("update {i}")))
            .unwrap();
        assert_eq!(support::client::send(&publisher, request).await.status, 200);
    }
    cdp.wait_for(
        "the hub shows its subscriber",
        Duration::from_secs(15),
        &read_page,
        |v| v["hub_subscribers"].as_f64() == Some(1.0) && v["hub_published"].as_f64() == Some(3.0),
    )
    .await;
    drop(subscriber);

    // 5xx show in the status mix, the dead endpoint shows as unhealthy.
    cdp.wait_for(
        "5xx and an unhealthy endpoint are shown",
        Duration::from_secs(15),
        &read_page,
        |v| v["status_errors"].as_f64() > Some(0.0) && v["mix_5xx"] == true && v["dead_state"] == "unhealthy",
    )
    .await;

    // A rejected reload appears in the list, marked as failed.
    let valid = std::fs::read_to_string(&gw.config_path).unwrap();
    gw.rewrite_config(&valid.replace("cluster = \"web\"", "cluster = \"nowhere\""));
    gw.signal("HUP");
    let settled = cdp
        .wait_for(
            "the rejected reload is listed",
            Duration::from_secs(15),
            &read_page,
            |v| v["failed_reloads"].as_u64() >= Some(1) && v["sparkline_points"].as_u64() >= Some(2),
        )
        .await;
    assert_eq!(
        settled["version"], "1",
        "a rejected reload keeps the version: {settled}"
    );
    stop.store(true, Ordering::Relaxed);

    let dir = artifacts_dir();
    let light = cdp.screenshot("light").await;
    std::fs::write(dir.join("dashboard.png"), &light).expect("write dashboard.png");
    let light_background = cdp.eval(&read_page).await["background"].clone();
    let dark = cdp.screenshot("dark").await;
    std::fs::write(dir.join("dashboard-dark.png"), &dark).expect("write dashboard-dark.png");
    let dark_background = cdp.eval(&read_page).await["background"].clone();
    assert_ne!(light_background, dark_background, "dark mode changes the colours");

    // No script errors and no blocked resources (CSP) along the way.
    let problems: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|e| {
            e["method"] == "Runtime.exceptionThrown"
                || (e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error")
        })
        .collect();
    assert!(problems.is_empty(), "the page reported errors: {problems:#?}");

    // The processes panel: this process serving; after a binary upgrade
    // (the admin socket is handed over, so the page stays where it is),
    // the new process serving and the old one draining or gone.
    let shown = cdp.eval(&read_page).await;
    assert_eq!(shown["this_pid"], gw.pid(), "{shown}");
    assert_eq!(shown["this_state"], "serving", "{shown}");
    gw.rewrite_config(&valid);
    let upgraded = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["upgrade", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run switchyard upgrade");
    let answer = String::from_utf8_lossy(&upgraded.stdout).into_owned();
    assert!(
        upgraded.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&upgraded.stderr)
    );
    let successor: u32 = answer
        .split_whitespace()
        .nth(2)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {answer:?}"));
    let _successor = KillOnDrop(successor);
    let old_pid = gw.pid();
    cdp.wait_for(
        "the processes panel shows the upgrade",
        Duration::from_secs(20),
        &read_page,
        |v| {
            v["this_pid"] == successor
                && v["this_state"] == "serving"
                && v["previous_pid"] == old_pid
                && (v["previous_state"] == "draining" || v["previous_state"] == "exited")
        },
    )
    .await;

    // Ask the browser to quit, give it a moment, then the guard kills what is left.
    // (Sent without waiting: the browser may hang up before it answers.)
    let close = json!({"id": u32::MAX, "method": "Browser.close"}).to_string();
    let _ = tokio::time::timeout(Duration::from_secs(5), cdp.socket.send(Message::Text(close.into()))).await;
    chromium.wait_exit(Duration::from_secs(5));
    drop(chromium);
    tokio::time::timeout(Duration::from_secs(20), load)
        .await
        .expect("the load stops")
        .expect("the load task does not panic");
    drop(peer);
    eprintln!(
        "dashboard test: {} drove the page for {:.1}s; screenshots in {}",
        binary.display(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
}
