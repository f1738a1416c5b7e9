//! `switchyard demo`: three small echo backends and a gateway in front of them,
//! from an embedded configuration, so a new user sees a working proxy at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::serve::{build_runtime, serve};

/// The demo's configuration; `{listen}`, `{admin}` and `{backendN}` are filled in.
const DEMO_CONFIG: &str = r#"
[admin]
listen = "{admin}"

[[listeners]]
name = "public"
listen = "{listen}"

[[clusters]]
name = "demo"
balancer = "round_robin"
endpoints = [{ address = "{backend1}" }, { address = "{backend2}" }, { address = "{backend3}" }]

[[routes]]
name = "api"
match = { path_prefix = "/api/" }
cluster = "demo"
rewrite = { prefix = "/" }
response_headers = { set = { "x-served-by" = "switchyard-demo" } }

[[routes]]
name = "hello"
match = { path = "/hello" }
direct = { status = 200, body = "hello from switchyard\n" }

[[routes]]
name = "old"
match = { path = "/old" }
redirect = { path = "/hello", status = 301 }

[[routes]]
name = "everything-else"
cluster = "demo"
"#;

/// Starts the demo and serves until SIGTERM/SIGINT.
pub fn run(listen: &str, admin: &str) -> anyhow::Result<()> {
    let runtime = build_runtime(0)?;
    runtime.block_on(async {
        let mut text = DEMO_CONFIG.replace("{listen}", listen).replace("{admin}", admin);
        for i in 1..=3 {
            let address = start_backend(format!("demo-{i}")).await?;
            text = text.replace(&format!("{{backend{i}}}"), &address.to_string());
        }
        let config = switchyard_config::parse_toml(&text, "<demo>").map_err(|d| anyhow!("invalid demo settings:\n{d}"))?;
        println!(
            "Switchyard demo: gateway on http://{listen} in front of three demo backends (round robin), admin API on http://{admin}\n\
             Try:\n  \
             curl -s http://{listen}/api/users                          # proxied; /api/ is stripped; repeat to see demo-1..3 take turns\n  \
             curl -s --http2-prior-knowledge http://{listen}/api/h2     # the same over HTTP/2 (h2c)\n  \
             curl -s http://{listen}/hello                              # a direct response from the gateway\n  \
             curl -si http://{listen}/old                               # a redirect\n  \
             curl -s http://{admin}/api/config                          # the running configuration\n\
             Ctrl-C drains in-flight requests and exits."
        );
        serve(config, None, None).await
    })
}

/// A backend answering every request with JSON describing what it received.
async fn start_backend(name: String) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo backend")?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| echo(name.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

async fn echo(backend: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: BTreeMap<&str, &str> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let body = serde_json::json!({
        "backend": backend,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
