//! Routes with `hub = { ... }`: a pub/sub hub in the gateway.
//!
//! Backends publish with `POST` (or over a WebSocket); subscribers follow
//! topics by SSE, WebSocket or long polling ([`sse`], [`ws`], [`poll`]).
//!
//! - Every message gets the next id of its hub (so one `Last-Event-ID`
//!   resumes several topics) and is shared by reference: it is serialised at
//!   most once per transport ([`Message::sse`], [`Message::json`]), however
//!   many subscribers get it.
//! - Each topic keeps a bounded history (count and age) for resuming, and a
//!   broadcast channel for live delivery: one send per message, each
//!   subscriber reading at its own pace. A subscriber `queue` messages behind
//!   misses the oldest (and is told) or is disconnected, per `slow_consumer`.
//! - Subscribers to patterns (`news.*`) read the hub-wide channel and keep
//!   what matches.
//! - Ids are assigned under the topic's lock, so per topic they rise in the
//!   order messages are delivered.
//!
//! The hub outlives reloads (history, subscribers); new settings apply to
//! what comes after.

mod poll;
mod sse;
mod ws;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus::{IntCounter, IntGauge};
use serde_json::json;
use switchyard_config::{Hub as HubSettings, HubRule, PathMatch, TopicPattern};
use switchyard_security::auth::Principal;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::pipeline::ConnectionInfo;
use crate::snapshot::RouteEntry;

/// Capacity of the hub-wide channel pattern subscribers read, as a
/// multiple of `queue` (it carries every topic).
const WILDCARD_FACTOR: usize = 4;

/// One published message.
#[derive(Debug)]
pub struct Message {
    pub id: u64,
    pub topic: Arc<str>,
    pub event: Option<Box<str>>,
    /// UTF-8 text (checked when published).
    pub data: Bytes,
    pub at: Instant,
    sse: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Message {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.data).expect("messages are checked to be UTF-8")
    }

    /// The SSE event: `id`, `event`, one `data:` line per line.
    pub fn sse(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut out = String::with_capacity(self.data.len() + 48);
                out.push_str("id: ");
                out.push_str(&self.id.to_string());
                out.push('\n');
                if let Some(event) = &self.event {
                    out.push_str("event: ");
                    out.push_str(event);
                    out.push('\n');
                }
                for line in self.text().split('\n') {
                    out.push_str("data: ");
                    out.push_str(line.strip_suffix('\r').unwrap_or(line));
                    out.push('\n');
                }
                out.push('\n');
                Bytes::from(out)
            })
            .clone()
    }

    /// The JSON object WebSocket and long-poll clients get.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                let value = json!({
                    "type": "message",
                    "id": self.id,
                    "topic": &*self.topic,
                    "event": self.event.as_deref(),
                    "data": self.text(),
                });
                Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises"))
            })
            .clone()
    }
}

/// A hub's counters.
#[derive(Debug, Clone)]
pub(crate) struct HubMetrics {
    pub(crate) published: IntCounter,
    /// Subscribers by transport: SSE, WebSocket, long poll.
    pub(crate) subscribers: [IntGauge; 3],
    pub(crate) delivered: [IntCounter; 3],
    /// Messages slow subscribers missed, and subscribers disconnected for it.
    pub(crate) lagged: IntCounter,
    pub(crate) disconnected: IntCounter,
}

/// The transports, in [`HubMetrics`] order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Transport {
    Sse = 0,
    WebSocket = 1,
    LongPoll = 2,
}

