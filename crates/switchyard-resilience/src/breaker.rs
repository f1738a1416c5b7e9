//! The circuit breaker: closed, open, half-open.
//!
//! - **Closed:** requests flow; outcomes are counted over a sliding window.
//!   It opens when, with at least `min_requests` in the window, the failure
//!   ratio reaches `failure_ratio`, or when `consecutive_failures` fail in a row.
//! - **Open:** requests are refused at once (the gateway answers 503 without
//!   waiting for a doomed upstream) until `open_for` has passed.
//! - **Half-open:** up to `half_open_probes` requests go through as probes.
//!   One failed probe opens the breaker again; that many passed probes close it
//!   with a clean window.
//!
//! All state is atomic; a request costs a load when closed, plus one counter
//! update when it ends. A [`Permit`] dropped without an outcome (the client
//! went away) gives its probe slot back rather than wedging the breaker.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::window::RollingCounts;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Open when failures / requests over `window` reach this (0 to 1)...
    pub failure_ratio: f64,
    /// ...with at least this many requests in the window.
    pub min_requests: u32,
    pub window: Duration,
    /// Open after this many failures in a row (0: off).
    pub consecutive_failures: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probes let through when half-open; as many must pass to close.
    pub half_open_probes: u32,
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    /// The name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// A state change, for the caller to log and count.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Closed to open, and why.
    Opened { reason: String },
    /// Open to half-open: probing starts.
    HalfOpened,
    /// A probe failed: open again.
    Reopened,
    /// Enough probes passed: closed.
    Closed,
}

/// The answer to "may this request go?".
#[derive(Debug)]
pub struct Admission {
    /// `Some` when the request may go; finish it with the outcome.
    pub permit: Option<Permit>,
    /// When refused: how long until the breaker probes again.
    pub retry_after: Duration,
    /// A state change this call made.
    pub transition: Option<Transition>,
}

