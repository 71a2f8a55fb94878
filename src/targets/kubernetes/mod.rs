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
pub mod patch;
pub mod requestinfo;

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
use requestinfo::RequestInfo;
use serde::Deserialize;
use serde_json::{json, Map, Value};

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

/// Subresources that open a stream into a pod: mutations whatever their method, proxied as
/// upgraded connections once admitted.
fn is_stream_subresource(sub: Option<&str>) -> bool {
    matches!(sub, Some("exec" | "attach" | "portforward"))
}

/// A query string read the way the apiserver's Go `url.ParseQuery` would, or refused where
/// the two readings could differ: Go drops a pair holding `;` or a bad escape where
/// `requestinfo::query_pairs` would keep it, and seb compares only valid UTF-8.
fn strict_query_pairs(query: &str) -> Result<Vec<(String, String)>, Denial> {
    let bad = |why: String| Denial::new(Reason::RequestMalformed, why);
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(bad(format!(
                "query parameter {pair:?} holds ';', which the apiserver drops with the whole parameter"
            )));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |x: &str| -> Result<String, Denial> {
            let b = x.as_bytes();
            for (i, c) in b.iter().enumerate() {
                if *c == b'%'
                    && !(i + 2 < b.len()
                        && b[i + 1].is_ascii_hexdigit()
                        && b[i + 2].is_ascii_hexdigit())
                {
                    return Err(bad(format!(
                        "query parameter {pair:?} has a malformed percent escape"
                    )));
                }
            }
            let plus = x.replace('+', " ");
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(format!("query parameter {pair:?} is not UTF-8")))
        };
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// A boolean query parameter of exec or attach. The apiserver reads the first value and takes
/// anything but `0` or `false` (any case) as true, empty included; seb accepts only the four
/// spellings whose meaning nobody disputes, and one value.
fn query_bool(pairs: &[(String, String)], k: &str) -> Result<bool, Denial> {
    let mut values = pairs
        .iter()
        .filter(|(n, _)| n == k)
        .map(|(_, v)| v.as_str());
    let v = values.next();
    if values.next().is_some() {
        return Err(Denial::new(
            Reason::RequestMalformed,
            format!("query parameter {k} appears more than once"),
        ));
    }
    match v {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(Denial::new(
            Reason::RequestMalformed,
            format!("query parameter {k}={other:?} is not true, false, 1 or 0 (the apiserver would read it as true)"),
        )),
    }
}

fn quoted_or_none(v: Option<&str>) -> String {
    v.map(|c| format!("{c:?}")).unwrap_or_else(|| "none".into())
}

fn command_text(c: &[String]) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// What an exec, attach or port-forward will run, from its query string, against the
/// certificate's `container`, `command` and `stdin`.
fn check_stream(c: &KubeContract, info: &RequestInfo, query: Option<&str>) -> Result<(), Denial> {
    let mismatch = |m: String| Denial::new(Reason::ContractMismatch, m);
    if c.ports.is_some() {
        // kubectl sends the ports inside the stream (a header per SPDY stream, or the
        // websocket's channels), not in the query, so seb cannot hold a session to them.
        return Err(Denial::new(
            Reason::CertMalformed,
            "seb.request.ports cannot be enforced: port-forward ports travel inside the stream, where the broker does not read them; a portforward certificate admits every port of the pod it names, so omit ports",
        ));
    }
    if !is_stream_subresource(info.subresource.as_deref()) {
        if c.container.is_some() || c.command.is_some() || c.stdin {
            return Err(mismatch(
                "container, command and stdin apply only to exec, attach and portforward".into(),
            ));
        }
        return Ok(());
    }
    let pairs = strict_query_pairs(query.unwrap_or(""))?;
    let all = |k: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    if info.subresource.as_deref() == Some("portforward") {
        return Ok(());
    }
    let containers = all("container");
    if containers.len() > 1 {
        return Err(Denial::new(
            Reason::RequestMalformed,
            "query parameter container appears more than once",
        ));
    }
    let container = containers.first().map(String::as_str);
    if container != c.container.as_deref() {
        return Err(mismatch(format!(
            "certificate allows container {} and the request names {}",
            quoted_or_none(c.container.as_deref()),
            quoted_or_none(container)
        )));
    }
    let mut interactive = false;
    for k in ["stdin", "stdout", "stderr", "tty"] {
        let on = query_bool(&pairs, k)?;
        interactive |= on && (k == "stdin" || k == "tty");
    }
    if interactive && !c.stdin {
        return Err(mismatch("the request asks for stdin or a tty, and the certificate does not allow an interactive session".into()));
    }
    if info.subresource.as_deref() == Some("exec") {
        let command = all("command");
        if c.command.as_ref() != Some(&command) {
            return Err(mismatch(format!(
                "certificate allows command {} and the request runs {}",
                c.command
                    .as_deref()
                    .map(command_text)
                    .unwrap_or_else(|| "none".into()),
                command_text(&command)
            )));
        }
    }
    Ok(())
}