impl Transport {
    pub(crate) const NAMES: [&'static str; 3] = ["sse", "websocket", "long_poll"];
}

struct Topic {
    /// Its name, shared by every message of the topic.
    name: Arc<str>,
    history: Mutex<VecDeque<Arc<Message>>>,
    live: broadcast::Sender<Arc<Message>>,
}

/// A hub: its topics, histories and subscribers.
pub struct Hub {
    settings: ArcSwap<HubSettings>,
    /// Held while a message takes its id, joins its history and is sent,
    /// and while a subscription reads histories and joins channels: ids go
    /// out in order across topics, and a subscription sees every message
    /// either in its replay or live, never both, never neither.
    order: Mutex<()>,
    last_id: AtomicU64,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    wildcard: broadcast::Sender<Arc<Message>>,
    pub(crate) metrics: HubMetrics,
    /// In cluster mode, where publishes go (a Redis stream every node
    /// reads, this one included).
    pub(crate) relay: ArcSwap<Relay>,
}

/// Where a hub's publishes go.
#[derive(Debug)]
pub(crate) enum Relay {
    /// A single node: delivered here at once.
    Local,
    /// Cluster mode without a link to Redis: publishes are refused (a
    /// message only some nodes get would break resume across nodes).
    Down,
    /// Cluster mode: appended to the route's stream in Redis.
    Stream(crate::cluster::StreamLink),
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

/// Why a hub refused something; becomes the client's error.
fn invalid(message: impl Into<String>) -> ProxyError {
    ProxyError::HubRequest(message.into())
}

impl Hub {
    pub(crate) fn new(settings: HubSettings, metrics: HubMetrics, clustered: bool) -> Arc<Self> {
        let (wildcard, _) = broadcast::channel(settings.queue.saturating_mul(WILDCARD_FACTOR).max(16));
        Arc::new(Self {
            settings: ArcSwap::from_pointee(settings),
            order: Mutex::new(()),
            last_id: AtomicU64::new(0),
            topics: RwLock::new(HashMap::new()),
            wildcard,
            metrics,
            relay: ArcSwap::from_pointee(if clustered { Relay::Down } else { Relay::Local }),
        })
    }

    /// Follows `[cluster]` being turned on or off by a reload.
    pub(crate) fn set_clustered(&self, clustered: bool) {
        let local = matches!(**self.relay.load(), Relay::Local);
        if clustered && local {
            self.relay.store(Arc::new(Relay::Down));
        } else if !clustered && !local {
            self.relay.store(Arc::new(Relay::Local));
        }
    }

    /// Publishes as the node's mode says: here at once, or through the
    /// cluster's stream (delivered here when it comes back from Redis).
    /// Returns the message's id.
    pub(crate) async fn publish_anywhere(
        &self,
        topic: &str,
        event: Option<&str>,
        data: Bytes,
    ) -> Result<u64, ProxyError> {
        let relay = self.relay.load_full();
        match &*relay {
            Relay::Local => self.publish(topic, event, data).map(|m| m.id),
            Relay::Down => Err(ProxyError::ClusterUnavailable),
            Relay::Stream(link) => {
                self.check(&data)?;
                link.append(topic, event, &data)
                    .await
                    .ok_or(ProxyError::ClusterUnavailable)
            }
        }
    }

    fn check(&self, data: &Bytes) -> Result<(), ProxyError> {
        let settings = self.settings();
        if data.len() as u64 > settings.max_message {
            return Err(ProxyError::BodyTooLarge {
                limit: settings.max_message,
            });
        }
        if std::str::from_utf8(data).is_err() {
            return Err(invalid("a message is UTF-8 text"));
        }
        Ok(())
    }

    /// New settings for what comes next (a reload).
    pub(crate) fn update(&self, settings: &HubSettings) {
        if **self.settings.load() != *settings {
            self.settings.store(Arc::new(settings.clone()));
        }
    }

    pub(crate) fn settings(&self) -> Arc<HubSettings> {
        self.settings.load_full()
    }

