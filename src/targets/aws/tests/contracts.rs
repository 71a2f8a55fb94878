//! Certificates against calls: operation, resource and parameters; S3 uploads; reads; the
//! forwarded request.

use super::*;

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