/// `seb.precondition` for kubernetes targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum Precondition {
    ResourceVersion(String),
    Fields(Map<String, Value>),
}

/// The media types a mutation body may have, as the broker reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Media {
    Json,
    MergePatch,
    JsonPatch,
    StrategicMergePatch,
    ApplyPatch,
}

fn media(content_type: Option<&str>) -> Result<Option<Media>, Denial> {
    let Some(ct) = content_type else {
        return Ok(None);
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let refuse = Denial::unsupported_media;
    // Every body the broker reads is parsed as UTF-8 JSON: another charset or an unknown
    // parameter could make the apiserver read other characters than were checked.
    crate::contract::utf8_only_params(ct)
        .map_err(|why| refuse(format!("Content-Type {ct:?} {why}")))?;
    Ok(Some(match essence.as_str() {
        "application/json" => Media::Json,
        "application/merge-patch+json" => Media::MergePatch,
        "application/json-patch+json" => Media::JsonPatch,
        "application/strategic-merge-patch+json" => Media::StrategicMergePatch,
        "application/apply-patch+yaml" | "application/apply-patch+json" => Media::ApplyPatch,
        "application/vnd.kubernetes.protobuf" => {
            return Err(refuse(
                "the broker reads only JSON bodies and this one is protobuf; kubectl sends protobuf for typed create commands (kubectl create deployment/job/...), so use `kubectl create -f FILE.json` or `kubectl apply` instead, or a client configured for application/json".into(),
            ))
        }
        "application/yaml" => return Err(refuse("send the body as JSON (application/json)".into())),
        other => return Err(refuse(format!("{other:?} is not a body the broker reads; send JSON"))),
    }))
}

/// JSON as the broker decides on it: strict (no duplicate keys) and with no two keys in one
/// object that differ only in case, which a case-insensitive decoder would merge.
fn strict_json(body: &[u8], what: &str) -> Result<Value, Denial> {
    let v = crate::json::parse_strict(body).map_err(|e| {
        Denial::new(
            Reason::RequestMalformed,
            format!("{what} is not valid JSON: {e}"),
        )
    })?;
    fn walk(v: &Value, at: &str) -> Result<(), String> {
        match v {
            Value::Object(m) => {
                let mut seen = std::collections::HashSet::new();
                for (k, child) in m {
                    if !seen.insert(k.to_ascii_lowercase()) {
                        return Err(format!("{at}: keys differ only in case ({k:?})"));
                    }
                    walk(child, &format!("{at}/{k}"))?;
                }
                Ok(())
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, c)| walk(c, &format!("{at}/{i}"))),
            _ => Ok(()),
        }
    }
    walk(&v, "").map_err(|e| Denial::new(Reason::RequestMalformed, format!("{what}: {e}")))?;
    Ok(v)
}

