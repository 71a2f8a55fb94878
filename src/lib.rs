//! seb, the Sovereign Execution Broker. See README.md "How it works" for the request path.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cert;
pub mod config;
pub mod contract;
pub mod denial;
pub mod devcerts;
pub mod fsutil;
pub mod json;
pub mod ops;
pub mod proxy;
pub mod secret;
pub mod signer;
pub mod state;
pub mod targets;
pub mod tls;
pub mod upstream;
