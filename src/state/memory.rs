//! In-memory use counts for a single broker, expiring with each certificate.
//!
//! A sharded map from certificate to its use count, with a min-heap of expiry times per shard.
//! Every call that inserts also retires a bounded number of expired entries from its shard, so
//! expiry work is spread over the requests that cause it and no request ever pays for a
//! backlog. (This replaced a moka cache: moka runs its expiry housekeeping on the threads that
//! use the cache, and with about a million certificates expiring it stalled single requests for
//! up to 4.3 s, measured; its entries also cost ~415 bytes of RSS each, against 100-200 here,
//! where the map is kept at most half full so that a steady load never grows it.)

use super::{StateError, StateFuture, UseOutcome, UseStore};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// 128 bits of SHA-256 over issuer key id and certificate id. A fixed-size key keeps each live
/// certificate's entry small; a collision could only make a fresh certificate read as
/// replayed, never admit a spent one, and at 2^-64 for four billion live certificates it does
/// not happen.
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

const SHARDS: usize = 16;
/// Expired entries one call may retire from its shard: enough to keep up with any insert
/// rate (each insert adds one), small enough that no call waits on a backlog.
const RETIRE_PER_CALL: usize = 8;

#[derive(Default)]
struct Shard {
    /// Uses taken, and the second (since the epoch) after which the entry may be forgotten.
    counts: HashMap<Key, (u32, i64)>,
    expiries: BinaryHeap<Reverse<(i64, Key)>>,
    /// The most `counts` has held without reallocating: its capacity right after it last grew.
    /// (`capacity()` itself drops as removals leave tombstones.)
    counts_room: usize,
}

impl Shard {
    fn insert(&mut self, key: Key, forget_after: i64) {
        // Memory must stay flat under a steady load, so the tables grow while they fill, not
        // after. hashbrown runs out of free slots as removals leave tombstones; it then rehashes
        // in place if at most half full and doubles otherwise, so a map that settles just under
        // a power of two doubles minutes into a steady state (a soak measured +48% RSS that
        // way). Kept at most half full, it only ever rehashes in place. The heap's vector
        // doubles on any push past its capacity; a quarter of room absorbs the ebb and flow of
        // expiries.
        self.counts_room = self.counts_room.max(self.counts.capacity());
        if (self.counts.len() + 1) * 2 > self.counts_room {
            self.counts.reserve(self.counts_room.max(16));
            self.counts_room = self.counts.capacity();
        }
        let (len, cap) = (self.expiries.len(), self.expiries.capacity());
        if (len + 1) * 4 > cap * 3 {
            self.expiries.reserve(cap.max(16));
        }
        self.counts.insert(key, (1, forget_after));
        self.expiries.push(Reverse((forget_after, key)));
    }

    fn retire_expired(&mut self, now: i64) -> usize {
        let mut retired = 0;
        while retired < RETIRE_PER_CALL {
            match self.expiries.peek() {
                Some(Reverse((at, _))) if *at < now => {}
                _ => break,
            }
            let Some(Reverse((_, k))) = self.expiries.pop() else {
                break;
            };
            self.counts.remove(&k);
            retired += 1;
        }
        retired
    }
}

pub struct MemoryUseStore {
    shards: Vec<Mutex<Shard>>,
    live: AtomicU64,
    limit: u64,
    /// Kept past `exp` by this margin so that a certificate still inside the clock-skew grace
    /// cannot be used again after its entry is forgotten.
    grace: Duration,
}

