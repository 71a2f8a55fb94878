//! Protocol reading and contract checks for the aws target, including one adversarial case for
//! every ambiguity the broker refuses.

use super::protocol::{decode_aws_chunked, parse, Call};
use super::*;
use crate::cert::Claims;
use crate::contract::BodyView;

fn auth(svc: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential={PLACEHOLDER_ACCESS_KEY_ID}/20240101/us-east-1/{svc}/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc")
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The headers a test sends plus, unless it sets its own, the Content-Type the SDKs send for
/// the service's protocol (the adversarial cases set theirs).
fn with_sdk_content_type<'a>(
    svc: &str,
    headers: &[(&'a str, &'a str)],
    body: &[u8],
) -> Vec<(&'a str, &'a str)> {
    let mut h = headers.to_vec();
    if h.iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        return h;
    }
    let Some(service) = model::service(svc) else {
        return h;
    };
    match (service.protocol, service.json_version.as_deref()) {
        (model::Protocol::Json, Some("1.0")) => {
            h.push(("content-type", "application/x-amz-json-1.0"))
        }
        (model::Protocol::Json, _) => h.push(("content-type", "application/x-amz-json-1.1")),
        (model::Protocol::RestJson, _) if !body.is_empty() => {
            h.push(("content-type", "application/json"))
        }
        _ => {}
    }
    h
}

fn try_call(
    svc: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Call, Denial> {
    let a = auth(svc);
    let mut h = vec![("authorization", a.as_str())];
    h.extend(with_sdk_content_type(svc, headers, body));
    parse(&parts(method, uri, &h), body)
}

fn call(svc: &str, method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Call {
    try_call(svc, method, uri, headers, body).unwrap()
}

fn refused(r: Result<Call, Denial>, needle: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.reason, Reason::RequestMalformed, "{e}");
    assert!(
        e.message.contains(needle),
        "{:?} lacks {needle:?}",
        e.message
    );
}

const FORM: (&str, &str) = (
    "content-type",
    "application/x-www-form-urlencoded; charset=utf-8",
);

// What the contract tests share.

fn target(reads: bool) -> AwsTarget {
    let cfg: super::config::AwsTargetConfig = toml::from_str(&format!(
        r#"
endpoint = "http://127.0.0.1:1"
services = ["s3", "ec2", "ecs", "lambda", "dynamodb", "sqs", "secretsmanager", "sts", "ssm"]
regions = ["us-east-1"]
identity = "static"
reads = {reads}
static_credentials = {{ access_key_id = {{ value_env = "PATH" }}, secret_access_key = {{ value_env = "PATH" }} }}
"#
    ))
    .unwrap();
    AwsTarget::new("aws", &cfg).unwrap()
}

fn cert(request: Value, body: Value) -> Certificate {
    let mut seb = json!({"v": 1, "action": "a", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1,
        "target": "aws", "request": request});
    if !body.is_null() {
        seb["body"] = body;
    }
    let claims = Claims::from_payload(json!({"iss": "s", "sub": "agent:x", "jti": "j1", "iat": 1, "nbf": 1, "exp": 2, "seb": seb})).unwrap();
    Certificate {
        claims,
        kid: "k".into(),
    }
}

fn check(
    t: &AwsTarget,
    c: &Certificate,
    svc: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Denial> {
    let a = auth(svc);
    let mut h = vec![("authorization", a.as_str())];
    h.extend(with_sdk_content_type(svc, headers, body));
    let p = parts(method, uri, &h);
    let sha = hex::encode(Sha256::digest(body));
    let parsed = t.parse(&p, &Bytes::copy_from_slice(body))?;
    t.check_contract(
        c,
        &p,
        &parsed,
        &BodyView {
            bytes: body,
            sha256_hex: &sha,
            content_type: None,
            content_encoding: None,
        },
    )
}

mod contracts;
mod props;
mod protocol;
mod seams;
