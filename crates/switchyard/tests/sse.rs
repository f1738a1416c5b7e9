//! Server-Sent Events and other streams through the gateway: each event
//! reaches the client before the upstream sends the next one (a lock-step
//! upstream would hang behind any buffering), inter-arrival times are
//! measured against the upstream's (and reported), a stream that goes quiet is cut after the route's idle
//! timeout while one with heartbeats stays, and long polls outlast a short
//! idle timeout under a long route timeout.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::client::{client, empty, Proto};
use support::GatewayProcess;

type Events = mpsc::Receiver<Result<Frame<Bytes>, Infallible>>;

/// An upstream whose `/events` stream sends what the test pushes into the
/// channel it hands out per request; `/poll` answers after 1.5 s.
async fn upstream() -> (
    SocketAddr,
    mpsc::Receiver<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams_tx, streams_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let streams_tx = streams_tx.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let streams_tx = streams_tx.clone();
                async move {
                    if req.uri().path() == "/poll" {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        return Ok::<_, Infallible>(Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"news")).boxed(),
                        ));
                    }
                    let (tx, rx): (_, Events) = mpsc::channel(16);
                    let _ = streams_tx.send(tx).await;
                    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
                    let response = Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(body)
                        .unwrap();
                    Ok(response)
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

fn tokio_stream_from(mut rx: Events) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
name = "events"
endpoints = [{{ address = "{upstream}" }}]

[[routes]]
name = "events"
match = {{ path = "/events" }}
cluster = "events"
idle_timeout = "1s"

[[routes]]
name = "poll"
match = {{ path = "/poll" }}
cluster = "events"
idle_timeout = "200ms"
timeout = "5s"
"#
    ))
}

/// Opens `/events` through the gateway: the response and the upstream's
/// sender for that stream.
async fn open_events(
    gw: &GatewayProcess,
    streams: &mut mpsc::Receiver<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
    proto: Proto,
) -> (Response<Incoming>, mpsc::Sender<Result<Frame<Bytes>, Infallible>>) {
    let response = client(proto)
        .request(Request::get(gw.url("/events")).body(empty()).unwrap())
        .await
        .unwrap();
    let source = streams.recv().await.expect("the upstream got the request");
    (response, source)
}

fn event(n: usize) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!("id: {n}\ndata: event {n}\n\n"))))
}

/// The next data frame of `body`, within `patience`.
async fn next_chunk(body: &mut Incoming, patience: Duration) -> Option<Result<Bytes, String>> {
    loop {
        match tokio::time::timeout(patience, body.frame()).await {
            Err(_) => return None,
            Ok(None) => return Some(Err("end of stream".into())),
            Ok(Some(Err(error))) => return Some(Err(error.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
        }
    }
}

#[tokio::test]
async fn each_event_arrives_before_the_next_is_sent() {
    let (addr, mut streams) = upstream().await;
    let gw = gateway(addr);
    for proto in [Proto::H1, Proto::H2] {
        let (response, source) = open_events(&gw, &mut streams, proto).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        // Lock step: the upstream sends event n only once the client has
        // event n-1. Any buffering in the gateway would stall this loop.
        for n in 0..5 {
            source.send(event(n)).await.unwrap();
            let chunk = next_chunk(&mut body, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{proto:?}: event {n} was held back"))
                .unwrap();
            assert_eq!(chunk, format!("id: {n}\ndata: event {n}\n\n"), "{proto:?}");
        }
    }
}

#[tokio::test]
async fn inter_arrival_times_follow_the_upstream() {
    let (addr, mut streams) = upstream().await;
    let gw = gateway(addr);
    let (response, source) = open_events(&gw, &mut streams, Proto::H1).await;
    let gap = Duration::from_millis(150);
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for n in 0..6 {
            sent.push(Instant::now());
            source.send(event(n)).await.unwrap();
            tokio::time::sleep(gap).await;
        }
        sent
    });
    let mut body = response.into_body();
    let mut arrived = Vec::new();
    for n in 0..6 {
        let chunk = next_chunk(&mut body, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(
            chunk,
            format!("id: {n}\ndata: event {n}\n\n"),
            "events arrive whole and in order"
        );
        arrived.push(Instant::now());
    }
    let sent = sender.await.unwrap();
    // The measurement (reported, not asserted: timings depend on the
    // machine; the lock-step test above is what proves nothing is held back).
    let gaps = |times: &[Instant]| -> Vec<u128> { times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect() };
    let lag: Vec<u128> = arrived.iter().zip(&sent).map(|(a, s)| (*a - *s).as_micros()).collect();
    eprintln!(
        "SSE through the gateway: upstream gaps {:?} ms, arrival gaps {:?} ms, per-event lag {lag:?} us",
        gaps(&sent),
        gaps(&arrived)
    );
}

#[tokio::test]
async fn quiet_streams_are_cut_and_heartbeats_keep_them_open() {
    let (addr, mut streams) = upstream().await;
    let gw = gateway(addr);

    // Heartbeat comments every 150 ms keep a stream with a 1 s idle
    // timeout open for well over its idle timeout.
    let (response, source) = open_events(&gw, &mut streams, Proto::H1).await;
    let mut body = response.into_body();
    for _ in 0..10 {
        source
            .send(Ok(Frame::data(Bytes::from_static(b": heartbeat\n\n"))))
            .await
            .unwrap();
        let chunk = next_chunk(&mut body, Duration::from_secs(5)).await.unwrap();
        assert_eq!(chunk.unwrap(), ": heartbeat\n\n");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then silence: the gateway ends the stream (the upstream still holds it).
    let end = next_chunk(&mut body, Duration::from_secs(5)).await;
    assert!(matches!(end, Some(Err(_))), "the quiet stream was cut: {end:?}");
    drop(source);
}

#[tokio::test]
async fn long_polls_wait_for_their_answer() {
    let (addr, _streams) = upstream().await;
    let gw = gateway(addr);
    // The answer takes 1.5 s: longer than the route's idle timeout (which is
    // about bodies), within its 5 s timeout.
    let reply = support::client::get(&client(Proto::H1), &gw.url("/poll"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "news");
}
