//! Reading an AWS request: which service and region (the agent's SigV4 credential scope), which
//! operation, and its parameters as one JSON object that certificate constraints match.
//!
//! The parameter object, by protocol:
//! - query and ec2: every form or query-string pair except `Action` and `Version`, as a flat
//!   object of strings (`{"InstanceId.1": "i-1"}`), as docs/FORMATS.md ("Certificate v1") says;
//! - json 1.0/1.1: the JSON body;
//! - rest-json and rest-xml: the operation's members by their model names: URI labels
//!   (`Bucket`, `Key`, `FunctionName`), bound query-string members, bound headers (minus transport
//!   and integrity headers such as `Content-Length` and checksums), header maps (`Metadata`), and
//!   for rest-json the JSON body's members. A blob or XML payload is not a parameter: it is
//!   bound by the certificate's `sha256`.
//!
//! Whatever two readers could understand differently is refused, not guessed: a parameter
//! given twice, parameters in both the query string and the body, an `X-Amz-Target` that a
//! protocol does not use or that disagrees with the body or path, duplicate JSON keys, a
//! `Content-Encoding` the broker does not decode, a Host that names another service or region,
//! a parameter (query key, `x-amz-*` header, body member) that is not in the operation's input
//! shape, an operation botocore does not have, a `Content-Type` that is not the protocol's, an
//! escape in an S3 bucket label.

use super::model::{self, Protocol, Route, Segment, Service};
use crate::denial::{Denial, Reason};
use http::request::Parts;
use serde_json::{Map, Value};

mod chunked;
mod rest;

pub use chunked::decode_aws_chunked;
use rest::parse_rest;

fn malformed(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::RequestMalformed, msg)
}

/// Service and region from a SigV4 credential scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub service: String,
    pub region: String,
}

