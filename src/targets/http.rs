//! The generic HTTP target: any HTTP API whose credential the broker holds. The agent never
//! sees that credential; it presents a certificate for one method on one exact path, and the
//! broker adds the credential to the request it forwards.

use super::{Identity, Parsed};
use crate::cert::Certificate;
use crate::config::{HttpTargetConfig, ReadRule};
use crate::contract::{self, BodyView};
use crate::denial::{Denial, Reason};
use crate::proxy::forward::{Body, UpstreamClient};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

pub const CERT_HEADER: &str = "x-seb-certificate";

pub struct HttpTarget {
    pub name: String,
    base: Uri,
    credential: Option<(HeaderName, HeaderValue)>,
    read_credential: Option<(HeaderName, HeaderValue)>,
    reads: Vec<ReadRule>,
    pub client: UpstreamClient,
}

/// `seb.request` for http targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpContract {
    upstream: String,
    method: String,
    path: String,
}

fn credential(
    c: &Option<crate::config::CredentialConfig>,
    what: &str,
) -> anyhow::Result<Option<(HeaderName, HeaderValue)>> {
    let Some(c) = c else { return Ok(None) };
    let name = HeaderName::from_bytes(c.header.as_bytes())?;
    let secret = c.value.load().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    let mut value = HeaderValue::from_str(&secret)
        .map_err(|_| anyhow::anyhow!("{what}: not a valid header value"))?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

impl HttpTarget {
    pub fn new(name: &str, cfg: &HttpTargetConfig) -> anyhow::Result<HttpTarget> {
        let at = format!("targets.{name}.http");
        Ok(HttpTarget {
            name: name.to_string(),
            base: cfg.upstream.parse()?,
            credential: credential(&cfg.credential, &format!("{at}.credential"))?,
            read_credential: credential(&cfg.read_credential, &format!("{at}.read_credential"))?,
            reads: cfg
                .reads
                .iter()
                .map(|r| ReadRule {
                    methods: r.methods.clone(),
                    path_prefix: r.path_prefix.clone(),
                })
                .collect(),
            client: UpstreamClient::new(cfg.upstream_ca.as_deref())?,
        })
    }

    pub fn parse(&self, parts: &http::request::Parts, _body: &Bytes) -> Result<Parsed, Denial> {
        let path = parts.uri.path();
        super::path::check_canonical(path).map_err(|m| Denial::new(Reason::RequestMalformed, m))?;
        // Frameworks that honour these run the overriding method, not the one certified or
        // read-listed: a GET read rule must not become a DELETE.
        for h in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            if parts.headers.contains_key(h) {
                return Err(Denial::new(
                    Reason::RequestMalformed,
                    format!("{h} is refused: the request method must be the one certified"),
                ));
            }
        }
        let is_read = self.reads.iter().any(|r| {
            r.methods.iter().any(|m| m == parts.method.as_str())
                && prefix_matches(&r.path_prefix, path)
        });
        Ok(Parsed {
            call: None,
            is_read,
            describe: json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "operation": format!("{} {}", parts.method, path),
                "resource": path,
            }),
        })
    }

    pub fn check_contract(
        &self,
        cert: &Certificate,
        parts: &http::request::Parts,
        body: &BodyView,
    ) -> Result<(), Denial> {
        // The target kind was checked by Target::check_contract.
        let seb = &cert.claims.seb;
        let c: HttpContract = Deserialize::deserialize(&seb.request).map_err(|e| {
            Denial::new(
                Reason::CertMalformed,
                format!("seb.request for an http target: {e}"),
            )
        })?;
        if seb.precondition.is_some() {
            return Err(Denial::new(
                Reason::CertMalformed,
                "http targets have no live state to check a seb.precondition against",
            ));
        }
        let (cert_path, cert_query) = match c.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (c.path.as_str(), None),
        };
        super::path::check_canonical(cert_path)
            .map_err(|m| Denial::new(Reason::CertMalformed, format!("seb.request.path: {m}")))?;
        if c.upstream != self.name {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "certificate is for upstream {:?}, this request went to {:?}",
                    c.upstream, self.name
                ),
            ));
        }
        if c.method != parts.method.as_str() {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "certificate allows {} and the request is {}",
                    c.method, parts.method
                ),
            ));
        }
        // Exact comparison of the raw spelling; both sides are canonical, so equal meaning
        // implies equal bytes.
        if cert_path != parts.uri.path() || cert_query != parts.uri.query() {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "certificate allows path {:?} and the request is for {:?}",
                    c.path,
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                ),
            ));
        }
        contract::check_body(seb.body.as_ref(), body)
    }

    pub fn identity(&self, cert: Option<&Certificate>) -> Identity {
        let header = if cert.is_some() {
            &self.credential
        } else {
            &self.read_credential
        };
        Identity {
            audit: json!({
                "kind": if cert.is_some() { "broker-credential" } else { "read-credential" },
                "upstream": self.name,
                "header": header.as_ref().map(|(n, _)| n.as_str()),
            }),
            header: header.clone(),
            aws: None,
        }
    }

    pub fn upstream_request(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<Request<Full<Bytes>>, Denial> {
        let mut req = super::forwarded_request(&self.base, parts)?;
        let headers = req.headers_mut().expect("builder is valid");
        for (name, _) in self.credential.iter().chain(self.read_credential.iter()) {
            headers.remove(name);
        }
        if let Some((name, value)) = &identity.header {
            headers.insert(name.clone(), value.clone());
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
        req.body(Full::new(body)).map_err(|e| {
            Denial::new(
                Reason::RequestMalformed,
                format!("cannot build the upstream request: {e}"),
            )
        })
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    // "/v1/items" covers "/v1/items" and "/v1/items/3", not "/v1/itemsecret".
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Copies headers minus those that describe one connection rather than the message (RFC 9110
/// 7.6.1: the fixed hop-by-hop set and any named in `Connection`), and minus `also_drop`.
fn copy_headers_except(from: &HeaderMap, to: &mut HeaderMap, also_drop: impl Fn(&str) -> bool) {
    let listed: Vec<String> = from
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        let hop = matches!(
            n,
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
        );
        if !hop && !listed.iter().any(|l| l == n) && !also_drop(n) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Request headers for the upstream: end-to-end headers only, and never the agent's own
/// credentials (its certificate, tokens, cookies).
pub fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    copy_headers_except(from, to, |n| {
        matches!(
            n,
            "host"
                | "content-length"
                | "authorization"
                | "proxy-authorization"
                | "cookie"
                | "x-request-id"
        ) || n.starts_with("x-seb-")
    });
}

/// Response headers minus those that describe the upstream connection.
pub fn copy_hop_safe_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    copy_headers_except(from, to, |_| false);
}

/// `Authorization: Bearer <certificate>` or `X-Seb-Certificate: <certificate>`; two of them is
/// ambiguous and refused.
pub fn certificate(headers: &HeaderMap) -> Result<Option<&str>, Denial> {
    let mut found: Vec<&str> = Vec::new();
    for v in headers.get_all(AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| Denial::new(Reason::CertMalformed, "Authorization header is not ASCII"))?;
        let Some((scheme, token)) = v.split_once(' ') else {
            return Err(Denial::new(
                Reason::CertMalformed,
                "Authorization header is not \"Bearer <certificate>\"",
            ));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Denial::new(
                Reason::CertMalformed,
                format!("Authorization scheme {scheme:?} is not Bearer; present the certificate as a bearer token"),
            ));
        }
        found.push(token.trim());
    }
    for v in headers.get_all(CERT_HEADER) {
        found.push(
            v.to_str()
                .map_err(|_| Denial::new(Reason::CertMalformed, "X-Seb-Certificate is not ASCII"))?
                .trim(),
        );
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(Denial::new(
            Reason::CertMalformed,
            "more than one certificate was presented; send exactly one",
        )),
    }
}

/// RFC 9457 problem document.
pub fn problem(denial: &Denial, request_id: &str) -> Response<Body> {
    let status = denial.reason.status();
    let body = json!({
        "type": format!("urn:seb:denial:{}", denial.reason),
        "title": status.canonical_reason().unwrap_or("Refused"),
        "status": status.as_u16(),
        "code": denial.reason.as_str(),
        "detail": format!("seb: {}: {}", denial.reason, denial.message),
        "request_id": request_id,
    });
    let mut resp = super::refusal_response(status, "application/problem+json", body.to_string());
    let h = resp.headers_mut();
    if status == http::StatusCode::UNAUTHORIZED {
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"seb\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn finds_exactly_one_certificate() {
        assert_eq!(certificate(&headers(&[])).unwrap(), None);
        assert_eq!(
            certificate(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            certificate(&headers(&[("x-seb-certificate", "abc")])).unwrap(),
            Some("abc")
        );
        assert!(certificate(&headers(&[
            ("authorization", "Bearer a"),
            ("x-seb-certificate", "b")
        ]))
        .is_err());
        assert!(certificate(&headers(&[
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b")
        ]))
        .is_err());
        assert!(certificate(&headers(&[("authorization", "Basic dXNlcg==")])).is_err());
    }

    #[test]
    fn agent_credentials_and_hop_headers_are_not_copied() {
        let from = headers(&[
            ("authorization", "Bearer cert"),
            ("x-seb-certificate", "cert"),
            ("cookie", "session=1"),
            ("proxy-authorization", "x"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
        ]);
        let mut to = HeaderMap::new();
        copy_end_to_end_headers(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-type", "x-custom"]);
    }

    #[test]
    fn read_prefixes_respect_segments() {
        assert!(prefix_matches("/v1/items", "/v1/items"));
        assert!(prefix_matches("/v1/items", "/v1/items/3"));
        assert!(!prefix_matches("/v1/items", "/v1/itemsecret"));
        assert!(prefix_matches("/v1/", "/v1/anything"));
    }

    #[test]
    fn problem_documents_carry_code_and_detail() {
        let r = problem(&Denial::new(Reason::CertMissing, "no certificate"), "rid");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert!(r.headers().contains_key("www-authenticate"));
    }
}
