//! Idempotency keys: a request carrying `Idempotency-Key` runs once; repeats
//! within the TTL get the stored response.
//!
//! A key is scoped by the caller (route and client identity go into it). The
//! request's fingerprint (method, target and body, hashed by the caller) is
//! stored with it: a repeat with a different fingerprint is a client error
//! (422), not a replay. While the first request runs, a duplicate either waits
//! for its response or is refused (409), as the route says.
//!
//! [`IdempotencyStore`] is the seam for other stores (the gateway keeps them
//! in Redis in cluster mode); [`MemoryStore`] is the bounded in-process one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin {
    /// First time: run it, then `complete` (or `abandon`) the key with this
    /// claim.
    Proceed(ClaimId),
    /// Seen and answered: send this.
    Replay(Arc<StoredResponse>),
    /// The same request is running now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// The store is full of running requests.
    Full,
    /// The store cannot be reached, and its policy is to refuse.
    Unavailable,
    /// The store cannot be reached, and its policy is to let the request
    /// run without a key (it is neither recognised nor kept).
    Bypass,
}

/// A boxed future, so stores can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where keys and their responses live.
/// Which claim on a key a `complete` or `abandon` is for: a shared store
/// gives each claim its own, so that a request whose claim lapsed and was
/// taken by another cannot answer or release the other's. (The in-memory
/// store, with one claim per key at a time, gives 0.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimId(pub u64);

pub trait IdempotencyStore: Send + Sync + std::fmt::Debug {
    /// Claims `key` for a request with `fingerprint`, or says why not.
    fn begin<'a>(&'a self, key: &'a str, fingerprint: u64) -> BoxFuture<'a, Begin>;

    /// Waits up to `timeout` for the running request with `key` to finish.
    /// `None`: it was abandoned, or the wait timed out.
    fn wait<'a>(&'a self, key: &'a str, timeout: Duration) -> BoxFuture<'a, Option<Arc<StoredResponse>>>;

    /// Stores the response of the request that claimed `key` with `claim`.
    fn complete<'a>(&'a self, key: &'a str, claim: ClaimId, response: StoredResponse) -> BoxFuture<'a, ()>;

    /// Releases `key`, claimed with `claim`, without a response (the request
    /// failed in a way worth trying again), so a repeat runs afresh.
    fn abandon<'a>(&'a self, key: &'a str, claim: ClaimId) -> BoxFuture<'a, ()>;
}

/// Settings of the in-memory store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStoreSettings {
    /// How long a response is replayed.
    pub ttl: Duration,
    /// Most keys kept; the oldest answered ones make room.
    pub max_entries: usize,
}

/// A bounded in-memory store. One short lock per call, on routes that opt in
/// and only for requests that carry a key.
#[derive(Debug)]
pub struct MemoryStore {
    settings: MemoryStoreSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Keys in the order they were claimed, for eviction.
    order: VecDeque<String>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: u64,
    state: EntryState,
}

#[derive(Debug)]
enum EntryState {
    Running(watch::Sender<Option<Arc<StoredResponse>>>),
    Done {
        response: Arc<StoredResponse>,
        expires: Instant,
    },
}

impl MemoryStore {
    pub fn new(settings: MemoryStoreSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn settings(&self) -> &MemoryStoreSettings {
        &self.settings
    }

    /// Keys held now (running and answered).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("idempotency store lock is never poisoned")
    }

    fn begin_at(&self, key: &str, fingerprint: u64, now: Instant) -> Begin {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get(key) {
            let expired = matches!(entry.state, EntryState::Done { expires, .. } if expires <= now);
            if !expired {
                if entry.fingerprint != fingerprint {
                    return Begin::Mismatch;
                }
                return match &entry.state {
                    EntryState::Running(_) => Begin::InProgress,
                    EntryState::Done { response, .. } => Begin::Replay(response.clone()),
                };
            }
            inner.entries.remove(key);
        }
        if inner.entries.len() >= self.settings.max_entries && !inner.make_room(now, self.settings.max_entries) {
            return Begin::Full;
        }
        let (tx, _) = watch::channel(None);
        inner.entries.insert(
            key.to_owned(),
            Entry {
                fingerprint,
                state: EntryState::Running(tx),
            },
        );
        inner.order.push_back(key.to_owned());
        Begin::Proceed(ClaimId(0))
    }
}

impl Inner {
    /// Drops expired entries, then the oldest answered ones, until below
    /// `max`; running entries stay. Returns whether there is room.
    fn make_room(&mut self, now: Instant, max: usize) -> bool {
        self.entries
            .retain(|_, e| !matches!(e.state, EntryState::Done { expires, .. } if expires <= now));
        let mut kept = VecDeque::with_capacity(self.order.len());
        while let Some(key) = self.order.pop_front() {
            match self.entries.get(&key) {
                None => {}
                Some(e) if self.entries.len() >= max && matches!(e.state, EntryState::Done { .. }) => {
                    self.entries.remove(&key);
                }
                Some(_) => kept.push_back(key),
            }
        }
        self.order = kept;
        self.entries.len() < max
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(&'a self, key: &'a str, fingerprint: u64) -> BoxFuture<'a, Begin> {
        Box::pin(async move { self.begin_at(key, fingerprint, Instant::now()) })
    }

