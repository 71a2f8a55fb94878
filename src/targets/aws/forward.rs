//! The request the broker sends to AWS: where it goes, the agent's headers it keeps, its query
//! string without the agent's presigning, and the broker's own SigV4 signature.

use super::*;

impl AwsTarget {
    /// Where a call for `service` in `region` goes.
    pub(super) fn upstream_base(
        &self,
        service: &model::Service,
        region: &str,
    ) -> Result<Uri, Denial> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let host = match &service.global_endpoint {
            Some(g) => g.clone(),
            None => format!("{}.{region}.amazonaws.com", service.endpoint_prefix),
        };
        format!("https://{host}")
            .parse()
            .map_err(|e| Denial::new(Reason::RequestMalformed, format!("bad endpoint: {e}")))
    }

    /// Method, URL and headers of the upstream request, signed over `payload`.
    pub(super) fn upstream_head(
        &self,
        parts: &http::request::Parts,
        call: &protocol::Call,
        identity: &Identity,
        request_id: &str,
        payload: Payload<'_>,
        content_length: Option<u64>,
    ) -> Result<Request<()>, Denial> {
        let creds = identity.aws.as_ref().ok_or_else(|| {
            Denial::new(
                Reason::IdentityUnavailable,
                "no AWS credentials were minted",
            )
        })?;
        let base = self.upstream_base(call.service, &call.scope.region)?;
        let path_and_query = match forwarded_query(parts.uri.query().unwrap_or(""))? {
            q if q.is_empty() => parts.uri.path().to_string(),
            q => format!("{}?{q}", parts.uri.path()),
        };
        let uri = crate::targets::upstream_uri(&base, &path_and_query)?;
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(())
            .map_err(|e| {
                Denial::new(
                    Reason::RequestMalformed,
                    format!("cannot build the upstream request: {e}"),
                )
            })?;
        copy_headers(
            &parts.headers,
            &self.headers,
            req.headers_mut(),
            call.aws_chunked,
        )?;
        if let Some(n) = content_length {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        sigv4::sign_request(
            &mut req,
            creds,
            &call.service.signing_name,
            &call.scope.region,
            payload,
            SystemTime::now(),
        )?;
        // Added after signing: AWS ignores it, and it ties upstream logs to the audit record.
        if let Ok(v) = http::HeaderValue::from_str(request_id) {
            req.headers_mut().insert("x-request-id", v);
        }
        Ok(req)
    }
}

/// The agent's query string minus presigned-URL authentication, in its original spelling.
pub(super) fn forwarded_query(q: &str) -> Result<String, Denial> {
    let mut kept = Vec::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let key = protocol::percent_decode(piece.split('=').next().unwrap_or(""))?;
        if !key.to_ascii_lowercase().starts_with("x-amz-")
            || !matches!(
                key.to_ascii_lowercase().as_str(),
                "x-amz-algorithm"
                    | "x-amz-credential"
                    | "x-amz-date"
                    | "x-amz-expires"
                    | "x-amz-signedheaders"
                    | "x-amz-signature"
                    | "x-amz-security-token"
            )
        {
            kept.push(piece);
        }
    }
    Ok(kept.join("&"))
}

/// Which agent headers travel: the shared rules, plus the agent's signature and certificate
/// (the certificate rides in `X-Amz-Security-Token` and never goes upstream), which the broker
/// replaces when it re-signs. AWS reads any `x-amz-` header as a parameter, so no folded
/// spelling of one may travel; S3 metadata names (`x-amz-meta-`) are the user's own.
pub(super) fn header_rules() -> crate::targets::headers::HeaderRules {
    use crate::targets::headers::{Exact, HeaderRules};
    let mut r = HeaderRules::new();
    for n in [
        "x-amz-security-token",
        "x-amz-date",
        "x-amz-content-sha256",
        "expect",
        "user-agent",
    ] {
        r = r.name(n, Exact::Strip);
    }
    r.user_prefix("x-amz-meta-").prefix("x-amz-", Exact::Keep)
}

/// The agent's headers as the header rules let them travel, and for aws-chunked bodies minus
/// the framing headers, since the broker forwards the decoded payload.
pub(super) fn copy_headers(
    from: &HeaderMap,
    rules: &crate::targets::headers::HeaderRules,
    to: &mut HeaderMap,
    aws_chunked: bool,
) -> Result<(), Denial> {
    let mut copied = HeaderMap::new();
    crate::targets::headers::copy(from, rules, &mut copied)?;
    for (name, value) in &copied {
        let n = name.as_str();
        let drop = aws_chunked
            && matches!(
                n,
                "x-amz-decoded-content-length" | "x-amz-trailer" | "content-encoding"
            );
        if !drop {
            to.append(name.clone(), value.clone());
        }
    }
    if aws_chunked {
        // Keep any real content coding listed beside aws-chunked (S3 stores it as metadata).
        let rest: Vec<String> = from
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&rest.join(", ")) {
            if !rest.is_empty() {
                to.insert(http::header::CONTENT_ENCODING, v);
            }
        }
    }
    Ok(())
}
