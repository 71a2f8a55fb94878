//! Which calls are reads, which reads still need a certificate, and the inline session policy
//! that scopes an execution identity to exactly the certified call.

use super::protocol::Call;
use crate::cert::claims::{BodyRule, Others};
use crate::denial::{Denial, Reason};
use serde_json::{json, Value};

/// STS refuses inline session policies over 2,048 characters (plain text).
pub const SESSION_POLICY_LIMIT: usize = 2048;

/// Whether a read on the generated allow-list still needs a certificate: its `secret_if` flag
/// may be set (ssm `WithDecryption`), S3 `GetObject` when configured so, or the deployment
/// lists it in `sensitive_reads`. Operations that always return secrets are not on the
/// allow-list at all (`scripts/gen_aws_routes.py`).
pub fn is_sensitive_read(call: &Call, s3_get_object: bool, extra: &[String]) -> bool {
    let op = call.operation.as_str();
    let flagged = call
        .route
        .secret_if
        .as_deref()
        .is_some_and(|flag| flag_may_be_set(call, flag));
    flagged
        || (s3_get_object && call.scope.service == "s3" && op == "GetObject")
        || extra
            .iter()
            .any(|e| e.split_once(':') == Some((call.scope.service.as_str(), op)))
}

/// Reads a boolean member the way the protocol spells it, failing closed: only an absent
/// member or the protocol's own spelling of false (`false` in JSON; the string `false` in
/// query, ec2 and rest parameters) is false. A spelling AWS might read as true, or refuse,
/// counts as set.
fn flag_may_be_set(call: &Call, flag: &str) -> bool {
    use super::model::Protocol;
    match (call.params.get(flag), call.service.protocol) {
        (None, _) => false,
        (Some(Value::Bool(false)), Protocol::Json | Protocol::RestJson) => false,
        (Some(Value::String(s)), Protocol::Query | Protocol::Ec2 | Protocol::RestXml) => {
            s != "false"
        }
        _ => true,
    }
}

/// IAM actions a certified call needs. Most are `service:Operation`; S3 names some actions
/// after what they touch rather than after the API operation. `names(member)` says whether the
/// certificate admits that parameter (S3 ACL or tagging headers need their own actions).
pub fn iam_actions(service: &str, operation: &str, names: &dyn Fn(&str) -> bool) -> Vec<String> {
    if service != "s3" {
        return vec![format!("{service}:{operation}")];
    }
    let base = match operation {
        "UploadPart"
        | "CopyObject"
        | "UploadPartCopy"
        | "CreateMultipartUpload"
        | "CompleteMultipartUpload" => "PutObject",
        "HeadObject" => "GetObject",
        "HeadBucket" | "ListObjects" | "ListObjectsV2" => "ListBucket",
        "DeleteObjects" => "DeleteObject",
        "ListMultipartUploads" => "ListBucketMultipartUploads",
        "ListParts" => "ListMultipartUploadParts",
        other => other,
    };
    let mut out = vec![format!("s3:{base}")];
    if [
        "ACL",
        "GrantFullControl",
        "GrantRead",
        "GrantReadACP",
        "GrantWriteACP",
    ]
    .iter()
    .any(|g| names(g))
        && base == "PutObject"
    {
        out.push("s3:PutObjectAcl".into());
    }
    if names("Tagging") && base == "PutObject" {
        out.push("s3:PutObjectTagging".into());
    }
    out
}

/// An IAM resource names characters literally only through policy variables: a `*` or `?` in
/// a key would otherwise be a wildcard and widen the grant to other objects.
pub fn iam_literal(arn: &str) -> String {
    let mut out = String::with_capacity(arn.len());
    for c in arn.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

/// An S3 copy's source as S3 reads `x-amz-copy-source`: `[/]bucket/key[?versionId=V]`, the key
/// URL-encoded. Access-point and Outposts ARNs are refused: the broker does not model them.
#[derive(Debug, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

impl CopySource {
    pub fn parse(v: &str) -> Result<CopySource, String> {
        let v = v.strip_prefix('/').unwrap_or(v);
        if v.starts_with("arn:") {
            return Err(format!(
                "copy source {v:?} is an ARN (access point or Outposts), which the broker does not model"
            ));
        }
        let (path, version_id) = match v.split_once('?') {
            None => (v, None),
            Some((p, q)) => match q.strip_prefix("versionId=") {
                Some(id) if !id.is_empty() && !id.contains(['&', '=', '?']) => {
                    (p, Some(id.to_string()))
                }
                _ => {
                    return Err(format!(
                        "copy source {v:?}: the only query S3 reads there is ?versionId=ID"
                    ))
                }
            },
        };
        let (bucket, key) = path
            .split_once('/')
            .ok_or_else(|| format!("copy source {v:?} is not bucket/key"))?;
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!(
                "copy source {v:?}: {bucket:?} is not a bucket name"
            ));
        }
        let key = super::protocol::percent_decode(key).map_err(|d| d.message)?;
        if key.is_empty() {
            return Err(format!("copy source {v:?} names no key"));
        }
        Ok(CopySource {
            bucket: bucket.to_string(),
            key,
            version_id,
        })
    }

    /// What the session needs to read it: a versioned read is its own IAM action.
    fn statement(&self) -> Value {
        json!({
            "Sid": "SebCopySource",
            "Effect": "Allow",
            "Action": [if self.version_id.is_some() { "s3:GetObjectVersion" } else { "s3:GetObject" }],
            "Resource": iam_literal(&format!("arn:aws:s3:::{}/{}", self.bucket, self.key)),
        })
    }
}

