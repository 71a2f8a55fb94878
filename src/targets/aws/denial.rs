//! Refusals in the agent's own AWS error format, so the CLI and SDKs print
//! `AccessDenied: seb: <reason code>: <detail>`.

use super::model::{self, Protocol};
use crate::denial::{Denial, Reason};
use crate::upstream::Body;
use http::header::HeaderValue;
use http::{Response, StatusCode};

/// The error dialect, fixed from the request before the pipeline consumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorFormat {
    /// `<ErrorResponse><Error>..</Error><RequestId>..` (query protocol).
    QueryXml,
    /// `<Response><Errors><Error>..</Error></Errors><RequestID>..` (EC2).
    Ec2Xml,
    /// `<Error><Code>..</Code>..</Error>` (S3).
    RestXml,
    /// `{"__type": .., "message": ..}` with `x-amzn-ErrorType` (json and rest-json).
    Json,
}

/// Chooses the dialect from the credential scope's service; without one, `X-Amz-Target` means
/// a json client and anything else gets the query dialect most AWS clients parse.
pub fn error_format(parts: &http::request::Parts) -> ErrorFormat {
    let protocol = super::protocol::scope(parts)
        .ok()
        .and_then(|s| model::service(&s.service))
        .map(|s| s.protocol);
    match protocol {
        Some(Protocol::Query) => ErrorFormat::QueryXml,
        Some(Protocol::Ec2) => ErrorFormat::Ec2Xml,
        Some(Protocol::RestXml) => ErrorFormat::RestXml,
        Some(Protocol::Json) | Some(Protocol::RestJson) => ErrorFormat::Json,
        None if parts.headers.contains_key("x-amz-target") => ErrorFormat::Json,
        None => ErrorFormat::QueryXml,
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// 400 for requests the broker cannot read; 503 only where no certificate use was spent and a
/// retry can succeed; 403 for every other refusal. AWS SDKs retry 5xx on their own, and a retry
/// after a spent use would only read "replayed".
fn status(reason: Reason) -> StatusCode {
    match reason {
        Reason::RequestMalformed | Reason::CertMalformed => StatusCode::BAD_REQUEST,
        Reason::Overloaded | Reason::StateUnavailable | Reason::RevocationDataStale => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::FORBIDDEN,
    }
}

pub fn render(denial: &Denial, format: ErrorFormat, request_id: &str) -> Response<Body> {
    let message = format!("seb: {}: {}", denial.reason, denial.message);
    let (content_type, body) = match format {
        ErrorFormat::QueryXml => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        ErrorFormat::Ec2Xml => (
            "text/xml",
            format!(
                "<Response><Errors><Error><Code>AccessDenied</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        ErrorFormat::RestXml => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        ErrorFormat::Json => (
            "application/x-amz-json-1.1",
            serde_json::json!({"__type": "AccessDeniedException", "message": message}).to_string(),
        ),
    };
    let mut resp = crate::targets::refusal_response(
        denial.status.unwrap_or_else(|| status(denial.reason)),
        content_type,
        body,
    );
    let h = resp.headers_mut();
    if format == ErrorFormat::Json {
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("AccessDeniedException"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v.clone());
        h.insert("x-amz-request-id", v);
    }
    h.insert(
        "x-seb-reason",
        HeaderValue::from_static(denial.reason.as_str()),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn each_dialect_carries_code_reason_and_escaped_detail() {
        let d = Denial::new(Reason::ContractMismatch, "InstanceId.1 is <i-2> & not i-1");
        let r = render(&d, ErrorFormat::QueryXml, "rid-1");
        assert_eq!(r.status(), 403);
        let t = text(r).await;
        assert!(
            t.starts_with("<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"),
            "{t}"
        );
        assert!(
            t.contains("seb: contract_mismatch: InstanceId.1 is &lt;i-2&gt; &amp; not i-1"),
            "{t}"
        );
        let t = text(render(&d, ErrorFormat::Ec2Xml, "rid-1")).await;
        assert!(
            t.starts_with("<Response><Errors><Error><Code>AccessDenied</Code>")
                && t.contains("<RequestID>rid-1</RequestID>"),
            "{t}"
        );
        let t = text(render(&d, ErrorFormat::RestXml, "rid-1")).await;
        assert!(
            t.contains("<Error><Code>AccessDenied</Code><Message>seb: contract_mismatch"),
            "{t}"
        );
        let r = render(
            &Denial::new(Reason::RequestMalformed, "x"),
            ErrorFormat::Json,
            "rid-1",
        );
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-amzn-errortype"], "AccessDeniedException");
        // Refusals are per request: no cache between agent and broker may replay one.
        assert_eq!(r.headers()["cache-control"], "no-store");
        let v: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
        assert_eq!(v["__type"], "AccessDeniedException");
        assert_eq!(v["message"], "seb: request_malformed: x");
    }

    #[test]
    fn dialect_follows_the_scope_service() {
        let parts = |svc: &str, target: bool| {
            let mut b = http::Request::post("/").header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=K/20240101/us-east-1/{svc}/aws4_request, SignedHeaders=host, Signature=0"),
            );
            if target {
                b = b.header("x-amz-target", "X.Y");
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(error_format(&parts("ec2", false)), ErrorFormat::Ec2Xml);
        assert_eq!(
            error_format(&parts("autoscaling", false)),
            ErrorFormat::QueryXml
        );
        assert_eq!(error_format(&parts("s3", false)), ErrorFormat::RestXml);
        assert_eq!(error_format(&parts("lambda", false)), ErrorFormat::Json);
        assert_eq!(error_format(&parts("dynamodb", true)), ErrorFormat::Json);
        assert_eq!(error_format(&parts("nosuch", true)), ErrorFormat::Json);
        assert_eq!(error_format(&parts("nosuch", false)), ErrorFormat::QueryXml);
    }
}
