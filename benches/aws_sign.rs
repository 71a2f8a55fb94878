//! Micro-benchmarks of the AWS target's per-request work: reading the call (protocol parsing
//! and S3 route matching) and SigV4 re-signing. Run with `cargo bench --bench aws_sign`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use seb::targets::aws::protocol;
use seb::targets::aws::sigv4::{sign_request, Credentials, Payload};
use std::time::SystemTime;

fn creds() -> Credentials {
    Credentials {
        access_key_id: "ASIAEXAMPLEEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: Some("FQoGZXIvYXdzEBYaDt9yd".repeat(20)),
    }
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bench(c: &mut Criterion) {
    let creds = creds();
    let hash = "a".repeat(64);
    c.bench_function("sigv4 s3 PutObject (precomputed hash)", |b| {
        b.iter(|| {
            let mut req = http::Request::put("http://127.0.0.1:9000/prod-artifacts/reports/q3.txt")
                .header("content-type", "text/plain")
                .body(())
                .unwrap();
            sign_request(
                &mut req,
                &creds,
                "s3",
                "eu-west-1",
                Payload::Sha256(hash.clone()),
                SystemTime::now(),
            )
            .unwrap();
            black_box(req)
        })
    });
    let form = b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-0123456789abcdef0";
    c.bench_function("sigv4 ec2 query POST (hash the body)", |b| {
        b.iter(|| {
            let mut req = http::Request::post("https://ec2.eu-west-1.amazonaws.com/")
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(())
                .unwrap();
            sign_request(
                &mut req,
                &creds,
                "ec2",
                "eu-west-1",
                Payload::Bytes(form),
                SystemTime::now(),
            )
            .unwrap();
            black_box(req)
        })
    });
    let auth = |svc: &str| {
        format!("AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/eu-west-1/{svc}/aws4_request, SignedHeaders=host, Signature=00")
    };
    let s3 = parts(
        "PUT",
        "/prod-artifacts/reports/q3.txt?partNumber=3&uploadId=abc",
        &[("authorization", &auth("s3"))],
    );
    c.bench_function("parse s3 UploadPart (route matching)", |b| {
        b.iter(|| black_box(protocol::parse(&s3, b"").unwrap()))
    });
    let ec2 = parts(
        "POST",
        "/",
        &[
            ("authorization", &auth("ec2")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
    );
    c.bench_function("parse ec2 query form", |b| {
        b.iter(|| black_box(protocol::parse(&ec2, form).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
