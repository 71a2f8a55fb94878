//! What a broker reads back before it serves: the certificate uses and the revocation
//! documents its audit log records, and the hook that keeps recording new revocations there.

use crate::admission::revocation::RevocationState;
use crate::audit::Audit;
use crate::cert::WindowPolicy;
use crate::state::memory::MemoryUseStore;
use anyhow::Context;
use std::sync::Arc;

/// Every revocation document applied from now on (pushed, polled, from etcd) goes into the
/// audit log as a `revocation` record: an operator sees when it took effect, and a restart
/// whose state file lost it finds it there (`rebuild_use_counts`). Applying is synchronous
/// and already persisted to the state file, so the record follows through a queue.
pub(super) fn record_applied_revocations(revocation: &Arc<RevocationState>, audit: &Audit) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::audit::RevocationInfo>();
    revocation.on_applied(Box::new(move |iss, p| {
        use sha2::Digest;
        let _ = tx.send(crate::audit::RevocationInfo {
            iss: iss.to_string(),
            epoch: p.epoch,
            iat: p.iat,
            sha256: hex::encode(sha2::Sha256::digest(p.document.as_bytes())),
            document: p.document.clone(),
        });
    }));
    let audit = audit.clone();
    tokio::spawn(async move {
        while let Some(info) = rx.recv().await {
            let (iss, epoch) = (info.iss.clone(), info.epoch);
            if let Err(e) = audit.record_revocation(info).await {
                tracing::error!(issuer = %iss, epoch, error = %e.0, "a revocation document applied here could not be recorded in the audit log; the state file still holds it");
            }
        }
    });
}

/// Counts again, from the audit log, the uses of every certificate that may still be used;
/// also returns the revocation documents the log says were applied, as far back.
pub(crate) fn rebuild_use_counts(
    path: Option<&std::path::Path>,
    window: WindowPolicy,
    kids_by_name: &[(String, String)],
    uses: &MemoryUseStore,
    audit_pub: &ed25519_dalek::VerifyingKey,
) -> anyhow::Result<(Option<i64>, Vec<crate::audit::LoggedRevocation>)> {
    let Some(path) = path else {
        tracing::warn!(
            "no audit file is configured: certificate use counts live in memory only, and a \
             restart re-admits uses already spent within the certificates' validity"
        );
        return Ok((None, Vec::new()));
    };
    let started = std::time::Instant::now();
    let now = crate::cert::now_secs();
    // One more minute than the bound needs: the records' clock and this one are the same,
    // but a record is stamped a moment after its use was taken.
    let horizon = now - window.max_ttl_secs - 2 * window.skew_secs - 60;
    let scan = crate::audit::spent_uses(path, horizon, Some(audit_pub))
        .context("rebuilding certificate use counts from the audit log")?;
    let mut restored = 0u64;
    for s in &scan.certificates {
        // Records written before `exp` was recorded: the latest the certificate can expire.
        let exp = s
            .exp
            .unwrap_or(s.last_ts + window.max_ttl_secs + window.skew_secs);
        if exp + window.skew_secs < now {
            continue;
        }
        match (&s.kid, &s.iss) {
            (Some(kid), _) => uses.restore(kid, &s.jti, s.used, exp),
            // Records written before the issuer key was recorded: every key of that issuer.
            (None, Some(iss)) => {
                for (_, kid) in kids_by_name.iter().filter(|(n, _)| n == iss) {
                    uses.restore(kid, &s.jti, s.used, exp);
                }
            }
            (None, None) => continue,
        }
        restored += 1;
    }
    tracing::info!(
        certificates = restored,
        records = scan.lines,
        files = scan.files.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "certificate use counts rebuilt from the audit log"
    );
    if let Some(t) = scan.uses_unknown_before {
        tracing::error!(
            lost_at = t,
            "the audit log records a loss of decisions whose certificate uses are unknown: certificates issued before then are refused until they expire"
        );
    }
    // A certificate's iat may run ahead of this clock by the skew.
    Ok((
        scan.uses_unknown_before
            .map(|t| t.saturating_add(window.skew_secs)),
        scan.revocations,
    ))
}
