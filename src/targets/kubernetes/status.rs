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

/// A refusal of a request client-go reads with `Result.Raw()` (see
/// [`super::read_raw_by_client_go`]): the same status, the message as plain text. client-go
/// (`newUnstructuredResponseError`, `NewGenericServerResponse`) puts a text answer's body into
/// its error for 403, 406, 415 and the 5xx codes but 503 and 504; for the others it prints a
/// fixed sentence, so the message also goes into a `Warning: 299` header, which client-go
/// hands to kubectl's warning printer for every answer.
pub fn render_text(denial: &Denial) -> Response<Body> {
    let (status, _) = status_for(denial);
    let message = format!("seb: {}: {}", denial.reason, denial.message);
    let shown = matches!(status.as_u16(), 403 | 406 | 415)
        || (status.is_server_error() && !matches!(status.as_u16(), 503 | 504));
    let mut resp = crate::targets::refusal_response(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n"),
    );
    if !shown {
        if let Ok(v) = http::HeaderValue::from_str(&warning(&message)) {
            resp.headers_mut().insert(http::header::WARNING, v);
        }
    }
    resp
}

/// `299 - "text"` (RFC 7234 section 5.5), the text quoted and reduced to printable ASCII.
fn warning(text: &str) -> String {
    let mut out = String::from("299 - \"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
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

    #[tokio::test]
    async fn raw_readers_get_text_and_a_warning_where_client_go_hides_text() {
        let r = render_text(&Denial::new(Reason::UpstreamError, "no route"));
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        // 502: client-go quotes the text itself, a warning would say it twice.
        assert!(r.headers().get("warning").is_none());
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"seb: upstream_error: no route\n");

        let r = render_text(&Denial::new(
            Reason::Unauthenticated,
            "token \"x\" unknown – é",
        ));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["warning"],
            "299 - \"seb: unauthenticated: token \\\"x\\\" unknown ? ?\""
        );
        let r = render_text(&Denial::new(Reason::Overloaded, "busy"));
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("warning"));
        let r = render_text(&Denial::new(Reason::ContractMismatch, "no"));
        assert_eq!(r.status(), 403);
        assert!(!r.headers().contains_key("warning"));
    }
}
