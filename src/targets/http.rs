//! The generic HTTP target: any HTTP API whose credential the broker holds. The agent never
//! sees that credential; it presents a certificate for one method on one exact path, and the
//! broker adds the credential to the request it forwards.

pub mod config;

use super::{Identity, Parsed, Target};
use crate::cert::Certificate;
use crate::cert::TargetKind;
use crate::contract::{self, BodyView};
use crate::denial::{Denial, Reason};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use config::{CredentialConfig, HttpTargetConfig, ReadRule};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Request, Uri};
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
    pub(crate) headers: super::headers::HeaderRules,
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

fn load_credential(
    c: &Option<CredentialConfig>,
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
        let credential = load_credential(&cfg.credential, &format!("{at}.credential"))?;
        let read_credential =
            load_credential(&cfg.read_credential, &format!("{at}.read_credential"))?;
        // The broker sets the upstream's credential header: the agent's is stripped, and a
        // folded spelling of it (`X_Api_Key`) refused.
        let mut headers = super::headers::HeaderRules::new();
        for (n, _) in credential.iter().chain(read_credential.iter()) {
            headers = headers.name(n.as_str(), super::headers::Exact::Strip);
        }
        Ok(HttpTarget {
            name: name.to_string(),
            base: cfg.upstream.parse()?,
            credential,
            read_credential,
            headers,
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
}

impl Target for HttpTarget {
    type Request = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> TargetKind {
        TargetKind::Http
    }

    fn client(&self) -> &UpstreamClient {
        &self.client
    }

    fn header_rules(&self) -> &super::headers::HeaderRules {
        &self.headers
    }

    /// Http certificates name their target in `seb.request.upstream` (v1).
    fn require_audience(&self) -> bool {
        false
    }

    fn certificate(&self, parts: &http::request::Parts) -> Result<Option<String>, Denial> {
        Ok(certificate(&parts.headers)?.map(str::to_string))
    }

    fn certificate_hint(&self) -> &'static str {
        "this request changes state and carries no certificate; present one as \"Authorization: Bearer <certificate>\""
    }

    fn parse(&self, parts: &http::request::Parts, _body: &Bytes) -> Result<Parsed<()>, Denial> {
        let path = parts.uri.path();
        super::path::check_canonical(path).map_err(|m| Denial::new(Reason::RequestMalformed, m))?;
        // Method and path overrides were refused with the other headers (targets::headers).
        let is_read = self.reads.iter().any(|r| {
            r.methods.iter().any(|m| m == parts.method.as_str())
                && prefix_matches(&r.path_prefix, path)
        });
        Ok(Parsed {
            request: (),
            is_read,
            describe: json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "operation": format!("{} {}", parts.method, path),
                "resource": path,
            }),
        })
    }

    fn check_contract(
        &self,
        cert: &Certificate,
        parts: &http::request::Parts,
        _parsed: &Parsed<()>,
        body: &BodyView,
    ) -> Result<(), Denial> {
        // The target kind was checked by targets::check_certificate_target.
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

    async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        let header = if cert.is_some() {
            &self.credential
        } else {
            &self.read_credential
        };
        Ok(Identity {
            audit: json!({
                "kind": if cert.is_some() { "broker-credential" } else { "read-credential" },
                "upstream": self.name,
                "header": header.as_ref().map(|(n, _)| n.as_str()),
            }),
            headers: header.iter().cloned().collect(),
            aws: None,
        })
    }

    async fn shadow_identity(&self) -> Result<Identity, Denial> {
        Ok(Identity {
            audit: json!({
                "kind": "broker-credential",
                "upstream": self.name,
                "header": self.credential.as_ref().map(|(n, _)| n.as_str()),
                "shadow": true,
            }),
            headers: self.credential.iter().cloned().collect(),
            aws: None,
        })
    }

    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        _parsed: &Parsed<()>,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<Request<Full<Bytes>>, Denial> {
        // The agent's own credential headers were stripped by the header rules.
        let mut req = super::forwarded_request(&self.base, parts, &self.headers)?;
        let headers = req.headers_mut().expect("builder is valid");
        for (name, value) in &identity.headers {
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
    fn read_prefixes_respect_segments() {
        assert!(prefix_matches("/v1/items", "/v1/items"));
        assert!(prefix_matches("/v1/items", "/v1/items/3"));
        assert!(!prefix_matches("/v1/items", "/v1/itemsecret"));
        assert!(prefix_matches("/v1/", "/v1/anything"));
    }
}
