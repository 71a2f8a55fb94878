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

#[test]
fn query_protocol_reads_action_and_flat_params_from_the_body_or_the_query() {
    let c = call(
        "autoscaling",
        "POST",
        "/",
        &[FORM],
        b"Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=web&DesiredCapacity=3",
    );
    assert_eq!(c.operation, "SetDesiredCapacity");
    assert_eq!(
        c.params,
        json!({"AutoScalingGroupName": "web", "DesiredCapacity": "3"})
    );
    assert_eq!(c.resource.as_deref(), Some("web"));
    let c = call(
        "ec2",
        "GET",
        "/?Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1",
        &[],
        b"",
    );
    assert_eq!(c.operation, "TerminateInstances");
    assert_eq!(c.params, json!({"InstanceId.1": "i-1"}));
    assert_eq!(c.resource.as_deref(), Some("i-1"));
    let two = call(
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2",
    );
    assert_eq!(two.resource, None, "two instances are no single resource");
}

#[test]
fn the_same_parameter_twice_is_refused() {
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM],
            b"Action=DescribeInstances&Action=TerminateInstances&InstanceId.1=i-1",
        ),
        "Action",
    );
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM],
            b"Action=TerminateInstances&InstanceId.1=i-1&InstanceId.1=i-2",
        ),
        "InstanceId.1",
    );
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM],
            b"Action=TerminateInstances&Version=1&Version=2",
        ),
        "Version",
    );
    refused(
        try_call("s3", "GET", "/b?list-type=2&prefix=a&prefix=b", &[], b""),
        "prefix",
    );
}

#[test]
fn parameters_in_both_query_and_body_are_refused() {
    refused(
        try_call(
            "ec2",
            "POST",
            "/?Action=DescribeInstances",
            &[FORM],
            b"Action=TerminateInstances&InstanceId.1=i-1",
        ),
        "both the query string and the body",
    );
    refused(
        try_call(
            "dynamodb",
            "POST",
            "/?TableName=other",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            br#"{"TableName":"t","Item":{}}"#,
        ),
        "query parameters",
    );
}

#[test]
fn x_amz_target_must_agree_with_protocol_body_and_path() {
    let ecs = "AmazonEC2ContainerServiceV20141113.UpdateService";
    let c = call(
        "ecs",
        "POST",
        "/",
        &[("x-amz-target", ecs)],
        br#"{"cluster":"c","service":"s","desiredCount":2}"#,
    );
    assert_eq!(c.operation, "UpdateService");
    assert_eq!(c.resource.as_deref(), Some("c/s"));
    refused(
        try_call(
            "ecs",
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            b"{}",
        ),
        "X-Amz-Target",
    );
    refused(
        try_call(
            "ecs",
            "POST",
            "/",
            &[("x-amz-target", ecs)],
            br#"{"Action":"DeleteService"}"#,
        ),
        "Action",
    );
    refused(
        try_call(
            "ecs",
            "POST",
            "/DeleteService",
            &[("x-amz-target", ecs)],
            b"{}",
        ),
        "path",
    );
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM, ("x-amz-target", "X.DescribeInstances")],
            b"Action=TerminateInstances",
        ),
        "X-Amz-Target",
    );
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/f/configuration",
            &[("x-amz-target", "AWSLambda.DeleteFunction")],
            b"{}",
        ),
        "X-Amz-Target",
    );
    refused(try_call("ecs", "POST", "/", &[], b"{}"), "X-Amz-Target");
    refused(
        try_call(
            "ecs",
            "POST",
            "/",
            &[("x-amz-target", ecs), ("x-amz-target", ecs)],
            b"{}",
        ),
        "more than once",
    );
}

#[test]
fn duplicate_json_keys_are_refused() {
    refused(
        try_call(
            "dynamodb",
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            br#"{"TableName":"t","TableName":"other","Item":{}}"#,
        ),
        "duplicate key",
    );
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/f/configuration",
            &[],
            br#"{"MemorySize":128,"MemorySize":4096}"#,
        ),
        "duplicate key",
    );
}

#[test]
fn undecoded_content_encodings_are_refused() {
    let gz = ("content-encoding", "gzip");
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM, gz],
            b"Action=TerminateInstances",
        ),
        "Content-Encoding",
    );
    refused(
        try_call(
            "dynamodb",
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem"), gz],
            b"{}",
        ),
        "Content-Encoding",
    );
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/f/configuration",
            &[gz],
            b"{}",
        ),
        "Content-Encoding",
    );
    // On an S3 object Content-Encoding is stored metadata; the bytes are bound by sha256.
    let c = call("s3", "PUT", "/b/k", &[gz], b"xx");
    assert_eq!(c.params["ContentEncoding"], "gzip");
}

