//! Hub fan-out through Redis streams: a hub route's publishes go to
//! `switchyard:hub:{route}` (fields `topic`, `data`, `event`), and every
//! node, the publishing one included, reads the stream and delivers each
//! message with an id made from its stream id.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Link, RETRY};
use crate::Shared;

/// A hub route's stream in Redis, for publishing.
pub(crate) struct StreamLink {
    key: String,
    manager: ConnectionManager,
    timeout: Duration,
    max_len: usize,
}

impl std::fmt::Debug for StreamLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection: it knows the password.
        f.debug_struct("StreamLink")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl StreamLink {
    /// Appends a message; returns its id (`None`: Redis failed).
    pub(crate) async fn append(&self, topic: &str, event: Option<&str>, data: &[u8]) -> Option<u64> {
        let mut command = redis::cmd("XADD");
        command
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("topic")
            .arg(topic)
            .arg("data")
            .arg(data);
        if let Some(event) = event {
            command.arg("event").arg(event);
        }
        let mut manager = self.manager.clone();
        let id: String = tokio::time::timeout(self.timeout, command.query_async(&mut manager))
            .await
            .ok()?
            .map_err(|error| tracing::warn!(%error, "cluster: a hub publish failed"))
            .ok()?;
        parse_stream_id(&id)
    }
}

/// `1700000000000-3` as one number: milliseconds, then 20 bits of sequence.
fn parse_stream_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq < 1 << 20).then_some((ms << 20) | seq)
}

fn stream_id(id: u64) -> String {
    format!("{}-{}", id >> 20, id & ((1 << 20) - 1))
}

/// Hub routes of the running configuration.
fn hubs(shared: &Shared) -> Vec<(String, Arc<crate::hub::Hub>)> {
    let snapshot = shared.snapshot.load();
    let mut out: Vec<(String, Arc<crate::hub::Hub>)> = Vec::new();
    for listener in snapshot.listeners.values() {
        for entry in listener.router.routes() {
            if let Some(hub) = &entry.hub {
                if !out.iter().any(|(name, _)| *name == entry.route.name) {
                    out.push((entry.route.name.clone(), hub.clone()));
                }
            }
        }
    }
    out
}

/// Delivers what a hub route's stream brings, from after the hub's last
/// id, while the hub lives (or until aborted); reconnects by itself. The
/// read position moves past every entry, delivered or not (a message the
/// hub refuses, say for its topic limit, is not read again and again).
async fn read_stream(client: redis::Client, hub: Weak<crate::hub::Hub>, key: String) {
    const BLOCK_MS: u64 = 1000;
    let Some(mut position) = hub.upgrade().map(|h| h.last_id()) else {
        return;
    };
    loop {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 2000)));
        let mut connection = match client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, %key, "cluster: cannot read the hub stream; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&key)
                .arg(stream_id(position))
                .query_async(&mut connection)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(%error, %key, "cluster: reading the hub stream failed; reconnecting");
                    break;
                }
            };
            let Some(hub) = hub.upgrade() else { return };
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in stream.ids {
                    let Some(id) = parse_stream_id(&entry.id) else { continue };
                    position = position.max(id);
                    let text = |field: &str| -> Option<Vec<u8>> {
                        match entry.map.get(field)? {
                            redis::Value::BulkString(bytes) => Some(bytes.clone()),
                            _ => None,
                        }
                    };
                    let (Some(topic), Some(data)) = (text("topic"), text("data")) else {
                        continue;
                    };
                    let topic = String::from_utf8_lossy(&topic).into_owned();
                    let event = text("event").map(|e| String::from_utf8_lossy(&e).into_owned());
                    if let Err(error) = hub.deliver(&topic, event.as_deref(), bytes::Bytes::from(data), Some(id)) {
                        tracing::debug!(%key, %topic, ?error, "cluster: a hub message from the stream was not delivered here");
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The hub streams being read in one connected stretch.
#[derive(Default)]
pub(super) struct Readers {
    tasks: tokio::task::JoinSet<()>,
    running: Vec<Reader>,
}

struct Reader {
    route: String,
    hub: Weak<crate::hub::Hub>,
    task: tokio::task::AbortHandle,
}

impl Readers {
    /// Reads every hub route's stream and points its publishes at it; stops
    /// reading for hubs that are gone (a route removed or rebuilt).
    pub(super) fn reconcile(&mut self, shared: &Shared, client: &redis::Client, link: &Link) {
        let live = hubs(shared);
        self.running.retain(|reader| {
            let wanted = reader.hub.upgrade().is_some_and(|hub| {
                live.iter()
                    .any(|(route, h)| *route == reader.route && Arc::ptr_eq(h, &hub))
            });
            if !wanted {
                reader.task.abort();
            }
            wanted
        });
        while self.tasks.try_join_next().is_some() {}
        for (route, hub) in live {
            let running = self
                .running
                .iter()
                .any(|r| r.route == route && r.hub.upgrade().is_some_and(|h| Arc::ptr_eq(&h, &hub)));
            if running {
                continue;
            }
            let key = format!("switchyard:hub:{route}");
            let max_len = (hub.settings().history.max(1) * 100).clamp(1_000, 100_000);
            hub.relay.store(Arc::new(crate::hub::Relay::Stream(StreamLink {
                key: key.clone(),
                manager: link.manager.clone(),
                timeout: link.timeout,
                max_len,
            })));
            let task = self.tasks.spawn(read_stream(client.clone(), Arc::downgrade(&hub), key));
            self.running.push(Reader {
                route,
                hub: Arc::downgrade(&hub),
                task,
            });
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        // The link is gone: publishes are refused until it is back.
        for reader in &self.running {
            if let Some(hub) = reader.hub.upgrade() {
                if matches!(**hub.relay.load(), crate::hub::Relay::Stream(_)) {
                    hub.relay.store(Arc::new(crate::hub::Relay::Down));
                }
            }
        }
    }
}
