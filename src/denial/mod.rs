//! Why a request was refused. Codes are stable strings: signers, dashboards and agents match on
//! them. One table gives each reason its status per client family; `render` writes every
//! refusal in its client's own format.

use http::StatusCode;
use std::fmt;

mod render;

pub use render::{render, AwsFormat, Dialect};

/// Which rules a client's refusals follow: the status table has a column for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Http,
    Aws,
    Kubernetes,
}

/// The one table of refusal statuses: by reason, for each family of client. A denial may
/// carry a more precise status of its own (413, 415, 431, 504), which wins.
///
/// - 401 where no credential was offered, 400 for input seb cannot read, 503 where a
///   dependency of the decision is down (retrying can succeed), 502 for the upstream, 403
///   for every other refusal.
/// - AWS: 403 also for a missing certificate and for failures after a use was spent
///   (identity, audit, upstream): SDKs retry 401 and 5xx on their own, and a retry after a
///   spent use would only read "replayed". 503 only where no use was spent.
/// - Kubernetes: `drift` is 409 Conflict, as a stale resourceVersion is: the agent resolves
///   it with a new certificate for the object as it is now.
pub fn status(reason: Reason, family: Family) -> StatusCode {
    use Reason as R;
    match (family, reason) {
        (Family::Aws, R::RequestMalformed | R::CertMalformed) => StatusCode::BAD_REQUEST,
        (Family::Aws, R::Overloaded | R::StateUnavailable | R::RevocationDataStale) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        (Family::Aws, _) => StatusCode::FORBIDDEN,
        (Family::Kubernetes, R::Drift) => StatusCode::CONFLICT,
        (_, R::CertMissing | R::Unauthenticated) => StatusCode::UNAUTHORIZED,
        (_, R::CertMalformed | R::RequestMalformed) => StatusCode::BAD_REQUEST,
        (
            _,
            R::RevocationDataStale
            | R::IdentityUnavailable
            | R::AuditUnavailable
            | R::StateUnavailable
            | R::Overloaded,
        ) => StatusCode::SERVICE_UNAVAILABLE,
        (_, R::UpstreamError) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::FORBIDDEN,
    }
}

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
    /// A more precise HTTP status than the table's (413 for a body over the limit, 415 for a
    /// media type seb does not read), for clients that act on the status; the code stays the
    /// stable reason.
    pub status: Option<StatusCode>,
    /// The message is the broker's own words with nothing of a dependency's in it (a
    /// deadline), so agents read it even where [`Denial::for_agent`] would replace it.
    pub own_words: bool,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            status: None,
            own_words: false,
        }
    }

    /// A body in a media type seb does not read (415 wherever the client acts on it).
    pub fn unsupported_media(why: impl std::fmt::Display) -> Self {
        Denial::new(
            Reason::RequestMalformed,
            format!("unsupported media type: {why}"),
        )
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    }

    /// Marks the message as the broker's own words (see `own_words`).
    pub fn in_own_words(mut self) -> Self {
        self.own_words = true;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The status the refusal is sent with to a client of this family.
    pub fn status(&self, family: Family) -> StatusCode {
        self.status.unwrap_or_else(|| status(self.reason, family))
    }
}

/// Said to the agent after a failure that spent nothing: the certificate can be sent again.
pub const GIVEN_BACK: &str = "; nothing was sent, and the certificate's use was given back";

impl Denial {
    /// What the agent is told. A failure of one of the broker's own dependencies (STS, the
    /// upstream's connection, the state store, the audit log) carries that dependency's text,
    /// which names roles, ARNs, hosts and paths the agent has no business learning; the agent
    /// gets the reason code and a generic message pointing to the audit record, which keeps
    /// the whole text. `expose` (config `expose_upstream_errors`) passes the text through.
    pub fn for_agent(&self, expose: bool, request_id: &str) -> std::borrow::Cow<'_, Denial> {
        let generic = match self.reason {
            _ if expose || self.own_words => return std::borrow::Cow::Borrowed(self),
            Reason::IdentityUnavailable => {
                "the broker could not obtain the execution identity for this request"
            }
            Reason::UpstreamError => "the upstream could not be reached or did not answer",
            Reason::StateUnavailable => "the broker's use-count state cannot be read or written",
            Reason::AuditUnavailable => "the broker's audit log cannot record this request",
            _ => return std::borrow::Cow::Borrowed(self),
        };
        let returned = if self.message.ends_with(GIVEN_BACK) {
            GIVEN_BACK
        } else {
            ""
        };
        std::borrow::Cow::Owned(Denial {
            reason: self.reason,
            message: format!(
                "{generic}; the operator finds the cause in the audit log (request {request_id}){returned}"
            ),
            status: self.status,
            own_words: true,
        })
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

    #[test]
    fn agents_get_no_dependency_text_unless_exposed() {
        let sts = Denial::new(
            Reason::IdentityUnavailable,
            format!(
                "AssumeRole arn:aws:iam::1:role/seb-exec at sts.internal: AccessDenied{GIVEN_BACK}"
            ),
        )
        .with_status(StatusCode::GATEWAY_TIMEOUT);
        let told = sts.for_agent(false, "r-7");
        assert_eq!(told.reason, Reason::IdentityUnavailable);
        assert_eq!(told.status, Some(StatusCode::GATEWAY_TIMEOUT));
        assert!(!told.message.contains("arn:") && !told.message.contains("internal"));
        assert!(told.message.contains("request r-7") && told.message.ends_with(GIVEN_BACK));
        assert_eq!(*sts.for_agent(true, "r-7"), sts);
        // Refusals about the agent's own request keep their message.
        let own = Denial::new(Reason::ContractMismatch, "/amount: 500 is above 100");
        assert_eq!(*own.for_agent(false, "r-8"), own);
        let deadline = Denial::new(
            Reason::UpstreamError,
            "upstream payments did not answer within 2s",
        )
        .in_own_words();
        assert_eq!(*deadline.for_agent(false, "r-9"), deadline);
        for r in [
            Reason::UpstreamError,
            Reason::StateUnavailable,
            Reason::AuditUnavailable,
        ] {
            let d = Denial::new(r, "connect 10.0.0.7:443: refused");
            assert!(!d.for_agent(false, "x").message.contains("10.0.0.7"));
        }
    }
}
