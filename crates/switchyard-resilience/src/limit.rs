//! Concurrency limits that shed load: at most `max_concurrent` requests run
//! at once; up to `max_pending` more may wait (for at most the given time) for
//! a slot; the rest are refused at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Every slot is taken and no waiting is allowed, or the queue is full.
    Full { max_concurrent: usize, max_pending: usize },
    /// It waited for a slot and none came free in time.
    Timeout { waited: Duration },
}

/// A concurrency limit.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_pending: usize,
    pending: AtomicUsize,
}

impl ConcurrencyLimit {
    pub fn new(max_concurrent: usize, max_pending: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_pending,
            pending: AtomicUsize::new(0),
        }
    }

    /// `(max_concurrent, max_pending)`.
    pub fn settings(&self) -> (usize, usize) {
        (self.max_concurrent, self.max_pending)
    }

    /// Requests running now.
    pub fn active(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting up to `wait` in the queue if there is room in it.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Shed> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let full = Shed::Full {
            max_concurrent: self.max_concurrent,
            max_pending: self.max_pending,
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(full);
        }
        let waited = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(full),
            Err(_) => Err(Shed::Timeout { waited: wait }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sheds_beyond_the_slots_and_the_queue() {
        let limit = Arc::new(ConcurrencyLimit::new(2, 1));
        let a = limit.acquire(Duration::ZERO).await.unwrap();
        let _b = limit.acquire(Duration::ZERO).await.unwrap();
        assert_eq!(limit.active(), 2);
        // One may wait...
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.acquire(Duration::from_secs(5)).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(limit.pending(), 1);
        // ...a second may not.
        assert!(matches!(
            limit.acquire(Duration::from_secs(5)).await,
            Err(Shed::Full { .. })
        ));
        drop(a);
        assert_eq!(waiting.await.unwrap(), Ok(()), "the freed slot went to the waiter");
        assert_eq!(limit.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded() {
        let limit = ConcurrencyLimit::new(1, 5);
        let _held = limit.acquire(Duration::ZERO).await.unwrap();
        let shed = limit.acquire(Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(
            shed,
            Shed::Timeout {
                waited: Duration::from_millis(100)
            }
        );
        let none = ConcurrencyLimit::new(1, 0);
        let _held = none.acquire(Duration::ZERO).await.unwrap();
        assert!(matches!(
            none.acquire(Duration::from_secs(1)).await,
            Err(Shed::Full { .. })
        ));
    }
}
