//! Operating seb: checks an operator runs beside the broker, offline, against what the
//! providers and the broker recorded (`reconcile`), what the agent's own credentials can do
//! (`preflight`), and the config file (`config_cli`). Nothing here is on the request path,
//! and nothing below `ops` depends on it.

pub mod config_cli;
pub mod preflight;
pub mod reconcile;

/// The operator commands, flattened into the binary's own.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Commands {
    /// Match every mutation in CloudTrail / Kubernetes audit logs to a seb decision; exit 1
    /// on a bypass, an unadmitted or unconfirmed call, or a mismatch (docs/OPERATIONS.md).
    Reconcile(reconcile::ReconcileArgs),
    /// Prove with the agent's own credentials that it cannot mutate directly (and the
    /// broker's base AWS identity neither); exit 1 on a gap (docs/OPERATIONS.md).
    Preflight(preflight::PreflightArgs),
    /// Print the config file's JSON Schema, or check a config file without starting anything.
    #[command(subcommand)]
    Config(config_cli::ConfigCommand),
}

pub fn run(c: &Commands) -> std::process::ExitCode {
    match c {
        Commands::Reconcile(a) => reconcile::run(a),
        Commands::Preflight(a) => preflight::run(a),
        Commands::Config(c) => config_cli::run(c),
    }
}
