//! The Kubernetes target: kubectl and client libraries talk to the broker as if it were the
//! apiserver.
//!
//! - Agents authenticate with a bearer token: the configured agent token for reads, a
//!   certificate (a JWS, told apart by its three dot-separated parts) for mutations. A client
//!   certificate (mTLS) also authenticates reads.
//! - Requests are classified by the apiserver's request-info rules ([`requestinfo`]).
//! - Mutation bodies must be JSON (`application/json`, merge, JSON and strategic merge patch,
//!   and apply patches whose body is JSON). Protobuf and YAML are refused with 415.
//! - With `seb.request.effect: true` the certificate's constraints are checked against what
//!   the change does to the live object ([`effect`]), and the request is forwarded with a
//!   precondition on the resourceVersion that effect was computed on.
//! - Requests run as the configured user, impersonated with the broker's own token
//!   ([`identity`]); refusals are `Status` objects ([`status`]).

pub mod config;
pub mod effect;
pub mod identity;
mod live;
mod media;
pub mod patch;
pub mod requestinfo;
mod stream;

use super::{Identity, Parsed, Target};
use crate::cert::claims::BodyRule;
use crate::cert::Certificate;
use crate::contract::{self, BodyView};
use crate::denial::{Denial, Reason};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use config::KubeTargetConfig;
use effect::Change;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full};
use identity::{Credential, Impersonation, TokenMinter};
use live::*;
use media::*;
use requestinfo::RequestInfo;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use stream::*;

pub struct KubeTarget {
    pub name: String,
    /// Certificates must name this target in `aud` (see Target::check_certificate_target).
    pub require_audience: bool,
    base: Uri,
    credential: Credential,
    execution: Impersonation,
    read: Impersonation,
    token_request: Option<TokenMinter>,
    pub(crate) headers: super::headers::HeaderRules,
    pub client: UpstreamClient,
    outcomes: Outcomes,
}

/// The last upstream status per certificate id, for the few most recent certificates: enough
/// to explain a retry seconds later, bounded so no agent can grow it.
#[derive(Default)]
struct Outcomes {
    inner: std::sync::Mutex<(
        std::collections::HashMap<String, u16>,
        std::collections::VecDeque<String>,
    )>,
}

impl Outcomes {
    const MAX: usize = 4096;