#[test]
fn host_must_match_the_scope() {
    let ok = call(
        "ec2",
        "POST",
        "/",
        &[FORM, ("host", "ec2.us-east-1.amazonaws.com")],
        b"Action=DescribeInstances",
    );
    assert_eq!(ok.operation, "DescribeInstances");
    call(
        "ec2",
        "POST",
        "/",
        &[FORM, ("host", "localhost:8443")],
        b"Action=DescribeInstances",
    );
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM, ("host", "ec2.eu-west-1.amazonaws.com")],
            b"Action=DescribeInstances",
        ),
        "does not match the credential scope",
    );
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM, ("host", "iam.amazonaws.com")],
            b"Action=DescribeInstances",
        ),
        "does not match the credential scope",
    );
    call(
        "iam",
        "POST",
        "/",
        &[FORM, ("host", "iam.amazonaws.com")],
        b"Action=ListRoles",
    );
}

#[test]
fn scope_is_required_and_unique() {
    refused(
        parse(&parts("POST", "/", &[FORM]), b"Action=X"),
        "no SigV4 credential scope",
    );
    let a = auth("ec2");
    refused(
        parse(
            &parts(
                "POST",
                "/?X-Amz-Credential=K%2F20240101%2Fus-east-1%2Fec2%2Faws4_request",
                &[FORM, ("authorization", &a)],
            ),
            b"Action=X",
        ),
        "more than one",
    );
    refused(
        parse(
            &parts(
                "POST",
                "/",
                &[
                    FORM,
                    (
                        "authorization",
                        "AWS4-HMAC-SHA256 Credential=K/2024/us-east-1/ec2",
                    ),
                ],
            ),
            b"",
        ),
        "credential scope",
    );
    let e = try_call("nosuch", "POST", "/", &[FORM], b"Action=X").unwrap_err();
    assert!(e.message.contains("nosuch"));
}

#[test]
fn s3_operations_are_told_apart_by_query_and_headers() {
    let op = |m: &str, uri: &str, h: &[(&str, &str)]| call("s3", m, uri, h, b"").operation;
    assert_eq!(op("PUT", "/b/k", &[]), "PutObject");
    assert_eq!(
        op("PUT", "/b/k", &[("x-amz-copy-source", "/src/k")]),
        "CopyObject"
    );
    assert_eq!(op("PUT", "/b/k?partNumber=1&uploadId=u", &[]), "UploadPart");
    assert_eq!(
        op(
            "PUT",
            "/b/k?partNumber=1&uploadId=u",
            &[("x-amz-copy-source", "/src/k")]
        ),
        "UploadPartCopy"
    );
    assert_eq!(op("PUT", "/b/k?acl", &[]), "PutObjectAcl");
    assert_eq!(op("PUT", "/b/k?tagging", &[]), "PutObjectTagging");
    assert_eq!(op("DELETE", "/b/k", &[]), "DeleteObject");
    assert_eq!(op("GET", "/b/k", &[]), "GetObject");
    assert_eq!(op("HEAD", "/b/k", &[]), "HeadObject");
    assert_eq!(op("GET", "/b?list-type=2", &[]), "ListObjectsV2");
    assert_eq!(op("GET", "/", &[]), "ListBuckets");
    assert_eq!(op("PUT", "/b", &[]), "CreateBucket");
    assert_eq!(op("POST", "/b?delete", &[]), "DeleteObjects");
    assert_eq!(op("POST", "/b/k?uploads", &[]), "CreateMultipartUpload");
    // Two sub-resources at once: refused, not guessed.
    refused(
        try_call("s3", "PUT", "/b/k?acl&tagging", &[], b""),
        "could be any of",
    );
    let e = try_call("s3", "PATCH", "/b/k", &[], b"").unwrap_err();
    assert_eq!(e.reason, Reason::ContractMismatch);
}

#[test]
fn s3_parameters_come_from_path_query_and_headers() {
    let c = call(
        "s3",
        "PUT",
        "/bucket/dir/a%3Ab%20c%25%2F%C3%A9?x-id=PutObject",
        &[
            ("x-amz-acl", "private"),
            ("x-amz-meta-owner", "team"),
            ("content-length", "2"),
            ("x-amz-checksum-crc32", "AAAAAA=="),
            ("content-type", "text/plain"),
        ],
        b"xx",
    );
    assert_eq!(c.operation, "PutObject");
    assert_eq!(
        c.params,
        json!({"Bucket": "bucket", "Key": "dir/a:b c%/é", "ACL": "private", "Metadata": {"owner": "team"}, "ContentType": "text/plain", "x-id": "PutObject"})
    );
    assert_eq!(
        c.resource.as_deref(),
        Some("arn:aws:s3:::bucket/dir/a:b c%/é")
    );
    assert!(c.opaque_body);
}

