//! Long-poll subscribers: messages newer than `since` at once if there are
//! any, else the first ones to come within the timeout; an empty list when
//! none came.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};

use super::{json_response, Ask, Event, Hub, Subscription, Transport};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Most messages one answer carries; the client asks again from the last.
const MAX_BATCH: usize = 1000;

/// The answer to a long poll; `timeout` (seconds) is the client's wish,
/// capped by the hub's `long_poll_timeout`.
pub(super) async fn answer(hub: &Arc<Hub>, ask: Ask, timeout: Option<u64>) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = hub.settings();
    let wait = timeout
        .map(Duration::from_secs)
        .unwrap_or(settings.long_poll_timeout)
        .min(settings.long_poll_timeout);
    let mut subscription = Subscription::new(hub, &ask.patterns, ask.since, Transport::LongPoll)?;
    let mut messages = Vec::new();
    let mut missed = 0;
    // Messages come lowest id first; a gap (the client fell behind) ends the
    // batch, so `last_id` never passes a message it did not get.
    let mut take = |event: Event, messages: &mut Vec<_>| match event {
        Event::Message(message) => {
            messages.push(message);
            true
        }
        Event::Lagged(n) => {
            missed += n;
            false
        }
    };
    if let Ok(event) = tokio::time::timeout(wait, subscription.next()).await {
        if take(event, &mut messages) {
            while messages.len() < MAX_BATCH {
                let Some(event) = subscription.ready() else { break };
                if !take(event, &mut messages) {
                    break;
                }
            }
        }
    }
    hub.metrics.delivered[Transport::LongPoll as usize].inc_by(messages.len() as u64);
    // Nothing came: everything up to when the poll joined was looked at.
    let last_id = messages
        .last()
        .map_or_else(|| subscription.joined_at.max(ask.since.unwrap_or(0)), |m| m.id);
    let mut body = Vec::with_capacity(64 + messages.iter().map(|m| m.data.len() + 64).sum::<usize>());
    body.extend_from_slice(b"{\"messages\":[");
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&message.json());
    }
    body.extend_from_slice(format!("],\"last_id\":{last_id},\"missed\":{missed}}}").as_bytes());
    Ok(json_response(StatusCode::OK, body))
}
