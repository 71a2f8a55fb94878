use super::*;
use serde_json::json;

fn pre(v: Value) -> Precondition {
    serde_json::from_value(v).unwrap()
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn s3_writes_must_carry_if_match_with_the_checked_etag() {
    let p = pre(
        json!({"operation": "HeadObject", "params": {"Bucket": "b", "Key": "k"}, "expect": {"/ETag": "\"e1\""}}),
    );
    let ok = check(
        "s3",
        "DeleteObject",
        &params(json!({"Bucket": "b", "Key": "k", "IfMatch": "\"e1\""})),
        &p,
    )
    .unwrap();
    assert_eq!(
        ok,
        Pin {
            pinned: true,
            how: "If-Match".into()
        }
    );
    let missing = check(
        "s3",
        "DeleteObject",
        &params(json!({"Bucket": "b", "Key": "k"})),
        &p,
    )
    .unwrap_err();
    assert_eq!(missing.reason, Reason::ContractMismatch);
    assert!(
        missing.message.contains("If-Match header"),
        "{}",
        missing.message
    );
    let other = check(
        "s3",
        "DeleteObject",
        &params(json!({"Bucket": "b", "Key": "k", "IfMatch": "*"})),
        &p,
    )
    .unwrap_err();
    assert!(other.message.contains("\"*\""), "{}", other.message);
    // A precondition on another object, or not on the ETag, pins nothing: recorded as such.
    let elsewhere = check(
        "s3",
        "DeleteObject",
        &params(json!({"Bucket": "b", "Key": "x"})),
        &p,
    )
    .unwrap();
    assert!(!elsewhere.pinned);
    let size = pre(
        json!({"operation": "HeadObject", "params": {"Bucket": "b", "Key": "k"}, "expect": {"/ContentLength": 3}}),
    );
    assert!(
        !check(
            "s3",
            "DeleteObject",
            &params(json!({"Bucket": "b", "Key": "k"})),
            &size
        )
        .unwrap()
        .pinned
    );
}

#[test]
fn dynamodb_writes_must_condition_on_the_checked_attributes() {
    let p = pre(
        json!({"operation": "GetItem", "params": {"TableName": "t", "Key": {"id": {"S": "1"}}},
                       "expect": {"/Item/version": {"N": "3"}}}),
    );
    let put = |cond: Value| {
        let mut m = params(
            json!({"TableName": "t", "Item": {"id": {"S": "1"}, "version": {"N": "4"}},
                                  "ExpressionAttributeNames": {"#v": "version"},
                                  "ExpressionAttributeValues": {":v": {"N": "3"}, ":w": {"N": "2"}}}),
        );
        if !cond.is_null() {
            m.insert("ConditionExpression".into(), cond);
        }
        check("dynamodb", "PutItem", &m, &p)
    };
    assert!(put(json!("#v = :v")).unwrap().pinned);
    assert!(put(json!("#v = :w"))
        .unwrap_err()
        .message
        .contains("checked /Item/version"));
    assert!(put(json!("attribute_exists(id)"))
        .unwrap_err()
        .message
        .contains("does not require"));
    assert!(put(json!("#v = :v OR attribute_exists(id)"))
        .unwrap_err()
        .message
        .contains("OR"));
    assert!(put(Value::Null)
        .unwrap_err()
        .message
        .contains("must carry a ConditionExpression"));
    // Another item: nothing to pin to.
    let other = params(json!({"TableName": "t", "Key": {"id": {"S": "2"}}}));
    assert!(!check("dynamodb", "DeleteItem", &other, &p).unwrap().pinned);
}

#[test]
fn lambda_updates_carry_the_revision_id_and_others_are_unpinned() {
    let p = pre(
        json!({"operation": "GetFunctionConfiguration", "params": {"FunctionName": "f"}, "expect": {"/RevisionId": "r1"}}),
    );
    assert!(
        check(
            "lambda",
            "UpdateFunctionConfiguration",
            &params(json!({"FunctionName": "f", "RevisionId": "r1"})),
            &p
        )
        .unwrap()
        .pinned
    );
    assert!(check(
        "lambda",
        "UpdateFunctionConfiguration",
        &params(json!({"FunctionName": "f"})),
        &p
    )
    .is_err());
    let ec2 = pre(json!({"operation": "DescribeInstances", "params": {}, "expect": {"/x": 1}}));
    let pin = check(
        "ec2",
        "TerminateInstances",
        &params(json!({"InstanceId.1": "i-1"})),
        &ec2,
    )
    .unwrap();
    assert!(!pin.pinned);
    assert!(pin.how.contains("takes no condition"));
}
