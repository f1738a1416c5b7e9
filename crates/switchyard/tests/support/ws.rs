//! A WebSocket echo server (tokio-tungstenite) for tests through the gateway.
//!
//! Every text and binary message comes back unchanged (fragmented ones
//! reassembled), pings are answered by tungstenite, and a client's close frame
//! is echoed with its code. A text message `close NNNN` makes the server close
//! with code NNNN; `who` answers with the server's name and the request's
//! `X-Forwarded-For`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// Messages of up to 64 MiB, in frames of up to 64 MiB, both ways.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// A running echo server; stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl EchoServer {
    pub async fn start(name: &'static str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let open = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.lock().unwrap().push(tokio::spawn(serve(name, stream)));
            }
        });
        EchoServer {
            addr,
            accepted,
            task,
            connections,
        }
    }

    /// Drops every open connection at once, without a close frame (as a
    /// crashed server would).
    pub fn drop_connections(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

async fn serve(name: &'static str, stream: tokio::net::TcpStream) {
    let mut forwarded_for = String::new();
    #[allow(clippy::result_large_err)] // the signature tungstenite asks for
    let callback = |req: &Request, response: Response| {
        forwarded_for = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config())).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) if text.starts_with("close ") => {
                let code: u16 = text[6..].trim().parse().unwrap_or(1000);
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "server says bye".into(),
                };
                let _ = ws.close(Some(frame)).await;
                // Wait for the client's answering close, then the TCP end.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Message::Text(text) if text.as_str() == "who" => Message::text(format!("{name} {forwarded_for}")),
            Message::Text(_) | Message::Binary(_) => message,
            // Pings are answered and close frames echoed by tungstenite.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}
