//! gRPC test support: a hand-written `test.Echo` service and client on tonic.
//!
//! Nothing here is generated: there is no `.proto`, no `build.rs` and no
//! protoc. The messages are `prost` structs derived by hand, and the service
//! and client are written the way `tonic-build` would write them, on top of
//! `tonic::server::Grpc` and `tonic::client::Grpc` with `tonic_prost::ProstCodec`.
//!
//! Both sides speak HTTP/2 cleartext with prior knowledge (h2c) through hyper
//! directly, not through `tonic::transport`, for two reasons that matter when
//! a gateway sits in between:
//!
//! * the client enforces no deadline of its own: a `grpc-timeout` it sends is
//!   only honoured if the gateway or the upstream acts on it, so a deadline
//!   test really tests the path through the gateway;
//! * the server answers an expired deadline with `DEADLINE_EXCEEDED`, as gRPC
//!   servers do (tonic's transport timeout layer answers `CANCELLED`).
//!
//! The service, `/test.Echo/<Method>`:
//!
//! | method         | request       | response      | behaviour                                   |
//! |----------------|---------------|---------------|---------------------------------------------|
//! | `Unary`        | `Echo`        | `Echo`        | sleeps `delay_ms`, then echoes or fails      |
//! | `ServerStream` | `Count`       | stream `Echo` | `n` messages `"0"`..`"n-1"`, 20 ms apart    |
//! | `ClientStream` | stream `Echo` | `Echo`        | the messages joined with `","`, in order     |
//! | `Bidi`         | stream `Echo` | stream `Echo` | echoes each message as soon as it arrives    |
//!
//! Any other path is answered trailers-only with `grpc-status: 12`
//! (UNIMPLEMENTED).

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::{ClientStreamingService, NamedService, ServerStreamingService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

/// The message of every call but `ServerStream`'s request.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Echo {
    /// Text echoed back; on failure, the status message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// `Unary` only: how long the server waits before answering.
    #[prost(uint64, tag = "2")]
    pub delay_ms: u64,
    /// `Unary` only: a non-zero `tonic::Code` to fail with instead of echoing.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

impl Echo {
    /// A plain message: no delay, no error.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }

    /// This message, answered only after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// This message, answered with the status `code` (message as its text).
    pub fn with_code(mut self, code: Code) -> Self {
        self.code = code as i32;
        self
    }
}

/// `ServerStream`'s request: how many messages to stream back.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Count {
    /// The number of messages.
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

/// The fully-qualified service name, as in `/test.Echo/Unary`.
pub const SERVICE_NAME: &str = "test.Echo";
/// Path of the unary method.
pub const UNARY_PATH: &str = "/test.Echo/Unary";
/// Path of the server-streaming method.
pub const SERVER_STREAM_PATH: &str = "/test.Echo/ServerStream";
/// Path of the client-streaming method.
pub const CLIENT_STREAM_PATH: &str = "/test.Echo/ClientStream";
/// Path of the bidirectional-streaming method.
pub const BIDI_PATH: &str = "/test.Echo/Bidi";

/// Gap between two messages of `ServerStream`.
pub const SERVER_STREAM_GAP: Duration = Duration::from_millis(20);

/// Parses a `grpc-timeout` header value (`"100m"`, `"100000u"`, ...).
///
/// Returns `None` for anything the gRPC spec does not allow: 1 to 8 ASCII
/// digits followed by one of the units `H M S m u n`.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type EchoStream = ReceiverStream<Result<Echo, Status>>;

/// What the server observed, shared between the service and the test.
#[derive(Debug, Default)]
struct Observed {
    /// Raw `grpc-timeout` of the last `Unary` call (`None`: absent).
    last_grpc_timeout: Mutex<Option<String>>,
    /// Number of `Unary` calls received.
    unary_calls: AtomicUsize,
}

/// The `test.Echo` service as a tower service over tonic's body type.
///
/// This is what `tonic-build` would generate for the service plus the test
/// implementation of its methods. It can be served by [`start_server`] or by
/// `tonic::transport::Server::add_service`.
#[derive(Clone, Debug, Default)]
pub struct EchoService {
    observed: Arc<Observed>,
}

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE_NAME;
}

