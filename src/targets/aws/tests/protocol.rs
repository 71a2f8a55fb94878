//! Reading AWS requests: every protocol, and one adversarial case for every ambiguity the
//! broker refuses.

use super::*;

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
