//! Why a request was refused. Codes are stable strings: signers, dashboards and agents match on
//! them. Rendering into each client's own error format happens in one place per target.

use http::StatusCode;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    CertMissing,
    CertMalformed,
    BadSignature,
    UnknownIssuer,
    NotYetValid,
    Expired,
    PolicyEpochStale,
    RevocationDataStale,
    Revoked,
    Replayed,
    BindingMismatch,
    ContractMismatch,
    Drift,
    IdentityUnavailable,
    AuditUnavailable,
    UpstreamError,
    /// The request itself is unusable (non-canonical path, unreadable body); not in the v1 list
    /// because v1 only named certificate outcomes, see docs/FORMATS.md.
    RequestMalformed,
    /// The replay/use-count store cannot answer, so a use cannot be counted.
    StateUnavailable,
    /// Refused by load shedding before any check ran.
    Overloaded,
    /// The caller is not an authenticated agent (reads need one too when configured).
    Unauthenticated,
}

impl Reason {
    pub const ALL: [Reason; 20] = [
        Reason::CertMissing,
        Reason::CertMalformed,
        Reason::BadSignature,
        Reason::UnknownIssuer,
        Reason::NotYetValid,
        Reason::Expired,
        Reason::PolicyEpochStale,
        Reason::RevocationDataStale,
        Reason::Revoked,
        Reason::Replayed,
        Reason::BindingMismatch,
        Reason::ContractMismatch,
        Reason::Drift,
        Reason::IdentityUnavailable,
        Reason::AuditUnavailable,
        Reason::UpstreamError,
        Reason::RequestMalformed,
        Reason::StateUnavailable,
        Reason::Overloaded,
        Reason::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CertMissing => "cert_missing",
            Reason::CertMalformed => "cert_malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Expired => "expired",
            Reason::PolicyEpochStale => "policy_epoch_stale",
            Reason::RevocationDataStale => "revocation_data_stale",
            Reason::Revoked => "revoked",
            Reason::Replayed => "replayed",
            Reason::BindingMismatch => "binding_mismatch",
            Reason::ContractMismatch => "contract_mismatch",
            Reason::Drift => "drift",
            Reason::IdentityUnavailable => "identity_unavailable",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::UpstreamError => "upstream_error",
            Reason::RequestMalformed => "request_malformed",
            Reason::StateUnavailable => "state_unavailable",
            Reason::Overloaded => "overloaded",
            Reason::Unauthenticated => "unauthenticated",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// 401 when no credential was offered, 400 for input we cannot read, 503 when a dependency
    /// of the decision is down (retrying later can succeed), 502 for the upstream, 403 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::CertMissing | Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
            Reason::CertMalformed | Reason::RequestMalformed => StatusCode::BAD_REQUEST,
            Reason::RevocationDataStale
            | Reason::IdentityUnavailable
            | Reason::AuditUnavailable
            | Reason::StateUnavailable
            | Reason::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamError => StatusCode::BAD_GATEWAY,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    /// A more precise HTTP status than the reason's (413 for a body over the limit), for
    /// clients that act on the status; the code stays the stable reason.
    pub status: Option<StatusCode>,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            status: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The status the refusal is sent with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.reason.status())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Denial {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(Reason::from_code(r.as_str()), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }
}