    /// The topic named `name`, made if need be (within `max_topics`).
    fn topic(&self, name: &str) -> Result<Arc<Topic>, ProxyError> {
        if let Some(topic) = self.topics.read().expect("topics lock is never poisoned").get(name) {
            return Ok(topic.clone());
        }
        let settings = self.settings();
        let mut topics = self.topics.write().expect("topics lock is never poisoned");
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        if topics.len() >= settings.max_topics {
            // Forget topics nobody follows and nothing is kept for.
            let now = Instant::now();
            topics.retain(|_, topic| {
                // Held elsewhere (a publish or subscribe under way): kept.
                if Arc::strong_count(topic) > 1 || topic.live.receiver_count() > 0 {
                    return true;
                }
                let mut history = topic.history.lock().expect("history lock is never poisoned");
                prune(&mut history, &settings, now);
                !history.is_empty()
            });
            if topics.len() >= settings.max_topics {
                return Err(ProxyError::HubFull {
                    limit: settings.max_topics,
                });
            }
        }
        let (live, _) = broadcast::channel(settings.queue.max(1));
        let name: Arc<str> = Arc::from(name);
        let topic = Arc::new(Topic {
            name: name.clone(),
            history: Mutex::new(VecDeque::new()),
            live,
        });
        topics.insert(name, topic.clone());
        Ok(topic)
    }

    /// Publishes `data` on `topic` here; returns the message.
    pub(crate) fn publish(&self, topic: &str, event: Option<&str>, data: Bytes) -> Result<Arc<Message>, ProxyError> {
        self.check(&data)?;
        self.deliver(topic, event, data, None)
    }

    /// Delivers a message here: with the next id, or with `id` (from the
    /// cluster's stream; one not above the last is a repeat, dropped).
    pub(crate) fn deliver(
        &self,
        topic: &str,
        event: Option<&str>,
        data: Bytes,
        id: Option<u64>,
    ) -> Result<Arc<Message>, ProxyError> {
        let settings = self.settings();
        let entry = self.topic(topic)?;
        let order = self.order.lock().expect("order lock is never poisoned");
        let last = self.last_id.load(Ordering::Acquire);
        let id = match id {
            Some(id) if id <= last => return Err(invalid("a repeated message")),
            Some(id) => id,
            None => last + 1,
        };
        self.last_id.store(id, Ordering::Release);
        let now = Instant::now();
        let mut history = entry.history.lock().expect("history lock is never poisoned");
        let message = Arc::new(Message {
            id,
            topic: entry.name.clone(),
            event: event.map(Box::from),
            data,
            at: now,
            sse: OnceLock::new(),
            json: OnceLock::new(),
        });
        if settings.history > 0 {
            history.push_back(message.clone());
        }
        prune(&mut history, &settings, now);
        // Sent under the order lock: ids go out in rising order.
        let _ = entry.live.send(message.clone());
        if self.wildcard.receiver_count() > 0 {
            let _ = self.wildcard.send(message.clone());
        }
        drop(history);
        drop(order);
        self.metrics.published.inc();
        Ok(message)
    }

    /// The last id given out (0 before the first message).
    pub(crate) fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Acquire)
    }

    /// Subscribers and kept messages per topic, for metrics and the admin API.
    pub fn topics(&self) -> Vec<(String, usize, usize)> {
        let topics = self.topics.read().expect("topics lock is never poisoned");
        let mut out: Vec<_> = topics
            .iter()
            .map(|(name, topic)| {
                let kept = topic.history.lock().expect("history lock is never poisoned").len();
                (name.to_string(), topic.live.receiver_count(), kept)
            })
            .collect();
        out.sort();
        out
    }

    /// The hub's figures for the dashboard: subscribers by transport,
    /// counters, and the most followed topics.
    pub fn describe(&self) -> serde_json::Value {
        let m = &self.metrics;
        let mut topics = self.topics();
        let count = topics.len();
        topics.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<_> = topics
            .iter()
            .take(5)
            .map(|(name, subscribers, kept)| json!({"topic": name, "subscribers": subscribers, "kept": kept}))
            .collect();
        json!({
            "subscribers": {
                "sse": m.subscribers[0].get(),
                "websocket": m.subscribers[1].get(),
                "long_poll": m.subscribers[2].get(),
            },
            "pattern_subscribers": self.pattern_subscribers(),
            "published": m.published.get(),
            "delivered": m.delivered.iter().map(IntCounter::get).sum::<u64>(),
            "lagged": m.lagged.get(),
            "disconnected": m.disconnected.get(),
            "topics": count,
            "top_topics": top,
            "last_id": self.last_id(),
        })
    }