impl MemoryUseStore {
    /// Nothing is ever evicted to make room: forgetting a live certificate's count would let it
    /// be replayed. Past `limit` live entries new certificates are refused (fail closed) until
    /// older ones expire.
    pub fn new(limit: u64, grace: Duration) -> Self {
        MemoryUseStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            live: AtomicU64::new(0),
            limit,
            grace,
        }
    }

    /// Sets a certificate's count to at least `used` (start-up, from the uses the audit log
    /// recorded). Kept until `exp` plus the grace, like a use taken now. The limit on live
    /// entries does not apply: these uses happened, and forgetting one would re-admit it.
    pub fn restore(&self, kid: &str, jti: &str, used: u32, exp: i64) {
        if used == 0 {
            return;
        }
        let k = key(kid, jti);
        let mut shard = self.shards[(k as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = shard.counts.get_mut(&k) {
            *n = (*n).max(used);
            return;
        }
        let forget_after = exp.saturating_add(self.grace.as_secs() as i64);
        shard.insert(k, forget_after);
        if let Some((n, _)) = shard.counts.get_mut(&k) {
            *n = used;
        }
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back_now(&self, kid: &str, jti: &str) {
        let k = key(kid, jti);
        let mut shard = self.shards[(k as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = shard.counts.get_mut(&k) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    fn take_now(
        &self,
        key: Key,
        max_uses: u32,
        exp: i64,
        now: i64,
    ) -> Result<UseOutcome, StateError> {
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let retired = shard.retire_expired(now);
        if retired > 0 {
            self.live.fetch_sub(retired as u64, Ordering::Relaxed);
        }
        if let Some((used, _)) = shard.counts.get_mut(&key) {
            return Ok(if *used < max_uses {
                *used += 1;
                UseOutcome::Admitted {
                    n: *used,
                    max: max_uses,
                }
            } else {
                UseOutcome::Exhausted { max: max_uses }
            });
        }
        if self.live.load(Ordering::Relaxed) >= self.limit {
            return Err(StateError(format!(
                "{} live certificates are tracked, the configured limit; refusing new ones until some expire",
                self.limit
            )));
        }
        let forget_after = exp.saturating_add(self.grace.as_secs() as i64);
        shard.insert(key, forget_after);
        self.live.fetch_add(1, Ordering::Relaxed);
        Ok(UseOutcome::Admitted {
            n: 1,
            max: max_uses,
        })
    }
}

impl UseStore for MemoryUseStore {
    fn give_back<'a>(&'a self, kid: &'a str, jti: &'a str) -> super::GiveBackFuture<'a> {
        self.give_back_now(kid, jti);
        Box::pin(std::future::ready(Ok(())))
    }

    fn take_use<'a>(
        &'a self,
        kid: &'a str,
        jti: &'a str,
        max_uses: u32,
        exp: i64,
    ) -> StateFuture<'a> {
        // Keyed by issuer key as well: two issuers may pick the same jti.
        let result = self.take_now(key(kid, jti), max_uses, exp, crate::cert::now_secs());
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

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
        assert!(s.take_use("k", "c", 1, exp).await.is_err());
        // A tracked certificate still gets its remaining uses counted.
        assert_eq!(
            s.take_use("k", "a", 2, exp).await.unwrap(),
            UseOutcome::Admitted { n: 2, max: 2 }
        );
    }

    #[test]
    fn entries_are_kept_through_the_grace_and_forgotten_after() {
        let s = MemoryUseStore::new(1000, Duration::from_secs(30));
        let k = key("k", "a");
        assert!(matches!(
            s.take_now(k, 1, 100, 50),
            Ok(UseOutcome::Admitted { .. })
        ));
        // At exp + grace the entry still counts: a certificate accepted inside the skew
        // cannot be replayed.
        assert!(matches!(
            s.take_now(k, 1, 100, 130),
            Ok(UseOutcome::Exhausted { .. })
        ));
        assert_eq!(s.entry_count(), 1);
        // After it, any call on the shard retires it (admission refuses such a certificate as
        // expired long before it would get here).
        let other = (1..)
            .map(|i| key("k", &i.to_string()))
            .find(|o| (*o as usize) % SHARDS == (k as usize) % SHARDS)
            .unwrap();
        s.take_now(other, 1, 1000, 131).unwrap();
        assert_eq!(
            s.entry_count(),
            1,
            "the old entry is gone, the new one counts"
        );
        assert!(!s.shards[(k as usize) % SHARDS]
            .lock()
            .unwrap()
            .counts
            .contains_key(&k));
    }

    #[test]
    fn expiry_work_per_call_is_bounded() {
        let s = MemoryUseStore::new(1_000_000, Duration::ZERO);
        for i in 0..10_000 {
            s.take_now(key("k", &i.to_string()), 1, 10, 0).unwrap();
        }
        // Everything has expired; one call retires at most RETIRE_PER_CALL from its shard.
        s.take_now(key("k", "late"), 1, 1000, 100).unwrap();
        assert_eq!(s.entry_count(), 10_000 + 1 - RETIRE_PER_CALL as u64);
    }

    /// A steady load (as many certificates expiring as arriving) must not grow the tables once
    /// they have filled. Each shard here settles at ~560 entries, 63% of what hashbrown's
    /// 1,024-bucket table holds: left to itself the map doubles once removals have used up its
    /// free slots (checked: this test fails without the early growth in `Shard::insert`).
    #[test]
    fn steady_load_does_not_grow_the_tables() {
        let s = MemoryUseStore::new(1_000_000, Duration::ZERO);
        let (rate, ttl) = (900, 10);
        let mut n = 0u64;
        let mut filled = None;
        for t in 0..400i64 {
            for _ in 0..rate {
                n += 1;
                s.take_now(key("k", &n.to_string()), 1, t + ttl, t).unwrap();
            }
            let sizes: Vec<(usize, usize)> = s
                .shards
                .iter()
                .map(|sh| {
                    let sh = sh.lock().unwrap();
                    (
                        sh.counts_room.max(sh.counts.capacity()),
                        sh.expiries.capacity(),
                    )
                })
                .collect();
            if t == 3 * ttl {
                filled = Some(sizes);
            } else if t > 3 * ttl {
                assert_eq!(Some(&sizes), filled.as_ref(), "grew at t={t}");
            }
        }
        let live = s.entry_count();
        assert!((8_000..=10_000).contains(&live), "{live}");
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
                        let now = crate::cert::now_secs();
                        if let Ok(UseOutcome::Admitted { .. }) =
                            s.take_now(key("k", "race"), 7, exp, now)
                        {
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
