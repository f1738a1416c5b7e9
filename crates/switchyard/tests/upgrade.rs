//! Zero-downtime binary upgrade: `switchyard upgrade` and SIGUSR2 start the
//! binary again, the new process takes the listening sockets over (file
//! descriptors passed over the upgrade socket), and the old one stops
//! accepting, drains and exits. Load loops through the upgrade see no
//! refused connection and no failed request; a WebSocket opened before it
//! keeps flowing on the old process until it ends.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Request;
use support::backend::Backend;
use support::client::{client, empty, get, Proto};
use support::gateway::has_message;
use support::ws::{config as ws_config, EchoServer};
use support::GatewayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn config(backend: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
[runtime]
upgrade_drain_timeout = "30s"

[admin]
listen = "127.0.0.1:0"

[access_log]
enabled = false

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "app"
endpoints = [{{ address = "{backend}" }}]

[[clusters]]
name = "echo"
endpoints = [{{ address = "{echo}" }}]

[[routes]]
name = "ws"
match = {{ path = "/ws" }}
cluster = "echo"

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
cluster = "app"
"#
    )
}

/// A process the upgrade started (not our child): stopped by its pid when
/// the test ends, however it ends.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        // Only while the pid is still a switchyard of ours (not reused).
        let ours = std::fs::read(format!("/proc/{}/cmdline", self.0))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("switchyard"));
        if ours {
            let _ = Command::new("kill").args(["-s", "KILL", &self.0.to_string()]).status();
        }
    }
}

/// Runs `switchyard upgrade` for the gateway's configuration.
fn upgrade(gw: &GatewayProcess) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["upgrade", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run switchyard upgrade")
}

/// The new process's pid, from `switchyard upgrade`'s answer.
fn new_pid(output: &std::process::Output) -> u32 {
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "process")
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// Counts of one load loop.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    connect_errors: AtomicU64,
    failed: AtomicU64,
}