    /// Pattern subscribers (counted apart: they follow the hub-wide channel).
    pub fn pattern_subscribers(&self) -> usize {
        self.wildcard.receiver_count()
    }
}

/// Drops messages past the history's count and age.
fn prune(history: &mut VecDeque<Arc<Message>>, settings: &HubSettings, now: Instant) {
    while history.len() > settings.history {
        history.pop_front();
    }
    while history
        .front()
        .is_some_and(|m| now.saturating_duration_since(m.at) > settings.history_ttl)
    {
        history.pop_front();
    }
}

/// What a subscription yields.
pub(crate) enum Event {
    Message(Arc<Message>),
    /// This many messages were missed (the subscriber fell behind).
    Lagged(u64),
}

/// One subscriber's topics and patterns, with the messages to replay first.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    exact: StreamMap<Arc<str>, BroadcastStream<Arc<Message>>>,
    patterns: Vec<TopicPattern>,
    wildcard: Option<BroadcastStream<Arc<Message>>>,
    replay: VecDeque<Arc<Message>>,
    /// The highest id replayed per topic: live copies of them are skipped.
    replayed: HashMap<Arc<str>, u64>,
    /// Live messages received but not handed out yet, lowest id first.
    ready: BinaryHeap<Reverse<ById>>,
    /// Messages missed since the last notice.
    missed: u64,
    /// The hub's last id when the subscription (last) joined its channels.
    pub(crate) joined_at: u64,
    /// Per exact topic, the last id before it was followed: the hub-wide
    /// channel still brings older ones for pattern subscriptions.
    exact_since: HashMap<Arc<str>, u64>,
    gauge: IntGauge,
}

