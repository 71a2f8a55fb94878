//! CloudTrail log files: the documented `{"Records": [...]}` object, gzipped (as CloudTrail
//! delivers them to S3) or not.
//!
//! Strict where a lenient reading could hide a bypass: a duplicate key anywhere in a file
//! refuses the file (a reader keeping the other value could see another caller), and so does
//! a record without the members that say who did what. `readOnly` missing or not `true` is a
//! mutation.

use super::event::{opt_str, parse_time, req_str, Operation, Provider, ProviderEvent};
use serde_json::Value;
use std::io::Read;

/// Decompressed files larger than this are refused rather than read into memory: CloudTrail
/// delivers a file every five minutes per region, far smaller than this.
const MAX_FILE_BYTES: u64 = 512 << 20;

/// Error codes that mean the provider refused the caller's permission.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
    "UnauthorizedAccess",
    "InvalidClientTokenId",
    "ExpiredToken",
    "SignatureDoesNotMatch",
];

/// The bytes of a file, gunzipped when they start with the gzip magic.
pub fn decompress(raw: &[u8]) -> Result<Vec<u8>, String> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a valid gzip stream: {e}"))?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "more than {MAX_FILE_BYTES} bytes once decompressed"
        ));
    }
    Ok(out)
}

/// Every record of one file. `name` is how errors and findings name the file.
pub fn parse_file(name: &str, raw: &[u8]) -> Result<Vec<ProviderEvent>, String> {
    let data = decompress(raw).map_err(|e| format!("{name}: {e}"))?;
    let doc = crate::json::parse_strict(&data)
        .map_err(|e| format!("{name}: not a CloudTrail log file: {e}"))?;
    let records = doc
        .as_object()
        .and_then(|o| o.get("Records"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{name}: not a CloudTrail log file: no \"Records\" array"))?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut e = parse_record(r).map_err(|e| format!("{name}: Records[{i}]: {e}"))?;
            e.at = format!("{name}:{}", i + 1);
            Ok(e)
        })
        .collect()
}

fn parse_record(r: &Value) -> Result<ProviderEvent, String> {
    if !r.is_object() {
        return Err("not an object".into());
    }
    let ts = parse_time(r.get("eventTime"), "eventTime")?;
    let source = req_str(r, "eventSource", "record")?;
    let name = req_str(r, "eventName", "record")?;
    let id = opt_str(r, "eventID", "record")?.unwrap_or("").to_string();
    let who = r
        .get("userIdentity")
        .filter(|u| u.is_object())
        .ok_or("userIdentity is missing or not an object")?;
    let typ = req_str(who, "type", "userIdentity")?;
    let arn = opt_str(who, "arn", "userIdentity")?;
    let principal = match (arn, typ) {
        (Some(a), _) => a.to_string(),
        // AWS services acting for themselves name no ARN.
        (None, "AWSService") => format!(
            "service:{}",
            opt_str(who, "invokedBy", "userIdentity")?.unwrap_or("?")
        ),
        (None, t) => format!(
            "{t}:{}",
            opt_str(who, "principalId", "userIdentity")?.unwrap_or("?")
        ),
    };
    let key = opt_str(who, "accessKeyId", "userIdentity")?.map(str::to_string);
    let role = match who.pointer("/sessionContext/sessionIssuer") {
        Some(i) => opt_str(i, "arn", "userIdentity.sessionContext.sessionIssuer")?,
        None => None,
    }
    .map(str::to_string);
    let read_only = match r.get("readOnly") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("readOnly is not a boolean".into()),
    };
    let error = opt_str(r, "errorCode", "record")?;
    let mut names = Vec::new();
    match r.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Array(rs)) => {
            for (i, x) in rs.iter().enumerate() {
                if let Some(a) = opt_str(x, "ARN", &format!("resources[{i}]"))? {
                    names.push(a.to_string());
                }
            }
        }
        Some(_) => return Err("resources is not an array".into()),
    }
    if let Some(p) = r.get("requestParameters").filter(|p| !p.is_null()) {
        if let (Some(b), Some(k)) = (
            p.get("bucketName").and_then(Value::as_str),
            p.get("key").and_then(Value::as_str),
        ) {
            names.push(format!("{b}/{k}"));
        }
        string_leaves(p, &mut names, 0);
    }
    names.sort();
    names.dedup();
    let service = source
        .strip_suffix(".amazonaws.com")
        .unwrap_or(source)
        .to_string();
    Ok(ProviderEvent {
        provider: Provider::Aws,
        at: String::new(),
        id,
        time: ts.to_string(),
        ts,
        principal,
        key,
        role,
        operation: Operation::Aws {
            service,
            operation: name.to_string(),
            names,
        },
        mutating: !read_only,
        refused: error.is_some_and(|c| DENIED.contains(&c)),
    })
}

