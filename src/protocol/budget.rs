//! The memory budget for frame bodies being received, shared by all of a server's
//! connections (see [`super::frame`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Bytes of unfinished frames a server may hold for all its connections together, beyond
/// what each connection buffers freely (headers and small bodies).
pub const FRAME_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// A shared allowance of bytes for frame bodies being received. Cheap to share (`Arc`);
/// usable from many threads (blocking [`FrameBudget::take_by`]) or one event loop
/// ([`FrameBudget::try_take`]).
#[derive(Debug)]
pub struct FrameBudget {
    total: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl FrameBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<FrameBudget> {
        Arc::new(FrameBudget {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// The budget's size.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes granted and not yet returned.
    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants `n` bytes if they are free now. A request larger than the whole budget is
    /// granted only when nothing else holds any, so one largest frame always gets through.
    pub fn try_take(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        Self::grant(self.total, &mut used, n)
    }

    fn grant(total: usize, used: &mut usize, n: usize) -> bool {
        if *used + n <= total || *used == 0 {
            *used += n;
            return true;
        }
        false
    }

    /// Grants `n` bytes, waiting for them until `deadline`; false if they did not free up.
    pub fn take_by(&self, n: usize, deadline: Instant) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if Self::grant(self.total, &mut used, n) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            used = match self.freed.wait_timeout(used, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Returns `n` granted bytes.
    pub fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// Bytes granted from a [`FrameBudget`], returned when dropped.
#[derive(Debug)]
pub(super) struct Grant {
    budget: Arc<FrameBudget>,
    n: usize,
}

impl Grant {
    /// Holds `n` bytes already granted from `budget`.
    pub(super) fn new(budget: Arc<FrameBudget>, n: usize) -> Grant {
        Grant { budget, n }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_grants_within_its_size_and_always_one_frame() {
        let b = FrameBudget::new(10);
        assert!(b.try_take(6));
        assert!(!b.try_take(6), "over the budget while another holds some");
        assert!(b.try_take(4));
        b.give(10);
        assert_eq!(b.used(), 0);
        assert!(
            b.try_take(50),
            "a frame larger than the budget passes alone"
        );
        assert!(!b.try_take(1));
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            b2.give(50);
        });
        assert!(b.take_by(5, Instant::now() + Duration::from_secs(10)));
        t.join().unwrap_or_else(|_| panic!("giver panicked"));
        assert!(!b.take_by(6, Instant::now() + Duration::from_millis(20)));
    }
}