/// A message ordered by its id.
struct ById(Arc<Message>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ById {}
impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

/// Most messages one subscribe may queue for replay.
const MAX_REPLAY: usize = 10_000;

impl Drop for Subscription {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Subscription {
    /// Subscribes to `patterns`, replaying kept messages newer than `since`.
    pub(crate) fn new(
        hub: &Arc<Hub>,
        patterns: &[TopicPattern],
        since: Option<u64>,
        transport: Transport,
    ) -> Result<Self, ProxyError> {
        let gauge = hub.metrics.subscribers[transport as usize].clone();
        gauge.inc();
        let mut subscription = Self {
            hub: hub.clone(),
            exact: StreamMap::new(),
            patterns: Vec::new(),
            wildcard: None,
            replay: VecDeque::new(),
            replayed: HashMap::new(),
            ready: BinaryHeap::new(),
            missed: 0,
            joined_at: 0,
            exact_since: HashMap::new(),
            gauge,
        };
        subscription.add(patterns, since)?;
        Ok(subscription)
    }

    /// Follows more patterns: joins their channels and reads their
    /// histories under the hub's order lock, so each message is either
    /// replayed or delivered live.
    pub(crate) fn add(&mut self, patterns: &[TopicPattern], since: Option<u64>) -> Result<(), ProxyError> {
        let settings = self.hub.settings();
        if self.exact.len() + self.patterns.len() + patterns.len() > settings.max_subscriptions {
            return Err(invalid(format!(
                "a subscriber follows at most {} topics or patterns",
                settings.max_subscriptions
            )));
        }
        if !self.replay.is_empty() && since.is_some() {
            return Err(invalid("a replay is still being sent: subscribe again when it is done"));
        }
        // Topics are looked up (or made) first, outside the order lock.
        let mut exact = Vec::new();
        for pattern in patterns {
            let name = pattern.to_string();
            if pattern.is_exact() && !self.exact.contains_key(name.as_str()) {
                exact.push((name.clone(), self.hub.topic(&name)?));
            }
        }
        let mut replay = Vec::new();
        let now = Instant::now();
        let order = self.hub.order.lock().expect("order lock is never poisoned");
        let last = self.hub.last_id();
        for (name, topic) in exact {
            let name: Arc<str> = Arc::from(name.as_str());
            self.exact_since.insert(name.clone(), last);
            self.exact.insert(name, BroadcastStream::new(topic.live.subscribe()));
            if let Some(since) = since {
                let mut history = topic.history.lock().expect("history lock is never poisoned");
                prune(&mut history, &settings, now);
                replay.extend(history.iter().filter(|m| m.id > since).cloned());
            }
        }
        for pattern in patterns.iter().filter(|p| !p.is_exact()) {
            if self.patterns.contains(pattern) {
                continue;
            }
            if self.wildcard.is_none() {
                self.wildcard = Some(BroadcastStream::new(self.hub.wildcard.subscribe()));
            }
            if let Some(since) = since {
                let topics = self.hub.topics.read().expect("topics lock is never poisoned");
                for (topic_name, topic) in topics.iter() {
                    if pattern.matches(topic_name, None) && !self.exact.contains_key(&**topic_name) {
                        let mut history = topic.history.lock().expect("history lock is never poisoned");
                        prune(&mut history, &settings, now);
                        replay.extend(history.iter().filter(|m| m.id > since).cloned());
                    }
                }
            }
            self.patterns.push(pattern.clone());
        }
        self.joined_at = self.hub.last_id();
        drop(order);
        replay.sort_by_key(|m| m.id);
        replay.dedup_by_key(|m| m.id);
        if replay.len() > MAX_REPLAY {
            // The newest ones; the client is told how many it missed.
            self.missed += (replay.len() - MAX_REPLAY) as u64;
            replay.drain(..replay.len() - MAX_REPLAY);
        }
        for message in replay {
            let max = self.replayed.entry(message.topic.clone()).or_default();
            *max = (*max).max(message.id);
            self.replay.push_back(message);
        }
        Ok(())
    }

    /// Stops following `patterns`.
    pub(crate) fn remove(&mut self, patterns: &[TopicPattern]) {
        for pattern in patterns {
            self.exact.remove(pattern.to_string().as_str());
            self.patterns.retain(|p| p != pattern);
        }
        if self.patterns.is_empty() {
            self.wildcard = None;
        }
        let follows =
            |topic: &str| self.exact.contains_key(topic) || self.patterns.iter().any(|p| p.matches(topic, None));
        self.replay.retain(|m| follows(&m.topic));
        self.ready.retain(|m| follows(&m.0 .0.topic));
        self.exact_since.retain(|topic, _| self.exact.contains_key(&**topic));
    }

    /// The next message (or notice of missed ones); waits forever while
    /// nothing is followed. Live messages are handed out lowest id first:
    /// whatever is ready on any channel is gathered before one is chosen
    /// (ids are sent in order, so a lower one is never still on its way).
    pub(crate) async fn next(&mut self) -> Event {
        loop {
            if self.missed > 0 {
                return Event::Lagged(std::mem::take(&mut self.missed));
            }
            if let Some(message) = self.replay.pop_front() {
                return Event::Message(message);
            }
            self.gather().await;
            if self.missed > 0 {
                continue;
            }
            if let Some(Reverse(ById(message))) = self.ready.pop() {
                return Event::Message(message);
            }
            let (item, from_wildcard) = tokio::select! {
                Some((_, item)) = self.exact.next(), if !self.exact.is_empty() => (item, false),
                Some(item) = next_wildcard(&mut self.wildcard) => (item, true),
                else => std::future::pending().await,
            };
            self.take(item, from_wildcard);
        }
    }

    /// Moves everything ready now on the channels into `ready`. Polled
    /// with the task's own waker, so a channel that has nothing yet wakes
    /// this task when it has (a no-op waker left registered there would
    /// lose that wake-up).
    async fn gather(&mut self) {
        use futures_util::StreamExt as _;
        let items = std::future::poll_fn(|cx| {
            let mut items = Vec::new();
            while let std::task::Poll::Ready(Some((_, item))) = self.exact.poll_next_unpin(cx) {
                items.push((item, false));
            }
            if let Some(stream) = self.wildcard.as_mut() {
                while let std::task::Poll::Ready(Some(item)) = stream.poll_next_unpin(cx) {
                    items.push((item, true));
                }
            }
            std::task::Poll::Ready(items)
        })
        .await;
        for (item, from_wildcard) in items {
            self.take(item, from_wildcard);
        }
    }

    fn take(&mut self, item: Result<Arc<Message>, BroadcastStreamRecvError>, from_wildcard: bool) {
        match item {
            Ok(message) => {
                if self.replayed.get(&message.topic).is_some_and(|&max| message.id <= max) {
                    return;
                }
                if from_wildcard {
                    // Only what a pattern asks for, and not what an exact
                    // subscription brings (from when it began).
                    let exact_from = self.exact_since.get(&message.topic).copied();
                    if exact_from.is_some_and(|since| message.id > since)
                        || !self.patterns.iter().any(|p| p.matches(&message.topic, None))
                    {
                        return;
                    }
                }
                self.ready.push(Reverse(ById(message)));
            }
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                self.hub.metrics.lagged.inc_by(missed);
                self.missed += missed;
            }
        }
    }

    /// A message ready now, without waiting.
    pub(crate) fn ready(&mut self) -> Option<Event> {
        use futures_util::FutureExt;
        self.next().now_or_never()
    }
}

async fn next_wildcard(
    wildcard: &mut Option<BroadcastStream<Arc<Message>>>,
) -> Option<Result<Arc<Message>, BroadcastStreamRecvError>> {
    match wildcard {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Whether `principal` may use `topic` (a topic or pattern) under `rules`.
fn allowed(rules: &[HubRule], topic: &TopicPattern, principal: Option<&Principal>) -> bool {
    let identity = principal.map(|p| p.identity.as_str());
    rules.iter().any(|rule| {
        rule.topics.covers(topic, identity)
            && match principal {
                Some(principal) => rule.require.check(principal).is_ok(),
                None => rule.require.identities.is_empty() && rule.require.claims.is_empty(),
            }
    })
}

/// What a request to a hub route names.
struct Ask {
    patterns: Vec<TopicPattern>,
    since: Option<u64>,
    /// When the credential the session was opened with expires (a JWT's
    /// `exp`): the stream or socket is closed then.
    expires: Option<tokio::time::Instant>,
}

/// When `principal`'s token expires, as an instant on tokio's clock.
fn expiry(principal: Option<&Principal>) -> Option<tokio::time::Instant> {
    let exp = principal?.claims.get("exp")?.as_u64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(tokio::time::Instant::now() + std::time::Duration::from_secs(exp.saturating_sub(now)))
}

/// Waits until `at` (forever when `None`).
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The topic in the path after the route's prefix, and `topic=` parameters.
fn topics_asked(entry: &RouteEntry, req: &Request<Incoming>) -> Vec<String> {
    let mut topics: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.into_owned())
        .collect();
    if let Some(PathMatch::Prefix(prefix)) = &entry.route.matcher.path {
        let rest = req.uri().path().get(prefix.len()..).unwrap_or_default();
        let rest = percent_encoding::percent_decode_str(rest.trim_matches('/')).decode_utf8_lossy();
        if !rest.is_empty() {
            topics.push(rest.into_owned());
        }
    }
    topics
}

fn query_value(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `Last-Event-ID` (SSE reconnects), else `since=` / `last_event_id=`.
fn since(req: &Request<Incoming>) -> Result<Option<u64>, ProxyError> {
    let text = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_value(req, "since"))
        .or_else(|| query_value(req, "last_event_id"));
    match text {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("\"{text}\" is not a message id (a whole number)"))),
    }
}