    fn wait<'a>(&'a self, key: &'a str, timeout: Duration) -> BoxFuture<'a, Option<Arc<StoredResponse>>> {
        Box::pin(async move {
            let mut rx = {
                let inner = self.lock();
                match inner.entries.get(key).map(|e| &e.state) {
                    Some(EntryState::Running(tx)) => tx.subscribe(),
                    Some(EntryState::Done { response, .. }) => return Some(response.clone()),
                    None => return None,
                }
            };
            let done = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
            match done {
                Ok(Ok(value)) => value.clone(),
                // Abandoned (sender dropped) or timed out.
                _ => None,
            }
        })
    }

    fn complete<'a>(&'a self, key: &'a str, _claim: ClaimId, response: StoredResponse) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let response = Arc::new(response);
            let mut inner = self.lock();
            if let Some(entry) = inner.entries.get_mut(key) {
                let running = std::mem::replace(
                    &mut entry.state,
                    EntryState::Done {
                        response: response.clone(),
                        expires: Instant::now() + self.settings.ttl,
                    },
                );
                if let EntryState::Running(tx) = running {
                    tx.send_replace(Some(response));
                }
            }
        })
    }

    fn abandon<'a>(&'a self, key: &'a str, _claim: ClaimId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = self.lock();
            if matches!(inner.entries.get(key).map(|e| &e.state), Some(EntryState::Running(_))) {
                // Dropping the sender wakes the waiters with "abandoned".
                inner.entries.remove(key);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_entries: usize) -> MemoryStore {
        MemoryStore::new(MemoryStoreSettings {
            ttl: Duration::from_secs(60),
            max_entries,
        })
    }

    fn response(body: &'static str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn first_proceeds_then_duplicates_replay_and_other_bodies_mismatch() {
        let s = store(10);
        assert!(matches!(s.begin("k", 1).await, Begin::Proceed(_)));
        assert!(matches!(s.begin("k", 1).await, Begin::InProgress));
        assert!(matches!(s.begin("k", 2).await, Begin::Mismatch));
        s.complete("k", ClaimId(0), response("made")).await;
        match s.begin("k", 1).await {
            Begin::Replay(r) => assert_eq!((r.status, &r.body[..]), (StatusCode::CREATED, &b"made"[..])),
            other => panic!("expected a replay, got {other:?}"),
        }
        assert!(matches!(s.begin("k", 2).await, Begin::Mismatch));
        assert!(matches!(s.begin("other", 2).await, Begin::Proceed(_)));
    }

    #[tokio::test]
    async fn waiters_get_the_response_or_learn_it_was_abandoned() {
        let s = Arc::new(store(10));
        assert!(matches!(s.begin("k", 1).await, Begin::Proceed(_)));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.wait("k", Duration::from_secs(5)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        s.complete("k", ClaimId(0), response("once")).await;
        for w in waiters {
            assert_eq!(&w.await.unwrap().expect("the response").body[..], b"once");
        }

        assert!(matches!(s.begin("j", 1).await, Begin::Proceed(_)));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait("j", Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        s.abandon("j", ClaimId(0)).await;
        assert!(waiter.await.unwrap().is_none());
        assert!(
            matches!(s.begin("j", 1).await, Begin::Proceed(_)),
            "an abandoned key runs afresh"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded() {
        let s = store(10);
        assert!(matches!(s.begin("k", 1).await, Begin::Proceed(_)));
        assert!(s.wait("k", Duration::from_millis(100)).await.is_none());
    }

    #[test]
    fn answers_expire_after_the_ttl() {
        let s = store(10);
        let t0 = Instant::now();
        assert!(matches!(s.begin_at("k", 1, t0), Begin::Proceed(_)));
        futures_lite_block_on(s.complete("k", ClaimId(0), response("x")));
        assert!(matches!(
            s.begin_at("k", 1, t0 + Duration::from_secs(30)),
            Begin::Replay(_)
        ));
        assert!(matches!(
            s.begin_at("k", 2, t0 + Duration::from_secs(61)),
            Begin::Proceed(_)
        ));
    }

    #[test]
    fn the_store_stays_bounded_evicting_the_oldest_answers_first() {
        let s = store(3);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            assert!(matches!(s.begin_at(key, 1, now), Begin::Proceed(_)));
        }
        assert!(
            matches!(s.begin_at("d", 1, now), Begin::Full),
            "all three still running"
        );
        futures_lite_block_on(s.complete("b", ClaimId(0), response("b")));
        assert!(matches!(s.begin_at("d", 1, now), Begin::Proceed(_)), "b made room");
        assert_eq!(s.len(), 3);
        assert!(
            matches!(s.begin_at("b", 1, now), Begin::Full),
            "b was evicted; a, c, d still run"
        );
    }

    /// Runs a future that never waits (the memory store's `complete`).
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}
