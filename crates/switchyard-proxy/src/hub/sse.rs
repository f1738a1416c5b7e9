//! SSE subscribers: a `retry:` hint, the replay, then live messages, with
//! heartbeat comments while the topics are quiet.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::Frame;
use switchyard_config::SlowConsumer;

use super::{Ask, Event, Hub, Subscription, Transport};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// The SSE answer to a subscription.
pub(super) fn open(hub: &Arc<Hub>, ask: Ask) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = hub.settings();
    let subscription = Subscription::new(hub, &ask.patterns, ask.since, Transport::Sse)?;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        subscription,
        heartbeat,
        policy: settings.slow_consumer,
        hello: Some(Bytes::from(format!("retry: {}\n\n", settings.retry.as_millis()))),
        done: false,
        expires: ask.expires,
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(hello) = state.hello.take() {
            // The first heartbeat tick is immediate: skip it.
            state.heartbeat.reset();
            return Some((Ok(Frame::data(hello)), state));
        }
        if state.done {
            return None;
        }
        let chunk = tokio::select! {
            event = state.subscription.next() => match event {
                Event::Message(message) => {
                    state.subscription.hub.metrics.delivered[Transport::Sse as usize].inc();
                    message.sse()
                }
                Event::Lagged(missed) => match state.policy {
                    SlowConsumer::DropOldest => Bytes::from(format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")),
                    SlowConsumer::Disconnect => {
                        state.subscription.hub.metrics.disconnected.inc();
                        state.done = true;
                        Bytes::from(format!("event: disconnected\ndata: {{\"missed\":{missed}}}\n\n"))
                    }
                },
            },
            _ = state.heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
            _ = super::until(state.expires) => {
                state.done = true;
                Bytes::from_static(b"event: expired\ndata: {\"reason\":\"the credential expired\"}\n\n")
            }
        };
        Some((Ok(Frame::data(chunk)), state))
    });
    let mut response = Response::new(ProxyBody::stream(frames));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies in front must not hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct State {
    subscription: Subscription,
    heartbeat: tokio::time::Interval,
    policy: SlowConsumer,
    hello: Option<Bytes>,
    done: bool,
    expires: Option<tokio::time::Instant>,
}