impl tower_service::Service<http::Request<Body>> for EchoService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match req.uri().path() {
            UNARY_PATH => {
                let raw = req
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let deadline = raw.as_deref().and_then(parse_grpc_timeout);
                *lock(&self.observed.last_grpc_timeout) = raw;
                self.observed.unary_calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
                    Ok(grpc.unary(UnaryMethod { deadline }, req).await)
                })
            }
            SERVER_STREAM_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Count>::default());
                Ok(grpc.server_streaming(ServerStreamMethod, req).await)
            }),
            CLIENT_STREAM_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
                Ok(grpc.client_streaming(ClientStreamMethod, req).await)
            }),
            BIDI_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default());
                Ok(grpc.streaming(BidiMethod, req).await)
            }),
            other => {
                let status = Status::unimplemented(format!("no method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// A `Unary` message that makes the server act as if it had no deadline.
pub const IGNORE_DEADLINE: &str = "ignore deadline";

/// `Unary`: waits `delay_ms`, bounded by the request deadline (unless the
/// message is [`IGNORE_DEADLINE`]), then echoes.
struct UnaryMethod {
    /// The request's `grpc-timeout`, if it had a valid one.
    deadline: Option<Duration>,
}

impl UnaryService<Echo> for UnaryMethod {
    type Response = Echo;
    type Future = BoxFuture<Result<Response<Echo>, Status>>;

    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        let deadline = self.deadline;
        Box::pin(async move {
            let echo = request.into_inner();
            let delay = Duration::from_millis(echo.delay_ms);
            match deadline {
                // A server that ignores deadlines, to test that the gateway
                // keeps them.
                Some(deadline) if deadline < delay && echo.message != IGNORE_DEADLINE => {
                    tokio::time::sleep(deadline).await;
                    return Err(Status::deadline_exceeded("deadline exceeded"));
                }
                _ => tokio::time::sleep(delay).await,
            }
            if echo.code != 0 {
                return Err(Status::new(Code::from(echo.code), echo.message));
            }
            Ok(Response::new(echo))
        })
    }
}

/// `ServerStream`: `n` messages, [`SERVER_STREAM_GAP`] apart.
struct ServerStreamMethod;

impl ServerStreamingService<Count> for ServerStreamMethod {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = BoxFuture<Result<Response<EchoStream>, Status>>;

    fn call(&mut self, request: Request<Count>) -> Self::Future {
        let n = request.into_inner().n;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(SERVER_STREAM_GAP).await;
                }
                if tx.send(Ok(Echo::new(i.to_string()))).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Box::pin(async move { Ok(Response::new(ReceiverStream::new(rx))) })
    }
}

/// `ClientStream`: all request messages joined with `","`.
struct ClientStreamMethod;

impl ClientStreamingService<Echo> for ClientStreamMethod {
    type Response = Echo;
    type Future = BoxFuture<Result<Response<Echo>, Status>>;

    fn call(&mut self, request: Request<Streaming<Echo>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let mut parts = Vec::new();
            while let Some(echo) = inbound.message().await? {
                parts.push(echo.message);
            }
            Ok(Response::new(Echo::new(parts.join(","))))
        })
    }
}

/// `Bidi`: one response per request message, sent as soon as it arrives.
struct BidiMethod;

impl StreamingService<Echo> for BidiMethod {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = BoxFuture<Result<Response<EchoStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Echo>>) -> Self::Future {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let item = match inbound.message().await {
                    Ok(Some(echo)) => Ok(echo),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Box::pin(async move { Ok(Response::new(ReceiverStream::new(rx))) })
    }
}

/// A running test server; dropping it (or [`ServerHandle::stop`]) stops it.
///
/// Stopping closes the listener and every open connection abruptly.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    observed: Arc<Observed>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The raw `grpc-timeout` header of the last `Unary` call, `None` if it
    /// had none (or there was no call yet, see [`ServerHandle::unary_calls`]).
    pub fn last_grpc_timeout(&self) -> Option<String> {
        lock(&self.observed.last_grpc_timeout).clone()
    }

    /// How many `Unary` calls the server has received.
    pub fn unary_calls(&self) -> usize {
        self.observed.unary_calls.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn stop(mut self) {
        self.task.abort();
        // The task was aborted: the only outcome left is the cancellation.
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves [`EchoService`] over h2c on `127.0.0.1:0`.
pub async fn start_server() -> (SocketAddr, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC test server");
    let addr = listener.local_addr().expect("local address of the listener");
    let service = EchoService::default();
    let observed = service.observed.clone();
    let task = tokio::spawn(accept_loop(listener, service));
    let handle = ServerHandle { addr, observed, task };
    (addr, handle)
}

/// Accepts connections until aborted; aborting drops (and so closes) them all.
async fn accept_loop(listener: TcpListener, service: EchoService) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, service.clone()));
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one HTTP/2 (prior knowledge) connection.
async fn serve_connection(stream: TcpStream, service: EchoService) {
    let _ = stream.set_nodelay(true);
    let hyper_service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        tower_service::Service::call(&mut service, req.map(Body::new))
    });
    // A connection error (the peer reset it, spoke HTTP/1, ...) only ends it.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), hyper_service)
        .await;
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A `test.Echo` client over h2c, as `tonic-build` would generate it.
///
/// Cheap to clone; clones share one connection pool. It sets no deadline of
/// its own: see [`EchoClient::unary_with_timeout`].
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Client<HttpConnector, Body>>,
}

