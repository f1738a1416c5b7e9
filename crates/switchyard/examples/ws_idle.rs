//! Load tool for `bench/websocket.sh`: many idle WebSocket connections.
//!
//!     ws_idle serve                 # an echo server on 127.0.0.1:0; prints its address
//!     ws_idle hold ADDR N SECONDS   # opens N connections to ws://ADDR/ws, checks each
//!                                   # echoes once, holds them idle for SECONDS, then
//!                                   # checks a sample still echoes; prints a summary
//!
//! Only loopback addresses are used. Every connection is opened with a bound
//! on concurrency and time, so a stuck gateway fails the run instead of
//! hanging it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve().await,
        Some("hold") if args.len() == 4 => {
            let n: usize = args[2].parse().expect("N is a number");
            let seconds: u64 = args[3].parse().expect("SECONDS is a number");
            hold(&args[1], n, Duration::from_secs(seconds)).await;
        }
        _ => {
            eprintln!("usage: ws_idle serve | ws_idle hold ADDR N SECONDS");
            std::process::exit(2);
        }
    }
}

async fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn round_trip(ws: &mut Ws, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(10), ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text
    )
}

async fn hold(addr: &str, n: usize, idle: Duration) {
    let url = format!("ws://{addr}/ws");
    let started = Instant::now();
    let mut open: Vec<Ws> = Vec::with_capacity(n);
    // 64 handshakes in flight at a time.
    let mut pending = futures_util::stream::iter(0..n)
        .map(|i| {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio::time::timeout(Duration::from_secs(30), tokio_tungstenite::connect_async(url))
                    .await
                    .map_err(|_| format!("connection {i}: handshake timed out"))?
                    .map_err(|e| format!("connection {i}: {e}"))?;
                if !round_trip(&mut ws, "hello").await {
                    return Err(format!("connection {i}: no echo"));
                }
                Ok::<_, String>(ws)
            }
        })
        .buffer_unordered(64);
    while let Some(result) = pending.next().await {
        match result {
            Ok(ws) => open.push(ws),
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "opened {} connections in {:.1}s",
        open.len(),
        started.elapsed().as_secs_f64()
    );
    // The caller reads the gateway's memory while they sit idle.
    println!("holding");
    tokio::time::sleep(idle).await;
    let mut alive = 0;
    let sample = open.len().min(500);
    let step = (open.len() / sample.max(1)).max(1);
    for ws in open.iter_mut().step_by(step).take(sample) {
        if round_trip(ws, "still there").await {
            alive += 1;
        }
    }
    println!(
        "after {}s idle: {alive}/{sample} sampled connections still echo",
        idle.as_secs()
    );
    if alive != sample {
        std::process::exit(1);
    }
}