#[test]
fn rest_json_merges_path_query_and_body_members() {
    let c = call(
        "lambda",
        "PUT",
        "/2015-03-31/functions/my-fn/configuration",
        &[("content-type", "application/json")],
        br#"{"MemorySize":256,"Timeout":30}"#,
    );
    assert_eq!(c.operation, "UpdateFunctionConfiguration");
    assert_eq!(
        c.params,
        json!({"FunctionName": "my-fn", "MemorySize": 256, "Timeout": 30})
    );
    assert_eq!(c.resource.as_deref(), Some("my-fn"));
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/my-fn/configuration",
            &[],
            br#"{"FunctionName":"other"}"#,
        ),
        "both in the path and in the body",
    );
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/my-fn/../x/configuration",
            &[],
            b"{}",
        ),
        "dot segment",
    );
}

#[test]
fn aws_chunked_bodies_decode_and_bad_framing_is_refused() {
    let raw =
        b"5;chunk-signature=ab\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
    assert_eq!(decode_aws_chunked(raw).unwrap(), b"hello world");
    assert_eq!(decode_aws_chunked(b"0\r\n\r\n").unwrap(), b"");
    for bad in [
        &b"5\r\nhell\r\n0\r\n\r\n"[..],
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello",
        b"5\r\nhelloXX0\r\n\r\n",
        b"0\r\n\r\nextra",
    ] {
        assert!(
            decode_aws_chunked(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let c = call(
        "s3",
        "PUT",
        "/b/k",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "11"),
        ],
        raw,
    );
    assert!(c.aws_chunked);
    assert!(!c
        .params
        .as_object()
        .unwrap()
        .contains_key("ContentEncoding"));
}

// === contracts ===

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

#[test]
fn contracts_match_operation_resource_and_parameters() {
    let t = target(false);
    let c = cert(
        json!({"service": "ec2", "region": "us-east-1", "operation": "TerminateInstances", "resource": "i-1"}),
        json!({"constraints": {"/InstanceId.1": {"eq": "i-1"}}, "others": "deny"}),
    );
    let ok = check(
        &t,
        &c,
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1",
    );
    assert!(ok.is_ok(), "{ok:?}");
    for (body, why) in [
        (
            &b"Action=TerminateInstances&InstanceId.1=i-2"[..],
            "other resource",
        ),
        (b"Action=StopInstances&InstanceId.1=i-1", "other operation"),
        (
            b"Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2",
            "extra parameter",
        ),
    ] {
        let e = check(&t, &c, "ec2", "POST", "/", &[FORM], body).unwrap_err();
        assert_eq!(e.reason, Reason::ContractMismatch, "{why}: {e}");
    }
    let e = check(
        &t,
        &c,
        "ec2",
        "POST",
        "/",
        &[FORM, ("authorization", "x")],
        b"",
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::RequestMalformed);
}

#[test]
fn s3_uploads_need_a_sha256_certificate_naming_their_resource_and_nothing_else() {
    let t = target(false);
    let body = b"object bytes";
    let sha = hex::encode(Sha256::digest(body));
    let c = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "PutObject", "resource": "arn:aws:s3:::b/k"}),
        json!({"sha256": sha}),
    );
    let p = parts("PUT", "/b/k", &[("authorization", &auth("s3"))]);
    assert!(t.streams_upload(&p));
    assert!(check(&t, &c, "s3", "PUT", "/b/k", &[], b"").is_ok());
    // The bytes are held to the hash in flight (upload.rs), so the contract check passes any.
    assert!(check(&t, &c, "s3", "PUT", "/b/k2", &[], b"").is_err());
    let e = check(
        &t,
        &c,
        "s3",
        "PUT",
        "/b/k",
        &[("x-amz-acl", "public-read")],
        b"",
    )
    .unwrap_err();
    assert!(e.message.contains("ACL"), "{e}");
    let no_resource = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "PutObject"}),
        json!({"sha256": sha}),
    );
    assert!(check(&t, &no_resource, "s3", "PUT", "/b/k", &[], b"").is_err());
    let constraints = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "PutObject"}),
        json!({"constraints": {"/Bucket": {"eq": "b"}}, "others": "allow"}),
    );
    let e = check(&t, &constraints, "s3", "PUT", "/b/k", &[], b"").unwrap_err();
    assert!(e.message.contains("sha256"), "{e}");
    let none = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "PutObject"}),
        Value::Null,
    );
    assert!(check(&t, &none, "s3", "PUT", "/b/k", &[], b"").is_err());
    // Other S3 writes are buffered and their bytes compared here.
    assert!(!t.streams_upload(&parts(
        "PUT",
        "/b/k?tagging",
        &[("authorization", &auth("s3"))]
    )));
    let tagging = b"<Tagging/>";
    let c = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "PutObjectTagging", "resource": "arn:aws:s3:::b/k"}),
        json!({"sha256": hex::encode(Sha256::digest(tagging))}),
    );
    assert!(check(&t, &c, "s3", "PUT", "/b/k?tagging", &[], tagging).is_ok());
    assert!(check(
        &t,
        &c,
        "s3",
        "PUT",
        "/b/k?tagging",
        &[],
        b"<Tagging><TagSet/></Tagging>"
    )
    .is_err());
}

