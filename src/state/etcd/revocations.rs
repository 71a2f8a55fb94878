//! Each issuer's newest revocation document in etcd, and the watch that brings every new one
//! to this replica.
//!
//! One key per issuer holds `{"epoch", "iat", "document"}`. A writer reads it and replaces it
//! only with a newer `(epoch, iat)`, in a transaction that compares the revision it read: two
//! replicas pushing at once cannot roll each other back. Readers never trust the stored
//! fields: the document is verified again by the revocation state of each replica, which also
//! refuses anything older than what it holds.
//!
//! The watch starts from a full read of the prefix and then from the revision after it; when
//! the stream breaks it resumes from the revision after the last event it applied, so nothing
//! written meanwhile is missed. If etcd compacted that revision away, the watch starts over
//! with a full read.

use super::EtcdState;
use crate::state::{GiveBackFuture, SharedRevocations, StateError};
use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    epoch: u64,
    iat: i64,
    document: String,
}

/// Called with every document the watch brings (and those found by a full read).
pub type Apply = Box<dyn Fn(&str) + Send + Sync>;

/// A pause between attempts to re-establish the watch.
const RETRY: Duration = Duration::from_millis(100);

impl EtcdState {
    fn revocation_prefix(&self) -> String {
        format!("{}revocation/", self.prefix)
    }

    fn revocation_key(&self, iss: &str) -> Vec<u8> {
        // Hex: an issuer name may hold '/' or any byte.
        format!("{}{}", self.revocation_prefix(), hex::encode(iss)).into_bytes()
    }

    async fn publish_now(
        &self,
        iss: &str,
        epoch: u64,
        iat: i64,
        document: &str,
    ) -> Result<(), StateError> {
        let key = self.revocation_key(iss);
        let value = serde_json::to_vec(&Stored {
            epoch,
            iat,
            document: document.to_string(),
        })
        .map_err(|e| StateError(e.to_string()))?;
        let kv = self.kv.clone();
        let deadline = Instant::now() + self.timeout;
        for _ in 0..super::MAX_ROUNDS {
            let got = self
                .again(deadline, || {
                    let (mut kv, key) = (kv.clone(), key.clone());
                    async move { kv.get(key, None).await }
                })
                .await?;
            let revision = match got.kvs().first() {
                Some(current) => {
                    // What another writer stored: its fields only decide whether to replace
                    // it; a damaged value is replaced by a verified document.
                    if let Ok(s) = serde_json::from_slice::<Stored>(current.value()) {
                        if (s.epoch, s.iat) >= (epoch, iat) {
                            return Ok(());
                        }
                    }
                    current.mod_revision()
                }
                None => 0,
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            // Repeating a write that took effect is harmless: the repeat's compare fails and
            // the next round finds the document stored.
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
            "gave up after {} rounds of contention on issuer {iss:?}'s revocation document",
            super::MAX_ROUNDS
        )))
    }

    fn watch_down(&self, why: String) {
        let was = self.health.watching.swap(false, Ordering::AcqRel);
        let mut down = self
            .health
            .watch_down
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &mut *down {
            // The outage started when the watch was first lost, not at each failed retry.
            Some((_, w)) if !was => *w = why,
            _ => *down = Some((Instant::now(), why)),
        }
    }

    fn watch_up(&self) {
        *self
            .health
            .watch_down
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.health.watching.store(true, Ordering::Release);
    }

    /// Applies every stored document; the revision to watch from next.
    async fn read_all(&self, apply: &Arc<Apply>) -> Result<i64, String> {
        let mut kv = self.kv.clone();
        let got = tokio::time::timeout(
            self.timeout,
            kv.get(
                self.revocation_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", self.timeout))?
        .map_err(|e| e.to_string())?;
        for item in got.kvs() {
            apply_stored(item.value(), apply).await;
        }
        self.health.synced.store(true, Ordering::Release);
        let revision = got
            .header()
            .map(|h| h.revision())
            .ok_or("etcd answered without a header")?;
        Ok(revision + 1)
    }

    /// Keeps this replica's revocation state in step with etcd, forever.
    pub async fn watch_revocations(self: Arc<Self>, apply: Apply) {
        let apply = Arc::new(apply);
        // The revision to resume from; None: read everything first.
        let mut from: Option<i64> = None;
        loop {
            let start = match from {
                Some(r) => r,
                None => match self.read_all(&apply).await {
                    Ok(r) => r,
                    Err(e) => {
                        self.watch_down(format!("reading the revocation documents: {e}"));
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                },
            };
            from = Some(start);
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(start)
                .with_progress_notify();
            let opened = tokio::time::timeout(
                self.timeout,
                self.watch
                    .clone()
                    .watch(self.revocation_prefix(), Some(opts)),
            )
            .await;
            let mut stream = match opened {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.watch_down(format!("opening the watch: {e}"));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(_) => {
                    self.watch_down(format!(
                        "opening the watch: no answer within {:?}",
                        self.timeout
                    ));
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                from = start,
                                compacted = resp.compact_revision(),
                                "etcd compacted the revisions the revocation watch resumes from; reading every document again"
                            );
                            from = None;
                            break;
                        }
                        if resp.canceled() {
                            self.watch_down(format!(
                                "etcd cancelled the watch: {}",
                                resp.cancel_reason()
                            ));
                            break;
                        }
                        if resp.created() {
                            self.watch_up();
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            if ev.event_type() == EventType::Put {
                                apply_stored(kv.value(), &apply).await;
                            }
                            // A deletion changes nothing here: revocations only go forward,
                            // and each replica keeps (and persists) what it applied.
                            from = Some(kv.mod_revision() + 1);
                        }
                    }
                    Ok(None) => {
                        self.watch_down("the watch stream ended".into());
                        break;
                    }
                    Err(e) => {
                        self.watch_down(format!("the watch stream broke: {e}"));
                        break;
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Applying persists the document (an fsync): off the runtime's threads, which also serve the
/// admin port and the probe, and awaited, so documents are applied in the watch's order.
async fn apply_stored(value: &[u8], apply: &Arc<Apply>) {
    match serde_json::from_slice::<Stored>(value) {
        Ok(s) => {
            let apply = apply.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || apply(&s.document)).await {
                tracing::error!(error = %e, "applying a revocation document from etcd failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "a revocation entry in etcd is not one seb wrote; ignored")
        }
    }
}

impl SharedRevocations for EtcdState {
    fn publish<'a>(
        &'a self,
        iss: &'a str,
        epoch: u64,
        iat: i64,
        document: &'a str,
    ) -> GiveBackFuture<'a> {
        Box::pin(self.bounded(
            "a revocation write",
            self.publish_now(iss, epoch, iat, document),
        ))
    }
}
