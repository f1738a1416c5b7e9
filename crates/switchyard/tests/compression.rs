//! Response compression: the negotiation matrix (q-values, the route's order,
//! `*`, identity), every algorithm decoding back to the original, the
//! conditions that leave a response alone (small, not a listed type, already
//! encoded, `no-transform`, HEAD), decoding for clients that accept nothing,
//! `Vary` and weak validators, and SSE through compression event by event.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_compression::tokio::write::{BrotliDecoder, GzipDecoder, GzipEncoder, ZstdDecoder};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::client::{client, empty, get, Proto};
use support::GatewayProcess;

type Frames = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// The text every `/text` answer carries: compressible, 20,000 bytes.
fn text() -> String {
    "All work and no play makes Jack a dull boy. ".repeat(455)[..20_000].to_owned()
}

async fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzipEncoder::new(Vec::new());
    encoder.write_all(data).await.unwrap();
    encoder.shutdown().await.unwrap();
    encoder.into_inner()
}

/// Decodes `body` as `encoding` says.
async fn decode(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    macro_rules! run {
        ($decoder:expr) => {{
            let mut decoder = $decoder;
            decoder.write_all(body).await.unwrap();
            decoder.shutdown().await.unwrap();
            decoder.into_inner()
        }};
    }
    match encoding {
        None => body.to_vec(),
        Some("gzip") => run!(GzipDecoder::new(Vec::new())),
        Some("br") => run!(BrotliDecoder::new(Vec::new())),
        Some("zstd") => run!(ZstdDecoder::new(Vec::new())),
        Some(other) => panic!("unexpected encoding {other}"),
    }
}

/// An upstream with a few kinds of answers; `/events` streams what the test
/// pushes into the sender it hands out.
async fn upstream() -> (SocketAddr, mpsc::Receiver<Frames>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams_tx, streams_rx) = mpsc::channel(4);
    let gzipped = Bytes::from(gzip(text().as_bytes()).await);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (streams_tx, gzipped) = (streams_tx.clone(), gzipped.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let (streams_tx, gzipped) = (streams_tx.clone(), gzipped.clone());
                async move {
                    let full = |content_type: &str, body: Bytes| {
                        Response::builder()
                            .header("content-type", content_type)
                            .header("etag", "\"v1\"")
                            .body(Full::new(body).boxed())
                            .unwrap()
                    };
                    let response = match req.uri().path() {
                        "/text" => full("text/plain; charset=utf-8", Bytes::from(text())),
                        "/small" => full("text/plain", Bytes::from_static(b"tiny")),
                        "/png" => full("image/png", Bytes::from(vec![7u8; 20_000])),
                        "/no-transform" => {
                            let mut r = full("text/plain", Bytes::from(text()));
                            r.headers_mut().insert("cache-control", "no-transform".parse().unwrap());
                            r
                        }
                        "/gzipped" => {
                            let mut r = full("text/plain", gzipped);
                            r.headers_mut().insert("content-encoding", "gzip".parse().unwrap());
                            r
                        }
                        _ => {
                            let (tx, mut rx) = mpsc::channel(16);
                            let _ = streams_tx.send(tx).await;
                            let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(StreamBody::new(frames).boxed())
                                .unwrap()
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, streams_rx)
}

fn gateway(upstream: SocketAddr) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
[access_log]
enabled = false

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[[clusters]]
name = "origin"
endpoints = [{{ address = "{upstream}" }}]

[[routes]]
name = "all"
cluster = "origin"
compression = {{ algorithms = ["br", "zstd", "gzip"], min_size = "1KiB" }}
"#
    ))
}

#[tokio::test]
async fn negotiation_matrix_and_round_trips() {
    let (addr, _streams) = upstream().await;
    let gw = gateway(addr);
    let c = client(Proto::H1);
    let original = text();
    for (accept, expected) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("zstd", Some("zstd")),
        ("gzip, deflate, br, zstd", Some("br")),
        ("gzip;q=1.0, br;q=0.5", Some("gzip")),
        ("br;q=0, gzip", Some("gzip")),
        ("*", Some("br")),
        ("identity", None),
        ("deflate", None),
        ("", None),
    ] {
        let headers: Vec<(&str, &str)> = if accept.is_empty() {
            vec![]
        } else {
            vec![("accept-encoding", accept)]
        };
        let reply = get(&c, &gw.url("/text"), &headers).await;
        assert_eq!(reply.status, 200, "{accept}");
        assert_eq!(reply.header("content-encoding"), expected, "Accept-Encoding: {accept}");
        assert_eq!(reply.header("vary"), Some("accept-encoding"), "{accept}");
        let decoded = decode(expected, &reply.body).await;
        assert_eq!(
            decoded,
            original.as_bytes(),
            "{accept}: the body decodes to the original"
        );
        if expected.is_some() {
            assert!(
                reply.body.len() < original.len() / 4,
                "{accept}: {} bytes",
                reply.body.len()
            );
            assert_eq!(
                reply.header("etag"),
                Some("W/\"v1\""),
                "a changed representation has a weak tag"
            );
            assert_eq!(reply.header("content-length"), None, "the length changed: none is sent");
        } else {
            assert_eq!(reply.header("etag"), Some("\"v1\""));
        }
    }
}

#[tokio::test]
async fn responses_left_alone_and_responses_decoded() {
    let (addr, _streams) = upstream().await;
    let gw = gateway(addr);
    let c = client(Proto::H2);
    let gzip_ok = [("accept-encoding", "gzip")];
    // Too small, not a listed type, or the origin says no-transform.
    for path in ["/small", "/png", "/no-transform"] {
        let reply = get(&c, &gw.url(path), &gzip_ok).await;
        assert_eq!(reply.header("content-encoding"), None, "{path}");
    }
    // HEAD is not compressed either.
    let head = http::Request::head(gw.url("/text"))
        .header("accept-encoding", "gzip")
        .body(empty())
        .unwrap();
    let reply = support::client::send(&c, head).await;
    assert_eq!(reply.header("content-encoding"), None);

    // Already gzip: passed as it is to a client that reads gzip (never twice)...
    let reply = get(&c, &gw.url("/gzipped"), &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(Some("gzip"), &reply.body).await, text().as_bytes());
    // ...and decoded for one that reads none.
    let reply = get(&c, &gw.url("/gzipped"), &[("accept-encoding", "identity")]).await;
    assert_eq!(reply.header("content-encoding"), None);
    assert_eq!(&reply.body[..], text().as_bytes());
}

#[tokio::test]
async fn event_streams_are_compressed_without_holding_events_back() {
    let (addr, mut streams) = upstream().await;
    let gw = gateway(addr);
    let response = client(Proto::H1)
        .request(
            Request::get(gw.url("/events"))
                .header("accept-encoding", "gzip")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let source = streams.recv().await.unwrap();
    let mut body = response.into_body();
    // A streaming decoder: each flushed piece decodes to whole events.
    let mut decoder = GzipDecoder::new(Vec::new());
    for n in 0..5 {
        let event = format!("id: {n}\ndata: {}\n\n", "x".repeat(100));
        source.send(Ok(Frame::data(Bytes::from(event.clone())))).await.unwrap();
        // Lock step: the next event is only sent once this one has arrived.
        let mut decoded = Vec::new();
        while decoded.len() < event.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {n} was held back"))
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                decoder.write_all(&data).await.unwrap();
                decoder.flush().await.unwrap();
                decoded.extend(std::mem::take(decoder.get_mut()));
            }
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), event);
    }
}