/// A circuit breaker. Kept across reloads while its settings stay the same.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    /// When it last opened (ns since `epoch`).
    opened_at: AtomicU64,
    consecutive: AtomicU32,
    probes_started: AtomicU32,
    probes_passed: AtomicU32,
    /// (requests, failures) while closed.
    counts: RollingCounts,
    /// Times it opened (including reopenings after a failed probe).
    opened_total: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: AtomicU8::new(BreakerState::Closed as u8),
            opened_at: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_started: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            counts: RollingCounts::new(settings.window),
            opened_total: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// How many times it has opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    /// Requests and failures in the current window (closed state).
    pub fn window(&self, now: Instant) -> (u64, u64) {
        self.counts.sum(self.nanos(now))
    }

    /// Asks whether a request may go at `now`.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let mut transition = None;
        let mut state = self.state();
        if state == BreakerState::Open {
            let nanos = self.nanos(now);
            let reopen_at = self.opened_at.load(Ordering::Acquire) + self.settings.open_for.as_nanos() as u64;
            if nanos < reopen_at {
                return self.refuse(Duration::from_nanos(reopen_at - nanos), None);
            }
            if self.cas(BreakerState::Open, BreakerState::HalfOpen) {
                self.probes_started.store(0, Ordering::Relaxed);
                self.probes_passed.store(0, Ordering::Relaxed);
                transition = Some(Transition::HalfOpened);
            }
            state = self.state();
        }
        match state {
            BreakerState::Closed => self.allow(false, transition),
            BreakerState::HalfOpen => {
                if self.probes_started.fetch_add(1, Ordering::AcqRel) < self.settings.half_open_probes {
                    self.allow(true, transition)
                } else {
                    self.probes_started.fetch_sub(1, Ordering::AcqRel);
                    // Probes are out; their verdict will come within a request's time.
                    self.refuse(Duration::from_secs(1), transition)
                }
            }
            BreakerState::Open => self.refuse(self.settings.open_for, transition),
        }
    }

    fn allow(self: &Arc<Self>, probe: bool, transition: Option<Transition>) -> Admission {
        Admission {
            permit: Some(Permit {
                breaker: Arc::clone(self),
                probe,
                finished: false,
            }),
            retry_after: Duration::ZERO,
            transition,
        }
    }

    fn refuse(&self, retry_after: Duration, transition: Option<Transition>) -> Admission {
        Admission {
            permit: None,
            retry_after,
            transition,
        }
    }

    fn record(&self, probe: bool, success: bool, now: Instant) -> Option<Transition> {
        let nanos = self.nanos(now);
        if probe {
            if self.state() != BreakerState::HalfOpen {
                return None;
            }
            if !success {
                return self.open(BreakerState::HalfOpen, nanos).then_some(Transition::Reopened);
            }
            let passed = self.probes_passed.fetch_add(1, Ordering::AcqRel) + 1;
            if passed >= self.settings.half_open_probes && self.cas(BreakerState::HalfOpen, BreakerState::Closed) {
                self.counts.clear();
                self.consecutive.store(0, Ordering::Relaxed);
                return Some(Transition::Closed);
            }
            return None;
        }
        // Outcomes of requests let in while closed count only while closed.
        if self.state() != BreakerState::Closed {
            return None;
        }
        if success {
            self.counts.add(nanos, 1, 0);
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            return None;
        }
        self.counts.add(nanos, 1, 1);
        let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = if self.settings.consecutive_failures > 0 && in_a_row >= self.settings.consecutive_failures {
            format!("{in_a_row} failures in a row")
        } else {
            let (requests, failures) = self.counts.sum(nanos);
            let ratio = failures as f64 / requests.max(1) as f64;
            if requests < u64::from(self.settings.min_requests) || ratio < self.settings.failure_ratio {
                return None;
            }
            format!(
                "{failures} of {requests} requests failed in {:?} ({:.0}%)",
                self.settings.window,
                ratio * 100.0
            )
        };
        self.open(BreakerState::Closed, nanos)
            .then_some(Transition::Opened { reason })
    }

    fn open(&self, from: BreakerState, nanos: u64) -> bool {
        // The time first, so a reader that sees Open sees when it opened.
        self.opened_at.store(nanos, Ordering::Release);
        if self.cas(from, BreakerState::Open) {
            self.opened_total.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn cas(&self, from: BreakerState, to: BreakerState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Leave to send one request; report how it went with [`Permit::finish`].
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    finished: bool,
}

impl Permit {
    /// Whether this request is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports the outcome; returns the state change it caused.
    pub fn finish(mut self, success: bool, now: Instant) -> Option<Transition> {
        self.finished = true;
        self.breaker.record(self.probe, success, now)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            // No verdict (the request was abandoned): free the probe slot.
            self.breaker.probes_started.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            consecutive_failures: 0,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn run(b: &Arc<Breaker>, now: Instant, success: bool) -> Option<Transition> {
        b.admit(now).permit.expect("admitted").finish(success, now)
    }

    #[test]
    fn closed_stays_closed_below_the_minimum_request_count() {
        let b = Arc::new(Breaker::new(settings()));
        let now = Instant::now();
        for _ in 0..9 {
            assert_eq!(run(&b, now, false), None);
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 failures < min_requests 10");
    }

    #[test]
    fn opens_on_the_failure_ratio_and_refuses_until_open_for_passes() {
        let b = Arc::new(Breaker::new(settings()));
        let now = Instant::now();
        for _ in 0..5 {
            run(&b, now, true);
        }
        for _ in 0..4 {
            assert_eq!(run(&b, now, false), None);
        }
        match run(&b, now, false) {
            Some(Transition::Opened { reason }) => assert!(reason.contains("5 of 10"), "{reason}"),
            other => panic!("expected Opened, got {other:?}"),
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_total(), 1);
        let refused = b.admit(now + Duration::from_secs(2));
        assert!(refused.permit.is_none());
        assert_eq!(refused.retry_after, Duration::from_secs(3));
    }

    #[test]
    fn opens_on_consecutive_failures() {
        let b = Arc::new(Breaker::new(BreakerSettings {
            consecutive_failures: 3,
            min_requests: 1000,
            ..settings()
        }));
        let now = Instant::now();
        run(&b, now, false);
        run(&b, now, false);
        run(&b, now, true);
        run(&b, now, false);
        run(&b, now, false);
        assert_eq!(b.state(), BreakerState::Closed, "the success broke the streak");
        assert!(matches!(run(&b, now, false), Some(Transition::Opened { reason }) if reason == "3 failures in a row"));
    }

    /// A breaker that opened at the returned time (its own clock's start).
    fn opened() -> (Arc<Breaker>, Instant) {
        let b = Arc::new(Breaker::new(BreakerSettings {
            consecutive_failures: 1,
            ..settings()
        }));
        let t0 = b.epoch;
        run(&b, t0, false);
        assert_eq!(b.state(), BreakerState::Open);
        (b, t0)
    }

    #[test]
    fn half_open_lets_a_limited_number_of_probes_through_and_closes_when_they_pass() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(5);
        let first = b.admit(t1);
        assert_eq!(first.transition, Some(Transition::HalfOpened));
        let first = first.permit.unwrap();
        assert!(first.is_probe());
        let second = b.admit(t1).permit.unwrap();
        assert!(b.admit(t1).permit.is_none(), "only 2 probes at a time");
        assert_eq!(first.finish(true, t1), None, "one of two passed");
        assert_eq!(second.finish(true, t1), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.window(t1), (0, 0), "a clean window after closing");
    }

    #[test]
    fn a_failed_probe_reopens() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(6);
        let probe = b.admit(t1).permit.unwrap();
        assert_eq!(probe.finish(false, t1), Some(Transition::Reopened));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_total(), 2);
        let refused = b.admit(t1 + Duration::from_secs(1));
        assert_eq!(
            refused.retry_after,
            Duration::from_secs(4),
            "open_for counts from the reopening"
        );
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let (b, t0) = opened();
        let t1 = t0 + Duration::from_secs(5);
        let a = b.admit(t1).permit.unwrap();
        let c = b.admit(t1).permit.unwrap();
        assert!(b.admit(t1).permit.is_none());
        drop(a);
        let d = b.admit(t1).permit.expect("the abandoned probe's slot is free again");
        assert!(d.is_probe());
        drop((c, d));
    }

    #[test]
    fn late_outcomes_of_closed_requests_do_not_count_while_open() {
        let t0 = Instant::now();
        let b = Arc::new(Breaker::new(BreakerSettings {
            consecutive_failures: 1,
            ..settings()
        }));
        let early = b.admit(t0).permit.unwrap();
        run(&b, t0, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(early.finish(true, t0), None);
        assert_eq!(b.state(), BreakerState::Open, "a straggler does not close it");
    }

    #[test]
    fn state_names() {
        let names: Vec<&str> = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen]
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
    }
}
