//! The audit log: one signed, hash-chained JSON line per decision and outcome.
//!
//! The line format is specified in [`record`].

pub mod record;
pub mod verify;

pub use record::{Durability, Entry, Kind, Verdict};
pub use verify::{verify_logs, VerifyFailure, VerifyReport};