/// The request body read by its media type, checked for what that type requires.
fn body_value(media: Media, body: &[u8]) -> Result<Value, Denial> {
    let what = match media {
        Media::ApplyPatch => "the apply patch",
        _ => "the body",
    };
    // Only a body that is not JSON even to a lenient reader is YAML; a JSON body with a
    // duplicate key is told about the key by strict_json below.
    if media == Media::ApplyPatch
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
        && std::str::from_utf8(body).is_ok()
    {
        return Err(Denial::unsupported_media("apply patches are read only when the body is JSON, and this one is YAML; use `kubectl apply --server-side` (which sends JSON) or convert the manifest to JSON"));
    }
    let v = strict_json(body, what)?;
    let ok = match media {
        Media::JsonPatch => v.is_array(),
        _ => v.is_object(),
    };
    if !ok {
        return Err(Denial::new(
            Reason::RequestMalformed,
            format!(
                "{what} does not match its Content-Type ({})",
                if media == Media::JsonPatch {
                    "a JSON patch is an array"
                } else {
                    "expected an object"
                }
            ),
        ));
    }
    Ok(v)
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
        if let Some((n, v)) = &id.header {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in identity::impersonation_headers(&id.audit)? {
            h.append(n, v);
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

    /// Reads the live object the change applies to, when the certificate asks for effect
    /// matching or a drift precondition; checks both; returns the body to forward, carrying a
    /// precondition on the resourceVersion that was checked.
    async fn check_live_state(
        &self,
        cert: &Certificate,
        parts: &http::request::Parts,
        _parsed: &Parsed<()>,
        body: Bytes,
    ) -> Result<Bytes, Denial> {
        let c = contract(cert)?;
        let precondition = match &cert.claims.seb.precondition {
            Some(p) => Some(
                serde_json::from_value::<Precondition>(p.clone()).map_err(|e| {
                    Denial::new(
                        Reason::CertMalformed,
                        format!("seb.precondition for kubernetes: {e}"),
                    )
                })?,
            ),
            None => None,
        };
        if !c.effect && precondition.is_none() {
            return Ok(body);
        }
        let info = Self::classify(parts)?;
        let m = media(super::single_header(&parts.headers, "content-type")?)?;
        let value = match m {
            Some(m) if !body.is_empty() => Some(body_value(m, &body)?),
            _ => None,
        };
        let object_path = match (info.verb.as_str(), &value) {
            ("create", Some(v)) => {
                let name = v.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| {
                    Denial::new(Reason::ContractMismatch, "a create checked against the live state needs metadata.name (generateName cannot be checked)")
                })?;
                // The name becomes part of the path of seb's own read: `x?watch=true` or
                // `../secrets/db` would read something else than the object created.
                check_object_name(name)?;
                format!("{}/{name}", parts.uri.path())
            }
            ("update" | "patch" | "delete", _) => parts.uri.path().to_string(),
            (verb, _) => {
                return Err(Denial::new(
                    Reason::ContractMismatch,
                    format!("the effect of a {verb:?} request cannot be computed"),
                ))
            }
        };
        let live = self.get_live(&object_path).await?;
        if let Some(p) = &precondition {
            check_precondition(p, live.as_ref())?;
        }
        if c.effect {
            let Some(BodyRule::Constraints(rule)) = &cert.claims.seb.body else {
                return Err(Denial::new(
                    Reason::CertMalformed,
                    "seb.request.effect needs seb.body constraints",
                ));
            };
            if !effect::supported(&info.group, &info.resource, info.subresource.as_deref()) {
                return Err(Denial::new(
                    Reason::ContractMismatch,
                    format!(
                        "the effect of a change to {} cannot be computed by this broker",
                        show(&info.describe())
                    ),
                ));
            }
            let change = match (info.verb.as_str(), m) {
                ("create", _) => Change::Create,
                ("update", _) => Change::Update,
                ("patch", Some(Media::MergePatch)) => Change::MergePatch,
                ("patch", Some(Media::JsonPatch)) => Change::JsonPatch,
                ("patch", Some(Media::StrategicMergePatch)) => Change::StrategicMergePatch,
                ("patch", Some(Media::ApplyPatch)) => Change::Apply,
                (verb, _) => {
                    return Err(Denial::new(
                        Reason::ContractMismatch,
                        format!("the effect of this {verb} request cannot be computed"),
                    ))
                }
            };
            if change == Change::Apply {
                check_first_apply(live.as_ref(), parts.uri.query())?;
            }
            let v = value.as_ref().ok_or_else(|| {
                Denial::new(
                    Reason::ContractMismatch,
                    "a change without a body has no effect to check",
                )
            })?;
            let after = effect::after(change, live.as_ref(), v).map_err(|e| {
                Denial::new(
                    Reason::ContractMismatch,
                    format!("the effect of this change cannot be computed: {e}"),
                )
            })?;
            // A create makes every field of its body, whatever exists now: the object seen
            // here may be deleted before the create lands, and nothing pins its absence.
            let before = match (change, &live) {
                (Change::Create, _) | (_, None) => json!({}),
                (_, Some(l)) => l.clone(),
            };
            effect::check(rule, &after, &effect::changed_leaves(&before, &after))?;
        }
        // A create needs no pin: the apiserver refuses it if the name exists by then.
        if info.verb == "create" {
            return Ok(body);
        }
        let Some(rv) = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
        else {
            // A missing object: the apiserver answers the update, patch or delete with 404.
            return Ok(body);
        };
        let pinned = with_resource_version(info.verb.as_str(), m, value, rv)?;
        check_pinned(info.verb.as_str(), m, live.as_ref(), &pinned, rv)?;
        Ok(Bytes::from(pinned.to_string()))
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
        if let Some((name, value)) = &identity.header {
            headers.insert(name.clone(), value.clone());
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
        // A TokenRequest token is the identity itself; impersonation is for the broker's own
        // credential.
        if identity.audit["kind"] == "impersonation" {
            for (n, v) in identity::impersonation_headers(&identity.audit)? {
                headers.append(n, v);
            }
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

/// Server-side apply removes the fields its field manager applied before and omits now,
/// which a strategic merge does not model. The broker computes the effect only of a first
/// apply by a manager (nothing of its own to remove); a repeated one is refused when the
/// certificate asks for effect matching.
fn check_first_apply(live: Option<&Value>, query: Option<&str>) -> Result<(), Denial> {
    let pairs = requestinfo::query_pairs(query.unwrap_or(""));
    let manager = pairs
        .iter()
        .find(|(k, _)| k == "fieldManager")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            Denial::new(
                Reason::RequestMalformed,
                "a server-side apply needs a fieldManager",
            )
        })?;
    let applied_before = live
        .and_then(|l| l.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .is_some_and(|entries| {
            entries.iter().any(|e| {
                e.get("manager").and_then(Value::as_str) == Some(manager)
                    && e.get("operation").and_then(Value::as_str) == Some("Apply")
            })
        });
    if applied_before {
        return Err(Denial::new(
            Reason::ContractMismatch,
            format!(
                "the effect of a repeated server-side apply by {manager:?} cannot be computed: fields it applied before and omits now would be removed"
            ),
        ));
    }
    Ok(())
}

fn check_precondition(p: &Precondition, live: Option<&Value>) -> Result<(), Denial> {
    let Some(live) = live else {
        return Err(Denial::new(
            Reason::Drift,
            "the certificate expects an existing object, and it does not exist",
        ));
    };
    match p {
        Precondition::ResourceVersion(rv) => {
            let now = live
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if now != rv {
                return Err(Denial::new(
                    Reason::Drift,
                    format!("the object is at resourceVersion {now:?}, the certificate was issued for {rv:?}"),
                ));
            }
        }
        Precondition::Fields(fields) => {
            for (pointer, want) in fields {
                let got = live.pointer(pointer);
                if got != Some(want) {
                    return Err(Denial::new(
                        Reason::Drift,
                        format!(
                            "{pointer} is {}, the certificate expects {want}",
                            got.map(Value::to_string).unwrap_or_else(|| "absent".into())
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The body with a precondition that the object is still at `rv`: the apiserver then refuses
/// with 409 if it changed after the broker looked.
fn with_resource_version(
    verb: &str,
    media: Option<Media>,
    value: Option<Value>,
    rv: &str,
) -> Result<Value, Denial> {
    let cannot = |why: &str| {
        Denial::new(
            Reason::ContractMismatch,
            format!("cannot pin the resourceVersion: {why}"),
        )
    };
    match (verb, media) {
        ("update", _)
        | ("patch", Some(Media::MergePatch | Media::StrategicMergePatch | Media::ApplyPatch)) => {
            let mut v = value.ok_or_else(|| cannot("no body"))?;
            let meta = v
                .as_object_mut()
                .ok_or_else(|| cannot("the body is not an object"))?
                .entry("metadata")
                .or_insert_with(|| json!({}));
            let meta = meta
                .as_object_mut()
                .ok_or_else(|| cannot("metadata is not an object"))?;
            pin(meta, "metadata.resourceVersion", rv)?;
            Ok(v)
        }
        ("patch", Some(Media::JsonPatch)) => {
            // Setting the resourceVersion in the patched object makes it the update's
            // precondition (409 when stale), as a merge patch carrying it does; a `test` op
            // would also refuse, but as 422, which clients do not treat as a conflict.
            let mut ops = value
                .and_then(|v| v.as_array().cloned())
                .ok_or_else(|| cannot("no patch"))?;
            ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
            Ok(Value::Array(ops))
        }
        ("delete", _) => {
            let mut v =
                value.unwrap_or_else(|| json!({"kind": "DeleteOptions", "apiVersion": "v1"}));
            let o = v
                .as_object_mut()
                .ok_or_else(|| cannot("DeleteOptions is not an object"))?;
            let pre = o.entry("preconditions").or_insert_with(|| json!({}));
            let pre = pre
                .as_object_mut()
                .ok_or_else(|| cannot("preconditions is not an object"))?;
            pin(pre, "preconditions.resourceVersion", rv)?;
            Ok(v)
        }
        (verb, _) => Err(cannot(&format!("{verb} requests carry no precondition"))),
    }
}

/// Sets `resourceVersion` in `map` to the version seb checked. An agent's own value is the
/// same (kept), or refused: a stale one as drift (the apiserver would answer 409 anyway), and
/// `null`, `""` or a non-string because the apiserver reads them as "no precondition", which
/// would make the write unconditional.
fn pin(map: &mut Map<String, Value>, what: &str, rv: &str) -> Result<(), Denial> {
    match map.get("resourceVersion") {
        None => {}
        Some(Value::String(s)) if s == rv => {}
        Some(Value::String(s)) if !s.is_empty() => {
            return Err(Denial::new(
                Reason::Drift,
                format!("the body's {what} is {s:?} and the live object is at {rv:?}; read the object again"),
            ))
        }
        Some(other) => {
            return Err(Denial::new(
                Reason::RequestMalformed,
                format!("the body's {what} is {other}, which the apiserver reads as no precondition, making the write unconditional; omit it (the broker sends the version it checked)"),
            ))
        }
    }
    map.insert("resourceVersion".into(), rv.into());
    Ok(())
}

/// The pinned body, applied to the live object the way the apiserver will, must leave the
/// checked resourceVersion in place: a directive (`$patch: delete` on metadata, a
/// `$deleteFromPrimitiveList/resourceVersion`, a JSON patch op on `/metadata`) could
/// otherwise drop the pin after seb set it.
fn check_pinned(
    verb: &str,
    media: Option<Media>,
    live: Option<&Value>,
    pinned: &Value,
    rv: &str,
) -> Result<(), Denial> {
    let cannot = |why: String| {
        Denial::new(
            Reason::ContractMismatch,
            format!("cannot pin the resourceVersion: {why}"),
        )
    };
    let after = match (verb, media, live) {
        ("delete", _, _) => return Ok(()),
        ("update", _, _) => pinned.clone(),
        ("patch", Some(Media::MergePatch), Some(l)) => patch::merge_patch(l, pinned),
        ("patch", Some(Media::JsonPatch), Some(l)) => patch::json_patch(l, pinned)
            .map_err(|e| cannot(format!("the JSON patch does not apply: {e}")))?,
        ("patch", Some(Media::StrategicMergePatch | Media::ApplyPatch), Some(l)) => {
            patch::strategic_merge(l, pinned)
                .map_err(|e| cannot(format!("the patch's effect cannot be computed: {e}")))?
        }
        _ => return Err(cannot("unknown change".into())),
    };
    if after
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        != Some(rv)
    {
        return Err(cannot(
            "the body would remove or replace the resourceVersion the broker checked".into(),
        ));
    }
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            media(Some("application/json; charset=utf-8")).unwrap(),
            Some(Media::Json)
        );
        assert_eq!(
            media(Some("application/strategic-merge-patch+json")).unwrap(),
            Some(Media::StrategicMergePatch)
        );
        let e = media(Some("application/vnd.kubernetes.protobuf")).unwrap_err();
        assert_eq!(e.status(crate::denial::Family::Kubernetes), 415);
        assert!(e.message.contains("JSON"));
        assert!(media(Some("application/yaml")).is_err());
        assert!(
            body_value(Media::ApplyPatch, b"apiVersion: v1\nkind: ConfigMap\n")
                .unwrap_err()
                .message
                .contains("YAML")
        );
        assert!(body_value(Media::ApplyPatch, br#"{"apiVersion":"v1"}"#).is_ok());
        assert!(body_value(Media::JsonPatch, br#"{"op":"add"}"#).is_err());
        assert!(body_value(Media::MergePatch, br#"[]"#).is_err());
        assert!(body_value(Media::Json, br#"{"a":1,"a":2}"#).is_err());
        assert!(body_value(Media::Json, br#"{"spec":{"replicas":1,"Replicas":9}}"#).is_err());
    }

    #[test]
    fn preconditions_pin_the_resource_version() {
        let v = with_resource_version(
            "patch",
            Some(Media::StrategicMergePatch),
            Some(json!({"spec": {}})),
            "7",
        )
        .unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        let v = with_resource_version(
            "patch",
            Some(Media::JsonPatch),
            Some(json!([{"op": "remove", "path": "/a"}])),
            "7",
        )
        .unwrap();
        assert_eq!(
            v[1],
            json!({"op": "replace", "path": "/metadata/resourceVersion", "value": "7"})
        );
        assert_eq!(v.as_array().unwrap().len(), 2);
        let v = with_resource_version("delete", None, None, "7").unwrap();
        assert_eq!(v["preconditions"]["resourceVersion"], "7");
        // The agent's own version: the same one stays, a stale one is drift, and one the
        // apiserver reads as "no precondition" is refused.
        let v = with_resource_version(
            "update",
            Some(Media::Json),
            Some(json!({"metadata": {"resourceVersion": "7"}})),
            "7",
        )
        .unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        for (media, verb) in [
            (Some(Media::Json), "update"),
            (Some(Media::MergePatch), "patch"),
            (Some(Media::StrategicMergePatch), "patch"),
            (Some(Media::ApplyPatch), "patch"),
        ] {
            let e = with_resource_version(
                verb,
                media,
                Some(json!({"metadata": {"resourceVersion": "5"}})),
                "7",
            )
            .unwrap_err();
            assert_eq!(e.reason, Reason::Drift);
            for unconditional in [json!(null), json!(""), json!(7), json!({})] {
                let e = with_resource_version(
                    verb,
                    media,
                    Some(json!({"metadata": {"resourceVersion": unconditional}})),
                    "7",
                )
                .unwrap_err();
                assert_eq!(e.reason, Reason::RequestMalformed, "{verb} {unconditional}");
            }
        }
        let e = with_resource_version(
            "delete",
            None,
            Some(json!({"preconditions": {"resourceVersion": null}})),
            "7",
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::RequestMalformed);
        // Directives that would drop the pin after it is set.
        let live =
            json!({"metadata": {"name": "web", "resourceVersion": "7", "labels": {"a": "b"}}});
        for (media, body) in [
            (
                Media::StrategicMergePatch,
                json!({"metadata": {"$patch": "delete"}}),
            ),
            (
                Media::StrategicMergePatch,
                json!({"metadata": {"$deleteFromPrimitiveList/resourceVersion": null}}),
            ),
            (
                Media::JsonPatch,
                json!([{"op": "remove", "path": "/metadata"}]),
            ),
        ] {
            let pinned = with_resource_version("patch", Some(media), Some(body.clone()), "7");
            let refused = pinned
                .and_then(|p| check_pinned("patch", Some(media), Some(&live), &p, "7"))
                .is_err();
            assert!(refused, "{body}");
        }
        // A JSON patch that sets the version itself is overridden by the broker's last op.
        let ops = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": ""}]);
        let p = with_resource_version("patch", Some(Media::JsonPatch), Some(ops), "7").unwrap();
        assert!(check_pinned("patch", Some(Media::JsonPatch), Some(&live), &p, "7").is_ok());
    }

    #[test]
    fn names_are_dns_subdomains_before_they_become_paths() {
        for ok in ["web", "web-1", "a.b.c", "x"] {
            assert!(check_object_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "x?watch=true",
            "../secrets/db",
            "a/b",
            "a%2Fb",
            "a#b",
            "..",
            "a..b",
            "Web",
            "-a",
            "a-",
            "a b",
        ] {
            assert_eq!(
                check_object_name(bad).unwrap_err().reason,
                Reason::RequestMalformed,
                "{bad}"
            );
        }
        assert!(check_object_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn apply_bodies_with_duplicate_keys_are_told_about_the_key() {
        let e = body_value(Media::ApplyPatch, br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(!e.message.contains("YAML"), "{}", e.message);
        assert!(!e.message.contains("server-side"), "{}", e.message);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn drift() {
        let live = json!({"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 2}});
        assert!(
            check_precondition(&Precondition::ResourceVersion("7".into()), Some(&live)).is_ok()
        );
        assert_eq!(
            check_precondition(&Precondition::ResourceVersion("6".into()), Some(&live))
                .unwrap_err()
                .reason,
            Reason::Drift
        );
        let f: Precondition =
            serde_json::from_value(json!({"fields": {"/spec/replicas": 2}})).unwrap();
        assert!(check_precondition(&f, Some(&live)).is_ok());
        let f: Precondition =
            serde_json::from_value(json!({"fields": {"/spec/replicas": 3}})).unwrap();
        assert!(check_precondition(&f, Some(&live)).is_err());
        assert!(check_precondition(&f, None).is_err());
        assert!(serde_json::from_value::<Precondition>(
            json!({"resourceVersion": "1", "fields": {}})
        )
        .is_err());
    }

    #[test]
    fn streams_name_container_command_stdin_and_ports() {
        let contract = |v: Value| -> KubeContract { serde_json::from_value(v).unwrap() };
        let exec = contract(
            json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec",
            "namespace": "x", "name": "p", "container": "app", "command": ["echo", "hi there"]}),
        );
        let info = |p: &str| requestinfo::classify("POST", p, None).unwrap();
        let i = info("/api/v1/namespaces/x/pods/p/exec");
        let ok = "command=echo&command=hi+there&container=app&stdout=true";
        assert!(check_stream(&exec, &i, Some(ok)).is_ok());
        for fine in [
            "command=echo&command=hi+there&container=app&stdin=false&tty=0&stdout=1&stderr=true",
            "command=echo&command=hi%20there&container=app",
        ] {
            assert!(check_stream(&exec, &i, Some(fine)).is_ok(), "{fine}");
        }
        for bad in [
            "command=echo&container=app",
            "command=hi+there&command=echo&container=app",
            "command=echo&command=hi+there",
            "command=echo&command=hi+there&container=side",
            "command=echo&command=hi+there&container=app&container=app",
            "command=echo&command=hi+there&container=app&stdin=true",
            "command=echo&command=hi+there&container=app&tty=1",
            // Spellings Go's reading takes as true, and duplicates.
            "command=echo&command=hi+there&container=app&stdin=",
            "command=echo&command=hi+there&container=app&stdin",
            "command=echo&command=hi+there&container=app&tty=yes",
            "command=echo&command=hi+there&container=app&stdin=TRUE",
            "command=echo&command=hi+there&container=app&stdin=False",
            "command=echo&command=hi+there&container=app&stdin=false&stdin=true",
            "command=echo&command=hi+there&container=app&stdout=on",
            // Pairs Go drops or reads differently.
            "command=echo&command=hi+there;x&container=app",
            "command=echo&command=hi+there&container=app&stdin%zz=1",
            "command=echo&command=hi%ff&container=app",
        ] {
            assert!(check_stream(&exec, &i, Some(bad)).is_err(), "{bad}");
        }
        // Messages show values, not Rust's Debug of an Option.
        let e = check_stream(&exec, &i, Some("command=ls&container=app")).unwrap_err();
        assert!(!e.message.contains("Some("), "{}", e.message);
        assert!(
            e.message.contains(r#"["echo","hi there"]"#),
            "{}",
            e.message
        );
        let e = check_stream(&exec, &i, Some("command=echo&command=hi+there")).unwrap_err();
        assert!(
            e.message.contains("\"app\" and the request names none"),
            "{}",
            e.message
        );
        // Ports travel inside the stream: a certificate naming them cannot be held to them.
        let pf = contract(
            json!({"verb": "create", "group": "", "resource": "pods", "subresource": "portforward",
            "namespace": "x", "name": "p", "ports": []}),
        );
        let i = info("/api/v1/namespaces/x/pods/p/portforward");
        assert_eq!(
            check_stream(&pf, &i, None).unwrap_err().reason,
            Reason::CertMalformed
        );
        let pf = contract(
            json!({"verb": "create", "group": "", "resource": "pods", "subresource": "portforward",
            "namespace": "x", "name": "p"}),
        );
        assert!(check_stream(&pf, &i, None).is_ok());
        let i = info("/api/v1/namespaces/x/pods/p");
        assert!(
            check_stream(&exec, &i, None).is_err(),
            "stream fields on a plain request"
        );
    }

    #[test]
    fn only_a_first_server_side_apply_has_a_computable_effect() {
        let live = json!({"metadata": {"managedFields": [
            {"manager": "kubectl", "operation": "Apply"},
            {"manager": "kubectl-client-side-apply", "operation": "Update"}]}});
        assert!(check_first_apply(Some(&live), Some("fieldManager=kubectl&force=false")).is_err());
        assert!(
            check_first_apply(Some(&live), Some("fieldManager=kubectl-client-side-apply")).is_ok()
        );
        assert!(check_first_apply(Some(&live), Some("fieldManager=other")).is_ok());
        assert!(check_first_apply(None, Some("fieldManager=kubectl")).is_ok());
        assert!(check_first_apply(None, None).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer read-token"),
        );
        assert_eq!(certificate(&h).unwrap(), None);
        assert_eq!(agent_token(&h), Some("read-token"));
        h.insert("authorization", HeaderValue::from_static("Bearer a.b.c"));
        assert_eq!(certificate(&h).unwrap(), Some("a.b.c"));
        assert_eq!(agent_token(&h), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Go's `url.ParseQuery` as the apiserver reads a query: pairs holding ';' or a bad
        /// escape are dropped, values are bytes.
        fn go_query(q: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
            fn unescape(s: &str) -> Option<Vec<u8>> {
                let b = s.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    match b[i] {
                        b'+' => out.push(b' '),
                        b'%' => {
                            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                                return None;
                            }
                            out.push(u8::from_str_radix(hex, 16).ok()?);
                            i += 2;
                        }
                        c => out.push(c),
                    }
                    i += 1;
                }
                Some(out)
            }
            q.split('&')
                .filter(|p| !p.is_empty() && !p.contains(';'))
                .filter_map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    Some((unescape(k)?, unescape(v)?))
                })
                .collect()
        }

        /// The apiserver's `Convert_Slice_string_To_bool`: the first value; false only for
        /// absent, "0" or "false" in any case.
        fn go_bool(pairs: &[(Vec<u8>, Vec<u8>)], k: &str) -> bool {
            match pairs.iter().find(|(n, _)| n == k.as_bytes()) {
                None => false,
                Some((_, v)) => !(v == b"0" || v.eq_ignore_ascii_case(b"false")),
            }
        }

        fn piece() -> impl Strategy<Value = String> {
            (
                prop::sample::select(vec!["stdin", "tty", "stdout", "st%64in", "stdin;x", "tty%"]),
                prop::sample::select(vec![
                    "", "=", "=true", "=false", "=0", "=1", "=TRUE", "=False", "=f", "=yes",
                    "=%30", "=%31", "=fa%6Cse", "=+", "=%zz", "=0;", "=%ff",
                ]),
            )
                .prop_map(|(k, v)| format!("{k}{v}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Whenever seb admits an exec query's booleans, it reads the value the apiserver
            /// will act on.
            #[test]
            fn exec_booleans_read_as_the_apiserver_reads_them(
                pieces in prop::collection::vec(piece(), 0..5),
                sep in prop::sample::select(vec!["&", "&&", ";"]),
            ) {
                let q = pieces.join(sep);
                let go = go_query(&q);
                if let Ok(pairs) = strict_query_pairs(&q) {
                    for k in ["stdin", "tty", "stdout"] {
                        if let Ok(b) = query_bool(&pairs, k) {
                            prop_assert_eq!(b, go_bool(&go, k), "{} in {}", k, q);
                        }
                    }
                }
            }
        }
    }
}
