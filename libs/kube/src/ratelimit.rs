//! Token buckets for the Events we post: one per pod and one for the
//! whole node, so a pod stuck in a create loop cannot flood its own
//! events and a burst of pods cannot flood the API server.
//!
//! Written here rather than taken from a crate: it is a few lines of
//! arithmetic on `Instant`, the keyed map needs our own eviction (a
//! bucket that has refilled carries no state and is dropped), and the
//! tests drive it with explicit instants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens a full bucket holds (the largest burst).
    pub burst: u32,
    /// Time to earn one token back.
    pub every: Duration,
}

impl Rate {
    pub const fn new(burst: u32, every: Duration) -> Self {
        Self { burst, every }
    }
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        if self.rate.every.is_zero() {
            self.tokens = f64::from(self.rate.burst);
            return;
        }
        let earned = elapsed.as_secs_f64() / self.rate.every.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(self.rate.burst));
    }

    /// Whether a token is available now (without taking it).
    pub fn check(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token if one is available.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.check(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.rate.burst)
    }
}

/// Why a notice was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This pod used its burst.
    PerPod,
    /// The node used its burst.
    Global,
}

/// A per-key bucket plus one global bucket.
#[derive(Debug)]
pub struct Limiter {
    per_key: Rate,
    keys: HashMap<String, Bucket>,
    global: Bucket,
}

/// Keys kept before full buckets are swept.
const SWEEP_AT: usize = 1024;

impl Limiter {
    pub fn new(per_key: Rate, global: Rate, now: Instant) -> Self {
        Self {
            per_key,
            keys: HashMap::new(),
            global: Bucket::new(global, now),
        }
    }

    /// Lets one through for `key` if both its bucket and the global one
    /// have a token; takes a token from each only when both do.
    pub fn allow(&mut self, key: &str, now: Instant) -> Result<(), Limited> {
        if self.keys.len() >= SWEEP_AT && !self.keys.contains_key(key) {
            self.keys.retain(|_, b| !b.is_full(now));
        }
        let rate = self.per_key;
        let bucket = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| Bucket::new(rate, now));
        if !bucket.check(now) {
            return Err(Limited::PerPod);
        }
        if !self.global.take(now) {
            return Err(Limited::Global);
        }
        bucket.take(now);
        Ok(())
    }

    /// Number of keys tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate::new(3, 10 * S), t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + 9 * S));
        assert!(b.take(t0 + 10 * S));
        assert!(!b.take(t0 + 10 * S));
        // Never more than the burst, however long it waited.
        let later = t0 + 1000 * S;
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }

    #[test]
    fn per_key_limits_one_pod_not_the_others() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Rate::new(2, 60 * S), Rate::new(100, S), t0);
        assert_eq!(l.allow("ns/a", t0), Ok(()));
        assert_eq!(l.allow("ns/a", t0), Ok(()));
        assert_eq!(l.allow("ns/a", t0), Err(Limited::PerPod));
        assert_eq!(l.allow("ns/b", t0), Ok(()));
    }

    #[test]
    fn global_limits_all_pods_and_spares_their_tokens() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Rate::new(5, 60 * S), Rate::new(3, 60 * S), t0);
        assert_eq!(l.allow("a", t0), Ok(()));
        assert_eq!(l.allow("b", t0), Ok(()));
        assert_eq!(l.allow("c", t0), Ok(()));
        assert_eq!(l.allow("d", t0), Err(Limited::Global));
        // A refused notice costs the pod nothing: b's single token is
        // still there once the global bucket refilled.
        let t1 = t0 + 60 * S;
        let mut l = Limiter::new(Rate::new(1, 60 * S), Rate::new(1, 60 * S), t0);
        assert_eq!(l.allow("a", t0), Ok(()));
        assert_eq!(l.allow("b", t0), Err(Limited::Global));
        assert_eq!(l.allow("b", t1), Ok(()), "b kept its token");
    }

    #[test]
    fn full_buckets_are_swept() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Rate::new(1, S), Rate::new(u32::MAX, Duration::ZERO), t0);
        for i in 0..SWEEP_AT {
            l.allow(&format!("k{i}"), t0).unwrap();
        }
        assert_eq!(l.tracked(), SWEEP_AT);
        l.allow("new", t0 + 2 * S).unwrap();
        assert_eq!(l.tracked(), 1);
    }
}
