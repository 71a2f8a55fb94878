//! The broker process: listeners, the tower stack around the pipeline, and the admin port.

pub mod activity;
pub mod admin;
pub mod body;
pub mod check;
pub mod config_reload;
pub mod head;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
mod restore;
pub mod server;
mod shards;
pub mod stack;
pub mod trace;

use crate::admission::reload::{self, Source};
use crate::admission::revocation::{Applied, RevocationState, ShareError};
use crate::admission::Admission;
use crate::audit::{Audit, AuditSettings};
use crate::cert::{keys, TrustedIssuers, WindowPolicy};
use crate::config::{Config, TargetKindConfig};
use crate::denial::{Denial, Reason};
use crate::state::config::Backend;
use crate::state::etcd::EtcdState;
use crate::state::memory::MemoryUseStore;
use crate::state::UseStore;
use crate::targets::{http::HttpTarget, kubernetes::KubeTarget, Target};
use anyhow::Context;
use pipeline::ConnInfo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Broker {
    pub admission: Admission,
    pub audit: Audit,
    pub metrics: metrics::Metrics,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Agent connections and requests in flight, and the drain at shutdown.
    pub connections: Arc<lifecycle::Connections>,
    /// Targets in shadow mode (`mode = "shadow"`): verdicts recorded, nothing refused.
    pub shadow: Vec<String>,
    /// `expose_upstream_errors`: dependency failure text reaches agents (`Denial::for_agent`).
    pub expose_upstream_errors: bool,
    pub tracing: trace::Tracing,
    /// Bearer tokens that authenticate agents for reads (`X-Seb-Agent-Token`).
    agent_tokens: Vec<String>,
    /// Whether reads need an authenticated agent (mTLS or token) at all.
    reads_need_agent: bool,
    request_prefix: String,
    request_counter: AtomicU64,
}

impl Broker {
    pub fn is_shadow(&self, target: &str) -> bool {
        self.shadow.iter().any(|t| t == target)
    }