/// S3 operations that read another object: their session must be allowed to read it.
pub fn is_s3_copy(service: &str, operation: &str) -> bool {
    service == "s3" && matches!(operation, "CopyObject" | "UploadPartCopy")
}

/// The copy source a certificate pins: `/CopySource` constrained by `eq` to a string. A copy
/// certificate that does not pin it cannot be scoped to a source and is refused.
pub fn certified_copy_source(body: Option<&BodyRule>) -> Result<CopySource, Denial> {
    let refuse = |m: String| Denial::new(Reason::ContractMismatch, m);
    let pinned = match body {
        Some(BodyRule::Constraints(c)) => c.constraints.get("/CopySource").and_then(|c| {
            let o = c.as_object()?;
            (o.len() == 1).then(|| o.get("eq")?.as_str())?
        }),
        _ => None,
    };
    let Some(src) = pinned else {
        return Err(refuse(
            "a certified S3 copy must pin its source: seb.body.constraints[\"/CopySource\"] = {\"eq\": \"bucket/key\"}, so the session can be allowed to read that object and no other".into(),
        ));
    };
    CopySource::parse(src).map_err(|m| refuse(format!("certificate's /CopySource: {m}")))
}

/// The policy attached to the AssumeRole call for one certificate, generated from its contract:
/// only the certified IAM action(s), on the certified resource when it is an ARN (S3 contracts
/// always name `arn:aws:s3:::bucket/key`), never more; for an S3 copy, also the read of the
/// source the certificate pins. The role's own policy still bounds it.
pub fn session_policy(
    service: &str,
    operation: &str,
    resource: Option<&str>,
    body: Option<&BodyRule>,
) -> Result<String, Denial> {
    let names = |member: &str| match body {
        Some(BodyRule::Constraints(c)) => {
            let p = format!("/{member}");
            c.others == Others::Allow
                || c.constraints
                    .keys()
                    .any(|k| *k == p || k.starts_with(&format!("{p}/")))
        }
        _ => false,
    };
    let resource = match resource {
        // DeleteObjects names its bucket, but s3:DeleteObject is granted on objects: the keys
        // are the XML body's, fixed by the certificate's sha256.
        Some(r) if service == "s3" && operation == "DeleteObjects" && !r.contains('/') => {
            format!("{}/*", iam_literal(r))
        }
        Some(r) if r.starts_with("arn:") => iam_literal(r),
        _ => "*".to_string(),
    };
    let mut statements = vec![json!({
        "Sid": "SebCertifiedCall",
        "Effect": "Allow",
        "Action": iam_actions(service, operation, &names),
        "Resource": resource,
    })];
    if is_s3_copy(service, operation) {
        statements.push(certified_copy_source(body)?.statement());
    }
    let doc = json!({
        "Version": "2012-10-17",
        "Statement": statements,
    })
    .to_string();
    if doc.len() > SESSION_POLICY_LIMIT {
        return Err(Denial::new(
            Reason::IdentityUnavailable,
            format!(
                "the session policy for this certificate is {} characters, over STS's {SESSION_POLICY_LIMIT}; its resource name is too long to scope an identity to",
                doc.len()
            ),
        ));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{parse, Call};
    use super::*;

    fn call(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Call {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, _) = b.body(()).unwrap().into_parts();
        parse(&parts, body).unwrap()
    }

    fn auth(svc: &str) -> (&'static str, String) {
        (
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/us-east-1/{svc}/aws4_request, SignedHeaders=host, Signature=00"),
        )
    }

    fn policy(svc: &str, op: &str, resource: Option<&str>, body: Value) -> Value {
        let rule: Option<BodyRule> =
            (!body.is_null()).then(|| serde_json::from_value(body).unwrap());
        serde_json::from_str(&session_policy(svc, op, resource, rule.as_ref()).unwrap()).unwrap()
    }

    #[test]
    fn s3_contracts_scope_to_the_object_arn_and_certified_headers() {
        let obj = Some("arn:aws:s3:::bucket/dir/key.txt");
        let sha = json!({"sha256": "0".repeat(64)});
        let p = policy("s3", "PutObject", obj, sha.clone());
        assert_eq!(p["Statement"][0]["Action"], json!(["s3:PutObject"]));
        assert_eq!(
            p["Statement"][0]["Resource"],
            "arn:aws:s3:::bucket/dir/key.txt"
        );
        assert_eq!(p["Statement"][0]["Effect"], "Allow");
        assert_eq!(p["Statement"].as_array().unwrap().len(), 1);
        let acl = json!({"constraints": {"/Bucket": {"eq": "bucket"}, "/ACL": {"eq": "private"}}, "others": "deny"});
        assert_eq!(
            policy("s3", "PutObject", obj, acl)["Statement"][0]["Action"],
            json!(["s3:PutObject", "s3:PutObjectAcl"])
        );
        assert_eq!(
            policy("s3", "UploadPart", obj, sha)["Statement"][0]["Action"],
            json!(["s3:PutObject"])
        );
        let del = json!({"constraints": {"/Bucket": {"eq": "bucket"}, "/Key": {"eq": "k"}}, "others": "deny"});
        assert_eq!(
            policy("s3", "DeleteObject", Some("arn:aws:s3:::bucket/k"), del)["Statement"][0]
                ["Action"],
            json!(["s3:DeleteObject"])
        );
    }

    #[test]
    fn other_services_get_their_exact_action_and_the_certified_arn() {
        let arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-1";
        let body = json!({"constraints": {"/InstanceId.1": {"eq": "i-1"}}, "others": "deny"});
        let p = policy("ec2", "TerminateInstances", Some(arn), body.clone());
        assert_eq!(
            p["Statement"][0]["Action"],
            json!(["ec2:TerminateInstances"])
        );
        assert_eq!(p["Statement"][0]["Resource"], arn);
        // A resource that is not an ARN cannot be a policy resource: the action alone scopes it.
        let p = policy("ec2", "TerminateInstances", Some("i-1"), body);
        assert_eq!(p["Statement"][0]["Resource"], "*");
        for (svc, op) in [
            ("ecs", "UpdateService"),
            ("autoscaling", "SetDesiredCapacity"),
            ("dynamodb", "PutItem"),
            ("sqs", "SendMessage"),
            ("lambda", "UpdateFunctionConfiguration"),
        ] {
            let p = policy(svc, op, None, Value::Null);
            assert_eq!(p["Statement"][0]["Action"], json!([format!("{svc}:{op}")]));
            assert_eq!(p["Version"], "2012-10-17");
        }
    }

    #[test]
    fn an_oversized_policy_is_refused_not_truncated() {
        let long = format!("arn:aws:s3:::bucket/{}", "k".repeat(2100));
        let e = session_policy("s3", "PutObject", Some(&long), None).unwrap_err();
        assert_eq!(e.reason, Reason::IdentityUnavailable);
        assert!(e.message.contains("2048"), "{}", e.message);
        assert!(session_policy("s3", "PutObject", Some(&long[..1500]), None).is_ok());
    }

    #[test]
    fn sensitive_reads_are_recognised() {
        let json11 = ("content-type", "application/x-amz-json-1.1");
        let (k, v) = auth("secretsmanager");
        let c = call(
            "POST",
            "/",
            &[
                (k, &v),
                json11,
                ("x-amz-target", "secretsmanager.GetSecretValue"),
            ],
            br#"{"SecretId":"x"}"#,
        );
        // Not a read at all: the generated allow-list leaves it out.
        assert!(!c.route.read);
        let (k, v) = auth("ssm");
        let ssm = |body: &[u8]| {
            call(
                "POST",
                "/",
                &[(k, &v), json11, ("x-amz-target", "AmazonSSM.GetParameter")],
                body,
            )
        };
        let with = ssm(br#"{"Name":"x","WithDecryption":true}"#);
        let without = ssm(br#"{"Name":"x"}"#);
        assert!(with.route.read && without.route.read);
        assert!(is_sensitive_read(&with, false, &[]));
        assert!(!is_sensitive_read(&without, false, &[]));
        assert!(!is_sensitive_read(
            &ssm(br#"{"Name":"x","WithDecryption":false}"#),
            false,
            &[]
        ));
        assert!(is_sensitive_read(
            &ssm(br#"{"Name":"x","WithDecryption":"false"}"#),
            false,
            &[]
        ));
        let (k, v) = auth("s3");
        let get = call("GET", "/b/k", &[(k, &v)], b"");
        assert!(!is_sensitive_read(&get, false, &[]));
        assert!(is_sensitive_read(&get, true, &[]));
        let (k, v) = auth("dynamodb");
        let describe = call(
            "POST",
            "/",
            &[
                (k, &v),
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amz-target", "DynamoDB_20120810.DescribeTable"),
            ],
            br#"{"TableName":"t"}"#,
        );
        assert!(describe.route.read);
        assert!(is_sensitive_read(
            &describe,
            false,
            &["dynamodb:DescribeTable".into()]
        ));
        assert!(!is_sensitive_read(&describe, false, &[]));
    }

    #[test]
    fn a_certified_copy_may_read_exactly_its_pinned_source() {
        let dest = Some("arn:aws:s3:::dst/out.txt");
        let body = |src: &str| {
            json!({"constraints": {"/Bucket": {"eq": "dst"}, "/Key": {"eq": "out.txt"},
                "/CopySource": {"eq": src}}, "others": "deny"})
        };
        let p = policy("s3", "CopyObject", dest, body("src/in%20put.txt"));
        assert_eq!(
            p["Statement"],
            json!([
                {"Sid": "SebCertifiedCall", "Effect": "Allow", "Action": ["s3:PutObject"],
                 "Resource": "arn:aws:s3:::dst/out.txt"},
                {"Sid": "SebCopySource", "Effect": "Allow", "Action": ["s3:GetObject"],
                 "Resource": "arn:aws:s3:::src/in put.txt"}
            ])
        );
        // A version is its own IAM action; a wildcard in a key is a literal, not a grant.
        let p = policy(
            "s3",
            "UploadPartCopy",
            dest,
            body("/src/a*b%3F.txt?versionId=v1"),
        );
        assert_eq!(
            p["Statement"][1],
            json!({"Sid": "SebCopySource", "Effect": "Allow", "Action": ["s3:GetObjectVersion"],
                   "Resource": "arn:aws:s3:::src/a${*}b${?}.txt"})
        );
        let p = policy(
            "s3",
            "DeleteObjects",
            Some("arn:aws:s3:::b"),
            json!({"sha256": "0".repeat(64)}),
        );
        assert_eq!(
            (&p["Statement"][0]["Action"], &p["Statement"][0]["Resource"]),
            (&json!(["s3:DeleteObject"]), &json!("arn:aws:s3:::b/*"))
        );
        let p = policy("s3", "PutObject", Some("arn:aws:s3:::b/*"), Value::Null);
        assert_eq!(p["Statement"][0]["Resource"], "arn:aws:s3:::b/${*}");
        // A copy whose source the certificate does not pin exactly cannot be scoped.
        let unpinned = |b: Value| {
            let rule: BodyRule = serde_json::from_value(b).unwrap();
            session_policy("s3", "CopyObject", dest, Some(&rule)).unwrap_err()
        };
        for b in [
            json!({"constraints": {"/Bucket": {"eq": "dst"}}, "others": "allow"}),
            json!({"constraints": {"/CopySource": {"prefix": "src/"}}, "others": "deny"}),
            json!({"constraints": {"/CopySource": {"eq": "src/k", "prefix": "src/"}}, "others": "deny"}),
            json!({"constraints": {"/CopySource": {"eq": "arn:aws:s3:us-east-1:1:accesspoint/a/object/k"}}, "others": "deny"}),
            json!({"constraints": {"/CopySource": {"eq": "src/k?versionId=v&x=y"}}, "others": "deny"}),
            json!({"constraints": {"/CopySource": {"eq": "src%2Fk/x"}}, "others": "deny"}),
            json!({"constraints": {"/CopySource": {"eq": "src/"}}, "others": "deny"}),
        ] {
            let e = unpinned(b.clone());
            assert_eq!(e.reason, Reason::ContractMismatch, "{b}: {e}");
        }
        assert!(session_policy("s3", "CopyObject", dest, None).is_err());
    }
}