#[test]
fn certificates_without_body_admit_no_parameters() {
    let t = target(false);
    let c = cert(
        json!({"service": "s3", "region": "us-east-1", "operation": "DeleteObject"}),
        Value::Null,
    );
    let e = check(&t, &c, "s3", "DELETE", "/b/k", &[], b"").unwrap_err();
    assert!(e.message.contains("Bucket"), "{e}");
}

#[test]
fn reads_are_classified_with_the_sensitive_list() {
    let p = |svc: &str, method: &str, uri: &str, h: &[(&str, &str)], body: &[u8]| {
        let a = auth(svc);
        let mut hs = vec![("authorization", a.as_str())];
        hs.extend(with_sdk_content_type(svc, h, body));
        target(true)
            .parse(&parts(method, uri, &hs), &Bytes::copy_from_slice(body))
            .unwrap()
            .is_read
    };
    assert!(p("ec2", "POST", "/", &[FORM], b"Action=DescribeInstances"));
    assert!(!p(
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=TerminateInstances"
    ));
    let unknown = target(true)
        .parse(
            &parts("POST", "/", &[FORM, ("authorization", &auth("ec2"))]),
            &Bytes::from_static(b"Action=DescribeNotARealOperation"),
        )
        .err()
        .expect("an operation botocore does not have is refused, not read");
    assert_eq!(unknown.reason, Reason::ContractMismatch, "{unknown}");
    assert!(p("s3", "GET", "/b/k", &[], b""));
    assert!(!p(
        "secretsmanager",
        "POST",
        "/",
        &[("x-amz-target", "secretsmanager.GetSecretValue")],
        b"{}"
    ));
    // Credential vending and secret reads are not on the allow-list, whatever their name.
    assert!(!p(
        "sts",
        "POST",
        "/",
        &[FORM],
        b"Action=GetWebIdentityToken&Version=2011-06-15"
    ));
    assert!(p(
        "sts",
        "POST",
        "/",
        &[FORM],
        b"Action=GetCallerIdentity&Version=2011-06-15"
    ));
    assert!(!p(
        "lambda",
        "GET",
        "/2015-03-31/functions/f/configuration",
        &[],
        b""
    ));
    // ssm WithDecryption: read as AWS's JSON reads a boolean, failing closed.
    let ssm = |body: &[u8]| {
        p(
            "ssm",
            "POST",
            "/",
            &[("x-amz-target", "AmazonSSM.GetParameter")],
            body,
        )
    };
    assert!(ssm(br#"{"Name":"p"}"#));
    assert!(ssm(br#"{"Name":"p","WithDecryption":false}"#));
    for secret in [
        &br#"{"Name":"p","WithDecryption":true}"#[..],
        br#"{"Name":"p","WithDecryption":"false"}"#,
        br#"{"Name":"p","WithDecryption":"true"}"#,
        br#"{"Name":"p","WithDecryption":1}"#,
        br#"{"Name":"p","WithDecryption":0}"#,
        br#"{"Name":"p","WithDecryption":null}"#,
    ] {
        assert!(!ssm(secret), "{}", String::from_utf8_lossy(secret));
    }
    let off = target(false);
    let a = auth("ec2");
    assert!(
        !off.parse(
            &parts("POST", "/", &[FORM, ("authorization", &a)]),
            &Bytes::from_static(b"Action=DescribeInstances")
        )
        .unwrap()
        .is_read
    );
}

#[test]
fn certificates_come_from_the_security_token_header_or_query_once() {
    let p = parts("GET", "/b/k", &[("x-amz-security-token", "tok")]);
    assert_eq!(certificate(&p).unwrap().as_deref(), Some("tok"));
    let p = parts("GET", "/b/k?X-Amz-Security-Token=tok%2Bx", &[]);
    assert_eq!(certificate(&p).unwrap().as_deref(), Some("tok+x"));
    let p = parts(
        "GET",
        "/b/k?X-Amz-Security-Token=a",
        &[("x-amz-security-token", "b")],
    );
    assert_eq!(certificate(&p).unwrap_err().reason, Reason::CertMalformed);
    assert_eq!(certificate(&parts("GET", "/", &[])).unwrap(), None);
}

#[test]
fn forwarded_requests_carry_no_agent_credentials_and_a_fresh_signature() {
    let t = target(false);
    let a = auth("s3");
    let p = parts(
        "PUT",
        "/b/k%20x?X-Amz-Security-Token=cert&x-id=PutObject",
        &[
            ("authorization", a.as_str()),
            ("x-amz-security-token", "cert"),
            ("x-amz-date", "20240101T000000Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-seb-agent-token", "t"),
            ("content-type", "text/plain"),
        ],
    );
    let id = Identity {
        audit: Value::Null,
        headers: Vec::new(),
        aws: Some(Credentials {
            access_key_id: "AKIDBROKER".into(),
            secret_access_key: "s".into(),
            session_token: None,
        }),
    };
    let body = Bytes::from_static(b"body");
    let parsed = t.parse(&p, &body).unwrap();
    let req = t.upstream_request(&p, &parsed, body, &id, "rid").unwrap();
    assert_eq!(
        req.uri().to_string(),
        "http://127.0.0.1:1/b/k%20x?x-id=PutObject"
    );
    let h = req.headers();
    assert!(h["authorization"]
        .to_str()
        .unwrap()
        .contains("Credential=AKIDBROKER/"));
    assert_eq!(
        h["x-amz-content-sha256"],
        hex::encode(Sha256::digest(b"body")).as_str()
    );
    assert!(h.get("x-amz-security-token").is_none());
    assert!(h.get("x-seb-agent-token").is_none());
    assert!(!format!("{h:?}").contains("cert"), "{h:?}");
    assert_eq!(h["content-type"], "text/plain");
}

#[test]
fn the_committed_route_table_is_what_the_generator_makes() {
    // Regenerating needs botocore; where it is installed, the committed file must be current.
    let out = std::process::Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen_aws_routes.py"),
            "--check",
        ])
        .output();
    match out {
        Ok(o)
            if ["botocore", "policy_sentry"].iter().any(|m| {
                String::from_utf8_lossy(&o.stderr).contains(&format!("No module named '{m}'"))
            }) =>
        {
            eprintln!("botocore or policy_sentry not installed; generator check skipped")
        }
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("python3 not runnable ({e}); generator check skipped"),
    }
}

// === issue 14: what seb checks is what the upstream executes ===

#[test]
fn members_outside_the_operations_input_are_refused_whatever_others_says() {
    // Each of these once posed as the certified resource through the global priority list.
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM],
            b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-b&VolumeId=i-a",
        ),
        "\"VolumeId\" is not in TerminateInstances's input",
    );
    refused(
        try_call(
            "dynamodb",
            "POST",
            "/",
            &[("x-amz-target", "DynamoDB_20120810.PutItem")],
            br#"{"TableName":"audit","FunctionName":"orders","Item":{}}"#,
        ),
        "\"FunctionName\" is not in PutItem's input",
    );
    refused(
        try_call(
            "lambda",
            "PUT",
            "/2015-03-31/functions/billing/configuration",
            &[],
            br#"{"AutoScalingGroupName":"resize","MemorySize":512}"#,
        ),
        "\"AutoScalingGroupName\" is not in UpdateFunctionConfiguration's input",
    );
    // Case matters to AWS's readers; a differently cased name is another, unknown member.
    refused(
        try_call(
            "ec2",
            "POST",
            "/",
            &[FORM],
            b"Action=TerminateInstances&instanceId.1=i-a",
        ),
        "instanceId",
    );
    // Unmodelled query keys and x-amz headers on rest operations, and x-id naming another
    // operation.
    refused(
        try_call("s3", "DELETE", "/b/k?VersionIdx=1", &[], b""),
        "VersionIdx",
    );
    refused(
        try_call("s3", "DELETE", "/b/k", &[("x-amz-bogus", "1")], b""),
        "x-amz-bogus",
    );
    refused(
        try_call("s3", "DELETE", "/b/k?x-id=PutObject", &[], b""),
        "x-id",
    );
    // Operations the model does not have are refused, not forwarded as mutations.
    let e = try_call("ec2", "POST", "/", &[FORM], b"Action=TerminateEverything").unwrap_err();
    assert_eq!(e.reason, Reason::ContractMismatch, "{e}");
}

