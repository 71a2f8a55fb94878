use super::*;
use crate::denial::Reason;
use http_body_util::BodyExt;

async fn text(r: Response<Body>) -> String {
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn each_dialect_carries_code_reason_and_escaped_detail() {
    let d = Denial::new(Reason::ContractMismatch, "InstanceId.1 is <i-2> & not i-1");
    let r = aws(&d, AwsFormat::QueryXml, "rid-1");
    assert_eq!(r.status(), 403);
    let t = text(r).await;
    assert!(
        t.starts_with("<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"),
        "{t}"
    );
    assert!(
        t.contains("seb: contract_mismatch: InstanceId.1 is &lt;i-2&gt; &amp; not i-1"),
        "{t}"
    );
    let t = text(aws(&d, AwsFormat::Ec2Xml, "rid-1")).await;
    assert!(
        t.starts_with("<Response><Errors><Error><Code>AccessDenied</Code>")
            && t.contains("<RequestID>rid-1</RequestID>"),
        "{t}"
    );
    let t = text(aws(&d, AwsFormat::RestXml, "rid-1")).await;
    assert!(
        t.contains("<Error><Code>AccessDenied</Code><Message>seb: contract_mismatch"),
        "{t}"
    );
    let r = aws(
        &Denial::new(Reason::RequestMalformed, "x"),
        AwsFormat::Json,
        "rid-1",
    );
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-amzn-errortype"], "AccessDeniedException");
    // Refusals are per request: no cache between agent and broker may replay one.
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(v["__type"], "AccessDeniedException");
    assert_eq!(v["message"], "seb: request_malformed: x");
}

#[tokio::test]
async fn status_objects() {
    let r = kube_status(&Denial::new(Reason::ContractMismatch, "no"), "rid-1");
    assert_eq!(r.status(), 403);
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(v["message"], "seb: contract_mismatch: no");
    assert_eq!(v["code"], 403);
    let media = Denial::unsupported_media("protobuf");
    let r = kube_status(&media, "rid");
    assert_eq!(r.status(), 415);
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["reason"], "UnsupportedMediaType");
    assert_eq!(
        v["message"],
        "seb: request_malformed: unsupported media type: protobuf"
    );
    let status = |d: Denial| d.status(Family::Kubernetes);
    assert_eq!(status(Denial::new(Reason::Drift, "x")), 409);
    assert_eq!(status(Denial::new(Reason::CertMissing, "x")), 401);
}

#[test]
fn one_table_with_a_column_per_family() {
    use Family::*;
    let s = |r, f| super::super::status(r, f).as_u16();
    // A missing certificate: 401 where clients act on it, 403 for AWS SDKs, which retry 401.
    assert_eq!(
        [
            s(Reason::CertMissing, Http),
            s(Reason::CertMissing, Kubernetes),
            s(Reason::CertMissing, Aws)
        ],
        [401, 401, 403]
    );
    assert_eq!(
        [
            s(Reason::Drift, Http),
            s(Reason::Drift, Kubernetes),
            s(Reason::Drift, Aws)
        ],
        [403, 409, 403]
    );
    // After a spent use AWS answers 403: a retried 5xx would only read "replayed".
    assert_eq!(
        [
            s(Reason::AuditUnavailable, Http),
            s(Reason::AuditUnavailable, Aws)
        ],
        [503, 403]
    );
    assert_eq!(
        [s(Reason::Overloaded, Http), s(Reason::Overloaded, Aws)],
        [503, 503]
    );
    assert_eq!(
        [
            s(Reason::UpstreamError, Kubernetes),
            s(Reason::UpstreamError, Aws)
        ],
        [502, 403]
    );
    for r in Reason::ALL {
        assert!(s(r, Http) >= 400 && s(r, Aws) >= 400 && s(r, Kubernetes) >= 400);
    }
}

#[tokio::test]
async fn raw_readers_get_text_and_a_warning_where_client_go_hides_text() {
    let r = kube_text(&Denial::new(Reason::UpstreamError, "no route"));
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    // 502: client-go quotes the text itself, a warning would say it twice.
    assert!(r.headers().get("warning").is_none());
    let b = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&b[..], b"seb: upstream_error: no route\n");

    let r = kube_text(&Denial::new(
        Reason::Unauthenticated,
        "token \"x\" unknown – é",
    ));
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["warning"],
        "299 - \"seb: unauthenticated: token \\\"x\\\" unknown ? ?\""
    );
    let r = kube_text(&Denial::new(Reason::Overloaded, "busy"));
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("warning"));
    let r = kube_text(&Denial::new(Reason::ContractMismatch, "no"));
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("warning"));
}

#[test]
fn problem_documents_carry_code_and_detail() {
    let r = problem(&Denial::new(Reason::CertMissing, "no certificate"), "rid");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r.headers().contains_key("www-authenticate"));
}
