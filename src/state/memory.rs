//! In-memory use counts for a single broker, expiring with each certificate.

use super::{StateError, StateFuture, UseOutcome, UseStore};
use moka::sync::Cache;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Entry {
    used: AtomicU32,
    expires: Instant,
}

struct ExpireAtCertExp;

/// 128 bits of SHA-256 over issuer key id and certificate id. A fixed-size key keeps each live
/// certificate's entry small (the load test measured ~0.75 KiB with a String key); a collision
/// could only make a fresh certificate read as replayed, never admit a spent one, and at
/// 2^-64 for four billion live certificates it does not happen.
type Key = u128;

fn key(kid: &str, jti: &str) -> Key {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kid.as_bytes());
    h.update([0]);
    h.update(jti.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl moka::Expiry<Key, Arc<Entry>> for ExpireAtCertExp {
    fn expire_after_create(&self, _k: &Key, v: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(v.expires.saturating_duration_since(now))
    }
}

pub struct MemoryUseStore {
    cache: Cache<Key, Arc<Entry>>,
    limit: u64,
    /// Kept past `exp` by this margin so that a certificate still inside the clock-skew grace
    /// cannot be used again after its entry is evicted.
    grace: Duration,
}

impl MemoryUseStore {
    /// The cache has no size-based eviction: evicting a live certificate's count would let it
    /// be replayed. Instead, past `limit` live entries new certificates are refused (fail
    /// closed) until older ones expire.
    pub fn new(limit: u64, grace: Duration) -> Self {
        MemoryUseStore {
            cache: Cache::builder().expire_after(ExpireAtCertExp).build(),
            limit,
            grace,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

impl UseStore for MemoryUseStore {
    fn take_use<'a>(
        &'a self,
        kid: &'a str,
        jti: &'a str,
        max_uses: u32,
        exp: i64,
    ) -> StateFuture<'a> {
        // Keyed by issuer key as well: two issuers may pick the same jti.
        let key = key(kid, jti);
        if self.cache.entry_count() >= self.limit && !self.cache.contains_key(&key) {
            return Box::pin(std::future::ready(Err(StateError(format!(
                "{} live certificates are tracked, the configured limit; refusing new ones until some expire",
                self.cache.entry_count()
            )))));
        }
        let outcome = self.take_now(key, max_uses, exp);
        Box::pin(std::future::ready(Ok(outcome)))
    }
}

impl MemoryUseStore {
    fn take_now(&self, key: Key, max_uses: u32, exp: i64) -> UseOutcome {
        let now_unix = crate::cert::now_secs();
        let ttl = Duration::from_secs(exp.saturating_sub(now_unix).max(0) as u64) + self.grace;
        // get_with runs the initializer once per key even under concurrent callers, so all of
        // them count on the same atomic.
        let entry = self.cache.get_with(key, || {
            Arc::new(Entry {
                used: AtomicU32::new(0),
                expires: Instant::now() + ttl,
            })
        });
        let prev = entry
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_uses).then_some(n + 1)
            });
        match prev {
            Ok(n) => UseOutcome::Admitted {
                n: n + 1,
                max: max_uses,
            },
            Err(_) => UseOutcome::Exhausted { max: max_uses },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_up_to_max_uses() {
        let s = MemoryUseStore::new(1000, Duration::from_secs(60));
        let exp = crate::cert::now_secs() + 60;
        assert_eq!(
            s.take_use("k", "a", 2, exp).await.unwrap(),
            UseOutcome::Admitted { n: 1, max: 2 }
        );
        assert_eq!(
            s.take_use("k", "a", 2, exp).await.unwrap(),
            UseOutcome::Admitted { n: 2, max: 2 }
        );
        assert_eq!(
            s.take_use("k", "a", 2, exp).await.unwrap(),
            UseOutcome::Exhausted { max: 2 }
        );
        assert_eq!(
            s.take_use("k2", "a", 1, exp).await.unwrap(),
            UseOutcome::Admitted { n: 1, max: 1 }
        );
    }

    #[tokio::test]
    async fn refuses_new_certificates_past_the_limit() {
        let s = MemoryUseStore::new(2, Duration::from_secs(60));
        let exp = crate::cert::now_secs() + 60;
        s.take_use("k", "a", 2, exp).await.unwrap();
        s.take_use("k", "b", 1, exp).await.unwrap();
        s.cache.run_pending_tasks();
        assert!(s.take_use("k", "c", 1, exp).await.is_err());
        // A tracked certificate still gets its remaining uses counted.
        assert_eq!(
            s.take_use("k", "a", 2, exp).await.unwrap(),
            UseOutcome::Admitted { n: 2, max: 2 }
        );
    }

    #[test]
    fn concurrent_uses_admit_exactly_max() {
        let s = Arc::new(MemoryUseStore::new(1000, Duration::from_secs(60)));
        let exp = crate::cert::now_secs() + 60;
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (s, admitted) = (s.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        if let UseOutcome::Admitted { .. } = s.take_now(key("k", "race"), 7, exp) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 7);
    }
}
