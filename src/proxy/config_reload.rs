//! Reloading the config file in a running broker (SIGHUP, `POST /v1/reload`, `seb reload`):
//! the trusted issuer keys, the TLS certificate, key and client CA, and the revocation
//! source. Everything new is loaded and checked before anything is swapped, so a config that
//! does not parse, or a key or certificate that does not load, leaves the running one as it
//! was. What cannot change without a restart (listeners, targets, the audit log, limits) is
//! named in the answer and the log, and the running value stays.

use crate::admission::reload::Source;
use crate::cert::{keys, Issuer, TrustedIssuers};
use crate::config::Config;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::task::JoinHandle;

type SpawnPoller = Box<dyn Fn(Source, Duration) -> JoinHandle<()> + Send + Sync>;

pub struct Reloader {
    /// The config as the broker started: what needs a restart is compared with this.
    started: Config,
    issuers: TrustedIssuers,
    tls: Option<super::server::TlsSlot>,
    poller: Mutex<Poller>,
    spawn_poller: SpawnPoller,
    /// One reload at a time: SIGHUP and the admin endpoint may race.
    busy: tokio::sync::Mutex<()>,
}

struct Poller {
    source: Source,
    interval: Duration,
    task: JoinHandle<()>,
}

/// What a reload did.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    /// What was reloaded, in words.
    pub applied: Vec<String>,
    /// Fields that changed in the file but keep their running value until a restart.
    pub restart_needed: Vec<String>,
}

impl Reloader {
    pub(super) fn new(
        started: Config,
        issuers: TrustedIssuers,
        tls: Option<super::server::TlsSlot>,
        source: Source,
        spawn_poller: SpawnPoller,
    ) -> Reloader {
        let interval = started.revocation.poll_interval;
        let task = spawn_poller(source.clone(), interval);
        Reloader {
            started,
            issuers,
            tls,
            poller: Mutex::new(Poller {
                source,
                interval,
                task,
            }),
            spawn_poller,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn reload(&self) -> Result<Reloaded, String> {
        let _one = self.busy.lock().await;
        let path = self
            .started
            .source
            .as_ref()
            .map(|s| s.path.clone())
            .ok_or("this broker was not started from a config file")?;
        let result = self.reload_from(path).await;
        match &result {
            Ok(r) => tracing::info!(
                applied = ?r.applied,
                restart_needed = ?r.restart_needed,
                "configuration reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the running one stays")
            }
        }
        result
    }

    async fn reload_from(&self, path: PathBuf) -> Result<Reloaded, String> {
        // Reading files blocks; the accept loops share this runtime.
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let config = Config::load(&path)?;
            let issuers = load_issuers(&config)?;
            let tls = match &config.tls {
                Some(_) => Some(tls_config(&config)?),
                None => None,
            };
            Ok((config, issuers, tls))
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))?
        .map_err(|e| format!("{e:#}"))?;
        let (config, issuers, tls) = loaded;

        let restart_needed = self.restart_needed(&config);
        if self.tls.is_some() != tls.is_some() {
            return Err(format!(
                "{}: switching between TLS and plaintext needs a restart; nothing was reloaded",
                config.at("tls")
            ));
        }
        // Whether reads need an authenticated agent was decided at start from whether there
        // is a client CA; a reload must not quietly leave reads open, or shut out agents.
        let client_ca = |c: &Config| c.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if client_ca(&self.started) != client_ca(&config) {
            return Err(format!(
                "{}: adding or removing the client CA changes who may read and needs a restart; nothing was reloaded",
                config.at("tls.client_ca")
            ));
        }
        let source = revocation_source(&config).map_err(|e| format!("{e:#}"))?;

