//! `seb.precondition` for aws: `{"operation": OP, "params": {...}, "expect": {POINTER: VALUE}}`.
//! The broker makes that read call itself, under the read identity, in the certificate's
//! service and region, and compares the answer with what the signer saw. A mismatch is
//! `drift`: the world changed since the change was certified.
//!
//! This build reads json-protocol answers (ecs, dynamodb, sqs, ssm, kms, secretsmanager);
//! preconditions on other protocols are refused as malformed rather than skipped.

use super::model::{self, Protocol};
use super::sigv4::{self, Credentials, Payload};
use super::{AwsContract, AwsTarget};
use crate::denial::{Denial, Reason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precondition {
    pub operation: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    pub expect: Map<String, Value>,
}

fn malformed(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::CertMalformed, msg)
}

/// Parses and checks a precondition without calling anything.
pub fn parse(pre: &Value, contract: &AwsContract) -> Result<Precondition, Denial> {
    let p: Precondition = serde_json::from_value(pre.clone())
        .map_err(|e| malformed(format!("seb.precondition for aws: {e}")))?;
    let service = model::service(&contract.service)
        .ok_or_else(|| malformed(format!("unknown service {:?}", contract.service)))?;
    if service.protocol != Protocol::Json {
        return Err(malformed(format!(
            "preconditions are read for json-protocol services only in this build, and {} is {}",
            contract.service,
            service.protocol.as_str()
        )));
    }
    // A precondition runs under the read identity, and its answer is an oracle for the
    // agent: only the reads that pass without a certificate may be one.
    if !model::is_read(service, &p.operation) {
        return Err(malformed(format!(
            "precondition operation {:?} is not a known {} read",
            p.operation, contract.service
        )));
    }
    if p.expect.is_empty() {
        return Err(malformed("precondition expects nothing"));
    }
    Ok(p)
}

/// Compares the read's answer with the expected values.
pub fn compare(answer: &Value, expect: &Map<String, Value>) -> Result<(), Denial> {
    for (pointer, want) in expect {
        let got = answer.pointer(pointer);
        if got != Some(want) {
            return Err(Denial::new(
                Reason::Drift,
                format!(
                    "{pointer} is {}, the certificate was issued when it was {want}",
                    got.map(|v| v.to_string())
                        .unwrap_or_else(|| "absent".into())
                ),
            ));
        }
    }
    Ok(())
}

pub async fn check(
    target: &AwsTarget,
    pre: &Value,
    contract: &AwsContract,
    creds: &(Credentials, Value),
) -> Result<(), Denial> {
    let p = parse(pre, contract)?;
    let service = model::service(&contract.service).expect("checked in parse");
    let unavailable = |m: String| Denial::new(Reason::IdentityUnavailable, m);
    let base = target.upstream_base(service, &contract.region)?;
    let body = Value::Object(p.params.clone()).to_string();
    let mut req = http::Request::post(format!(
        "{}://{}/",
        base.scheme_str().unwrap_or("https"),
        base.authority().map(|a| a.as_str()).unwrap_or_default()
    ))
    .header(
        "x-amz-target",
        format!(
            "{}.{}",
            service.target_prefix.as_deref().unwrap_or_default(),
            p.operation
        ),
    )
    .header(
        "content-type",
        format!(
            "application/x-amz-json-{}",
            service.json_version.as_deref().unwrap_or("1.1")
        ),
    )
    .body(Full::new(Bytes::from(body.clone())))
    .map_err(|e| malformed(format!("precondition request: {e}")))?;
    sigv4::sign_request(
        &mut req,
        &creds.0,
        &service.signing_name,
        &contract.region,
        Payload::Bytes(body.as_bytes()),
        SystemTime::now(),
    )?;
    let resp = tokio::time::timeout(Duration::from_secs(10), target.client.send(req))
        .await
        .map_err(|_| unavailable("the precondition read did not answer within 10s".into()))?
        .map_err(|e| unavailable(format!("the precondition read failed: {e}")))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| unavailable(format!("the precondition answer could not be read: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(unavailable(format!(
            "the precondition read {} answered {status}: {}",
            p.operation,
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )));
    }
    let answer = crate::json::parse_strict(&bytes)
        .map_err(|e| unavailable(format!("the precondition answer is not JSON: {e}")))?;
    compare(&answer, &p.expect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract(svc: &str) -> AwsContract {
        AwsContract {
            service: svc.into(),
            region: "us-east-1".into(),
            operation: "UpdateService".into(),
            resource: None,
        }
    }

    #[test]
    fn preconditions_are_checked_before_any_call() {
        let ok = json!({"operation": "DescribeServices", "params": {"cluster": "c", "services": ["s"]}, "expect": {"/services/0/desiredCount": 2}});
        assert!(parse(&ok, &contract("ecs")).is_ok());
        let write = json!({"operation": "DeleteService", "params": {}, "expect": {"/x": 1}});
        assert_eq!(
            parse(&write, &contract("ecs")).unwrap_err().reason,
            Reason::CertMalformed
        );
        let extra = json!({"operation": "DescribeServices", "expect": {"/x": 1}, "when": "now"});
        assert!(parse(&extra, &contract("ecs")).is_err());
        let query = json!({"operation": "DescribeInstances", "expect": {"/x": 1}});
        assert!(parse(&query, &contract("ec2"))
            .unwrap_err()
            .message
            .contains("json-protocol"));
        let nothing = json!({"operation": "DescribeServices", "expect": {}});
        assert!(parse(&nothing, &contract("ecs")).is_err());
    }

    #[test]
    fn answers_are_compared_exactly() {
        let answer = json!({"services": [{"desiredCount": 2, "status": "ACTIVE"}]});
        let mut expect = Map::new();
        expect.insert("/services/0/desiredCount".into(), json!(2));
        assert!(compare(&answer, &expect).is_ok());
        expect.insert("/services/0/status".into(), json!("DRAINING"));
        let e = compare(&answer, &expect).unwrap_err();
        assert_eq!(e.reason, Reason::Drift);
        let mut gone = Map::new();
        gone.insert("/services/1/desiredCount".into(), json!(2));
        assert!(compare(&answer, &gone)
            .unwrap_err()
            .message
            .contains("absent"));
    }
}