    pub fn next_request_id(&self) -> String {
        format!(
            "{}-{}",
            self.request_prefix,
            self.request_counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Reads need no certificate, but when the deployment names its agents (client CA, agent
    /// tokens, or the target's own agent credentials: `target`) they still need to come from
    /// one of them.
    pub fn authenticate_reader(
        &self,
        target: crate::targets::ReaderAuth,
        presented: Option<&str>,
        conn: &ConnInfo,
    ) -> Result<(), Denial> {
        use crate::targets::ReaderAuth;
        let locked = match target {
            ReaderAuth::Authenticated => return Ok(()),
            ReaderAuth::BrokerRule => None,
            ReaderAuth::Locked(d) => Some(d),
        };
        if (!self.reads_need_agent && locked.is_none()) || conn.peer.is_some() {
            return Ok(());
        }
        match presented {
            Some(t) if self.agent_tokens.iter().any(|k| constant_time_eq(k.as_bytes(), t.as_bytes())) => Ok(()),
            Some(_) => Err(Denial::new(Reason::Unauthenticated, "the agent token is not one this broker knows")),
            None => Err(locked.unwrap_or_else(|| Denial::new(
                Reason::Unauthenticated,
                "reads need an authenticated agent: a client certificate or the agent token (X-Seb-Agent-Token; the bearer token for kubernetes targets)",
            ))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Everything the process runs, built from a config. Listening sockets are bound here so
/// that an address in use is a start-up error, not a log line.
pub struct Running {
    pub broker: Arc<Broker>,
    pub revocation: Arc<RevocationState>,
    pub target_addrs: Vec<(String, std::net::SocketAddr)>,
    pub admin_addr: std::net::SocketAddr,
    pub reloader: Arc<config_reload::Reloader>,
    pub shutdown_grace: Duration,
    /// The agent listeners' accept loops: stopped first at shutdown.
    accepting: Vec<tokio::task::JoinHandle<()>>,
    /// Held here, not only by the accept loops: a shard whose queue closes ends its event
    /// loop and every connection on it, which a drain must not do.
    _shards: Option<Arc<shards::Shards>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a drain ended.
#[derive(Debug)]
pub struct Drained {
    /// Connections (and upgraded sessions) still open when the grace period ended.
    pub cut: usize,
    pub audit: Result<(), crate::audit::AuditUnavailable>,
}

impl Running {
    pub async fn wait(&mut self) {
        for t in self.tasks.iter_mut().chain(self.accepting.iter_mut()) {
            let _ = t.await;
        }
    }

    /// Stops accepting, lets every connection finish the request it is serving (then close)
    /// within the grace period, and makes the audit log durable. Connections still open at
    /// the end of the grace period (long watches, exec sessions, slow upstreams) are cut when
    /// the process exits; their decisions are already durable, and a missing outcome is
    /// written as `unknown` at the next start.
    pub async fn drain(&mut self) -> Drained {
        for t in &self.accepting {
            // Dropping the listener: new connections are refused by the kernel.
            t.abort();
        }
        let c = self.broker.connections.clone();
        tracing::info!(
            connections = c.live(),
            requests = c.requests_in_flight(),
            grace = ?self.shutdown_grace,
            "draining: no new connections; waiting for requests in flight"
        );
        c.start_drain();
        let started = std::time::Instant::now();
        let cut = match tokio::time::timeout(self.shutdown_grace, c.drained()).await {
            Ok(()) => {
                tracing::info!(after = ?started.elapsed(), "drained: every connection closed");
                0
            }
            Err(_) => {
                let left = c.live();
                tracing::warn!(
                    connections = left,
                    requests = c.requests_in_flight(),
                    "grace period over; cutting what is left"
                );
                left
            }
        };
        let audit = self.broker.audit.clone();
        let audit = tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| {
                Err(crate::audit::AuditUnavailable(format!(
                    "flushing the audit log: {e}"
                )))
            });
        // Spans still queued go out now (the exporter's requests run on this runtime).
        let broker = self.broker.clone();
        let _ =
            tokio::task::spawn_blocking(move || broker.tracing.shutdown(Duration::from_secs(5)))
                .await;
        Drained { cut, audit }
    }
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    let loaded = config_reload::load_issuers(&config)?;
    let kids_by_name: Vec<(String, String)> = loaded
        .iter()
        .filter_map(|i| i.name.clone().map(|n| (n, i.kid.clone())))
        .collect();
    let issuers = TrustedIssuers::new(loaded);
    let issuers_handle = issuers.clone();
    // Issuers known by their JWKS URL: keys fetched before anything else reads them (the
    // persisted and the first revocation documents may be signed by them).
    let mut jwks_pollers = Vec::new();
    for (i, ic) in config.issuers.iter().enumerate() {
        let Some(url) = &ic.jwks_url else { continue };
        let client = crate::upstream::UpstreamClient::new(ic.jwks_ca.as_deref())
            .with_context(|| config.at(&format!("issuers[{i}].jwks_ca")))?;
        let source = crate::admission::jwks::JwksSource {
            iss: ic.name.clone(),
            url: url.clone(),
            refresh: ic.jwks_refresh,
            max_staleness: ic.jwks_max_staleness,
        };
        let poller = crate::admission::jwks::start(source, client, issuers.clone()).await;
        jwks_pollers.push(tokio::spawn(poller));
    }
    let skew = config.certificates.clock_skew.as_secs() as i64;
    let revocation = RevocationState::new(issuers.clone());
    let revocation = Arc::new(match config.state_dir() {
        Some(dir) => {
            crate::fsutil::create_dir(&dir).with_context(|| {
                format!("{}: creating {}", config.at("state.dir"), dir.display())
            })?;
            revocation
                .persisted_in(&dir, crate::cert::now_secs(), skew)
                .with_context(|| config.at("state.dir"))?
        }
        None => {
            tracing::warn!("no state directory and no audit file: revocation documents pushed to this broker are kept in memory only");
            revocation
        }
    });
    let window = WindowPolicy {
        skew_secs: skew,
        max_ttl_secs: config.certificates.max_ttl.as_secs() as i64,
    };

    let shadow_targets: Vec<String> = config
        .targets
        .iter()
        .filter(|t| t.mode == crate::config::TargetMode::Shadow)
        .map(|t| t.name.clone())
        .collect();
    for name in &shadow_targets {
        tracing::warn!(
            target = name.as_str(),
            "SHADOW MODE: target {name} enforces nothing; every mutation is checked, recorded as \
             would_allow or would_deny, and forwarded under the target's execution identity"
        );
    }
    let audit_key = keys::load_signing_key(&config.audit.signing_key)
        .with_context(|| config.at("audit.signing_key"))?;
    let audit_pub = audit_key.verifying_key();
    let audit = Audit::start(
        AuditSettings {
            path: config.audit.path.clone(),
            durability: config.audit.durability,
            rotate_bytes: config.audit.rotate_bytes,
            stdout: config.audit.stdout,
            broker_id: config.broker_id.clone(),
            shadow_targets: shadow_targets.clone(),
        },
        audit_key,
    )
    .with_context(|| config.at("audit"))?;

    let (uses, uses_unknown_before, etcd) = match config.state.backend {
        Backend::Memory => {
            // Before anything listens: every use the log recorded for a certificate that is
            // still usable counts again, so a restart never re-admits a spent use.
            let uses = MemoryUseStore::new(
                config.limits.max_live_certificates,
                Duration::from_secs(skew as u64),
            );
            let (unknown, logged) = restore::rebuild_use_counts(
                config.audit.path.as_deref(),
                window,
                &kids_by_name,
                &uses,
                &audit_pub,
            )?;
            let logged: Vec<_> = logged
                .into_iter()
                .map(|l| {
                    let p = crate::admission::revocation::Persisted {
                        epoch: l.epoch,
                        iat: l.iat,
                        document: l.document,
                    };
                    (l.iss, p)
                })
                .collect();
            revocation.restore_logged(&logged, crate::cert::now_secs(), skew);
            // The chain the counts were read from is anchored by the last record an earlier
            // run wrote; unsigned (altered, or another key), no certificate issued before now
            // is proven unspent.
            let unknown = if audit.head_unsigned() {
                Some(
                    unknown
                        .unwrap_or(i64::MIN)
                        .max(crate::cert::now_secs() + window.skew_secs),
                )
            } else {
                unknown
            };
            (Arc::new(uses) as Arc<dyn UseStore>, unknown, None)
        }
        // The counts live in etcd, shared by every replica and kept across restarts of any
        // of them: this replica's own log is not where they come from.
        Backend::Etcd => {
            let Some(etcd_config) = &config.state.etcd else {
                anyhow::bail!("{}: missing", config.at("state.etcd"));
            };
            let etcd = EtcdState::connect(etcd_config, Duration::from_secs(skew as u64))
                .await
                .with_context(|| config.at("state.etcd"))?;
            revocation.share_through(etcd.clone());
            tracing::info!(endpoints = ?etcd_config.endpoints, endpoints_file = ?etcd_config.endpoints_file, prefix = %etcd_config.prefix, "use counts and revocation documents are shared through etcd");
            (etcd.clone() as Arc<dyn UseStore>, None, Some(etcd))
        }
    };

    restore::record_applied_revocations(&revocation, &audit);

    let tls: Option<server::TlsSlot> = match &config.tls {
        Some(_) => Some(Arc::new(arc_swap::ArcSwap::new(config_reload::tls_config(
            &config,
        )?))),
        None => None,
    };
    let max_connections = connection_limit(&config)?;

    let mut agent_tokens = Vec::new();
    for (i, s) in config.agents.tokens.iter().enumerate() {
        agent_tokens.push(
            s.load()
                .with_context(|| config.at(&format!("agents.tokens[{i}]")))?,
        );
    }
    let reads_need_agent =
        !agent_tokens.is_empty() || config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());

    let mut prefix = [0u8; 4];
    getrandom::getrandom(&mut prefix).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let broker = Arc::new(Broker {
        admission: Admission {
            issuers,
            window,
            min_policy_epoch: config.certificates.min_policy_epoch,
            max_staleness_secs: config.revocation.max_staleness.as_secs() as i64,
            revocation: revocation.clone(),
            uses,
            uses_unknown_before,
        },
        audit,
        metrics: metrics::Metrics::new(config.targets.iter().map(|t| t.name.as_str()))
            .with_shadow(&shadow_targets),
        shadow: shadow_targets,
        expose_upstream_errors: config.expose_upstream_errors,
        tracing: trace::Tracing::from_config(&config.tracing)
            .with_context(|| config.at("tracing"))?,
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: config.limits.request_timeout,
        connections: lifecycle::Connections::new(max_connections),
        agent_tokens,
        reads_need_agent,
        request_prefix: hex::encode(prefix),
        request_counter: AtomicU64::new(1),
    });

    let source = config_reload::revocation_source(&config)?;
    let control_client = crate::upstream::UpstreamClient::new(config.revocation.ca.as_deref())?;
    // First load before listening, so a broker with good data is ready at once.
    match reload::fetch(&source, &control_client).await {
        Ok(text) => match revocation
            .apply_shared(&text, crate::cert::now_secs(), skew)
            .await
        {
            Err(ShareError::Refused(e)) => {
                tracing::warn!(error = %e, "initial revocation data refused; mutations are refused until valid data loads");
            }
            Err(ShareError::NotShared(e)) => {
                tracing::warn!(error = %e, "initial revocation data not shared yet");
            }
            Ok(_) => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "initial revocation data unavailable; mutations are refused until it loads")
        }
    }

    let mut tasks = jwks_pollers;
    if let Some(etcd) = &etcd {
        let revocation = revocation.clone();
        tasks.push(tokio::spawn(etcd.clone().watch_revocations(Box::new(
            move |doc| match revocation.apply(doc, crate::cert::now_secs(), skew) {
                Ok(Applied::Updated { epoch }) => {
                    tracing::info!(epoch, "revocation data from another replica applied")
                }
                Ok(Applied::Unchanged { .. }) => {}
                // Older than what this replica holds, or its key rotated out here.
                Err(e) => tracing::debug!(error = %e, "revocation data from etcd not applied"),
            },
        ))));
        tasks.push(tokio::spawn(etcd.clone().probe(Duration::from_millis(500))));
    }
    // The poller is (re)started by the reloader, with the source of the config it has.
    let spawn_poller = {
        let (revocation, client) = (revocation.clone(), control_client.clone());
        Box::new(move |source: Source, interval: Duration| {
            tokio::spawn(reload::run(
                source,
                revocation.clone(),
                client.clone(),
                interval,
                skew,
            ))
        })
    };

    let limits = lifecycle::StackLimits {
        request_timeout: config.limits.request_timeout,
        concurrency: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_concurrent_requests,
        )),
        header_read_timeout: config.limits.header_read_timeout,
        idle_timeout: config.limits.idle_timeout,
    };
    let shards = match config.runtime.shards() {
        0 => None,
        n => Some(Arc::new(shards::Shards::start(n).with_context(|| {
            format!(
                "{}: starting connection threads",
                config.at("runtime.shards")
            )
        })?)),
    };
    let mut target_addrs = Vec::new();
    let mut accepting = Vec::new();
    for (i, tc) in config.targets.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind(tc.listen)
            .await
            .with_context(|| {
                format!(
                    "{}: cannot listen on {}",
                    config.at(&format!("targets[{i}].listen")),
                    tc.listen
                )
            })?;
        let addr = listener.local_addr()?;
        target_addrs.push((tc.name.clone(), addr));
        let built = || config.at(&format!("targets[{i}]"));
        // One listener serves one target type: the pipeline is built for it.
        let accept = match &tc.kind {
            TargetKindConfig::Http(h) => {
                let target = HttpTarget::new(&tc.name, h).with_context(built)?;
                listen(target, &broker, listener, &tls, &limits, &shards)
            }
            TargetKindConfig::Aws(a) => {
                let target =
                    crate::targets::aws::AwsTarget::new(&tc.name, a).with_context(built)?;
                listen(target, &broker, listener, &tls, &limits, &shards)
            }
            TargetKindConfig::Kubernetes(k) => {
                let target = KubeTarget::new(&tc.name, k).with_context(built)?;
                listen(target, &broker, listener, &tls, &limits, &shards)
            }
        };
        tracing::info!(target = tc.name, %addr, tls = tls.is_some(), "listening");
        accepting.push(accept);
    }

    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| {
            format!(
                "{}: cannot listen on {}",
                config.at("admin.listen"),
                config.admin.listen
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_token = config.admin.token.as_ref().map(|t| t.load());
    let admin_token = admin_token
        .transpose()
        .with_context(|| config.at("admin.token"))?;
    tracing::info!(%admin_addr, "admin listening");
    let shutdown_grace = config.limits.shutdown_grace;
    let reloader = Arc::new(config_reload::Reloader::new(
        config,
        issuers_handle,
        tls,
        source,
        spawn_poller,
    ));
    tasks.push(tokio::spawn(admin::serve(
        broker.clone(),
        revocation.clone(),
        admin_listener,
        skew,
        reloader.clone(),
        admin_token,
    )));

    Ok(Running {
        broker,
        revocation,
        target_addrs,
        admin_addr,
        reloader,
        shutdown_grace,
        accepting,
        _shards: shards,
        tasks,
    })
}

/// Starts the accept loop of one listener for its target.
fn listen<T: Target>(
    target: T,
    broker: &Arc<Broker>,
    listener: tokio::net::TcpListener,
    tls: &Option<server::TlsSlot>,
    limits: &lifecycle::StackLimits,
    shards: &Option<Arc<shards::Shards>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(server::serve(
        broker.clone(),
        Arc::new(target),
        listener,
        tls.clone(),
        limits.clone(),
        shards.clone(),
    ))
}

/// Agent connections that fit in the open file limit (raised to the hard limit first) with
/// the descriptors everything else needs.
fn connection_limit(config: &Config) -> anyhow::Result<usize> {
    let limit = match lifecycle::raise_fd_limit() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open file limit");
            lifecycle::soft_fd_limit()
        }
    };
    let reserve =
        lifecycle::fd_reserve(config.limits.max_concurrent_requests, config.targets.len());
    lifecycle::fit_connections(
        config.limits.max_connections,
        crate::config::DEFAULT_MAX_CONNECTIONS,
        limit,
        reserve,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", config.at("limits.max_connections")))
}
