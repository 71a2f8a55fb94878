//! Keeps an issuer's published keys current: fetches its JWKS URL, installs the set for that
//! issuer only, and withdraws it once no fetch has succeeded for `max_staleness`, so a signer
//! that rotated a key out (or an attacker who blocks the URL) cannot keep an old set trusted.

use crate::cert::TrustedIssuers;
use crate::upstream::UpstreamClient;
use std::time::{Duration, Instant};

/// Where one issuer's set comes from and how fresh it must be.
#[derive(Clone, Debug)]
pub struct JwksSource {
    pub iss: String,
    pub url: String,
    pub refresh: Duration,
    pub max_staleness: Duration,
}

async fn fetch(
    source: &JwksSource,
    client: &UpstreamClient,
) -> anyhow::Result<Vec<(String, ed25519_dalek::VerifyingKey)>> {
    let text = client.get_text(&source.url, 256 * 1024).await?;
    crate::cert::jwks::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", source.url))
}

/// Fetches once now (a broker whose signer is up starts trusting it at once), then returns
/// the poller to spawn.
pub async fn start(
    source: JwksSource,
    client: UpstreamClient,
    issuers: TrustedIssuers,
) -> impl std::future::Future<Output = ()> {
    let mut last_ok = None;
    match fetch(&source, &client).await {
        Ok(keys) => {
            tracing::info!(iss = %source.iss, keys = keys.len(), "JWKS loaded");
            issuers.set_published(&source.iss, keys);
            last_ok = Some(Instant::now());
        }
        Err(e) => {
            tracing::warn!(iss = %source.iss, error = %e, "JWKS unavailable; this issuer's certificates are refused until it loads")
        }
    }
    run(source, client, issuers, last_ok)
}

async fn run(
    source: JwksSource,
    client: UpstreamClient,
    issuers: TrustedIssuers,
    mut last_ok: Option<Instant>,
) {
    let mut ticker = tokio::time::interval(source.refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match fetch(&source, &client).await {
            Ok(keys) => {
                issuers.set_published(&source.iss, keys);
                last_ok = Some(Instant::now());
            }
            Err(e) => {
                let stale = last_ok.is_none_or(|t| t.elapsed() > source.max_staleness);
                if stale {
                    issuers.set_published(&source.iss, Vec::new());
                }
                tracing::warn!(iss = %source.iss, error = %e, withdrawn = stale, "JWKS could not be refreshed");
            }
        }
    }
}
