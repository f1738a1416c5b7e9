//! The gateway's one response store: stored responses in memory, bounded
//! by bytes (moka's TinyLFU admission keeps one-off scans from flushing
//! what is asked for often), the fetches under way (so that concurrent
//! misses make one origin request), and purges.
//!
//! Keys are `route NUL key`, where `key` is what the route's key spec makes
//! of the request (`host/path?query`, then chosen headers and cookies, each
//! after a newline). A response that varies on request headers is stored
//! under `route NUL key NUL values`, with a marker under the plain key
//! naming the headers to read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use moka::notification::RemovalCause;
use switchyard_cache::CacheControl;
use tokio::sync::watch;

/// How long past its stale windows a stored response with validators is
/// kept, so that it can still be revalidated with a 304 (unless its bytes
/// are wanted for something asked for more often).
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);

/// How long a key whose response could not be stored is passed straight to
/// the origin, untouched and without waiting for other requests of the key
/// (Varnish's "hit-for-miss"). A storable response ends it early.
pub(crate) const PASS_FOR: Duration = Duration::from_secs(10);

/// A stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    /// The response head as the client gets it (no `Age`, no tag header).
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The response's directives, with the route's stale windows filled in
    /// where the response gives none.
    pub(crate) control: CacheControl,
    /// How long it is fresh for, counted from age zero.
    pub(crate) lifetime: Duration,
    /// Its age when it was stored, and when that was.
    pub(crate) initial_age: Duration,
    pub(crate) stored_at: Instant,
    /// Surrogate keys for purges.
    pub(crate) tags: Box<[String]>,
    /// The request headers it varies on (`Vary`), sorted.
    pub(crate) vary: Box<[HeaderName]>,
}

impl Stored {
    /// Its age now (RFC 9111 section 4.2.3's `current_age`).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Whether it can be revalidated (it has an `ETag` or `Last-Modified`).
    fn has_validators(&self) -> bool {
        self.headers.contains_key(http::header::ETAG) || self.headers.contains_key(http::header::LAST_MODIFIED)
    }

    /// How long the store keeps it from now: while fresh, while within its
    /// stale windows, and a while longer if it can be revalidated.
    fn keep(&self) -> Duration {
        let stale = self
            .control
            .stale_while_revalidate
            .into_iter()
            .chain(self.control.stale_if_error)
            .max()
            .unwrap_or(Duration::ZERO);
        let revalidation = if self.has_validators() {
            KEEP_FOR_REVALIDATION
        } else {
            Duration::ZERO
        };
        (self.lifetime + stale + revalidation).saturating_sub(self.initial_age)
    }

    /// Bytes it takes in the store, roughly.
    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        self.body.len() + headers + self.tags.iter().map(|t| t.len() + 24).sum::<usize>() + 256
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Object(Arc<Stored>),
    /// The request headers the responses under this key vary on, and how
    /// long the longest-kept variant stays.
    Vary(Arc<(Box<[HeaderName]>, Duration)>),
    /// The last response for this key could not be stored ([`PASS_FOR`]).
    Pass,
}

/// What the store has for a request.
pub(crate) enum Found {
    Stored(Arc<Stored>),
    /// Not storable lately: go to the origin untouched.
    Pass,
    Nothing,
}

struct Expiry;

impl moka::Expiry<String, Entry> for Expiry {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(keep(entry))
    }

    fn expire_after_update(&self, _: &String, entry: &Entry, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(keep(entry))
    }
}

fn keep(entry: &Entry) -> Duration {
    match entry {
        Entry::Object(stored) => stored.keep(),
        Entry::Vary(marker) => marker.1,
        Entry::Pass => PASS_FOR,
    }
}

/// What a purge names.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Purge {
    /// Keys as routes make them (`host/path?query`): every stored variant
    /// of each, on every route.
    pub keys: Vec<String>,
    /// Key prefixes (`example.com/images/`).
    pub prefixes: Vec<String>,
    /// Surrogate keys from the routes' `tag_header`.
    pub tags: Vec<String>,
}

/// Counts for the admin API and `/metrics`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StoreStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_size: u64,
}

/// The response store.
pub struct ResponseStore {
    objects: moka::sync::Cache<String, Entry>,
    max_size: u64,
    /// Fetches under way by key; a request that finds one waits for it.
    in_flight: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// One more for each purge and invalidation: a fetch that started
    /// before one does not store what it got.
    generation: AtomicU64,
    evictions: prometheus::IntCounter,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

/// Either the caller fetches (and holds the claim until the response is
/// stored or given up), or another request is fetching and the caller may
/// wait for it.
pub(crate) enum Claim {
    Fetch(FetchGuard),
    Wait(watch::Receiver<()>),
}

/// A fetch under way; dropping it wakes the requests waiting for it.
pub(crate) struct FetchGuard {
    store: Weak<ResponseStore>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store
                .in_flight
                .lock()
                .expect("in-flight lock is never poisoned")
                .remove(&self.key);
        }
    }
}

