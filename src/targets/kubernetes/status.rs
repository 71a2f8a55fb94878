//! Refusals as Kubernetes `Status` objects, which kubectl and client libraries print as
//! `Error from server (Forbidden): seb: contract_mismatch: ...`.

use crate::denial::{Denial, Reason};
use crate::upstream::Body;
use http::{Response, StatusCode};
use serde_json::json;

/// Messages of refusals that are about the body's media type start with this, so they render
/// as 415 (the denial codes are shared by all targets and have no media-type code).
pub const UNSUPPORTED_MEDIA: &str = "unsupported media type: ";

/// HTTP status and the `Status.reason` the apiserver uses for it.
pub fn status_for(denial: &Denial) -> (StatusCode, &'static str) {
    match denial.status {
        Some(StatusCode::PAYLOAD_TOO_LARGE) => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
        }
        // 431 and 414 for heads seb will not read: the apiserver has no reason of its own.
        Some(s) if s.is_client_error() && denial.reason == Reason::RequestMalformed => {
            return (s, "BadRequest")
        }
        _ => {}
    }
    match denial.reason {
        Reason::CertMissing | Reason::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        Reason::RequestMalformed if denial.message.starts_with(UNSUPPORTED_MEDIA) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
        }
        Reason::RequestMalformed | Reason::CertMalformed => (StatusCode::BAD_REQUEST, "BadRequest"),
        // The live object is not what the certificate was issued for: a conflict the agent
        // resolves by getting a new certificate, as with a stale resourceVersion.
        Reason::Drift => (StatusCode::CONFLICT, "Conflict"),
        Reason::RevocationDataStale
        | Reason::IdentityUnavailable
        | Reason::AuditUnavailable
        | Reason::StateUnavailable
        | Reason::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        Reason::UpstreamError => (StatusCode::BAD_GATEWAY, "InternalError"),
        _ => (StatusCode::FORBIDDEN, "Forbidden"),
    }
}

pub fn render(denial: &Denial, request_id: &str) -> Response<Body> {
    let (status, reason) = status_for(denial);
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("seb: {}: {}", denial.reason, denial.message),
        "reason": reason,
        "details": {"causes": [{"reason": denial.reason.as_str(), "message": request_id, "field": "seb.request_id"}]},
        "code": status.as_u16(),
    });
    crate::targets::refusal_response(status, "application/json", body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn status_objects() {
        let r = render(&Denial::new(Reason::ContractMismatch, "no"), "rid-1");
        assert_eq!(r.status(), 403);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "Forbidden");
        assert_eq!(v["message"], "seb: contract_mismatch: no");
        assert_eq!(v["code"], 403);
        let media = Denial::new(
            Reason::RequestMalformed,
            format!("{UNSUPPORTED_MEDIA}protobuf"),
        );
        assert_eq!(status_for(&media).0, 415);
        assert_eq!(status_for(&Denial::new(Reason::Drift, "x")).0, 409);
        assert_eq!(status_for(&Denial::new(Reason::CertMissing, "x")).0, 401);
    }
}