/// One AWS API call as the broker understands it.
#[derive(Debug)]
pub struct Call {
    pub service: &'static Service,
    pub scope: Scope,
    pub operation: String,
    /// The operation's entry in the generated table; an operation it does not know is refused.
    pub route: &'static Route,
    pub params: Value,
    /// The body is not parameters (blob or XML payload) and can only be bound by sha256.
    pub opaque_body: bool,
    /// The agent sent the body `aws-chunked`; [`decode_aws_chunked`] gives the real payload.
    pub aws_chunked: bool,
    pub resource: Option<String>,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/s3/aws4_request, ...` or the
/// presigned-URL `X-Amz-Credential` query parameter; exactly one of them.
pub fn scope(parts: &Parts) -> Result<Scope, Denial> {
    let mut found: Vec<String> = Vec::new();
    for v in parts.headers.get_all(http::header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| malformed("Authorization header is not ASCII"))?;
        let rest = v.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
            malformed("Authorization is not AWS4-HMAC-SHA256; sign with SigV4 (any AWS SDK or the aws CLI does)")
        })?;
        let cred = rest
            .split(',')
            .filter_map(|p| p.trim().strip_prefix("Credential="))
            .collect::<Vec<_>>();
        match cred.as_slice() {
            [one] => found.push(one.to_string()),
            _ => return Err(malformed("Authorization needs exactly one Credential=")),
        }
    }
    for (k, v) in query_pairs(parts.uri.query().unwrap_or(""))? {
        if k.eq_ignore_ascii_case("x-amz-credential") {
            found.push(v);
        }
    }
    let cred = match found.as_slice() {
        [one] => one,
        [] => {
            return Err(malformed(
                "no SigV4 credential scope: the broker takes the service and region from it; use an AWS SDK or the aws CLI with the placeholder access key",
            ))
        }
        _ => return Err(malformed("more than one SigV4 credential scope was sent")),
    };
    let fields: Vec<&str> = cred.split('/').collect();
    match fields.as_slice() {
        [_akid, _date, region, service, "aws4_request"]
            if !region.is_empty() && !service.is_empty() =>
        {
            Ok(Scope {
                service: service.to_string(),
                region: region.to_string(),
            })
        }
        _ => Err(malformed(format!(
            "credential scope {cred:?} is not KEY/DATE/REGION/SERVICE/aws4_request"
        ))),
    }
}

/// A Host under `amazonaws.com` must name the scope's service and region; any other host is
/// the broker's own name (endpoint override) and says nothing about either.
pub fn check_host(parts: &Parts, service: &Service, scope: &Scope) -> Result<(), Denial> {
    let host = match parts.headers.get(http::header::HOST) {
        Some(h) => h
            .to_str()
            .map_err(|_| malformed("Host is not ASCII"))?
            .to_string(),
        None => parts.uri.host().unwrap_or_default().to_string(),
    };
    let host = host.to_ascii_lowercase();
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
    let Some(prefix) = name
        .strip_suffix(".amazonaws.com")
        .or_else(|| name.strip_suffix(".amazonaws.com.cn"))
    else {
        return Ok(());
    };
    let labels: Vec<&str> = prefix.split('.').collect();
    // `bucket.s3.<region>.amazonaws.com`: the bucket would be in the host, which the broker
    // does not read; only path-style requests name their bucket where it is checked.
    if service.signing_name == "s3" && labels.len() > 1 && !labels[0].starts_with("s3") {
        return Err(malformed(format!(
            "Host {host:?} is a virtual-hosted-style S3 request; use path-style addressing"
        )));
    }
    let names_service = labels.iter().any(|l| {
        *l == service.endpoint_prefix || l.starts_with(&format!("{}-", service.endpoint_prefix))
    });
    let region_ok = labels.iter().any(|l| *l == scope.region)
        || (labels.len() == 1 && service.global_endpoint.is_some())
        || (labels == [service.endpoint_prefix.as_str()]);
    if !names_service || !region_ok {
        return Err(malformed(format!(
            "Host {host:?} does not match the credential scope ({} in {})",
            scope.service, scope.region
        )));
    }
    Ok(())
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as in forms); invalid UTF-8 or bad
/// escapes are refused rather than replaced.
pub fn query_pairs(q: &str) -> Result<Vec<(String, String)>, Denial> {
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((form_decode(k)?, form_decode(v)?));
    }
    Ok(out)
}

fn form_decode(s: &str) -> Result<String, Denial> {
    percent_decode(&s.replace('+', " "))
}

/// Strict percent-decoding to UTF-8.
pub fn percent_decode(s: &str) -> Result<String, Denial> {
    let b = s.as_bytes();
    if b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    }) {
        return Err(malformed(format!("{s:?} has a '%' that is not an escape")));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| malformed(format!("{s:?} does not decode to UTF-8")))
}

/// Query parameters of the presigned-URL form, which are authentication, not API parameters.
fn is_auth_query_key(k: &str) -> bool {
    [
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-signature",
        "x-amz-security-token",
    ]
    .iter()
    .any(|a| k.eq_ignore_ascii_case(a))
}

/// Headers that carry transport or integrity data rather than API parameters; they are not
/// part of the parameter object (a certificate cannot sensibly pin a checksum it did not see).
fn is_transport_header(h: &str) -> bool {
    matches!(
        h,
        "content-length"
            | "content-md5"
            | "expect"
            | "x-amz-content-sha256"
            | "x-amz-decoded-content-length"
            | "x-amz-trailer"
            | "x-amz-sdk-checksum-algorithm"
            | "x-amz-date"
            | "x-amz-security-token"
            | "x-amz-user-agent"
            | "amz-sdk-invocation-id"
            | "amz-sdk-request"
    ) || h.starts_with("x-amz-checksum-")
}

fn insert_once(obj: &mut Map<String, Value>, k: String, v: Value) -> Result<(), Denial> {
    if obj.contains_key(&k) {
        return Err(malformed(format!(
            "parameter {k:?} is given more than once"
        )));
    }
    obj.insert(k, v);
    Ok(())
}

fn content_encoding(parts: &Parts) -> Result<Vec<String>, Denial> {
    let mut out = Vec::new();
    for v in parts.headers.get_all(http::header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| malformed("Content-Encoding is not ASCII"))?;
        out.extend(
            v.split(',')
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty() && e != "identity"),
        );
    }
    Ok(out)
}

/// Reads the request. `body` is the raw body as received (still aws-chunked if so sent).
pub fn parse(parts: &Parts, body: &[u8]) -> Result<Call, Denial> {
    let scope = scope(parts)?;
    let service = model::service(&scope.service).ok_or_else(|| {
        malformed(format!(
            "service {:?} (from the credential scope) is not one this broker knows",
            scope.service
        ))
    })?;
    check_host(parts, service, &scope)?;
    let target = header_once(parts, "x-amz-target")?;
    let encodings = content_encoding(parts)?;
    let mut call = match service.protocol {
        Protocol::Query | Protocol::Ec2 => {
            if let Some(t) = target {
                return Err(malformed(format!(
                    "X-Amz-Target {t:?} on a {} request, whose operation is its Action parameter",
                    service.protocol.as_str()
                )));
            }
            refuse_encodings(&encodings)?;
            parse_query(parts, body, service, scope)?
        }
        Protocol::Json => {
            refuse_encodings(&encodings)?;
            parse_json(parts, body, service, scope, target)?
        }
        Protocol::RestJson | Protocol::RestXml => {
            if let Some(t) = target {
                return Err(malformed(format!(
                    "X-Amz-Target {t:?} on a {} request, whose operation is its method and path",
                    service.protocol.as_str()
                )));
            }
            parse_rest(parts, body, service, scope, &encodings)?
        }
    };
    call.resource = resource(&call);
    Ok(call)
}

fn refuse_encodings(encodings: &[String]) -> Result<(), Denial> {
    match encodings.first() {
        None => Ok(()),
        Some(e) => Err(malformed(format!(
            "Content-Encoding {e:?} is not decoded by the broker; send the body uncompressed"
        ))),
    }
}

fn header_once<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, Denial> {
    let mut it = parts.headers.get_all(name).iter();
    let Some(first) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(malformed(format!("{name} appears more than once")));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| malformed(format!("{name} is not ASCII")))
}

fn api_query_pairs(parts: &Parts) -> Result<Vec<(String, String)>, Denial> {
    Ok(query_pairs(parts.uri.query().unwrap_or(""))?
        .into_iter()
        .filter(|(k, _)| !is_auth_query_key(k))
        .collect())
}

fn parse_query(
    parts: &Parts,
    body: &[u8],
    service: &'static Service,
    scope: Scope,
) -> Result<Call, Denial> {
    if parts.uri.path() != "/" {
        return Err(malformed(format!(
            "{} requests go to \"/\", not {:?}",
            service.protocol.as_str(),
            parts.uri.path()
        )));
    }
    let from_query = api_query_pairs(parts)?;
    // A Content-Type is what some endpoints choose their protocol by, so even a body-less
    // call may not name another one.
    let form = check_content_type(parts, service, &["application/x-www-form-urlencoded"])?;
    let from_body = if body.is_empty() {
        Vec::new()
    } else {
        if !form {
            return Err(malformed(format!(
                "a {} request body needs Content-Type: application/x-www-form-urlencoded",
                service.protocol.as_str()
            )));
        }
        let text = std::str::from_utf8(body).map_err(|_| malformed("form body is not UTF-8"))?;
        query_pairs(text.trim_end_matches(['\r', '\n']))?
    };
    if !from_query.is_empty() && !from_body.is_empty() {
        return Err(malformed(
            "parameters are in both the query string and the body; send them in one place",
        ));
    }
    let mut params = Map::new();
    let (mut action, mut version) = (None, None);
    for (k, v) in from_query.into_iter().chain(from_body) {
        // Action names the operation and Version the API revision: neither is a parameter a
        // certificate constrains, but each must still be given exactly once.
        let slot = match k.as_str() {
            "Action" => &mut action,
            "Version" => &mut version,
            _ => {
                insert_once(&mut params, k, v.into())?;
                continue;
            }
        };
        if slot.is_some() {
            return Err(malformed(format!(
                "parameter {k:?} is given more than once"
            )));
        }
        *slot = Some(v);
    }
    let operation = action.ok_or_else(|| malformed("no Action parameter"))?;
    let route = known_route(service, &scope, &operation)?;
    for k in params.keys() {
        // `InstanceId.1`, `Filter.1.Name`: the first segment is the top-level member.
        let top = k.split('.').next().unwrap_or(k);
        check_member(route, &operation, top)?;
        // The list that names the resource is read one way only: `Name.N`, N a plain
        // positive integer. `InstanceId`, `InstanceId.01` or `InstanceId.1.x` might be read
        // by EC2 as an element seb did not count.
        if route.resource_list && route.resource.as_deref() == Some(top) {
            let index = &k[top.len()..];
            let plain = index.strip_prefix('.').is_some_and(|n| {
                !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
            });
            if !plain {
                return Err(malformed(format!(
                    "parameter {k:?}: {top} is a list, named {top}.1, {top}.2, ..."
                )));
            }
        }
    }
    Ok(Call {
        route,
        service,
        scope,
        operation,
        params: Value::Object(params),
        opaque_body: false,
        aws_chunked: false,
        resource: None,
    })
}

fn parse_json(
    parts: &Parts,
    body: &[u8],
    service: &'static Service,
    scope: Scope,
    target: Option<&str>,
) -> Result<Call, Denial> {
    let target = target.ok_or_else(|| malformed("a json-protocol request needs X-Amz-Target"))?;
    let prefix = service.target_prefix.as_deref().unwrap_or_default();
    let operation = match target.split_once('.') {
        Some((p, op)) if p == prefix && !op.is_empty() && !op.contains('.') => op.to_string(),
        _ => {
            return Err(malformed(format!(
                "X-Amz-Target {target:?} is not \"{prefix}.<Operation>\" for {}",
                scope.service
            )))
        }
    };
    if parts.uri.path() != "/" {
        return Err(malformed(format!(
            "X-Amz-Target names {operation} and the path is {:?}; json requests go to \"/\"",
            parts.uri.path()
        )));
    }
    if !api_query_pairs(parts)?.is_empty() {
        return Err(malformed(
            "a json-protocol request with query parameters: its parameters are its body",
        ));
    }
    let wanted = match service.json_version.as_deref() {
        Some("1.0") => "application/x-amz-json-1.0",
        Some("1.1") => "application/x-amz-json-1.1",
        other => {
            return Err(malformed(format!(
                "{} speaks json version {other:?}, which the broker does not read",
                scope.service
            )))
        }
    };
    if !check_content_type(parts, service, &[wanted])? {
        return Err(malformed(format!(
            "a {} json-protocol request needs Content-Type: {wanted}",
            scope.service
        )));
    }
    let params = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        crate::json::parse_strict(body)
            .map_err(|e| malformed(format!("body is not valid JSON: {e}")))?
    };
    if !params.is_object() {
        return Err(malformed("a json-protocol body must be a JSON object"));
    }
    if let Some(Value::String(a)) = params.get("Action") {
        if *a != operation {
            return Err(malformed(format!(
                "X-Amz-Target names {operation} and the body's Action is {a:?}"
            )));
        }
    }
    let route = known_route(service, &scope, &operation)?;
    for k in params.as_object().into_iter().flat_map(|m| m.keys()) {
        check_member(route, &operation, k)?;
    }
    Ok(Call {
        route,
        service,
        scope,
        operation,
        params,
        opaque_body: false,
        aws_chunked: false,
        resource: None,
    })
}

/// The resource a call acts on: the member the operation's own input shape names it by
/// (generated from botocore, see [`Route::resource`]), never a parameter the operation does not
/// take. S3 objects and buckets get their ARN; elsewhere the member's value (an ARN when the
/// agent sent one).
pub fn resource(call: &Call) -> Option<String> {
    let p = call.params.as_object()?;
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    if call.scope.service == "s3" {
        return match (s("Bucket"), s("Key")) {
            (Some(b), Some(k)) => Some(format!("arn:aws:s3:::{b}/{k}")),
            (Some(b), None) => Some(format!("arn:aws:s3:::{b}")),
            _ => None,
        };
    }
    let has = |m: &str| call.route.members.iter().any(|x| x == m);
    if call.scope.service == "ecs" && has("cluster") && has("service") {
        if let (Some(c), Some(svc)) = (s("cluster"), s("service")) {
            return Some(format!("{c}/{svc}"));
        }
    }
    let name = call.route.resource.as_deref()?;
    if !call.route.resource_list {
        return s(name);
    }
    // An ec2 list (`InstanceId.1`): a resource only when exactly one element is named.
    let listed: Vec<&str> = p
        .iter()
        .filter(|(k, _)| {
            k.split_once('.')
                .is_some_and(|(n, i)| n == name && i.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|(_, v)| v.as_str())
        .collect();
    match listed.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// Checks `Content-Type` against the types the protocol reads: `Ok(true)` when it is one of
/// `allowed` (type and subtype case-insensitive, at most a `charset=utf-8` parameter),
/// `Ok(false)` when there is none, and a refusal for any other type or parameter: an endpoint
/// that picks its protocol or its charset by this header would read other bytes than seb did.
pub fn check_content_type(
    parts: &Parts,
    service: &Service,
    allowed: &[&str],
) -> Result<bool, Denial> {
    let Some(ct) = header_once(parts, "content-type")? else {
        return Ok(false);
    };
    let mut pieces = ct.split(';');
    let media = pieces.next().unwrap_or("").trim_matches([' ', '\t']);
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(media)) {
        return Err(malformed(format!(
            "Content-Type {ct:?} is not what a {} request is sent as ({})",
            service.protocol.as_str(),
            allowed.join(" or ")
        )));
    }
    let mut charset = false;
    for param in pieces {
        let param = param.trim_matches([' ', '\t']);
        let utf8 = param.split_once('=').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("charset") && v.eq_ignore_ascii_case("utf-8")
        });
        if !utf8 || charset {
            return Err(malformed(format!(
                "Content-Type {ct:?}: parameter {param:?} is not read by the broker; only one charset=utf-8 is admitted"
            )));
        }
        charset = true;
    }
    Ok(true)
}

/// The operation's entry in the table. An operation botocore's model does not have is
/// refused: the broker cannot know its parameters, its resource, or whether it reads.
fn known_route(
    service: &'static Service,
    scope: &Scope,
    operation: &str,
) -> Result<&'static Route, Denial> {
    service.operations.get(operation).ok_or_else(|| {
        Denial::new(
            Reason::ContractMismatch,
            format!(
                "{operation} is no {} operation the broker knows; unknown operations are never forwarded",
                scope.service
            ),
        )
    })
}

fn check_member(route: &Route, operation: &str, member: &str) -> Result<(), Denial> {
    if route.members.iter().any(|m| m == member) {
        return Ok(());
    }
    Err(malformed(format!(
        "parameter {member:?} is not in {operation}'s input; the upstream would ignore it or read it as something seb did not check"
    )))
}
