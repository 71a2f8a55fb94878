//! Use counts and revocation documents in etcd (v3 API), shared by every broker replica.
//!
//! Taking a use is one etcd transaction on the certificate's key: "create it at 1 if it does
//! not exist" or, once it does, "set it to n + 1 if it is still at the revision we read". The
//! compare runs on the member that leads the cluster, so two replicas racing for the last use
//! cannot both win: one transaction fails its compare, rereads and finds the count spent.
//! Keys carry a lease that ends after the certificate's `exp` plus the clock skew, when
//! admission refuses the certificate as expired anyway; leases are shared per minute of
//! expiry, so a new certificate costs one transaction, not a lease grant as well.
//!
//! Everything fails closed: an operation not answered within `request_timeout` (etcd down, no
//! quorum, a partition) refuses the request with `state_unavailable`, and so does a broker
//! whose watch on the revocation documents has been down longer than that. Nothing is cached
//! that could admit a use etcd has not counted: recovery is the next transaction that
//! succeeds.

mod revocations;

use super::config::EtcdConfig;
use super::{GiveBackFuture, StateError, StateFuture, UseOutcome, UseStore};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, KvClient, LeaseClient,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pause before repeating a call that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Leases are shared by certificates expiring within the same minute.
const LEASE_BUCKET_SECS: i64 = 60;
/// A use races other replicas for the same key at most this often before giving up (each
/// lost race means another replica took a use, so this bounds the work, not correctness).
const MAX_ROUNDS: usize = 64;

pub struct EtcdState {
    kv: KvClient,
    lease: LeaseClient,
    watch: WatchClient,
    prefix: String,
    timeout: Duration,
    /// Kept past `exp` by this margin (the clock skew admission allows).
    grace: Duration,
    /// Lease id per bucket end (seconds since the epoch).
    leases: tokio::sync::Mutex<BTreeMap<i64, i64>>,
    health: Health,
}

#[derive(Default)]
struct Health {
    /// The last operation's failure, cleared by the next success.
    failing: Mutex<Option<String>>,
    /// Whether the watch on revocation documents is established, and since when it is not.
    watching: AtomicBool,
    /// Whether every stored revocation document has been read once: until then this replica
    /// may lack a revocation pushed to another, and admits nothing.
    synced: AtomicBool,
    watch_down: Mutex<Option<(Instant, String)>>,
}

