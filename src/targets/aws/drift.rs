//! `seb.precondition` for aws: `{"operation": OP, "params": {...}, "expect": {POINTER: VALUE}}`.
//! The broker makes that read call itself, under the read identity, in the certificate's
//! service and region, turns the answer into JSON ([`super::answer`]: XML for query, ec2 and
//! rest-xml services), and compares it with what the signer saw. A mismatch is `drift`: the
//! world changed since the change was certified. Where the write can carry a condition on
//! the checked state, [`pin`] requires it; the audit record says whether the write was pinned.

mod call;
pub mod pin;

use super::model;
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
    // A precondition runs under the read identity, and its answer is an oracle for the
    // agent: only the reads that pass without a certificate may be one, or the named fields
    // of a read whose other fields are secret.
    let route = service.operations.get(&p.operation);
    let fields = route.and_then(|r| r.precondition_fields.as_ref());
    if !model::is_read(service, &p.operation) && fields.is_none() {
        return Err(malformed(format!(
            "precondition operation {:?} is not a known {} read",
            p.operation, contract.service
        )));
    }
    if p.expect.is_empty() {
        return Err(malformed("precondition expects nothing"));
    }
    if let Some(fields) = fields {
        for pointer in p.expect.keys() {
            let top = pointer.strip_prefix('/').unwrap_or_default();
            if !fields.iter().any(|f| f == top) {
                return Err(malformed(format!(
                    "a precondition on {} may expect only {}, not {pointer}",
                    p.operation,
                    fields
                        .iter()
                        .map(|f| format!("/{f}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    if service.protocol != model::Protocol::Json
        && super::answer::outputs(&contract.service)
            .and_then(|o| o.ops.get(&p.operation))
            .is_none()
    {
        return Err(malformed(format!(
            "the answer of {} {} cannot be read: no output shape for it",
            contract.service, p.operation
        )));
    }
    // The call must be one the broker can make: parameters it takes, in a form it sends.
    let route = route.expect("is_read or precondition_fields found it");
    call::build(service, &p.operation, route, &p.params)
        .map_err(|e| malformed(format!("seb.precondition: {e}")))?;
    Ok(p)
}

/// Compares the read's answer with the expected values. `echo` says whether the live value
/// may appear in the refusal (not for reads whose answer holds secrets).
pub fn compare(answer: &Value, expect: &Map<String, Value>, echo: bool) -> Result<(), Denial> {
    for (pointer, want) in expect {
        let got = answer.pointer(pointer);
        if got != Some(want) {
            let now = match (got, echo) {
                (None, _) => "absent".to_string(),
                (Some(v), true) => v.to_string(),
                (Some(_), false) => "something else".to_string(),
            };
            return Err(Denial::new(
                Reason::Drift,
                format!("{pointer} is {now}, the certificate was issued when it was {want}"),
            ));
        }
    }
    Ok(())
}

pub async fn check(
    target: &AwsTarget,
    p: &Precondition,
    contract: &AwsContract,
    creds: &(Credentials, Value),
) -> Result<(), Denial> {
    let service = model::service(&contract.service).expect("checked in parse");
    let route = &service.operations[&p.operation];
    let unavailable = |m: String| Denial::new(Reason::IdentityUnavailable, m);
    let base = target.upstream_base(service, &contract.region)?;
    let c = call::build(service, &p.operation, route, &p.params).map_err(malformed)?;
    let mut req = http::Request::builder().method(c.method).uri(format!(
        "{}://{}{}",
        base.scheme_str().unwrap_or("https"),
        base.authority().map(|a| a.as_str()).unwrap_or_default(),
        c.path_and_query
    ));
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut req = req
        .body(Full::new(Bytes::from(c.body.clone())))
        .map_err(|e| malformed(format!("precondition request: {e}")))?;
    sigv4::sign_request(
        &mut req,
        &creds.0,
        &service.signing_name,
        &contract.region,
        Payload::Bytes(&c.body),
        SystemTime::now(),
    )?;
    let resp = tokio::time::timeout(Duration::from_secs(10), target.client.send(req))
        .await
        .map_err(|_| unavailable("the precondition read did not answer within 10s".into()))?
        .map_err(|e| unavailable(format!("the precondition read failed: {e}")))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| unavailable(format!("the precondition answer could not be read: {e}")))?
        .to_bytes();
    if status == http::StatusCode::NOT_FOUND && service.protocol == model::Protocol::RestXml {
        // S3 answers a HEAD of a missing object with a bare 404: the object is gone, which is
        // drift for any expectation about it.
        return Err(Denial::new(
            Reason::Drift,
            format!(
                "{} answered 404: what the certificate expects is gone",
                p.operation
            ),
        ));
    }
    if !status.is_success() {
        return Err(unavailable(format!(
            "the precondition read {} answered {status}: {}",
            p.operation,
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )));
    }
    let answer = super::answer::answer(
        &contract.service,
        service.protocol,
        &p.operation,
        status.as_u16(),
        &headers,
        &bytes,
    )
    .map_err(|e| unavailable(format!("the precondition answer of {}: {e}", p.operation)))?;
    compare(&answer, &p.expect, route.precondition_fields.is_none())
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
        let query = json!({"operation": "DescribeInstances", "params": {"InstanceId.1": "i-1"}, "expect": {"/x": 1}});
        assert!(parse(&query, &contract("ec2")).is_ok());
        let unknown = json!({"operation": "DescribeInstances", "params": {"Nope": "i-1"}, "expect": {"/x": 1}});
        assert!(parse(&unknown, &contract("ec2"))
            .unwrap_err()
            .message
            .contains("Nope"));
        // A read whose answer holds secrets is a precondition only over its named fields.
        let rev = json!({"operation": "GetFunctionConfiguration", "params": {"FunctionName": "f"}, "expect": {"/RevisionId": "r"}});
        assert!(parse(&rev, &contract("lambda")).is_ok());
        let env = json!({"operation": "GetFunctionConfiguration", "params": {"FunctionName": "f"}, "expect": {"/Environment/Variables/DB_PASSWORD": "x"}});
        assert!(parse(&env, &contract("lambda"))
            .unwrap_err()
            .message
            .contains("may expect only"));
        let nothing = json!({"operation": "DescribeServices", "expect": {}});
        assert!(parse(&nothing, &contract("ecs")).is_err());
    }

    #[test]
    fn answers_are_compared_exactly() {
        let answer = json!({"services": [{"desiredCount": 2, "status": "ACTIVE"}]});
        let mut expect = Map::new();
        expect.insert("/services/0/desiredCount".into(), json!(2));
        assert!(compare(&answer, &expect, true).is_ok());
        expect.insert("/services/0/status".into(), json!("DRAINING"));
        let e = compare(&answer, &expect, true).unwrap_err();
        assert_eq!(e.reason, Reason::Drift);
        assert!(e.message.contains("ACTIVE"));
        let hidden = compare(&answer, &expect, false).unwrap_err();
        assert!(!hidden.message.contains("ACTIVE"), "{}", hidden.message);
        let mut gone = Map::new();
        gone.insert("/services/1/desiredCount".into(), json!(2));
        assert!(compare(&answer, &gone, true)
            .unwrap_err()
            .message
            .contains("absent"));
    }
}