    fn record(&self, jti: &str, status: u16) {
        let Ok(mut g) = self.inner.lock() else { return };
        let (map, order) = &mut *g;
        if map.insert(jti.to_string(), status).is_none() {
            order.push_back(jti.to_string());
            if order.len() > Self::MAX {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    fn last(&self, jti: &str) -> Option<u16> {
        self.inner.lock().ok()?.0.get(jti).copied()
    }
}

/// `seb.request` for kubernetes targets (certificate v1), plus `effect`: whether `seb.body`
/// constraints apply to the change's effect on the live object instead of the request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubeContract {
    verb: String,
    group: String,
    resource: String,
    #[serde(default)]
    subresource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    effect: bool,
    /// exec and attach: the container (absent: the request must not name one either).
    #[serde(default)]
    container: Option<String>,
    /// exec: the command, argument by argument.
    #[serde(default)]
    command: Option<Vec<String>>,
    /// exec and attach: whether the session may read the agent's stdin (and use a tty).
    #[serde(default)]
    stdin: bool,
    /// portforward ports: refused (see check_stream), read so that a certificate naming
    /// them is told why rather than "unknown field".
    #[serde(default)]
    ports: Option<Vec<String>>,
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// Which agent headers travel: the shared rules, plus the identity headers. The broker
/// chooses who a request runs as, so an agent asking to be someone else is refused (reads
/// too); front-proxy identity headers (X-Remote-User, -Group, -Extra-*) are dropped in case
/// the apiserver trusts them on some path. Exec, attach and port-forward upgrade.
fn header_rules() -> super::headers::HeaderRules {
    use super::headers::{Exact, HeaderRules};
    HeaderRules::new()
        .prefix(
            "impersonate-",
            Exact::Refuse(
                Reason::ContractMismatch,
                "agents may not impersonate; the broker chooses the identity a request runs under",
            ),
        )
        .prefix("x-remote-", Exact::Strip)
        .allow_upgrade()
}

impl KubeTarget {
    pub fn new(name: &str, cfg: &KubeTargetConfig) -> anyhow::Result<KubeTarget> {
        let at = format!("targets.{name}.kubernetes");
        Ok(KubeTarget {
            name: name.to_string(),
            require_audience: cfg.require_audience,
            base: cfg.apiserver.parse()?,
            credential: Credential::from_config(&cfg.credential)
                .map_err(|e| anyhow::anyhow!("{at}.credential: {e}"))?,
            execution: (&cfg.execution).into(),
            read: (&cfg.read).into(),
            token_request: cfg.token_request.as_ref().map(TokenMinter::new),
            headers: header_rules(),
            client: UpstreamClient::new(cfg.ca.as_deref())?,
            outcomes: Outcomes::default(),
        })
    }

    fn classify(parts: &http::request::Parts) -> Result<RequestInfo, Denial> {
        requestinfo::classify(parts.method.as_str(), parts.uri.path(), parts.uri.query())
            .map_err(|m| Denial::new(Reason::RequestMalformed, m))
    }

    async fn get_live(&self, path: &str) -> Result<Option<Value>, Denial> {
        let unavailable = |m: String| {
            Denial::new(
                Reason::UpstreamError,
                format!("reading the live object {path}: {m}"),
            )
        };
        let id = identity::identity(&self.credential, &self.execution, None)?;
        let mut req = Request::get(self.upstream_uri(path)?).header("accept", "application/json");
        let h = req.headers_mut().expect("builder is valid");
        for (n, v) in &id.headers {
            h.append(n.clone(), v.clone());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| unavailable(e.to_string()))?;
        let (status, bytes) = self.call(req, 8 << 20).await.map_err(unavailable)?;
        match status.as_u16() {
            200 => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| unavailable(format!("not JSON: {e}"))),
            404 => Ok(None),
            s => Err(unavailable(format!("the apiserver answered {s}"))),
        }
    }

    /// A call of the broker's own to the apiserver (a live object, a TokenRequest): bounded in
    /// time and in how much of the answer it reads. Err says why, for the caller's denial.
    async fn call(
        &self,
        req: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), self.client.send(req))
            .await
            .map_err(|_| format!("the apiserver {} did not answer within 10s", self.base))?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, Denial> {
        super::upstream_uri(&self.base, path_and_query)
    }

    /// POSTs a TokenRequest with the broker's own credential (no impersonation: the broker
    /// needs `create` on exactly this `serviceaccounts/token`).
    async fn mint(&self, minter: &TokenMinter) -> Result<HeaderValue, Denial> {
        let path = minter.path();
        let unavailable = |m: String| {
            Denial::new(
                Reason::IdentityUnavailable,
                format!("TokenRequest {path}: {m}"),
            )
        };
        let req = Request::post(self.upstream_uri(&path)?)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header(http::header::AUTHORIZATION, self.credential.bearer()?)
            .body(Full::new(Bytes::from(minter.request_body().to_string())))
            .map_err(|e| unavailable(e.to_string()))?;
        let (status, body) = self.call(req, 64 << 10).await.map_err(unavailable)?;
        if status != http::StatusCode::CREATED && status != http::StatusCode::OK {
            return Err(unavailable(format!("the apiserver answered {status}")));
        }
        identity::minted_token(&body)
    }
}

impl Target for KubeTarget {
    type Request = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> crate::cert::TargetKind {
        crate::cert::TargetKind::Kubernetes
    }

    fn client(&self) -> &UpstreamClient {
        &self.client
    }

    fn header_rules(&self) -> &super::headers::HeaderRules {
        &self.headers
    }

    fn require_audience(&self) -> bool {
        self.require_audience
    }

    fn error_dialect(&self, parts: &http::request::Parts) -> super::Dialect {
        if read_raw_by_client_go(parts) {
            super::Dialect::KubeRaw
        } else {
            super::Dialect::KubeStatus
        }
    }