impl ResponseStore {
    /// A store of at most `max_size` bytes; `evictions` counts what the
    /// bound pushes out.
    pub fn new(max_size: u64, evictions: prometheus::IntCounter) -> Arc<Self> {
        let counted = evictions.clone();
        let objects = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|key: &String, entry: &Entry| {
                let weight = key.len()
                    + match entry {
                        Entry::Object(stored) => stored.weight(),
                        Entry::Vary(marker) => marker.0.len() * 24 + 64,
                        Entry::Pass => 64,
                    };
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(Expiry)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    counted.inc();
                }
            })
            .build();
        Arc::new(Self {
            objects,
            max_size,
            in_flight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            evictions,
        })
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// The stored response for the request with key `key` and headers
    /// `request` (its `Vary` values).
    pub(crate) fn find(&self, key: &str, request: &HeaderMap) -> Found {
        match self.objects.get(key) {
            None => Found::Nothing,
            Some(Entry::Object(stored)) => Found::Stored(stored),
            Some(Entry::Pass) => Found::Pass,
            Some(Entry::Vary(marker)) => match self.objects.get(&variant_key(key, &marker.0, request)) {
                Some(Entry::Object(stored)) => Found::Stored(stored),
                _ => Found::Nothing,
            },
        }
    }

    /// The current generation, to hand back to [`ResponseStore::insert`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores `stored` for requests with key `key` and headers `request`,
    /// unless a purge or invalidation came since `generation`.
    pub(crate) fn insert(&self, key: &str, request: &HeaderMap, stored: Arc<Stored>, generation: u64) {
        if self.generation() != generation {
            return;
        }
        if stored.vary.is_empty() {
            self.objects.insert(key.to_owned(), Entry::Object(stored));
            return;
        }
        let variant = variant_key(key, &stored.vary, request);
        let keep = match self.objects.get(key) {
            Some(Entry::Vary(marker)) if marker.0 == stored.vary => marker.1.max(stored.keep()),
            _ => stored.keep(),
        };
        self.objects
            .insert(key.to_owned(), Entry::Vary(Arc::new((stored.vary.clone(), keep))));
        self.objects.insert(variant, Entry::Object(stored));
    }

    /// Marks `key` as not storable for a while ([`PASS_FOR`]), unless
    /// something is stored under it.
    pub(crate) fn pass(&self, key: &str) {
        if self.objects.get(key).is_none() {
            self.objects.insert(key.to_owned(), Entry::Pass);
        }
    }

    /// Forgets every variant stored under `key` (an unsafe method succeeded
    /// on its URI, RFC 9111 section 4.4).
    pub(crate) fn invalidate(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(Entry::Vary(_)) = self.objects.get(key) {
            let variants = format!("{key}\0");
            for (stored_key, _) in self.objects.iter() {
                if stored_key.starts_with(&variants) {
                    self.objects.invalidate(stored_key.as_str());
                }
            }
        }
        self.objects.invalidate(key);
    }

    /// Claims the fetch of `key`, or finds the one under way.
    pub(crate) fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut in_flight = self.in_flight.lock().expect("in-flight lock is never poisoned");
        if let Some(waiting) = in_flight.get(key) {
            return Claim::Wait(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        in_flight.insert(key.to_owned(), waiting);
        Claim::Fetch(FetchGuard {
            store: Arc::downgrade(self),
            key: key.to_owned(),
            _done: done,
        })
    }

    /// Claims the fetch of `key` only if nobody is fetching it.
    pub(crate) fn try_claim(self: &Arc<Self>, key: &str) -> Option<FetchGuard> {
        match self.claim(key) {
            Claim::Fetch(guard) => Some(guard),
            Claim::Wait(_) => None,
        }
    }

    /// Removes what `purge` names; returns how many stored responses went.
    pub fn purge(&self, purge: &Purge) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut purged = 0;
        for (stored_key, entry) in self.objects.iter() {
            // The key as routes make it, without the route and the variant.
            let key = stored_key
                .split_once('\0')
                .map_or(stored_key.as_str(), |(_, rest)| rest);
            let base = key.split('\0').next().unwrap_or(key);
            let primary = base.split('\n').next().unwrap_or(base);
            let by_key = purge.keys.iter().any(|k| k == primary);
            let by_prefix = purge.prefixes.iter().any(|p| primary.starts_with(p.as_str()));
            let by_tag = match &entry {
                Entry::Object(stored) => purge.tags.iter().any(|t| stored.tags.contains(t)),
                Entry::Vary(_) | Entry::Pass => false,
            };
            if by_key || by_prefix || by_tag {
                self.objects.invalidate(stored_key.as_str());
                if let Entry::Object(_) = entry {
                    purged += 1;
                }
            }
        }
        self.objects.run_pending_tasks();
        purged
    }

    /// Entries and bytes now (after pending evictions are applied).
    pub fn stats(&self) -> StoreStats {
        self.objects.run_pending_tasks();
        StoreStats {
            entries: self.objects.entry_count(),
            bytes: self.objects.weighted_size(),
            max_size: self.max_size,
        }
    }

    /// Responses pushed out by the byte bound since the store was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.get()
    }
}

