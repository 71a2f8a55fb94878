//! Which calls are reads, which reads still need a certificate, and the inline session policy
//! that scopes an execution identity to exactly the certified call.

use super::protocol::Call;
use crate::cert::claims::{BodyRule, Others};
use crate::denial::{Denial, Reason};
use serde_json::{json, Value};

/// STS refuses inline session policies over 2,048 characters (plain text).
pub const SESSION_POLICY_LIMIT: usize = 2048;

/// Reads whose answer is itself a secret or a credential: they always need a certificate.
pub fn is_sensitive_read(call: &Call, s3_get_object: bool, extra: &[String]) -> bool {
    let op = call.operation.as_str();
    let decrypting = || {
        call.params
            .get("WithDecryption")
            .is_some_and(|v| v == &Value::Bool(true) || v == "true")
    };
    let builtin = match call.scope.service.as_str() {
        "secretsmanager" => matches!(op, "GetSecretValue" | "BatchGetSecretValue"),
        "ssm" => {
            matches!(
                op,
                "GetParameter" | "GetParameters" | "GetParametersByPath" | "GetParameterHistory"
            ) && decrypting()
        }
        "kms" => matches!(
            op,
            "Decrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "GenerateDataKeyPair"
        ),
        "sts" => matches!(
            op,
            "GetSessionToken"
                | "GetFederationToken"
                | "AssumeRole"
                | "AssumeRoleWithSAML"
                | "AssumeRoleWithWebIdentity"
        ),
        "s3" => s3_get_object && op == "GetObject",
        _ => false,
    };
    builtin
        || extra
            .iter()
            .any(|e| e.split_once(':') == Some((call.scope.service.as_str(), op)))
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

/// The policy attached to the AssumeRole call for one certificate, generated from its contract:
/// only the certified IAM action(s), on the certified resource when it is an ARN (S3 contracts
/// always name `arn:aws:s3:::bucket/key`), never more. The role's own policy still bounds it.
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
        Some(r) if r.starts_with("arn:") => r,
        _ => "*",
    };
    let doc = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "SebCertifiedCall",
            "Effect": "Allow",
            "Action": iam_actions(service, operation, &names),
            "Resource": resource,
        }]
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
        let (k, v) = auth("secretsmanager");
        let c = call(
            "POST",
            "/",
            &[(k, &v), ("x-amz-target", "secretsmanager.GetSecretValue")],
            br#"{"SecretId":"x"}"#,
        );
        assert!(is_sensitive_read(&c, false, &[]));
        let (k, v) = auth("ssm");
        let with = call(
            "POST",
            "/",
            &[(k, &v), ("x-amz-target", "AmazonSSM.GetParameter")],
            br#"{"Name":"x","WithDecryption":true}"#,
        );
        let without = call(
            "POST",
            "/",
            &[(k, &v), ("x-amz-target", "AmazonSSM.GetParameter")],
            br#"{"Name":"x"}"#,
        );
        assert!(is_sensitive_read(&with, false, &[]));
        assert!(!is_sensitive_read(&without, false, &[]));
        let (k, v) = auth("s3");
        let get = call("GET", "/b/k", &[(k, &v)], b"");
        assert!(!is_sensitive_read(&get, false, &[]));
        assert!(is_sensitive_read(&get, true, &[]));
        let (k, v) = auth("lambda");
        let cfg = call(
            "GET",
            "/2015-03-31/functions/f/configuration",
            &[(k, &v)],
            b"",
        );
        assert!(is_sensitive_read(
            &cfg,
            false,
            &["lambda:GetFunctionConfiguration".into()]
        ));
        assert!(!is_sensitive_read(&cfg, false, &[]));
    }
}
