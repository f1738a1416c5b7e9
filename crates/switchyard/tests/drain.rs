//! Graceful shutdown: SIGTERM stops accepting, lets in-flight requests finish,
//! then exits 0.

mod support;

use std::time::Duration;

use support::client::{client, get, Proto};
use support::{Backend, GatewayProcess};

fn config(backend: &Backend) -> String {
    format!(
        r#"
[runtime]
drain_timeout = "10s"

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
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    for proto in [Proto::H1, Proto::H2] {
        let backend = Backend::start("slow").await;
        let mut gw = GatewayProcess::start(&config(&backend));
        let url = gw.url("/slow/1500");
        let in_flight = tokio::spawn(async move { get(&client(proto), &url, &[]).await });
        // Wait until the slow request is at the upstream.
        for _ in 0..200 {
            if !backend.seen().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.seen().len(), 1, "{proto:?}: the request reached the upstream");

        gw.signal("TERM");
        // The listener closes at once; a slow run may take a moment to get
        // the signal there (asked every 50 ms, for at most 5 s).
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(gw.addr()).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "{proto:?}: no new connections while draining");

        let reply = in_flight.await.unwrap();
        assert_eq!(reply.status, 200, "{proto:?}: the in-flight request completed");
        assert_eq!(reply.text(), "slow done");
        let status = gw
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits after draining");
        assert!(status.success(), "{proto:?}: exit status {status}");
    }
}