    fn parse(&self, parts: &http::request::Parts, body: &Bytes) -> Result<Parsed<()>, Denial> {
        // Impersonation headers were refused by the header rules, for reads too.
        let info = Self::classify(parts)?;
        let is_read = info.is_read() && !is_upgrade(&parts.headers);
        if !is_read && !body.is_empty() {
            let m =
                media(super::single_header(&parts.headers, "content-type")?)?.ok_or_else(|| {
                    Denial::unsupported_media(
                        "a body without a Content-Type; send application/json",
                    )
                })?;
            if let Some(enc) = super::single_header(&parts.headers, "content-encoding")? {
                if !enc.trim().eq_ignore_ascii_case("identity") {
                    return Err(Denial::new(
                        Reason::RequestMalformed,
                        format!("Content-Encoding {enc:?} is not decoded by the broker"),
                    ));
                }
            }
            body_value(m, body)?;
            let patch_verb = info.verb == "patch";
            let patch_media = matches!(
                m,
                Media::MergePatch
                    | Media::JsonPatch
                    | Media::StrategicMergePatch
                    | Media::ApplyPatch
            );
            if patch_verb != patch_media {
                return Err(Denial::unsupported_media(format!(
                    "a {} request cannot carry this Content-Type",
                    parts.method
                )));
            }
        }
        let mut describe = info.describe();
        if let Some(o) = describe.as_object_mut() {
            o.insert("method".into(), parts.method.as_str().into());
            o.insert(
                "path".into(),
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .into(),
            );
            o.insert("operation".into(), info.verb.clone().into());
            o.insert(
                "resource".into(),
                match (&info.subresource, info.is_resource) {
                    (_, false) => info.path.clone(),
                    (Some(s), true) => format!("{}/{}/{s}", info.group, info.resource),
                    (None, true) => format!("{}/{}", info.group, info.resource),
                }
                .into(),
            );
            o.insert("kube".into(), info.describe());
        }
        Ok(Parsed {
            is_read,
            describe,
            request: (),
        })
    }

    fn certificate(&self, parts: &http::request::Parts) -> Result<Option<String>, Denial> {
        Ok(certificate(&parts.headers)?.map(str::to_string))
    }

    fn certificate_hint(&self) -> &'static str {
        "this request changes the cluster and carries no certificate; present one as the bearer token (kubectl --token \"$CERT\")"
    }

    /// The bearer token (kubectl has no other place for it) when it is not a certificate.
    fn agent_token<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        agent_token(headers)
    }

    /// kubectl has one bearer token per invocation and sends it on the discovery and GET
    /// requests around a mutation too.
    fn certificate_authenticates_reads(&self) -> bool {
        true
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
        let c = contract(cert)?;
        if let Some(p) = &seb.precondition {
            serde_json::from_value::<Precondition>(p.clone()).map_err(|e| {
                Denial::new(
                    Reason::CertMalformed,
                    format!("seb.precondition for kubernetes: {e}"),
                )
            })?;
        }
        let info = Self::classify(parts)?;
        if !info.is_resource {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "{} {} is not a resource request, and certificates name resources",
                    parts.method, info.path
                ),
            ));
        }
        let stream = is_stream_subresource(info.subresource.as_deref());
        if is_upgrade(&parts.headers) && !stream {
            return Err(Denial::new(
                Reason::ContractMismatch,
                "only exec, attach and portforward may upgrade the connection",
            ));
        }
        // A stream opened with GET (websocket) is authorized by the apiserver as `create`,
        // like the POST (SPDY) form; one certificate covers both.
        let verb = if stream && info.verb == "get" {
            "create"
        } else {
            info.verb.as_str()
        };
        let want = json!({"verb": c.verb, "group": c.group, "resource": c.resource, "subresource": c.subresource, "namespace": c.namespace, "name": c.name});
        let got = json!({"verb": verb, "group": info.group, "resource": info.resource, "subresource": info.subresource, "namespace": info.namespace, "name": info.name});
        if want != got {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "certificate allows {} and the request is {}",
                    show(&want),
                    show(&got)
                ),
            ));
        }
        check_stream(&c, &info, parts.uri.query())?;
        if c.effect {
            // Checked in check_effect against the live object.
            return match &seb.body {
                Some(BodyRule::Constraints(_)) => Ok(()),
                _ => Err(Denial::new(
                    Reason::CertMalformed,
                    "seb.request.effect needs seb.body constraints to check the effect against",
                )),
            };
        }
        match (&seb.body, media(body.content_type)?) {
            // Apply patches are YAML by name; parse() made sure this one is JSON.
            (Some(BodyRule::Constraints(_)), Some(Media::ApplyPatch)) => contract::check_body(
                seb.body.as_ref(),
                &BodyView {
                    content_type: Some("application/json"),
                    ..*body
                },
            ),
            _ => contract::check_body(seb.body.as_ref(), body),
        }
    }

    async fn check_live_state(
        &self,
        cert: &Certificate,
        parts: &http::request::Parts,
        _parsed: &Parsed<()>,
        body: Bytes,
    ) -> Result<crate::targets::LiveState, Denial> {
        let body = live::check(self, cert, parts, body).await?;
        Ok(crate::targets::LiveState::unrecorded(body))
    }

    async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        match (cert, &self.token_request) {
            (Some(c), Some(minter)) => {
                let token = match minter.cache.get(&c.claims.jti) {
                    Some(t) => t,
                    None => {
                        let t = self.mint(minter).await?;
                        minter.cache.insert(c.claims.jti.clone(), t.clone());
                        t
                    }
                };
                Ok(minter.identity(c, token))
            }
            (Some(_), None) => identity::identity(&self.credential, &self.execution, cert),
            (None, _) => identity::identity(&self.credential, &self.read, None),
        }
    }

    async fn shadow_identity(&self) -> Result<Identity, Denial> {
        // Config refuses shadow mode with token_request: impersonation is the only way here.
        let mut id = identity::identity(&self.credential, &self.execution, None)?;
        id.audit["shadow"] = true.into();
        Ok(id)
    }

    /// A `replayed` refusal says so when the certificate's last use ended in 409 Conflict:
    /// kubectl retries a conflict with the same certificate, and "replayed" alone hides why.
    fn explain(&self, cert: &Certificate, mut denial: Denial) -> Denial {
        if denial.reason == Reason::Replayed && self.outcomes.last(&cert.claims.jti) == Some(409) {
            denial.message = format!(
                "{}; its earlier use reached the apiserver and ended in 409 Conflict (the object changed after the broker checked it), which spent the certificate: get a new certificate for the object as it is now",
                denial.message
            );
        }
        denial
    }

    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        _parsed: &Parsed<()>,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<Request<Full<Bytes>>, Denial> {
        // Impersonation is refused and front-proxy identity headers dropped by the header
        // rules (see header_rules).
        let mut req = super::forwarded_request(&self.base, parts, &self.headers)?;
        let headers = req.headers_mut().expect("builder is valid");
        // The execution identity's own headers: its bearer token, and impersonation where
        // it is the broker's credential acting as the execution user.
        for (name, value) in &identity.headers {
            headers.append(name.clone(), value.clone());
        }
        // An admitted exec, attach or port-forward asks the apiserver for the same upgrade
        // (the pipeline joins the two upgraded connections).
        if let Some(up) = parts.headers.get(http::header::UPGRADE) {
            headers.insert(http::header::UPGRADE, up.clone());
            headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            );
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

    /// Remembers how an admitted request's upstream call ended, so that a later `replayed`
    /// refusal of the same certificate can say the earlier use hit a conflict.
    fn observe_outcome(&self, cert: &Certificate, status: http::StatusCode) {
        self.outcomes.record(&cert.claims.jti, status.as_u16());
    }
}