#[test]
fn the_resource_is_the_operations_own_member() {
    let c = call(
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=TerminateInstances&InstanceId.1=i-b",
    );
    assert_eq!(c.resource.as_deref(), Some("i-b"));
    let two = call(
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=TerminateInstances&InstanceId.1=i-b&InstanceId.2=i-c",
    );
    assert_eq!(two.resource, None);
    for odd in [
        "InstanceId",
        "InstanceId.01",
        "InstanceId.0",
        "InstanceId.1.x",
        "InstanceId.",
    ] {
        refused(
            try_call(
                "ec2",
                "POST",
                "/",
                &[FORM],
                format!("Action=TerminateInstances&InstanceId.1=i-a&{odd}=i-b").as_bytes(),
            ),
            "is a list",
        );
    }
    // DeleteVolume's resource is its VolumeId; a GroupId it does not take cannot stand in.
    let v = call(
        "ec2",
        "POST",
        "/",
        &[FORM],
        b"Action=DeleteVolume&VolumeId=vol-1",
    );
    assert_eq!(v.resource.as_deref(), Some("vol-1"));
    let put = call(
        "dynamodb",
        "POST",
        "/",
        &[("x-amz-target", "DynamoDB_20120810.PutItem")],
        br#"{"TableName":"orders","Item":{}}"#,
    );
    assert_eq!(put.resource.as_deref(), Some("orders"));
    // A resource-naming member of the wrong type names nothing.
    let odd = call(
        "dynamodb",
        "POST",
        "/",
        &[("x-amz-target", "DynamoDB_20120810.PutItem")],
        br#"{"TableName":["orders"],"Item":{}}"#,
    );
    assert_eq!(odd.resource, None);
}