/// The key of the variant of `key` that a request with headers `request`
/// selects: the header names and the request's (normalised) values.
fn variant_key(key: &str, names: &[HeaderName], request: &HeaderMap) -> String {
    let values = switchyard_cache::vary_values(request, names);
    let mut variant = String::with_capacity(key.len() + 1 + values.iter().map(|v| v.len() + 24).sum::<usize>());
    variant.push_str(key);
    variant.push('\0');
    for (name, value) in names.iter().zip(values) {
        variant.push_str(name.as_str());
        variant.push(':');
        variant.push_str(&value);
        variant.push('\u{1}');
    }
    variant
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn stored(body: &'static str, vary: &[&'static str], tags: &[&str]) -> Arc<Stored> {
        Arc::new(Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            control: CacheControl::default(),
            lifetime: Duration::from_secs(60),
            initial_age: Duration::ZERO,
            stored_at: Instant::now(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            vary: vary.iter().map(|n| HeaderName::from_static(n)).collect(),
        })
    }

    fn body(found: Found) -> Option<Bytes> {
        match found {
            Found::Stored(stored) => Some(stored.body.clone()),
            _ => None,
        }
    }

    fn store() -> Arc<ResponseStore> {
        ResponseStore::new(1 << 20, prometheus::IntCounter::new("evictions", "test").unwrap())
    }

    #[test]
    fn variants_are_found_by_their_headers() {
        let store = store();
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut fr = HeaderMap::new();
        fr.insert("accept-language", HeaderValue::from_static("fr"));
        store.insert("r\0h/a", &en, stored("hello", &["accept-language"], &[]), 0);
        store.insert("r\0h/a", &fr, stored("bonjour", &["accept-language"], &[]), 0);
        assert_eq!(body(store.find("r\0h/a", &en)).unwrap(), "hello");
        assert_eq!(body(store.find("r\0h/a", &fr)).unwrap(), "bonjour");
        assert!(body(store.find("r\0h/a", &HeaderMap::new())).is_none());
        store.invalidate("r\0h/a");
        assert!(body(store.find("r\0h/a", &en)).is_none());
        assert!(body(store.find("r\0h/a", &fr)).is_none());
        // A fetch that began before the invalidation does not store.
        store.insert("r\0h/a", &en, stored("old", &["accept-language"], &[]), 0);
        assert!(body(store.find("r\0h/a", &en)).is_none());
        store.pass("r\0h/b");
        assert!(matches!(store.find("r\0h/b", &en), Found::Pass));
        store.insert("r\0h/b", &en, stored("b", &[], &[]), store.generation());
        assert_eq!(
            body(store.find("r\0h/b", &en)).unwrap(),
            "b",
            "a storable response ends the pass"
        );
    }

    #[test]
    fn purges_by_key_prefix_and_tag() {
        let store = store();
        let none = HeaderMap::new();
        store.insert("r\0h/a", &none, stored("a", &[], &["red"]), 0);
        store.insert("s\0h/a", &none, stored("a2", &[], &[]), 0);
        store.insert("r\0h/a\nx-tenant:1", &none, stored("a-tenant", &[], &[]), 0);
        store.insert("r\0h/ab", &none, stored("ab", &[], &[]), 0);
        store.insert("r\0h/img/1", &none, stored("1", &[], &["blue"]), 0);
        store.insert("r\0h/img/2", &none, stored("2", &[], &["blue", "red"]), 0);
        store.insert("r\0h/other", &none, stored("o", &[], &[]), 0);
        let purged = store.purge(&Purge {
            keys: vec!["h/a".into()],
            ..Purge::default()
        });
        assert_eq!(purged, 3, "both routes and the header-keyed one");
        assert!(
            body(store.find("r\0h/ab", &none)).is_some(),
            "an exact key is not a prefix"
        );
        assert_eq!(
            store.purge(&Purge {
                tags: vec!["red".into()],
                ..Purge::default()
            }),
            1
        );
        assert!(body(store.find("r\0h/img/2", &none)).is_none());
        assert_eq!(
            store.purge(&Purge {
                prefixes: vec!["h/img/".into()],
                ..Purge::default()
            }),
            1
        );
        assert!(body(store.find("r\0h/other", &none)).is_some());
        assert!(body(store.find("r\0h/ab", &none)).is_some());
    }

    #[test]
    fn one_claim_at_a_time() {
        let store = store();
        let Claim::Fetch(guard) = store.claim("k") else {
            panic!("the first claim fetches")
        };
        let Claim::Wait(waiting) = store.claim("k") else {
            panic!("the second waits")
        };
        assert!(store.try_claim("k").is_none());
        drop(guard);
        // The waiter learns that the fetch ended.
        assert!(waiting.has_changed().is_err());
        assert!(store.try_claim("k").is_some());
    }
}