/// Answers a request on a hub route: publish (`POST`), or subscribe by
/// WebSocket, SSE (`Accept: text/event-stream`) or long poll (otherwise).
pub(crate) async fn serve(
    hub: &Arc<Hub>,
    entry: &RouteEntry,
    conn: &ConnectionInfo,
    mut req: Request<Incoming>,
    principal: Option<Principal>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = hub.settings();
    let topics = topics_asked(entry, &req);
    if *req.method() == Method::POST {
        let [topic] = topics.as_slice() else {
            return Err(invalid("publish to one topic: in the path or as `topic=`"));
        };
        if !switchyard_config::valid_topic(topic) {
            return Err(invalid(format!(
                "\"{topic}\" is not a topic: dot-separated segments of letters, digits, '_', '-' and ':'"
            )));
        }
        let pattern = TopicPattern::parse(topic).map_err(invalid)?;
        may_publish(&settings, &pattern, principal.as_ref())?;
        let event = query_value(&req, "event").or_else(|| {
            req.headers()
                .get("hub-event")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        if let Some(event) = &event {
            if event.contains(['\n', '\r']) || event.is_empty() {
                return Err(invalid("an event type is one line of text"));
            }
        }
        let limit = settings.max_message;
        let body = http_body_util::Limited::new(req.into_body(), limit as usize)
            .collect()
            .await
            .map_err(|error| match error.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => ProxyError::BodyTooLarge { limit },
                Err(source) => ProxyError::ClientBody { source },
            })?
            .to_bytes();
        let id = hub.publish_anywhere(topic, event.as_deref(), body).await?;
        let mut response = Response::new(ProxyBody::full(
            serde_json::to_vec(&json!({"id": id, "topic": topic})).expect("JSON serialises"),
        ));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return Ok(response);
    }
    let websocket = crate::websocket::requested(&req);
    if *req.method() != Method::GET && websocket.is_none() {
        return Err(ProxyError::MethodNotAllowed { allow: "GET, POST" });
    }
    let mut patterns = Vec::with_capacity(topics.len());
    for topic in &topics {
        let pattern = TopicPattern::parse(topic).map_err(invalid)?;
        may_subscribe(&settings, &pattern, principal.as_ref())?;
        patterns.push(pattern);
    }
    let ask = Ask {
        patterns,
        since: since(&req)?,
        expires: expiry(principal.as_ref()),
    };
    if let Some(handshake) = websocket {
        let upgrade = hyper::upgrade::on(&mut req);
        return ws::open(hub, conn, &req, handshake, upgrade, ask, principal);
    }
    if ask.patterns.is_empty() {
        return Err(invalid(
            "name a topic to follow: in the path or as `topic=` (several allowed)",
        ));
    }
    let wants_sse = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if wants_sse {
        sse::open(hub, ask)
    } else {
        let timeout = query_value(&req, "timeout").and_then(|t| t.parse::<u64>().ok());
        poll::answer(hub, ask, timeout).await
    }
}

fn may_publish(settings: &HubSettings, topic: &TopicPattern, principal: Option<&Principal>) -> Result<(), ProxyError> {
    if settings.publish.is_empty() {
        return Err(ProxyError::Forbidden {
            reason: "this hub takes no publishes (it has no `publish` rules)".into(),
        });
    }
    if allowed(&settings.publish, topic, principal) {
        Ok(())
    } else {
        Err(ProxyError::Forbidden {
            reason: format!("publishing to \"{topic}\" is not allowed"),
        })
    }
}

fn may_subscribe(
    settings: &HubSettings,
    topic: &TopicPattern,
    principal: Option<&Principal>,
) -> Result<(), ProxyError> {
    match &settings.subscribe {
        None => Ok(()),
        Some(rules) if allowed(rules, topic, principal) => Ok(()),
        Some(_) => Err(ProxyError::Forbidden {
            reason: format!("subscribing to \"{topic}\" is not allowed"),
        }),
    }
}

/// The JSON body of an answer.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}
