//! Every refusal's response, in the dialect its client reads: an RFC 9457 problem document
//! for HTTP APIs, the AWS error document of the client's protocol, a Kubernetes `Status` (or
//! plain text where client-go reads the answer raw). The status comes from the one table in
//! the parent module.

use super::{Denial, Family};
use crate::upstream::{full_body, Body};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use serde_json::json;

/// How a refusal must look to one request's client, read from the request before anything
/// consumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 9457 `application/problem+json`.
    Problem,
    Aws(AwsFormat),
    /// A Kubernetes `Status` object.
    KubeStatus,
    /// A Kubernetes request that client-go reads with `Result.Raw()` (discovery, `/version`,
    /// `/openapi`): its error is built from the answer's text, never from a `Status`.
    KubeRaw,
}

/// The AWS error document an SDK of each protocol parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsFormat {
    /// `<ErrorResponse><Error>..</Error><RequestId>..` (query protocol).
    QueryXml,
    /// `<Response><Errors><Error>..</Error></Errors><RequestID>..` (EC2).
    Ec2Xml,
    /// `<Error><Code>..</Code>..</Error>` (S3).
    RestXml,
    /// `{"__type": .., "message": ..}` with `x-amzn-ErrorType` (json and rest-json).
    Json,
}

pub fn render(denial: &Denial, dialect: Dialect, request_id: &str) -> Response<Body> {
    match dialect {
        Dialect::Problem => problem(denial, request_id),
        Dialect::Aws(format) => aws(denial, format, request_id),
        Dialect::KubeStatus => kube_status(denial, request_id),
        Dialect::KubeRaw => kube_text(denial),
    }
}

/// A refusal's response in any target's dialect: status, media type, and `no-store`, since a
/// refusal describes one request at one moment and no cache between agent and broker may
/// replay it for another.
fn refusal_response(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> http::Response<Body> {
    let mut resp = http::Response::new(full_body(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// RFC 9457 problem document.
fn problem(denial: &Denial, request_id: &str) -> Response<Body> {
    let status = denial.status(Family::Http);
    let body = json!({
        "type": format!("urn:seb:denial:{}", denial.reason),
        "title": status.canonical_reason().unwrap_or("Refused"),
        "status": status.as_u16(),
        "code": denial.reason.as_str(),
        "detail": format!("seb: {}: {}", denial.reason, denial.message),
        "request_id": request_id,
    });
    let mut resp = refusal_response(status, "application/problem+json", body.to_string());
    let h = resp.headers_mut();
    if status == http::StatusCode::UNAUTHORIZED {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"seb\""),
        );
    }
    resp
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn aws(denial: &Denial, format: AwsFormat, request_id: &str) -> Response<Body> {
    let message = format!("seb: {}: {}", denial.reason, denial.message);
    let (content_type, body) = match format {
        AwsFormat::QueryXml => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        AwsFormat::Ec2Xml => (
            "text/xml",
            format!(
                "<Response><Errors><Error><Code>AccessDenied</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        AwsFormat::RestXml => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{}</Message><RequestId>{}</RequestId></Error>",
                xml_escape(&message),
                xml_escape(request_id)
            ),
        ),
        AwsFormat::Json => (
            "application/x-amz-json-1.1",
            serde_json::json!({"__type": "AccessDeniedException", "message": message}).to_string(),
        ),
    };
    let mut resp = refusal_response(denial.status(Family::Aws), content_type, body);
    let h = resp.headers_mut();
    if format == AwsFormat::Json {
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

/// The `Status.reason` the apiserver uses for a status.
fn kube_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "Unauthorized",
        403 => "Forbidden",
        409 => "Conflict",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        502 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        // 400, and 431 or 414 for heads seb will not read: the apiserver has no reason of
        // its own for those.
        _ => "BadRequest",
    }
}

fn kube_status(denial: &Denial, request_id: &str) -> Response<Body> {
    let status = denial.status(Family::Kubernetes);
    let reason = kube_reason(status);
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
    refusal_response(status, "application/json", body.to_string())
}

/// A refusal of a request client-go reads with `Result.Raw()` (see
/// `targets::kubernetes::read_raw_by_client_go`): the same status, the message as plain text. client-go
/// (`newUnstructuredResponseError`, `NewGenericServerResponse`) puts a text answer's body into
/// its error for 403, 406, 415 and the 5xx codes but 503 and 504; for the others it prints a
/// fixed sentence, so the message also goes into a `Warning: 299` header, which client-go
/// hands to kubectl's warning printer for every answer.
fn kube_text(denial: &Denial) -> Response<Body> {
    let status = denial.status(Family::Kubernetes);
    let message = format!("seb: {}: {}", denial.reason, denial.message);
    let shown = matches!(status.as_u16(), 403 | 406 | 415)
        || (status.is_server_error() && !matches!(status.as_u16(), 503 | 504));
    let mut resp = refusal_response(status, "text/plain; charset=utf-8", format!("{message}\n"));
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
mod tests;