#[test]
fn content_type_must_be_the_protocols() {
    let ddb = ("x-amz-target", "DynamoDB_20120810.PutItem");
    let body = br#"{"TableName":"orders","Item":{}}"#;
    for ct in [
        "application/x-www-form-urlencoded",
        "application/json",
        "application/x-amz-json-1.1",
        "application/x-amz-json-1.0; charset=iso-8859-1",
        "application/x-amz-json-1.0; charset=utf-7",
        "application/x-amz-json-1.0; charset=utf-8; charset=utf-8",
        "application/x-amz-json-1.0; boundary=x",
        "application/x-amz-json-1.0x",
        "text/plain",
    ] {
        refused(
            try_call("dynamodb", "POST", "/", &[ddb, ("content-type", ct)], body),
            "Content-Type",
        );
    }
    // Missing: the SDKs always send it, and some endpoints pick the protocol by it.
    let a = auth("dynamodb");
    refused(
        parse(
            &parts("POST", "/", &[("authorization", &a), ddb]),
            body.as_slice(),
        ),
        "Content-Type",
    );
    refused(
        try_call(
            "dynamodb",
            "POST",
            "/",
            &[
                ddb,
                ("content-type", "application/x-amz-json-1.0"),
                ("content-type", "application/x-amz-json-1.0"),
            ],
            body,
        ),
        "more than once",
    );
    for ok in [
        "application/x-amz-json-1.0",
        "Application/X-Amz-Json-1.0",
        "application/x-amz-json-1.0; charset=UTF-8",
    ] {
        try_call("dynamodb", "POST", "/", &[ddb, ("content-type", ok)], body)
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // Query and ec2: a form, exactly, and at most charset=utf-8 (botocore sends it, the Rust
    // SDK does not).
    let form = b"Action=SetDesiredCapacity&AutoScalingGroupName=web&DesiredCapacity=3";
    for ct in [
        "application/x-www-form-urlencodedx",
        "application/x-www-form-urlencoded; charset=iso-8859-1",
        "application/x-www-form-urlencoded; charset=\"utf-8\"",
        "application/json",
        "multipart/form-data",
    ] {
        refused(
            try_call("autoscaling", "POST", "/", &[("content-type", ct)], form),
            "Content-Type",
        );
    }
    refused(
        try_call("autoscaling", "POST", "/", &[], form),
        "Content-Type",
    );
    // A body-less query call may not claim another protocol either.
    refused(
        try_call(
            "autoscaling",
            "GET",
            "/?Action=DescribeAutoScalingGroups",
            &[("content-type", "application/x-amz-json-1.1")],
            b"",
        ),
        "Content-Type",
    );
    for ct in [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
    ] {
        try_call("autoscaling", "POST", "/", &[("content-type", ct)], form).unwrap();
    }
    // rest-json: a JSON body is application/json.
    let lam = "/2015-03-31/functions/f/configuration";
    for ct in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=iso-8859-1",
    ] {
        refused(
            try_call(
                "lambda",
                "PUT",
                lam,
                &[("content-type", ct)],
                br#"{"MemorySize":256}"#,
            ),
            "Content-Type",
        );
    }
    let a = auth("lambda");
    refused(
        parse(
            &parts("PUT", lam, &[("authorization", &a)]),
            br#"{"MemorySize":256}"#.as_slice(),
        ),
        "Content-Type",
    );
}

#[test]
fn encoded_characters_in_an_s3_bucket_label_are_refused() {
    for path in [
        "/prod-artifacts%2Fkeep.txt",
        "/prod-artifacts%2fkeep.txt",
        "/prod-artifacts%2F",
        "/prod%2Dartifacts/keep.txt",
        "/prod-artifacts%5Ckeep.txt",
        "/prod-artifacts%3Fx/keep.txt",
    ] {
        refused(try_call("s3", "GET", path, &[], b""), "bucket");
    }
    refused(
        try_call("s3", "GET", "/prod!artifacts/k", &[], b""),
        "bucket",
    );
    // The key may hold encoded separators: S3 reads them as part of the key, as seb does.
    let c = call("s3", "GET", "/prod-artifacts/a%2Fb", &[], b"");
    assert_eq!(c.params["Key"], "a/b");
}

