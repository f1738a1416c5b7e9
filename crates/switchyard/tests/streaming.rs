//! Bodies stream through the gateway without buffering: a 1 GiB upload and a
//! 1 GiB download each pass while the gateway's peak memory stays small, with
//! chunked, Content-Length and HTTP/2 framing.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::backend::ZEROS;
use support::client::{client, empty, send, Proto};
use support::{Backend, GatewayProcess};

const GIB: u64 = 1 << 30;
/// Peak RSS growth allowed while a GiB passes: far below the body size, so a
/// gateway that buffered would fail.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

async fn gateway(backend: &Backend) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[access_log]
enabled = false

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
    ))
}

/// A request body of `total` zero bytes in 64 KiB frames, generated lazily.
fn upload_body(total: u64) -> support::client::Body {
    let chunks = futures_util::stream::unfold(total, |left| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(ZEROS.len() as u64);
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&ZEROS[..n as usize]))),
            left - n,
        ))
    });
    BodyExt::boxed(StreamBody::new(chunks))
}

/// Reads a response body frame by frame, counting bytes without keeping them.
async fn drain_count(body: hyper::body::Incoming) -> u64 {
    let mut body = body;
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.expect("body frame").data_ref().map_or(0, |d| d.len() as u64);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_both_ways_in_bounded_memory() {
    let backend = Backend::start("big").await;
    let gw = gateway(&backend).await;
    let baseline = gw.memory_kib("VmRSS");

    // Download, chunked (no Content-Length from the upstream), over HTTP/1.1.
    let c = client(Proto::H1);
    let response = c
        .request(Request::get(gw.url(&format!("/stream/{GIB}"))).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(drain_count(response.into_body()).await, GIB);

    // Upload with a known length (Content-Length framing).
    let req = Request::post(gw.url("/upload"))
        .header("content-length", GIB)
        .body(upload_body(GIB))
        .unwrap();
    let reply = send(&c, req).await;
    assert_eq!(reply.json()["received"], GIB);

    let peak = gw.memory_kib("VmHWM");
    assert!(
        peak.saturating_sub(baseline) < MAX_GROWTH_KIB,
        "gateway peak RSS grew by {} KiB (baseline {baseline} KiB, peak {peak} KiB) while streaming 1 GiB each way",
        peak - baseline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_passes_intact() {
    let backend = Backend::start("frames").await;
    let gw = gateway(&backend).await;
    const SIZE: u64 = 8 << 20;
    for proto in [Proto::H1, Proto::H2] {
        let c = client(proto);
        for path in [format!("/stream/{SIZE}"), format!("/sized/{SIZE}")] {
            let response = c
                .request(Request::get(gw.url(&path)).body(empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{proto:?} {path}");
            if path.starts_with("/sized") {
                assert_eq!(
                    response.headers()["content-length"],
                    SIZE.to_string().as_str(),
                    "{proto:?}: length kept"
                );
            }
            assert_eq!(drain_count(response.into_body()).await, SIZE, "{proto:?} {path}");
        }
        // Chunked upload (no length) and, for HTTP/2, DATA frames.
        let req = Request::post(gw.url("/upload")).body(upload_body(SIZE)).unwrap();
        assert_eq!(send(&c, req).await.json()["received"], SIZE, "{proto:?} upload");
    }
    // The upstream saw HTTP/1.1 for every one of them: the gateway re-frames.
    assert!(backend.seen().iter().all(|s| s.version == http::Version::HTTP_11));
}