/// One request on a new connection (`Connection: close`).
async fn fresh_request(addr: SocketAddr, tally: &Tally) {
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => {
            eprintln!("connect error: {error}");
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let request = b"GET /fresh HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    let done = async {
        stream.write_all(request).await?;
        stream.read_to_end(&mut answer).await
    };
    match tokio::time::timeout(Duration::from_secs(10), done).await {
        Ok(Ok(_)) if answer.starts_with(b"HTTP/1.1 200") => tally.ok.fetch_add(1, Ordering::Relaxed),
        other => {
            eprintln!("fresh request failed: {other:?} {:?}", String::from_utf8_lossy(&answer));
            tally.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_loop_through_an_upgrade_sees_no_refused_connection_and_no_failed_request() {
    let backend = Backend::start("app").await;
    let echo = EchoServer::start("echo").await;
    let mut gw = GatewayProcess::start(&config(backend.addr, echo.addr));
    let old_pid = gw.pid();
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());

    // Load: 3 loops of new connections, 2 of pooled HTTP/1.1 keep-alive and
    // 1 of HTTP/2, until told to stop (at most 60 s and 50,000 requests each).
    let mut loops = Vec::new();
    for _ in 0..3 {
        let (stop, tally) = (stop.clone(), tally.clone());
        loops.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                fresh_request(addr, &tally).await;
            }
        }));
    }
    for proto in [Proto::H1, Proto::H1, Proto::H2] {
        let (stop, tally) = (stop.clone(), tally.clone());
        let http = client(proto);
        let url = gw.url("/pooled");
        loops.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let request = Request::get(&url).body(empty()).unwrap();
                match tokio::time::timeout(Duration::from_secs(10), http.request(request)).await {
                    Ok(Ok(response)) if response.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("{proto:?} request failed: {other:?}");
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // A WebSocket opened on the old process.
    let url = format!("ws://{addr}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), false)
        .await
        .expect("WebSocket handshake");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    // Let the load run on the old process, then upgrade under it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.ok.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "the load does not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = tally.ok.load(Ordering::Relaxed);
    let output = upgrade(&gw);
    assert!(
        output.status.success(),
        "switchyard upgrade failed: {}\n{}\nlogs:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        gw.dump_logs()
    );
    let successor = Successor(new_pid(&output));
    assert_ne!(successor.0, old_pid);

    // The new process answers on the same admin address and names the old one.
    let admin = client(Proto::H1);
    let processes = get(&admin, &gw.admin_url("/api/processes"), &[]).await.json();
    assert_eq!(processes["this"]["pid"], successor.0, "{processes}");
    assert_eq!(processes["previous"][0]["pid"], old_pid, "{processes}");
    assert_eq!(processes["previous"][0]["state"], "draining", "{processes}");

    // The WebSocket still flows, on the old process, which waits for it.
    for i in 0..20 {
        let text = format!("after-{i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.wait_exit(Duration::from_millis(10)).await.is_none(),
        "the old process left its WebSocket"
    );
    // It reports its WebSocket (once a second) to the new process.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reported = get(&admin, &gw.admin_url("/api/processes"), &[]).await.json();
        if reported["previous"][0]["open_connections"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "no report of the WebSocket: {reported}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // More load on the new process alone, then stop.
    let after_upgrade = tally.ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.ok.load(Ordering::Relaxed) < after_upgrade + 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.unwrap();
    }

    // The WebSocket ends: the old process has nothing left and exits.
    ws.close(None).await.unwrap();
    drop(ws);
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process did not exit cleanly: {status:?}; {}",
        get(&admin, &gw.admin_url("/api/processes"), &[]).await.json()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let processes = get(&admin, &gw.admin_url("/api/processes"), &[]).await.json();
        if processes["previous"][0]["state"] == "exited" {
            break;
        }
        assert!(Instant::now() < deadline, "the exit was not seen: {processes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let connect_errors = tally.connect_errors.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    eprintln!("upgrade under load: {ok} requests ({before} before the upgrade), {connect_errors} connect errors, {failed} failed");
    assert!(before > 0 && ok > after_upgrade + 500, "the load did not run: {ok}");
    assert_eq!(connect_errors, 0, "connections refused during the upgrade");
    assert_eq!(failed, 0, "requests failed during the upgrade");
    let retired = gw.count_logs(|v| {
        has_message(
            v,
            "upgrade: the new process serves; this one stops accepting and drains",
        )
    });
    assert_eq!(retired, 1, "the old process logs its retirement once");
    drop(successor);
}

/// The pids of the processes upgrades started so far, in order (from the
/// shared log: a successor writes where its predecessor did).
fn started_pids(gw: &GatewayProcess) -> Vec<u32> {
    gw.logs()
        .iter()
        .filter(|v| has_message(v, "upgrade: new process started"))
        .filter_map(|v| v["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_again_and_a_failed_upgrade_leaves_the_process_serving() {
    let backend = Backend::start("app").await;
    let echo = EchoServer::start("echo").await;
    let good = config(backend.addr, echo.addr);
    let mut gw = GatewayProcess::start(&good);
    let old_pid = gw.pid();
    // A new client (so a new connection) for each request: a pooled
    // connection to a retiring process may be closed just as it is reused,
    // the usual HTTP/1.1 keep-alive race, which is not what this tests.
    let fresh = || client(Proto::H1);
    let serving_pid = |processes: serde_json::Value| processes["this"]["pid"].as_u64().unwrap() as u32;

    // An invalid file: refused before anything starts.
    gw.rewrite_config(&good.replace("path_prefix = \"/\"", "path_prefix = \"no-slash\""));
    let output = upgrade(&gw);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("path_prefix") && stderr.contains("not upgrading"),
        "{stderr}"
    );

    // A valid file the new process cannot serve (its listener's port is
    // taken): the new process exits, and the old one serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let extra = format!("\n[[listeners]]\nname = \"second\"\nlisten = \"127.0.0.1:{port}\"\n");
    gw.rewrite_config(&format!("{good}{extra}"));
    let output = upgrade(&gw);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        stderr.contains("upgrade failed") && stderr.contains("exited"),
        "{stderr}"
    );
    assert_eq!(get(&fresh(), &gw.url("/still"), &[]).await.status, 200);
    let processes = get(&fresh(), &gw.admin_url("/api/processes"), &[]).await.json();
    assert_eq!(serving_pid(processes), old_pid);

    // SIGUSR2 upgrades; the new process can be upgraded the same way again.
    drop(taken);
    gw.rewrite_config(&good);
    let mut chain = vec![old_pid];
    for round in 1..=2 {
        let before = started_pids(&gw).len();
        let current = *chain.last().unwrap();
        let status = Command::new("kill")
            .args(["-s", "USR2", &current.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let next = loop {
            let processes = get(&fresh(), &gw.admin_url("/api/processes"), &[]).await.json();
            let pid = serving_pid(processes.clone());
            if pid != current && started_pids(&gw).len() > before {
                assert_eq!(processes["previous"][0]["pid"], current, "{processes}");
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no upgrade; logs:\n{}",
                gw.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        chain.push(next);
        let _guard = Successor(next);
        assert_eq!(get(&fresh(), &gw.url("/after"), &[]).await.status, 200);
        // The previous process had no long-lived connection: it exits.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let processes = get(&fresh(), &gw.admin_url("/api/processes"), &[]).await.json();
            if processes["previous"][0]["state"] == "exited" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the old process stays: {processes}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if round == 2 {
            // Only the last process is left; stop it here, by its pid.
            drop(_guard);
        } else {
            std::mem::forget(_guard);
        }
    }
    assert!(gw.wait_exit(Duration::from_secs(5)).await.is_some_and(|s| s.success()));
}
