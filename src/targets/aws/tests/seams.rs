//! Issue 14: what seb checks is what the upstream executes (members outside the input shape,
//! the resource member, content types, bucket labels, copy sources).

use super::*;

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