/// Whether client-go reads this request's answer with `Result.Raw()`: discovery (`/api`,
/// `/apis`, a group or group version), `/version` and `/openapi`, the non-resource requests.
/// For those it builds its error from the answer's text and never decodes a `Status`, so a
/// refusal in JSON reads "unknown" in kubectl.
pub fn read_raw_by_client_go(parts: &http::request::Parts) -> bool {
    requestinfo::classify(parts.method.as_str(), parts.uri.path(), parts.uri.query())
        .is_ok_and(|info| !info.is_resource)
}

fn contract(cert: &Certificate) -> Result<KubeContract, Denial> {
    Deserialize::deserialize(&cert.claims.seb.request).map_err(|e| {
        Denial::new(
            Reason::CertMalformed,
            format!("seb.request for a kubernetes target: {e}"),
        )
    })
}

fn show(v: &Value) -> String {
    let Some(o) = v.as_object() else {
        return v.to_string();
    };
    o.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A name from a request body, before it becomes part of a path: a DNS subdomain (RFC 1123),
/// which every kind the broker computes effects for requires of its names.
fn check_object_name(name: &str) -> Result<(), Denial> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(Denial::new(
            Reason::RequestMalformed,
            format!("metadata.name {name:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"),
        ))
    }
}

/// The bearer token if it is a certificate (a compact JWS); another bearer token is the
/// agent's read token and is not a certificate.
pub fn certificate(headers: &HeaderMap) -> Result<Option<&str>, Denial> {
    Ok(super::http::certificate(headers)?.filter(|t| t.split('.').count() == 3))
}

/// The agent token for reads: the bearer token that is not a certificate.
pub fn agent_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.split('.').count() != 3).then_some(token)
}

#[cfg(test)]
mod tests;