impl Health {
    fn set(&self, e: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

impl EtcdState {
    /// Builds the client. Members are dialed when first used, so a broker starts (not ready,
    /// refusing mutations) while etcd is down; with a username the token is fetched now and
    /// must succeed.
    pub async fn connect(config: &EtcdConfig, grace: Duration) -> anyhow::Result<Arc<EtcdState>> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout)
            .with_timeout(config.request_timeout)
            // A member that stops answering is noticed by the watch within about a second,
            // not after the kernel's TCP timeout.
            .with_keep_alive(Duration::from_millis(500), config.request_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others refuses rather than answering from stale data.
            .with_require_leader(true);
        if config.ca.is_some() || config.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca {
                let pem =
                    std::fs::read(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
                let c =
                    std::fs::read(cert).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
                let k =
                    std::fs::read(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(tls);
        }
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            opts = opts
                .with_user(user.clone(), password.load()?)
                .with_auto_token_refresh(true);
        }
        let endpoints = config.member_urls()?;
        let client = Client::connect(&endpoints, Some(opts))
            .await
            .map_err(|e| anyhow::anyhow!("etcd at {endpoints:?}: {e}"))?;
        let state = Arc::new(EtcdState {
            kv: client.kv_client(),
            lease: client.lease_client(),
            watch: client.watch_client(),
            prefix: config.prefix.clone(),
            timeout: config.request_timeout,
            grace,
            leases: tokio::sync::Mutex::new(BTreeMap::new()),
            health: Health::default(),
        });
        state.health.set(Some("not checked yet".into()));
        *state
            .health
            .watch_down
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), "not started".into()));
        Ok(state)
    }

    /// Checks etcd (a linearizable read, which needs a quorum) every `every`, so that
    /// `/readyz` follows etcd going and coming back even while no request arrives.
    pub async fn probe(self: Arc<Self>, every: Duration) {
        let key = format!("{}health", self.prefix);
        loop {
            let mut kv = self.kv.clone();
            let r = tokio::time::timeout(
                self.timeout,
                kv.get(
                    key.as_bytes(),
                    Some(etcd_client::GetOptions::new().with_count_only()),
                ),
            )
            .await;
            match r {
                Ok(Ok(_)) => self.health.set(None),
                Ok(Err(e)) => self.health.set(Some(e.to_string())),
                Err(_) => self.health.set(Some(format!(
                    "no answer within {:?} (etcd down or without quorum?)",
                    self.timeout
                ))),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The key of one certificate's use count. Hashed: `kid` and `jti` are chosen by the
    /// issuer and may hold any byte, and a fixed-length key cannot be made to collide with
    /// another of seb's keys.
    fn use_key(&self, kid: &str, jti: &str) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(kid.as_bytes());
        h.update([0]);
        h.update(jti.as_bytes());
        format!("{}uses/{}", self.prefix, hex::encode(h.finalize())).into_bytes()
    }

    /// Runs `op` within the request timeout, recording the outcome for `/readyz`.
    async fn bounded<T, F>(&self, what: &str, op: F) -> Result<T, StateError>
    where
        F: std::future::Future<Output = Result<T, StateError>>,
    {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => {
                self.health.set(None);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.health.set(Some(e.0.clone()));
                Err(e)
            }
            Err(_) => {
                let e = format!(
                    "etcd did not answer {what} within {:?} (down, partitioned or without quorum)",
                    self.timeout
                );
                self.health.set(Some(e.clone()));
                Err(StateError(e))
            }
        }
    }

    /// Runs one etcd call, again while it fails and time is left before `deadline`. The
    /// balanced channel still sends some calls to a member that just died (connection
    /// refused) until it notices; another member answers the repeat. Repeating is safe for
    /// every caller here: a failed call took effect at most once, and a transaction that did
    /// is then seen by the repeat's compare, so a repeat can only count a use twice (refusing
    /// a request), never admit one more.
    async fn again<T, F, Fut>(&self, deadline: Instant, mut call: F) -> Result<T, StateError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if is_lease_gone(&e) => return Err(StateError(LEASE_GONE.into())),
                Err(e) if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(error = %e, "etcd call failed; repeating it");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(StateError(format!("etcd: {e}"))),
            }
        }
    }

    /// The lease for keys that may be forgotten after `forget_after` (seconds since the
    /// epoch): the one of its minute, granted on first use.
    async fn lease_for(&self, forget_after: i64, now: i64) -> Result<i64, StateError> {
        let end =
            forget_after.div_euclid(LEASE_BUCKET_SECS) * LEASE_BUCKET_SECS + LEASE_BUCKET_SECS;
        let mut leases = self.leases.lock().await;
        // Buckets that ended are of no use to new keys; their leases expire by themselves.
        while leases.first_key_value().is_some_and(|(e, _)| *e < now) {
            leases.pop_first();
        }
        if let Some(id) = leases.get(&end) {
            return Ok(*id);
        }
        // A lease's clock starts at the grant: this one outlives every key put under it.
        let ttl = (end - now).max(1) + 1;
        let granted = self
            .again(Instant::now() + self.timeout, || {
                let mut lease = self.lease.clone();
                async move { lease.grant(ttl, None).await }
            })
            .await?;
        leases.insert(end, granted.id());
        Ok(granted.id())
    }

    async fn forget_lease(&self, id: i64) {
        self.leases.lock().await.retain(|_, l| *l != id);
    }

    async fn take(&self, key: Vec<u8>, max_uses: u32, exp: i64) -> Result<UseOutcome, StateError> {
        let now = crate::cert::now_secs();
        let deadline = Instant::now() + self.timeout;
        let forget_after = exp.saturating_add(self.grace.as_secs() as i64);
        let mut lease = self.lease_for(forget_after, now).await?;
        let kv = self.kv.clone();
        // Written with the count: a call whose answer was lost (and that `again` repeats) may
        // have taken the use, and finding this mark on the key afterwards says that it did.
        let mark = {
            let mut b = [0u8; 8];
            getrandom::getrandom(&mut b).map_err(|e| StateError(format!("random source: {e}")))?;
            hex::encode(b)
        };
        let create = |lease: i64| {
            Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    format!("1 {mark}"),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)])
        };
        let mut txn = create(lease);
        let mut next = 1;
        for _ in 0..MAX_ROUNDS {
            let sent = self
                .again(deadline, || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await;
            let resp = match sent {
                Ok(r) => r,
                // The lease ended early (revoked by hand, or a restored etcd): take a new one.
                Err(e) if e.0 == LEASE_GONE => {
                    self.forget_lease(lease).await;
                    lease = self.lease_for(forget_after, now).await?;
                    txn = create(lease);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if resp.succeeded() {
                return Ok(UseOutcome::Admitted {
                    n: next,
                    max: max_uses,
                });
            }
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let Some(current) = current else {
                // Gone between the compare and the read (its lease ended): create it again.
                txn = create(lease);
                next = 1;
                continue;
            };
            let (used, by) = parse_count(current.value())?;
            if by == Some(mark.as_str()) {
                // An earlier try of this very call took use `used`; only its answer was lost.
                return Ok(UseOutcome::Admitted {
                    n: used,
                    max: max_uses,
                });
            }
            if used >= max_uses {
                return Ok(UseOutcome::Exhausted { max: max_uses });
            }
            next = used + 1;
            txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    current.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    format!("{next} {mark}"),
                    Some(PutOptions::new().with_ignore_lease()),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
        }
        Err(StateError(format!(
            "gave up after {MAX_ROUNDS} rounds of contention on one certificate's count"
        )))
    }

    async fn give(&self, key: Vec<u8>) -> Result<(), StateError> {
        let deadline = Instant::now() + self.timeout;
        let kv = self.kv.clone();
        for _ in 0..MAX_ROUNDS {
            let got = self
                .again(deadline, || {
                    let (mut kv, key) = (kv.clone(), key.clone());
                    async move { kv.get(key, None).await }
                })
                .await?;
            let Some(current) = got.kvs().first() else {
                return Ok(());
            };
            let (used, _) = parse_count(current.value())?;
            if used == 0 {
                return Ok(());
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    current.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    (used - 1).to_string(),
                    Some(PutOptions::new().with_ignore_lease()),
                )]);
            let resp = self
                .again(deadline, || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                return Ok(());
            }
        }
        Err(StateError(format!(
            "gave up after {MAX_ROUNDS} rounds of contention on one certificate's count"
        )))
    }

    /// Why mutations are refused right now, if they are.
    fn refusal(&self) -> Option<String> {
        if !self.health.synced.load(Ordering::Acquire) {
            return Some("the revocation documents stored in etcd have not been read yet".into());
        }
        if !self.health.watching.load(Ordering::Acquire) {
            let down = self
                .health
                .watch_down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some((since, why)) = down {
                // Resuming from the last revision misses nothing; a short gap (a member
                // killed, the watch moved to another) only delays what it would have brought.
                if since.elapsed() >= self.timeout {
                    return Some(format!(
                        "revocations from other replicas are not being received: the etcd watch has been down for {:?} ({why})",
                        since.elapsed()
                    ));
                }
            }
        }
        None
    }
}

