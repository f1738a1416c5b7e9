//! A real HTTP/1.1 + h2c upstream that records what it receives and answers
//! according to the path, so tests can ask for slow, streamed or odd responses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// 64 KiB of zeros, shared by every streamed chunk (no per-chunk allocation).
pub static ZEROS: [u8; 65536] = [0; 65536];

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub version: Version,
    /// The gateway-side address of the connection it came on.
    pub peer: SocketAddr,
}

/// Knobs a test turns on a running backend.
#[derive(Debug, Default)]
pub struct Controls {
    /// `/healthz` answers 503 when set.
    pub sick: AtomicBool,
    /// Every other path answers with this status when non-zero.
    pub fail_with: AtomicU16,
    /// Every answer (but `/healthz`) waits this many milliseconds; the request
    /// is recorded before the wait.
    pub delay_ms: AtomicU64,
    /// This share (percent) of requests gets a 503, spread evenly (request n
    /// fails when `n * percent mod 100 < percent`), so failures do not bunch.
    pub flaky_percent: AtomicU64,
    flaky_counter: AtomicU64,
}

/// A running test backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub controls: Arc<Controls>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Accepts connections and owns every connection task: aborting it kills
    /// the backend outright, open connections included.
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl Backend {
    /// Starts a backend called `name` on an ephemeral port.
    ///
    /// Paths: `/healthz` answers 200 `ok` (503 when [`Controls::sick`]);
    /// `/slow/{ms}` answers after a delay; `/stream/{n}` streams n bytes
    /// (chunked); `/sized/{n}` the same with Content-Length; `/stall` sends one
    /// chunk then nothing; `/trickle/{n}` sends n small chunks 100ms apart; `/upload` counts the request body; `/status/{code}`;
    /// `/hop` answers with hop-by-hop headers; anything else echoes the
    /// request as JSON.
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a backend on `addr` (a restart on a known port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let controls = Arc::new(Controls::default());
        let (name_owned, seen_owned, controls_owned) = (name.to_owned(), seen.clone(), controls.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => return,
                    },
                    // Reap finished connections so the set stays small.
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let (name, seen, controls) = (name_owned.clone(), seen_owned.clone(), controls_owned.clone());
                connections.spawn(async move {
                    let service =
                        service_fn(move |req| handle(name.clone(), seen.clone(), controls.clone(), peer, req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            controls,
            seen,
            task,
        }
    }

    /// Kills the backend: stops listening and drops every open connection.
    pub async fn kill(mut self) -> SocketAddr {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.addr
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Binds `addr`, retrying briefly: a port just released may still be held
/// by the aborted listener for a moment.
async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if attempts < 50 && addr.port() != 0 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind backend on {addr}: {e}"),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn zeros(total: u64) -> Body {
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

async fn handle(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    controls: Arc<Controls>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/healthz" {
        let sick = controls.sick.load(Ordering::Relaxed);
        let mut r = Response::new(full(if sick { "sick" } else { "ok" }));
        if sick {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(r);
    }
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path_and_query: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: req.headers().clone(),
        version: req.version(),
        peer,
    });
    let delay = controls.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let flaky = controls.flaky_percent.load(Ordering::Relaxed);
    if flaky > 0 {
        let n = controls.flaky_counter.fetch_add(1, Ordering::Relaxed);
        if (n * flaky) % 100 < flaky {
            let mut r = Response::new(full("flaky"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            return Ok(r);
        }
    }
    let fail_with = controls.fail_with.load(Ordering::Relaxed);
    if fail_with != 0 {
        let mut r = Response::new(full(format!("failing with {fail_with}")));
        *r.status_mut() = StatusCode::from_u16(fail_with).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        return Ok(r);
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let number = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut response = match segments[0] {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(number(1))).await;
            Response::new(full("slow done"))
        }
        "stream" => Response::new(zeros(number(1))),
        "sized" => {
            let mut r = Response::new(zeros(number(1)));
            r.headers_mut().insert("content-length", number(1).into());
            r
        }
        "trickle" => {
            let chunks = futures_util::stream::unfold(number(1), |left| async move {
                if left == 0 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"tick\n"))),
                    left - 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "stall" => {
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"first")))
            });
            let never = futures_util::stream::pending();
            Response::new(BodyExt::boxed(StreamBody::new(first.chain(never))))
        }
        "upload" => {
            let mut body = req.into_body();
            let mut received = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(serde_json::json!({ "received": received }).to_string()))
        }
        "status" => {
            let mut r = Response::new(full(format!("status {}", number(1))));
            *r.status_mut() = StatusCode::from_u16(number(1) as u16).unwrap_or(StatusCode::OK);
            r
        }
        "hop" => {
            let mut r = Response::new(full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-upstream-secret".parse().unwrap());
            h.insert("x-upstream-secret", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-upstream-public", "1".parse().unwrap());
            r
        }
        _ => {
            let headers: BTreeMap<&str, &str> = req
                .headers()
                .iter()
                .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
                .collect();
            let body = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "query": req.uri().query(),
                "headers": headers,
            });
            Response::new(full(body.to_string()))
        }
    };
    response.headers_mut().insert("x-backend", name.parse().unwrap());
    Ok(response)
}
