//! Replay and use-count state. Admission asks one question of it, atomically: "may this
//! certificate be used once more?". A single broker answers from memory; replicas share
//! etcd, so a certificate's uses are counted once across all of them, and so is each
//! issuer's newest revocation document ([`SharedRevocations`]).

pub mod config;
pub mod etcd;
pub mod memory;

use std::future::Future;
use std::pin::Pin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseOutcome {
    /// Admitted as use number `n` (1-based) of `max`.
    Admitted { n: u32, max: u32 },
    /// All `max` uses were already taken.
    Exhausted { max: u32 },
}

#[derive(Debug, thiserror::Error)]
#[error("replay state unavailable: {0}")]
pub struct StateError(pub String);

pub type StateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UseOutcome, StateError>> + Send + 'a>>;

pub type GiveBackFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StateError>> + Send + 'a>>;

/// Revocation documents shared by replicas. The store keeps, per issuer, the document with the
/// highest `(epoch, iat)` it was offered and never goes back; replicas learn of each one from
/// the store ([`etcd::EtcdState::watch_revocations`]) and verify it themselves, so the store
/// can delay a revocation but not forge or undo one.
pub trait SharedRevocations: Send + Sync + 'static {
    /// Stores `document` (already verified by the caller) as issuer `iss`'s newest unless the
    /// store holds one at least as new. Ok means every replica will see it (or a newer one).
    fn publish<'a>(
        &'a self,
        iss: &'a str,
        epoch: u64,
        iat: i64,
        document: &'a str,
    ) -> GiveBackFuture<'a>;
}

pub trait UseStore: Send + Sync + 'static {
    /// Why uses cannot be taken right now, if they cannot (for `/readyz`). The memory store
    /// always can.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// Gives back one use taken by [`UseStore::take_use`] whose request provably never reached
    /// the upstream.
    fn give_back<'a>(&'a self, kid: &'a str, jti: &'a str) -> GiveBackFuture<'a>;

    /// Takes one use of certificate `jti` (issued by key `kid`) if fewer than `max_uses` were
    /// taken. The record must live at least until `exp` (seconds since the epoch): after that
    /// the certificate is refused as expired, so forgetting it is safe.
    fn take_use<'a>(
        &'a self,
        kid: &'a str,
        jti: &'a str,
        max_uses: u32,
        exp: i64,
    ) -> StateFuture<'a>;
}
