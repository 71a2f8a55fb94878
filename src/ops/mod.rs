//! Operating seb: checks an operator runs beside the broker, offline, against what the
//! providers and the broker recorded (`reconcile`), what the agent's own credentials can do
//! (`preflight`), and the config file (`config_cli`). Nothing here is on the request path,
//! and nothing below `ops` depends on it.

pub mod config_cli;
pub mod preflight;
pub mod reconcile;
