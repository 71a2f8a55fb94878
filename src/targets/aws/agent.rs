//! What the agent presents on an AWS call: the certificate in `X-Amz-Security-Token` (the
//! SDK's session token) and the access key id it signed with.

use super::*;

/// The access key id the request is signed with: from the `Authorization` header's
/// credential scope, or a presigned URL's `X-Amz-Credential`.
pub(super) fn signing_key_id(parts: &http::request::Parts) -> Result<Option<String>, Denial> {
    if let Some(auth) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Ok(auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .map(str::to_string));
    }
    for (k, v) in protocol::query_pairs(parts.uri.query().unwrap_or(""))? {
        if k.eq_ignore_ascii_case("x-amz-credential") {
            return Ok(v.split('/').next().map(str::to_string));
        }
    }
    Ok(None)
}

/// `X-Amz-Security-Token` as a header or a presigned-URL query parameter; exactly one.
pub fn certificate(parts: &http::request::Parts) -> Result<Option<String>, Denial> {
    let mut found: Vec<String> = Vec::new();
    for v in parts.headers.get_all("x-amz-security-token") {
        found.push(
            v.to_str()
                .map_err(|_| {
                    Denial::new(Reason::CertMalformed, "X-Amz-Security-Token is not ASCII")
                })?
                .trim()
                .to_string(),
        );
    }
    for (k, v) in protocol::query_pairs(parts.uri.query().unwrap_or(""))? {
        if k.eq_ignore_ascii_case("x-amz-security-token") {
            found.push(v.trim().to_string());
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Denial::new(
            Reason::CertMalformed,
            "more than one X-Amz-Security-Token was presented; send exactly one certificate",
        )),
    }
}

pub const CERT_HINT: &str = "this AWS call is not on the list of reads that pass without a certificate (it changes state or returns a secret) and carries none; set AWS_SESSION_TOKEN to the certificate";