const LEASE_GONE: &str = "the lease of the key's expiry bucket is gone";

fn is_lease_gone(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

/// A count as this module writes it: decimal ASCII, then, when a use wrote it, a space and
/// that use's mark (16 lowercase hex digits). Anything else is refused (fail closed): a value
/// seb did not write means something else writes under its prefix.
fn parse_count(v: &[u8]) -> Result<(u32, Option<&str>), StateError> {
    let decimal = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s.len() == 1 || !s.starts_with('0'))
    };
    let mark = |m: &str| m.len() == 16 && m.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| match s.split_once(' ') {
            Some((n, m)) if decimal(n) && mark(m) => Some((n.parse().ok()?, Some(m))),
            None if decimal(s) => Some((s.parse().ok()?, None)),
            _ => None,
        })
        .ok_or_else(|| {
            StateError(format!(
                "a use count in etcd is not a number ({:?}): is something else writing under seb's prefix?",
                String::from_utf8_lossy(&v[..v.len().min(40)])
            ))
        })
}

impl UseStore for EtcdState {
    fn unavailable(&self) -> Option<String> {
        let failing = self
            .health
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        failing
            .map(|e| format!("etcd: {e}"))
            .or_else(|| self.refusal())
    }

    fn give_back<'a>(&'a self, kid: &'a str, jti: &'a str) -> GiveBackFuture<'a> {
        Box::pin(self.bounded("a give-back", self.give(self.use_key(kid, jti))))
    }

    fn take_use<'a>(
        &'a self,
        kid: &'a str,
        jti: &'a str,
        max_uses: u32,
        exp: i64,
    ) -> StateFuture<'a> {
        Box::pin(async move {
            if let Some(why) = self.refusal() {
                return Err(StateError(why));
            }
            self.bounded("a use", self.take(self.use_key(kid, jti), max_uses, exp))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_count;

    #[test]
    fn counts_are_decimal_ascii_only() {
        assert_eq!(parse_count(b"0").unwrap(), (0, None));
        assert_eq!(parse_count(b"17").unwrap(), (17, None));
        assert_eq!(
            parse_count(b"3 00ff00ff00ff00ff").unwrap(),
            (3, Some("00ff00ff00ff00ff"))
        );
        for bad in [
            &b""[..],
            b"01",
            b"3 00FF00FF00FF00FF",
            b"3 00ff",
            b"3  00ff00ff00ff00ff",
            b"3 00ff00ff00ff00ff ",
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"0x1",
            b"99999999999",
            b"\xff",
        ] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn a_count_reads_back_and_nothing_else_reads_as_one(n: u32, mark: u64, junk: Vec<u8>) {
            let plain = n.to_string();
            proptest::prop_assert_eq!(parse_count(plain.as_bytes()).unwrap(), (n, None));
            let marked = format!("{n} {mark:016x}");
            let m = format!("{mark:016x}");
            proptest::prop_assert_eq!(parse_count(marked.as_bytes()).unwrap(), (n, Some(m.as_str())));
            if let Ok((v, m)) = parse_count(&junk) {
                let back = match m {
                    Some(m) => format!("{v} {m}"),
                    None => v.to_string(),
                };
                proptest::prop_assert_eq!(back.as_bytes(), &junk[..]);
            }
        }
    }
}