impl EchoClient {
    /// A client for `http://{addr}` (HTTP/2 with prior knowledge).
    ///
    /// The TCP connection is made on the first call, so this never fails.
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        let origin = format!("http://{addr}")
            .parse()
            .expect("a socket address makes a valid URI");
        EchoClient {
            grpc: tonic::client::Grpc::with_origin(http, origin),
        }
    }

    /// `Unary`.
    pub async fn unary(&self, echo: Echo) -> Result<Echo, Status> {
        self.unary_request(Request::new(echo)).await
    }

    /// `Unary` with a deadline, sent as the `grpc-timeout` header.
    ///
    /// The client does not enforce it: whoever answers (gateway or server)
    /// must, and this returns what they answered.
    pub async fn unary_with_timeout(&self, echo: Echo, timeout: Duration) -> Result<Echo, Status> {
        let mut request = Request::new(echo);
        request.set_timeout(timeout);
        self.unary_request(request).await
    }

    /// `Unary` with a request built by the caller (metadata, timeout, ...).
    pub async fn unary_request(&self, request: Request<Echo>) -> Result<Echo, Status> {
        let mut grpc = self.ready().await?;
        let path = PathAndQuery::from_static(UNARY_PATH);
        let codec = ProstCodec::<Echo, Echo>::default();
        Ok(grpc.unary(request, path, codec).await?.into_inner())
    }

    /// A `Unary`-shaped call to another path (a method no server may have).
    pub async fn unary_at(&self, path: &'static str, echo: Echo) -> Result<Echo, Status> {
        let mut grpc = self.ready().await?;
        let codec = ProstCodec::<Echo, Echo>::default();
        Ok(grpc
            .unary(Request::new(echo), PathAndQuery::from_static(path), codec)
            .await?
            .into_inner())
    }

    /// `ServerStream`: asks for `n` messages and collects them all.
    pub async fn server_stream(&self, n: u32) -> Result<Vec<Echo>, Status> {
        let mut inbound = self.server_stream_raw(n).await?;
        let mut messages = Vec::new();
        while let Some(echo) = inbound.message().await? {
            messages.push(echo);
        }
        Ok(messages)
    }

    /// `ServerStream`, returning the response stream as it arrives.
    /// `ServerStream` with a request built by the caller (a timeout, say).
    pub async fn server_stream_request(&self, request: Request<Count>) -> Result<Streaming<Echo>, Status> {
        let mut grpc = self.ready().await?;
        let path = PathAndQuery::from_static(SERVER_STREAM_PATH);
        let codec = ProstCodec::<Count, Echo>::default();
        Ok(grpc.server_streaming(request, path, codec).await?.into_inner())
    }

    pub async fn server_stream_raw(&self, n: u32) -> Result<Streaming<Echo>, Status> {
        let mut grpc = self.ready().await?;
        let path = PathAndQuery::from_static(SERVER_STREAM_PATH);
        let codec = ProstCodec::<Count, Echo>::default();
        Ok(grpc
            .server_streaming(Request::new(Count { n }), path, codec)
            .await?
            .into_inner())
    }

    /// `ClientStream`: sends all `messages`, then half-closes.
    pub async fn client_stream(&self, messages: Vec<Echo>) -> Result<Echo, Status> {
        let mut grpc = self.ready().await?;
        let path = PathAndQuery::from_static(CLIENT_STREAM_PATH);
        let codec = ProstCodec::<Echo, Echo>::default();
        let outbound = tokio_stream::iter(messages);
        Ok(grpc
            .client_streaming(Request::new(outbound), path, codec)
            .await?
            .into_inner())
    }

    /// `Bidi`: returns once the response headers are in.
    ///
    /// Send requests on the sender and read answers from the stream one by
    /// one; dropping the sender half-closes the call.
    pub async fn bidi(&self) -> Result<(mpsc::Sender<Echo>, Streaming<Echo>), Status> {
        let mut grpc = self.ready().await?;
        let path = PathAndQuery::from_static(BIDI_PATH);
        let codec = ProstCodec::<Echo, Echo>::default();
        let (tx, rx) = mpsc::channel(16);
        let inbound = grpc
            .streaming(Request::new(ReceiverStream::new(rx)), path, codec)
            .await?
            .into_inner();
        Ok((tx, inbound))
    }

    /// A handle ready to start a call.
    async fn ready(&self) -> Result<tonic::client::Grpc<Client<HttpConnector, Body>>, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("client not ready: {e}")))?;
        Ok(grpc)
    }
}

/// Locks `mutex`, ignoring poisoning (a panicking test must not hide others).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
