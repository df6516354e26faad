//! Backpressure for runs: at most `in_flight` execute at once, at most `queue` more wait for a
//! slot, and anything past that is refused at once (503 with `Retry-After`) instead of piling
//! up behind a busy machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission control for runs.
#[derive(Debug)]
pub struct RunLimiter {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Refused: every slot is taken and the queue is full.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl RunLimiter {
    /// A limiter with `in_flight` slots and room for `queue` waiting runs.
    pub fn new(in_flight: usize, queue: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(in_flight)),
            waiting: AtomicUsize::new(0),
            max_waiting: queue,
        }
    }

    /// Waits for a slot, or refuses at once when the queue is full. The run holds the permit
    /// until it ends.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, QueueFull> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let place = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _leave = LeaveQueue(&self.waiting);
        if place >= self.max_waiting {
            return Err(QueueFull);
        }
        metrics::gauge!("codebox_runs_queued").increment(1.0);
        let permit = self.slots.clone().acquire_owned().await;
        metrics::gauge!("codebox_runs_queued").decrement(1.0);
        // The semaphore is never closed, so acquiring only fails if it were.
        permit.map_err(|_| QueueFull)
    }

    /// Runs waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// Takes a run out of the waiting count however `admit` ends (also when its future is dropped).
struct LeaveQueue<'a>(&'a AtomicUsize);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_queues_and_refuses() {
        let limiter = Arc::new(RunLimiter::new(1, 1));
        let first = limiter.admit().await.expect("a free slot");
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.admit().await.map(drop) })
        };
        while limiter.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.admit().await.map(drop), Err(QueueFull));
        drop(first);
        assert_eq!(queued.await.expect("join"), Ok(()));
        assert_eq!(limiter.waiting(), 0);
        assert!(limiter.admit().await.is_ok());
    }
}
