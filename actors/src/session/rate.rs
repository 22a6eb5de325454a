//! A per-connection token bucket. One bucket per session actor, touched only by it, so no
//! locking: a crate (governor) would add shared-state machinery this does not need.

use std::time::Instant;

/// Allows `burst` commands at once and `per_second` sustained.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, burst: f64) -> Self {
        TokenBucket {
            capacity: burst.max(1.0),
            per_second: per_second.max(0.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    /// Would the bucket be full now?
    pub fn is_full(&self) -> bool {
        let elapsed = self.last.elapsed().as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.capacity
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// As [`try_take`](Self::try_take), at a given instant (tests).
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        self.try_take_n_at(1.0, now)
    }

    /// Takes `n` tokens (bytes, say) if there are that many.
    pub fn try_take_n(&mut self, n: f64) -> bool {
        self.try_take_n_at(n, Instant::now())
    }

    fn try_take_n_at(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0);
        b.last = t0;
        assert!(b.try_take_at(t0));
        assert!(b.try_take_at(t0));
        assert!(b.try_take_at(t0));
        assert!(!b.try_take_at(t0));
        assert!(b.try_take_at(t0 + Duration::from_millis(100)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take_at(later));
        }
        assert!(!b.try_take_at(later));
    }
}
