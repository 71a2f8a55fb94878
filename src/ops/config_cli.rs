//! `seb config schema` and `seb config check`: the config file's JSON Schema, generated from
//! the same types the loader reads (schemars derives beside serde's), and a check of a file
//! that loads it the way `seb serve` / `seb signer serve` do and starts nothing.

use crate::config::{Config, TargetKindConfig};
use crate::signer::config::SignerConfig;
use crate::targets::{aws::AwsTarget, http::HttpTarget, kubernetes::KubeTarget};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Which {
    /// Decide from the file: a signer config has a top-level `issuer` and `keys`.
    #[default]
    Detect,
    Broker,
    Signer,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema (draft 2020-12) of the broker's (or the signer's) config file.
    Schema {
        #[arg(long)]
        signer: bool,
    },
    /// Load and validate a config file as `serve` does, starting nothing: no listener, no
    /// upstream call. Exit 0 when it would start, 2 naming the file and field when not.
    Check {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Which::Detect)]
        kind: Which,
        /// Check the file alone: fields and values, not the key, certificate and secret files
        /// and variables it names (for CI, where those live elsewhere).
        #[arg(long)]
        syntax_only: bool,
    },
}

pub fn schema(signer: bool) -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let s = if signer {
        generator.into_root_schema_for::<SignerConfig>()
    } else {
        generator.into_root_schema_for::<Config>()
    };
    s.to_value()
}

pub fn run(c: &ConfigCommand) -> ExitCode {
    let result = match c {
        ConfigCommand::Schema { signer } => serde_json::to_string_pretty(&schema(*signer))
            .map(|s| println!("{s}"))
            .map_err(anyhow::Error::from),
        ConfigCommand::Check {
            file,
            kind,
            syntax_only,
        } => {
            check(file, *kind, *syntax_only).map(|what| println!("{}: ok ({what})", file.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn detect(file: &Path) -> anyhow::Result<Which> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not TOML: {}", file.display(), e.message()))?;
    Ok(if doc.contains_key("issuer") && doc.contains_key("keys") {
        Which::Signer
    } else {
        Which::Broker
    })
}

/// What `serve` checks before it listens, in its order; returns what the file is.
pub fn check(file: &Path, kind: Which, syntax_only: bool) -> anyhow::Result<&'static str> {
    let kind = match kind {
        Which::Detect => detect(file)?,
        k => k,
    };
    if kind == Which::Signer {
        let cfg = SignerConfig::load(file)?;
        if !syntax_only {
            for (i, k) in cfg.keys.iter().enumerate() {
                crate::cert::keys::load_signing_key(&k.private_key)
                    .with_context(|| format!("{}: keys[{i}].private_key", file.display()))?;
            }
            crate::cert::keys::load_signing_key(&cfg.audit.signing_key)
                .with_context(|| format!("{}: audit.signing_key", file.display()))?;
            crate::tls::server_config(&crate::tls::TlsSettings {
                cert: cfg.tls.cert.clone(),
                key: cfg.tls.key.clone(),
                client_ca: cfg.tls.client_ca.clone(),
                require_client_cert: false,
            })
            .with_context(|| format!("{}: tls", file.display()))?;
        }
        return Ok("signer config");
    }
    let config = Config::load(file)?;
    if syntax_only {
        return Ok("broker config, syntax only");
    }
    if config.tls.is_some() {
        crate::proxy::config_reload::tls_config(&config)?;
    }
    crate::proxy::config_reload::load_issuers(&config)?;
    crate::cert::keys::load_signing_key(&config.audit.signing_key)
        .with_context(|| config.at("audit.signing_key"))?;
    for (i, s) in config.agents.tokens.iter().enumerate() {
        s.load()
            .with_context(|| config.at(&format!("agents.tokens[{i}]")))?;
    }
    // Each target as serve builds it (its secrets read, its CA loaded); building connects to
    // nothing. Inside a runtime, as at start: the clients need one to exist.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    for (i, t) in config.targets.iter().enumerate() {
        let at = || config.at(&format!("targets[{i}]"));
        match &t.kind {
            TargetKindConfig::Http(h) => {
                HttpTarget::new(&t.name, h).with_context(at)?;
            }
            TargetKindConfig::Aws(a) => {
                AwsTarget::new(&t.name, a).with_context(at)?;
            }
            TargetKindConfig::Kubernetes(k) => {
                KubeTarget::new(&t.name, k).with_context(at)?;
            }
        }
    }
    Ok("broker config")
}