        let mut applied = Vec::new();
        let before = self.issuers.describe();
        self.issuers.replace(issuers);
        let after = self.issuers.describe();
        applied.push(if before == after {
            format!("issuers: {} key(s), unchanged", after.len())
        } else {
            format!(
                "issuers: {} key(s) now trusted ({})",
                after.len(),
                after
                    .iter()
                    .map(|(kid, iss)| format!("{kid} for {}", iss.as_deref().unwrap_or("any")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        if let (Some(slot), Some(new)) = (&self.tls, tls) {
            slot.store(new);
            applied.push(
                "tls: certificate, key and client CA re-read; new connections use them".into(),
            );
        }
        let mut poller = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        let interval = config.revocation.poll_interval;
        if source_differs(&poller.source, &source) || poller.interval != interval {
            poller.task.abort();
            poller.task = (self.spawn_poller)(source.clone(), interval);
            applied.push(format!(
                "revocation: now polling {} every {interval:?}",
                describe_source(&source)
            ));
            poller.source = source;
            poller.interval = interval;
        } else {
            applied.push("revocation: source unchanged".into());
        }
        Ok(Reloaded {
            applied,
            restart_needed,
        })
    }

    /// Fields whose running value a reload cannot change. Compared by their debug form,
    /// which every config type has and which shows paths and variable names, not secrets.
    fn restart_needed(&self, new: &Config) -> Vec<String> {
        let old = &self.started;
        let mut changed = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                changed.push(name.to_string());
            }
        };
        check(
            "broker_id",
            format!("{:?}", old.broker_id),
            format!("{:?}", new.broker_id),
        );
        check(
            "plaintext",
            format!("{:?}", old.plaintext),
            format!("{:?}", new.plaintext),
        );
        check(
            "admin",
            format!("{:?}", old.admin),
            format!("{:?}", new.admin),
        );
        check(
            "certificates",
            format!("{:?}", old.certificates),
            format!("{:?}", new.certificates),
        );
        check(
            "revocation.max_staleness",
            format!("{:?}", old.revocation.max_staleness),
            format!("{:?}", new.revocation.max_staleness),
        );
        check(
            "audit",
            format!("{:?}", old.audit),
            format!("{:?}", new.audit),
        );
        check(
            "limits",
            format!("{:?}", old.limits),
            format!("{:?}", new.limits),
        );
        check(
            "agents",
            format!("{:?}", old.agents),
            format!("{:?}", new.agents),
        );
        check(
            "runtime",
            format!("{:?}", old.runtime),
            format!("{:?}", new.runtime),
        );
        check(
            "targets",
            format!("{:?}", old.targets),
            format!("{:?}", new.targets),
        );
        // The backend and the etcd client are built once, before anything listens.
        check(
            "state",
            format!("{:?}", old.state),
            format!("{:?}", new.state),
        );
        changed
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.poller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .task
            .abort();
    }
}

/// Every configured issuer key, loaded; an error names the file, line and field.
pub fn load_issuers(config: &Config) -> anyhow::Result<Vec<Issuer>> {
    let mut issuers = Vec::new();
    for (i, ic) in config.issuers.iter().enumerate() {
        // Issuers known by a JWKS URL get their keys from its poller.
        let Some(public_key) = &ic.public_key else {
            continue;
        };
        let key = keys::load_verifying_key(public_key)
            .with_context(|| config.at(&format!("issuers[{i}].public_key")))?;
        issuers.push(Issuer {
            name: Some(ic.name.clone()),
            kid: keys::key_id(&key),
            key,
        });
    }
    Ok(issuers)
}

/// The TLS server configuration from `[tls]`; an error names the file and field.
pub fn tls_config(config: &Config) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    let t = config
        .tls
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: missing", config.at("tls")))?;
    crate::tls::server_config(&crate::tls::TlsSettings {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: t.client_ca.clone(),
        require_client_cert: t.require_client_cert,
    })
    .with_context(|| config.at("tls"))
}

pub fn revocation_source(config: &Config) -> anyhow::Result<Source> {
    match (&config.revocation.file, &config.revocation.url) {
        (Some(f), _) => Ok(Source::File(f.clone())),
        (_, Some(u)) => Ok(Source::Url(u.clone())),
        _ => anyhow::bail!("{}: needs file or url", config.at("revocation")),
    }
}

fn source_differs(a: &Source, b: &Source) -> bool {
    match (a, b) {
        (Source::File(a), Source::File(b)) => a != b,
        (Source::Url(a), Source::Url(b)) => a != b,
        _ => true,
    }
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::File(p) => p.display().to_string(),
        Source::Url(u) => u.clone(),
    }
}
