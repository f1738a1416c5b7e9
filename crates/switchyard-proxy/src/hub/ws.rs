//! WebSocket clients of a hub: they subscribe, unsubscribe and publish with
//! JSON text frames, and get messages as JSON text frames.
//!
//! Client frames: `{"type": "subscribe", "topics": [...], "since": 42}`,
//! `{"type": "unsubscribe", "topics": [...]}`, `{"type": "publish",
//! "topic": "...", "data": "...", "event": "..."}`. Server frames: messages
//! (`{"type": "message", "id", "topic", "event", "data"}`), `subscribed`,
//! `unsubscribed`, `published` (with the id), `lagged` (with `missed`) and
//! `error` (with `message`). The same publish and subscribe rules apply as
//! over HTTP, with the principal the handshake authenticated.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use switchyard_config::{SlowConsumer, TopicPattern};
use switchyard_security::auth::Principal;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{may_publish, may_subscribe, Ask, Event, Hub, Subscription, Transport};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::ConnectionInfo;
use crate::websocket::Handshake;

/// Accepts the handshake and runs the session on a task of its own.
pub(super) fn open(
    hub: &Arc<Hub>,
    conn: &ConnectionInfo,
    req: &Request<Incoming>,
    handshake: Handshake,
    upgrade: OnUpgrade,
    ask: Ask,
    principal: Option<Principal>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let subscription = Subscription::new(hub, &ask.patterns, ask.since, Transport::WebSocket)?;
    let mut response = Response::new(ProxyBody::empty());
    match handshake {
        Handshake::Upgrade => {
            let key = req
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .ok_or(ProxyError::BadRequest("a WebSocket handshake needs Sec-WebSocket-Key"))?;
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a valid value"),
            );
        }
        Handshake::ExtendedConnect => *response.status_mut() = StatusCode::OK,
    }
    let hub = hub.clone();
    let session = async move {
        let Ok(upgraded) = upgrade.await else { return };
        // Frames no larger than a message and its JSON envelope.
        let limit = hub.settings().max_message as usize + 4096;
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        run(hub, socket, subscription, principal, ask.expires).await;
    };
    match &conn.tasks {
        Some(tasks) => drop(tasks.spawn(session)),
        None => drop(tokio::spawn(session)),
    }
    Ok(response)
}

/// A frame from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Subscribe {
        topics: Vec<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Publish {
        topic: String,
        data: String,
        #[serde(default)]
        event: Option<String>,
    },
}

async fn run<S>(
    hub: Arc<Hub>,
    socket: WebSocketStream<S>,
    mut subscription: Subscription,
    principal: Option<Principal>,
    expires: Option<tokio::time::Instant>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let settings = hub.settings();
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.reset();
    // A client that does not take a frame within this long, or sends
    // nothing (not even a pong) for three heartbeats (and 30 s), is gone.
    let send_timeout = settings.heartbeat.max(std::time::Duration::from_secs(5));
    let mut heard = tokio::time::Instant::now();
    loop {
        let frame = tokio::select! {
            frame = stream.next() => {
                heard = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Frame::Text(text))) => Some(reply(&hub, &mut subscription, principal.as_ref(), text.as_str()).await),
                    Some(Ok(Frame::Binary(_))) => Some(error("frames are JSON text")),
                    Some(Ok(Frame::Close(_))) => {
                        // tungstenite queued the closing reply: send it.
                        let _ = tokio::time::timeout(send_timeout, sink.flush()).await;
                        break;
                    }
                    Some(Err(_)) | None => break,
                    Some(Ok(_)) => None,
                }
            }
            event = subscription.next() => match event {
                Event::Message(message) => {
                    hub.metrics.delivered[Transport::WebSocket as usize].inc();
                    Some(Frame::Text(Utf8Bytes::try_from(message.json()).expect("JSON is UTF-8")))
                }
                Event::Lagged(missed) => match settings.slow_consumer {
                    SlowConsumer::DropOldest => Some(text(json!({"type": "lagged", "missed": missed}))),
                    SlowConsumer::Disconnect => {
                        hub.metrics.disconnected.inc();
                        let close = CloseFrame {
                            code: CloseCode::Policy,
                            reason: Utf8Bytes::from(format!("too slow: {missed} messages missed")),
                        };
                        let _ = tokio::time::timeout(send_timeout, sink.send(Frame::Close(Some(close)))).await;
                        break;
                    }
                },
            },
            _ = super::until(expires) => {
                let close = CloseFrame {
                    code: CloseCode::Policy,
                    reason: Utf8Bytes::from_static("the credential expired"),
                };
                let _ = tokio::time::timeout(send_timeout, sink.send(Frame::Close(Some(close)))).await;
                break;
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() > (settings.heartbeat * 3).max(std::time::Duration::from_secs(30)) {
                    break;
                }
                Some(Frame::Ping(Bytes::new()))
            }
        };
        if let Some(frame) = frame {
            match tokio::time::timeout(send_timeout, sink.send(frame)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
}

fn text(value: serde_json::Value) -> Frame {
    Frame::Text(Utf8Bytes::from(value.to_string()))
}

fn error(message: &str) -> Frame {
    text(json!({"type": "error", "message": message}))
}

/// The answer to one client frame.
async fn reply(hub: &Arc<Hub>, subscription: &mut Subscription, principal: Option<&Principal>, frame: &str) -> Frame {
    let command: Command = match serde_json::from_str(frame) {
        Ok(command) => command,
        Err(e) => return error(&format!("not a hub command ({e})")),
    };
    let settings = hub.settings();
    let patterns = |topics: &[String]| -> Result<Vec<TopicPattern>, String> {
        topics.iter().map(|t| TopicPattern::parse(t)).collect()
    };
    match command {
        Command::Subscribe { topics, since } => {
            let patterns = match patterns(&topics) {
                Ok(patterns) => patterns,
                Err(message) => return error(&message),
            };
            for pattern in &patterns {
                if let Err(refused) = may_subscribe(&settings, pattern, principal) {
                    return error(&refused.client_message());
                }
            }
            match subscription.add(&patterns, since) {
                Ok(()) => text(json!({"type": "subscribed", "topics": topics})),
                Err(refused) => error(&refused.client_message()),
            }
        }
        Command::Unsubscribe { topics } => match patterns(&topics) {
            Ok(patterns) => {
                subscription.remove(&patterns);
                text(json!({"type": "unsubscribed", "topics": topics}))
            }
            Err(message) => error(&message),
        },
        Command::Publish { topic, data, event } => {
            if !switchyard_config::valid_topic(&topic) {
                return error(&format!("\"{topic}\" is not a topic"));
            }
            let pattern = match TopicPattern::parse(&topic) {
                Ok(pattern) => pattern,
                Err(message) => return error(&message),
            };
            if let Err(refused) = may_publish(&settings, &pattern, principal) {
                return error(&refused.client_message());
            }
            match hub.publish_anywhere(&topic, event.as_deref(), Bytes::from(data)).await {
                Ok(id) => text(json!({"type": "published", "id": id, "topic": topic})),
                Err(refused) => error(&refused.client_message()),
            }
        }
    }
}
