//! Token buckets: the one rate limiter of every service.
//!
//! A [`Quota`] is `burst` tokens that refill evenly over `window`. A
//! [`TokenBucket`] is one such bucket (the gateway's per-connection publish
//! rate). A [`RateLimiter`] holds a bucket per key (auth-api's per-address
//! and per-(user, address) login attempts, the gateway's per-user publish
//! rate): every attempt takes one token from each of its keys' buckets, or
//! from none when any is empty. A refund gives a token back, so that only
//! failures count where that is wanted. Buckets live in one process; several
//! instances each allow the limit.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many attempts a key gets, and how fast they come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Attempts allowed at once (the bucket size).
    pub burst: u32,
    /// The time in which a full bucket refills.
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// The refill window of the bucket's quota, for sweeping idle buckets.
    window: Duration,
}

/// Buckets above this count trigger a sweep of the full (idle) ones.
const SWEEP_AT: usize = 10_000;

impl Quota {
    /// `rate` tokens per second with bursts of `burst`.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        let rate = rate.max(1e-9);
        Self {
            burst: burst.max(1),
            window: Duration::from_secs_f64(f64::from(burst.max(1)) / rate),
        }
    }

    /// Seconds until an empty bucket has one token again, at least 1: the
    /// `Retry-After` of a refusal.
    pub fn refill_secs(&self) -> u64 {
        (self.window.as_secs_f64() / f64::from(self.burst.max(1)))
            .ceil()
            .max(1.0) as u64
    }

    fn rate(&self) -> f64 {
        f64::from(self.burst) / self.window.as_secs_f64().max(1e-9)
    }

    fn refreshed(&self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + elapsed * self.rate()).min(f64::from(self.burst)),
            updated: now,
            window: self.window,
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    quota: Quota,
    bucket: Bucket,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            bucket: Bucket {
                tokens: f64::from(quota.burst),
                updated: Instant::now(),
                window: quota.window,
            },
        }
    }

    /// Takes a token; false when the bucket is empty.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.bucket = self.quota.refreshed(self.bucket, now);
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A set of token buckets, one per key.
#[derive(Debug)]
pub struct RateLimiter<K = String> {
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one token from every key's bucket, or from none of them. Returns
    /// false (and takes nothing) when any bucket is empty.
    pub fn try_acquire<Q>(&self, keys: &[(&Q, Quota)]) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.try_acquire_at(keys, Instant::now())
    }

    /// Gives back the tokens of an attempt that turned out legitimate (a
    /// successful login), so that only failures use up the quota.
    pub fn refund<Q>(&self, keys: &[(&Q, Quota)])
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for (key, quota) in keys {
            if let Some(bucket) = buckets.get_mut(*key) {
                let mut refreshed = quota.refreshed(*bucket, now);
                refreshed.tokens = (refreshed.tokens + 1.0).min(f64::from(quota.burst));
                *bucket = refreshed;
            }
        }
    }

    fn try_acquire_at<Q>(&self, keys: &[(&Q, Quota)], now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let current: Vec<Bucket> = keys
            .iter()
            .map(|(k, quota)| match buckets.get(*k) {
                Some(b) => quota.refreshed(*b, now),
                None => Bucket {
                    tokens: f64::from(quota.burst),
                    updated: now,
                    window: quota.window,
                },
            })
            .collect();
        if current.iter().any(|b| b.tokens < 1.0) {
            return false;
        }
        for ((key, _), mut bucket) in keys.iter().zip(current) {
            bucket.tokens -= 1.0;
            match buckets.get_mut(*key) {
                Some(b) => *b = bucket,
                None => {
                    buckets.insert((*key).to_owned(), bucket);
                }
            }
        }
        if buckets.len() > SWEEP_AT {
            // A bucket idle for its whole window is full again: forget it.
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < b.window);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket() {
        let mut b = TokenBucket::new(Quota::per_second(1.0, 3));
        let t0 = Instant::now();
        assert!(b.take_at(t0) && b.take_at(t0) && b.take_at(t0));
        assert!(!b.take_at(t0));
        assert!(b.take_at(t0 + Duration::from_millis(1_100)));
        assert!(!b.take_at(t0 + Duration::from_millis(1_200)));
    }

    #[test]
    fn keys_of_any_type() {
        let l: RateLimiter<u64> = RateLimiter::new();
        let q = Quota::per_second(1.0, 1);
        assert!(l.try_acquire(&[(&7, q)]));
        assert!(!l.try_acquire(&[(&7, q)]));
        assert!(l.try_acquire(&[(&8, q)]));
    }

    fn q(burst: u32) -> Quota {
        Quota {
            burst,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn burst_then_refuse_then_refill() {
        let l: RateLimiter = RateLimiter::new();
        let t0 = Instant::now();
        let keys = |u, i| [(u, q(3)), (i, q(3))];
        for _ in 0..3 {
            assert!(l.try_acquire_at(&keys("user:a", "ip:1"), t0));
        }
        assert!(!l.try_acquire_at(&keys("user:a", "ip:1"), t0));
        // Another user from the same address is refused too: the address is empty.
        assert!(!l.try_acquire_at(&keys("user:b", "ip:1"), t0));
        // The same user from another address is refused: the user is empty.
        assert!(!l.try_acquire_at(&keys("user:a", "ip:2"), t0));
        // A fresh user and address pass.
        assert!(l.try_acquire_at(&keys("user:b", "ip:2"), t0));
        // One token comes back every 20 s.
        let t1 = t0 + Duration::from_secs(21);
        assert!(l.try_acquire_at(&keys("user:a", "ip:1"), t1));
        assert!(!l.try_acquire_at(&keys("user:a", "ip:1"), t1 + Duration::from_secs(1)));
    }

    #[test]
    fn refusal_takes_nothing() {
        let l: RateLimiter = RateLimiter::new();
        let t0 = Instant::now();
        assert!(l.try_acquire_at(&[("ip:1", q(1))], t0));
        // user:x has a token but ip:1 does not; user:x must keep its token.
        assert!(!l.try_acquire_at(&[("user:x", q(1)), ("ip:1", q(1))], t0));
        assert!(l.try_acquire_at(&[("user:x", q(1)), ("ip:9", q(1))], t0));
    }

    #[test]
    fn refunds_restore_one_token_up_to_the_burst() {
        let l: RateLimiter = RateLimiter::new();
        let keys = [("user:a", q(2))];
        assert!(l.try_acquire(&keys));
        assert!(l.try_acquire(&keys));
        assert!(!l.try_acquire(&keys));
        l.refund(&keys);
        assert!(l.try_acquire(&keys));
        assert!(!l.try_acquire(&keys));
        // Refunds never exceed the burst.
        l.refund(&keys);
        l.refund(&keys);
        l.refund(&keys);
        assert!(l.try_acquire(&keys));
        assert!(l.try_acquire(&keys));
        assert!(!l.try_acquire(&keys));
    }

    #[test]
    fn keys_have_their_own_quotas() {
        let l: RateLimiter = RateLimiter::new();
        let t0 = Instant::now();
        assert!(l.try_acquire_at(&[("user:a", q(1)), ("ip:1", q(5))], t0));
        assert!(!l.try_acquire_at(&[("user:a", q(1)), ("ip:1", q(5))], t0));
        for u in ["user:b", "user:c", "user:d", "user:e"] {
            assert!(l.try_acquire_at(&[(u, q(1)), ("ip:1", q(5))], t0));
        }
        assert!(!l.try_acquire_at(&[("user:f", q(1)), ("ip:1", q(5))], t0));
    }
}