#[test]
fn a_certified_copy_must_pin_its_source() {
    let t = target(false);
    let dest = json!({"service": "s3", "region": "us-east-1", "operation": "CopyObject",
        "resource": "arn:aws:s3:::dst/out.txt"});
    let src = ("x-amz-copy-source", "src/in.txt");
    let pinned = cert(
        dest.clone(),
        json!({"constraints": {"/Bucket": {"eq": "dst"}, "/Key": {"eq": "out.txt"},
            "/CopySource": {"eq": "src/in.txt"}}, "others": "deny"}),
    );
    check(&t, &pinned, "s3", "PUT", "/dst/out.txt", &[src], b"").unwrap();
    let e = check(
        &t,
        &pinned,
        "s3",
        "PUT",
        "/dst/out.txt",
        &[("x-amz-copy-source", "src/other.txt")],
        b"",
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::ContractMismatch, "{e}");
    let loose = cert(
        dest,
        json!({"constraints": {"/Bucket": {"eq": "dst"}, "/Key": {"eq": "out.txt"},
            "/CopySource": {"prefix": "src/"}}, "others": "deny"}),
    );
    let e = check(&t, &loose, "s3", "PUT", "/dst/out.txt", &[src], b"").unwrap_err();
    assert_eq!(e.reason, Reason::ContractMismatch, "{e}");
    assert!(e.message.contains("/CopySource"), "{e}");
}

// === property tests for the protocol parsers ===
// Bounded (256 cases each, seconds in CI). A failing case is saved by proptest under
// `proptest-regressions/` at the crate root; commit that file so the case is replayed first.

mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    /// Percent-encodes everything but unreserved characters, as a form encoder may.
    fn enc(s: &str) -> String {
        const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        percent_encoding::utf8_percent_encode(s, SET).to_string()
    }

    fn form(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn ec2(body: &[u8]) -> Result<Call, Denial> {
        try_call("ec2", "POST", "/", &[FORM], body)
    }

    /// Members TerminateInstances takes, in the flat spelling.
    fn member() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u16..20).prop_map(|i| format!("InstanceId.{i}")),
            Just("Force".to_string()),
            Just("SkipOsShutdown".to_string()),
            Just("DryRun".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(Config { cases: 256, ..Config::default() })]

        #[test]
        fn the_flat_query_form_reads_back_what_was_written(
            pairs in proptest::collection::btree_map("\\PC{0,12}", "\\PC{0,24}", 0..8)
        ) {
            let pairs: Vec<(String, String)> = pairs.into_iter().collect();
            prop_assert_eq!(protocol::query_pairs(&form(&pairs)).unwrap(), pairs);
        }

        #[test]
        fn query_parameters_parse_to_exactly_the_flat_object(
            params in proptest::collection::btree_map(member(), "\\PC{0,24}", 0..8),
            in_query in any::<bool>(),
        ) {
            let mut pairs = vec![("Action".to_string(), "TerminateInstances".to_string())];
            pairs.extend(params.clone());
            let c = if in_query {
                try_call("ec2", "GET", &format!("/?{}", form(&pairs)), &[], b"")
            } else {
                ec2(form(&pairs).as_bytes())
            }
            .unwrap();
            prop_assert_eq!(c.operation, "TerminateInstances");
            let want: serde_json::Map<String, Value> =
                params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            prop_assert_eq!(c.params, Value::Object(want));
        }

        #[test]
        fn a_parameter_given_twice_is_always_refused(
            params in proptest::collection::vec((member(), "\\PC{0,8}"), 1..6),
            dup in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            action_twice in any::<bool>(),
        ) {
            let mut pairs = vec![("Action".to_string(), "TerminateInstances".to_string())];
            pairs.extend(params);
            let copy = pairs[if action_twice { 0 } else { dup.index(pairs.len()) }].clone();
            let pos = at.index(pairs.len() + 1);
            pairs.insert(pos, copy);
            let e = ec2(form(&pairs).as_bytes()).unwrap_err();
            prop_assert_eq!(e.reason, Reason::RequestMalformed);
        }

        #[test]
        fn parameters_outside_the_input_shape_are_always_refused(
            name in "[A-Za-z][A-Za-z0-9]{0,12}",
            suffix in prop_oneof![Just(String::new()), Just(".1".to_string()), Just(".1.Name".to_string())],
        ) {
            let route = &model::service("ec2").unwrap().operations["TerminateInstances"];
            prop_assume!(!route.members.contains(&name) && name != "Action" && name != "Version");
            let body = format!("Action=TerminateInstances&{name}{suffix}=x");
            let e = ec2(body.as_bytes()).unwrap_err();
            prop_assert_eq!(e.reason, Reason::RequestMalformed);
        }

        #[test]
        fn random_bytes_never_panic_any_protocol(
            body in proptest::collection::vec(any::<u8>(), 0..96),
            path in "/[ -~]{0,40}",
            ct in prop_oneof![
                Just("application/x-www-form-urlencoded"),
                Just("application/x-amz-json-1.0"),
                Just("application/x-amz-json-1.1"),
                Just("application/json"),
                Just("text/plain"),
            ],
        ) {
            let Ok(uri) = path.parse::<http::Uri>() else { return Ok(()) };
            let uri = uri.to_string();
            for (svc, target) in [
                ("ec2", None),
                ("autoscaling", None),
                ("dynamodb", Some("DynamoDB_20120810.PutItem")),
                ("ecs", Some("AmazonEC2ContainerServiceV20141113.UpdateService")),
                ("lambda", None),
                ("s3", None),
            ] {
                for method in ["GET", "PUT", "POST", "DELETE"] {
                    let mut h = vec![("content-type", ct)];
                    if let Some(t) = target {
                        h.push(("x-amz-target", t));
                    }
                    let _ = try_call(svc, method, &uri, &h, &body);
                }
            }
        }

        #[test]
        fn json_bodies_parse_to_themselves_or_are_refused(
            members in proptest::collection::btree_map(
                prop_oneof![Just("TableName"), Just("Item"), Just("ReturnValues"), Just("ConditionExpression")],
                prop_oneof![any::<i64>().prop_map(Value::from), "\\PC{0,12}".prop_map(Value::from), any::<bool>().prop_map(Value::from)],
                0..4,
            ),
            extra in proptest::option::of("[A-Za-z]{1,10}"),
        ) {
            let mut obj: serde_json::Map<String, Value> =
                members.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let body_members = &model::service("dynamodb").unwrap().operations["PutItem"].members;
            let stranger = extra.filter(|e| !body_members.contains(e));
            if let Some(e) = &stranger {
                obj.insert(e.clone(), Value::Null);
            }
            let body = serde_json::to_vec(&Value::Object(obj.clone())).unwrap();
            let r = try_call("dynamodb", "POST", "/", &[("x-amz-target", "DynamoDB_20120810.PutItem")], &body);
            match stranger {
                Some(_) => prop_assert_eq!(r.unwrap_err().reason, Reason::RequestMalformed),
                None => prop_assert_eq!(r.unwrap().params, Value::Object(obj)),
            }
        }

        #[test]
        fn copy_sources_read_back_and_never_panic(
            bucket in "[a-z0-9][a-z0-9.-]{1,20}",
            key in "\\PC{1,20}",
            version in proptest::option::of("[A-Za-z0-9._-]{1,12}"),
            slash in any::<bool>(),
            junk in "\\PC{0,40}",
        ) {
            let _ = policy::CopySource::parse(&junk);
            let written = format!(
                "{}{bucket}/{}{}",
                if slash { "/" } else { "" },
                enc(&key),
                version.as_deref().map(|v| format!("?versionId={v}")).unwrap_or_default()
            );
            let read = policy::CopySource::parse(&written).unwrap();
            prop_assert_eq!(
                read,
                policy::CopySource { bucket, key, version_id: version }
            );
        }

        #[test]
        fn content_types_are_the_protocols_or_refused(
            media in prop_oneof![
                Just("application/x-amz-json-1.0".to_string()),
                Just("APPLICATION/X-AMZ-JSON-1.0".to_string()),
                "[ -~]{0,30}",
            ],
            params in proptest::collection::vec("[ -~]{0,16}", 0..3),
        ) {
            let ct = std::iter::once(media.clone()).chain(params.clone()).collect::<Vec<_>>().join(";");
            let Ok(v) = http::HeaderValue::from_str(&ct) else { return Ok(()) };
            let Ok(v) = v.to_str() else { return Ok(()) };
            let r = try_call(
                "dynamodb",
                "POST",
                "/",
                &[("x-amz-target", "DynamoDB_20120810.DescribeTable"), ("content-type", v)],
                br#"{"TableName":"t"}"#,
            );
            let media_ok = media
                .trim_matches([' ', '\t'])
                .eq_ignore_ascii_case("application/x-amz-json-1.0");
            let params_ok = params.len() <= 1
                && params.iter().all(|p| {
                    p.trim_matches([' ', '\t'])
                        .split_once('=')
                        .is_some_and(|(k, v)| k.eq_ignore_ascii_case("charset") && v.eq_ignore_ascii_case("utf-8"))
                });
            prop_assert_eq!(r.is_ok(), media_ok && params_ok, "{:?}", ct);
        }

        #[test]
        fn rest_routes_take_labels_as_sent_and_refuse_encoded_bucket_bytes(
            function in "[A-Za-z0-9_-]{1,20}",
            bucket in "[a-z0-9][a-z0-9.-]{1,20}",
            key in "[ -~]{1,20}",
            encoded in "%[0-9A-F]{2}",
        ) {
            let c = call(
                "lambda",
                "GET",
                &format!("/2015-03-31/functions/{function}/configuration"),
                &[],
                b"",
            );
            prop_assert_eq!(c.operation, "GetFunctionConfiguration");
            prop_assert_eq!(c.params["FunctionName"].as_str(), Some(function.as_str()));
            let path = format!("/{bucket}/{}", enc(&key));
            let c = call("s3", "DELETE", &path, &[], b"");
            prop_assert_eq!(c.operation, "DeleteObject");
            prop_assert_eq!(c.params["Key"].as_str(), Some(key.as_str()));
            let bad = format!("/{bucket}{encoded}x/{}", enc(&key));
            prop_assert_eq!(
                try_call("s3", "DELETE", &bad, &[], b"").unwrap_err().reason,
                Reason::RequestMalformed
            );
        }
    }
}
