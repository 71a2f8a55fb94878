//! Property tests for the protocol parsers.
//! Bounded (256 cases each, seconds in CI). A failing case is saved by proptest under
//! `proptest-regressions/` at the crate root; commit that file so the case is replayed first.

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
        prop_assert_eq!(crate::targets::aws::protocol::query_pairs(&form(&pairs)).unwrap(), pairs);
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
