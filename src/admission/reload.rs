//! Keeps revocation data current: polls a file or URL and installs newer documents.
//! A failed fetch changes nothing; the data simply ages until admission refuses on staleness.

use super::revocation::{Applied, RevocationState, ShareError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

pub async fn fetch(
    source: &Source,
    client: &crate::upstream::UpstreamClient,
) -> anyhow::Result<String> {
    match source {
        Source::File(p) => tokio::fs::read_to_string(p)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display())),
        Source::Url(u) => client.get_text(u, 1024 * 1024).await,
    }
}

/// Loads once now (so a broker with reachable data starts ready), then polls forever.
pub async fn run(
    source: Source,
    state: Arc<RevocationState>,
    client: crate::upstream::UpstreamClient,
    interval: Duration,
    skew: i64,
) {
    let mut last: Option<String> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match fetch(&source, &client).await {
            Ok(text) if last.as_deref() == Some(text.as_str()) => {}
            Ok(text) => {
                match state
                    .apply_shared(&text, crate::cert::now_secs(), skew)
                    .await
                {
                    Ok(Applied::Updated { epoch }) => {
                        tracing::info!(epoch, "revocation data loaded")
                    }
                    Ok(Applied::Unchanged { .. }) => {}
                    Err(ShareError::Refused(e)) => {
                        tracing::warn!(error = %e, "revocation data refused")
                    }
                    // Fetched again next time: the replicas must get it.
                    Err(ShareError::NotShared(e)) => {
                        tracing::warn!(error = %e, "revocation data not shared");
                        continue;
                    }
                }
                last = Some(text);
            }
            Err(e) => tracing::warn!(error = %e, "revocation data could not be fetched"),
        }
    }
}