/// Depth-bounded: requestParameters are the caller's input, and a resource is never deep.
fn string_leaves(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| string_leaves(x, out, depth + 1)),
        Value::Object(o) => o.values().for_each(|x| string_leaves(x, out, depth + 1)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn record() -> Value {
        serde_json::json!({
            "eventVersion": "1.09", "eventTime": "2026-03-01T10:00:00Z",
            "eventSource": "ec2.amazonaws.com", "eventName": "TerminateInstances",
            "awsRegion": "us-east-1", "eventID": "e-1", "readOnly": false,
            "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/seb-exec/c1",
                "accessKeyId": "ASIA1", "sessionContext": {"sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::1:role/seb-exec"}}},
            "requestParameters": {"instancesSet": {"items": [{"instanceId": "i-1"}]}},
        })
    }

    #[test]
    fn reads_plain_and_gzipped_files() {
        let doc = serde_json::json!({"Records": [record()]}).to_string();
        let plain = parse_file("a.json", doc.as_bytes()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(doc.as_bytes()).unwrap();
        let zipped = parse_file("a.json.gz", &gz.finish().unwrap()).unwrap();
        for events in [plain, zipped] {
            let e = &events[0];
            assert!(e.at.ends_with(":1"), "{}", e.at);
            assert_eq!(e.key.as_deref(), Some("ASIA1"));
            assert_eq!(e.role.as_deref(), Some("arn:aws:iam::1:role/seb-exec"));
            assert!(e.mutating && !e.refused);
            let Operation::Aws { service, names, .. } = &e.operation else {
                panic!()
            };
            assert_eq!(service, "ec2");
            assert!(names.contains(&"i-1".to_string()));
        }
    }

    #[test]
    fn ambiguity_is_refused() {
        // A duplicate key could name another caller to another reader.
        let dup = r#"{"Records":[{"eventTime":"2026-03-01T10:00:00Z","eventSource":"s3.amazonaws.com","eventName":"PutObject","userIdentity":{"type":"IAMUser","arn":"arn:aws:iam::1:user/a","arn":"arn:aws:iam::1:user/b"}}]}"#;
        assert!(parse_file("f", dup.as_bytes())
            .unwrap_err()
            .contains("duplicate"));
        let mut r = record();
        r.as_object_mut().unwrap().remove("userIdentity");
        let doc = serde_json::json!({"Records": [r]}).to_string();
        assert!(parse_file("f", doc.as_bytes())
            .unwrap_err()
            .contains("userIdentity"));
        let mut r = record();
        r["readOnly"] = "false".into();
        let doc = serde_json::json!({"Records": [r]}).to_string();
        assert!(parse_file("f", doc.as_bytes()).is_err());
        // readOnly missing: a mutation until the provider says otherwise.
        let mut r = record();
        r.as_object_mut().unwrap().remove("readOnly");
        r["errorCode"] = "AccessDenied".into();
        let doc = serde_json::json!({"Records": [r]}).to_string();
        let e = &parse_file("f", doc.as_bytes()).unwrap()[0];
        assert!(e.mutating && e.refused);
        assert!(parse_file("f", b"{\"records\":[]}").is_err());
        assert!(parse_file("f", &[0x1f, 0x8b, 0, 1, 2]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_file("f", &raw);
        }

        #[test]
        fn arbitrary_records_never_panic(
            time in "[0-9TZ:.+-]{0,30}", source in ".{0,20}", name in ".{0,20}",
            arn in proptest::option::of(".{0,40}"), ro in proptest::option::of(any::<bool>()),
            extra in proptest::collection::vec(("[a-zA-Z]{1,8}", ".{0,10}"), 0..4),
        ) {
            let mut r = serde_json::json!({"eventTime": time, "eventSource": source, "eventName": name,
                "userIdentity": {"type": "IAMUser", "arn": arn}, "readOnly": ro});
            for (k, v) in extra {
                r["requestParameters"][k] = v.into();
            }
            let doc = serde_json::json!({"Records": [r]}).to_string();
            let _ = parse_file("f", doc.as_bytes());
        }
    }
}
