//! Re-signing a request under the broker-minted identity with the `aws-sigv4` crate. The agent's
//! own signature was never checked (the certificate is the authority) and is never forwarded.
//!
//! S3 differs from every other service in three ways that matter here: its canonical URI is
//! the path exactly as sent (single percent-encoding, no dot-segment normalization), and the
//! payload hash travels in `x-amz-content-sha256`, which S3 checks against the bytes it
//! receives, so a body bound by its sha256 cannot be swapped in flight.

use crate::denial::{Denial, Reason};
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use std::time::SystemTime;

/// Credentials the broker signs with; never sent anywhere but into the signature.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is being signed: the payload as bytes, or (for bodies bound by hash) its sha256.
pub enum Payload<'a> {
    Bytes(&'a [u8]),
    Sha256(String),
}

/// Signs `req` in place: adds `Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and for S3
/// `X-Amz-Content-Sha256`. Every header already on `req` is signed.
pub fn sign_request<B>(
    req: &mut http::Request<B>,
    creds: &Credentials,
    signing_name: &str,
    region: &str,
    payload: Payload<'_>,
    time: SystemTime,
) -> Result<(), Denial> {
    let fail = |e: &dyn std::fmt::Display| {
        Denial::new(
            Reason::IdentityUnavailable,
            format!("cannot sign the upstream request: {e}"),
        )
    };
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "seb",
    )
    .into();
    let mut settings = SigningSettings::default();
    if signing_name == "s3" {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(signing_name)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| fail(&e))?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let uri = req.uri().to_string();
    let body = match &payload {
        Payload::Bytes(b) => SignableBody::Bytes(b),
        Payload::Sha256(h) => SignableBody::Precomputed(h.clone()),
    };
    let signable = SignableRequest::new(req.method().as_str(), uri, headers.into_iter(), body)
        .map_err(|e| fail(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

/// How far an agent's `X-Amz-Date` may be from the broker's clock, as AWS allows.
const AGENT_SIGNATURE_WINDOW_SECS: u64 = 15 * 60;

/// `20240101T120000Z` to a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// The `x-amz-content-sha256` the agent signed, held to the body it came with: a signature
/// over a declared hash says nothing about the body unless the hash is the body's, and a
/// captured read could otherwise be replayed with another body for as long as its date is
/// fresh. `UNSIGNED-PAYLOAD` (and the streaming forms, which reads never use) sign no body, so
/// they are admitted only without one. More than one such header is refused.
fn declared_payload_hash(
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Option<String>, String> {
    let mut all = parts.headers.get_all("x-amz-content-sha256").iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err("x-amz-content-sha256 appears more than once".into());
    }
    let declared = v
        .to_str()
        .map_err(|_| "x-amz-content-sha256 is not ASCII".to_string())?;
    if declared == "UNSIGNED-PAYLOAD" || declared.starts_with("STREAMING-") {
        if body.is_empty() {
            return Ok(Some(declared.to_string()));
        }
        return Err(format!(
            "x-amz-content-sha256 is {declared} and the request has a body: an authenticated read must sign its body"
        ));
    }
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    if declared != actual {
        return Err(format!(
            "x-amz-content-sha256 is {declared}, the body's sha256 is {actual}"
        ));
    }
    Ok(Some(actual))
}

/// Checks the agent's own SigV4 signature, made with an agent key the broker knows. Used only
/// to authenticate agents for reads (the aws CLI cannot present a client certificate);
/// mutations are authorized by their certificate, whatever the signature says.
pub fn verify_agent_signature(
    parts: &http::request::Parts,
    body: &[u8],
    access_key_id: &str,
    secret_access_key: &str,
    now: SystemTime,
) -> Result<(), Denial> {
    let fail = |m: &str| Denial::new(Reason::Unauthenticated, format!("agent signature: {m}"));
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("AWS4-HMAC-SHA256 "))
        .ok_or_else(|| fail("no AWS4-HMAC-SHA256 Authorization header"))?;
    let field = |name: &str| {
        auth.split(',')
            .find_map(|p| p.trim().strip_prefix(name))
            .ok_or_else(|| fail(&format!("Authorization has no {name}")))
    };
    let credential = field("Credential=")?;
    let signed = field("SignedHeaders=")?;
    let signature = field("Signature=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, _date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(fail("malformed credential scope"));
    };
    if *akid != access_key_id {
        return Err(fail("another access key"));
    }
    let date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_amz_date)
        .ok_or_else(|| fail("no valid X-Amz-Date"))?;
    let skew = now
        .duration_since(date)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew.as_secs() > AGENT_SIGNATURE_WINDOW_SECS {
        return Err(fail(
            "X-Amz-Date is more than 15 minutes from the broker's clock",
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(fail("the Host header is not signed"));
    }
    let mut values: Vec<(String, String)> = Vec::new();
    for n in &names {
        let all: Vec<&str> = parts
            .headers
            .get_all(*n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if all.is_empty() {
            return Err(fail(&format!("signed header {n} is missing")));
        }
        values.push((n.to_string(), all.join(",")));
    }
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        "seb-agent",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    if *service == "s3" {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(date)
        .settings(settings)
        .build()
        .map_err(|e| fail(&e.to_string()))?
        .into();
    let payload = match declared_payload_hash(parts, body).map_err(|m| fail(&m))? {
        Some(h) => SignableBody::Precomputed(h),
        None => SignableBody::Bytes(body),
    };
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let signable = SignableRequest::new(
        parts.method.as_str(),
        uri,
        values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        payload,
    )
    .map_err(|e| fail(&e.to_string()))?;
    let (_, expected) = sign(signable, &params)
        .map_err(|e| fail(&e.to_string()))?
        .into_parts();
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes()).into();
    if same {
        Ok(())
    } else {
        Err(fail("does not match; check the agent's secret access key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_signatures_verify_and_tampering_does_not() {
        let agent = Credentials {
            access_key_id: "SEBAGENTONCALL".into(),
            secret_access_key: "agent-secret".into(),
            session_token: None,
        };
        let body = b"Action=DescribeInstances&Version=2016-11-15";
        let mut req = http::Request::post("https://localhost:8443/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("host", "localhost:8443")
            .body(())
            .unwrap();
        sign_request(
            &mut req,
            &agent,
            "ec2",
            "us-east-1",
            Payload::Bytes(body),
            at(),
        )
        .unwrap();
        let (parts, ()) = req.into_parts();
        let later = at() + std::time::Duration::from_secs(60);
        verify_agent_signature(&parts, body, "SEBAGENTONCALL", "agent-secret", later).unwrap();
        let bad =
            |r: Result<(), Denial>| assert_eq!(r.unwrap_err().reason, Reason::Unauthenticated);
        bad(verify_agent_signature(
            &parts,
            body,
            "SEBAGENTONCALL",
            "other",
            later,
        ));
        bad(verify_agent_signature(
            &parts,
            b"Action=TerminateInstances",
            "SEBAGENTONCALL",
            "agent-secret",
            later,
        ));
        bad(verify_agent_signature(
            &parts,
            body,
            "OTHERKEY",
            "agent-secret",
            later,
        ));
        bad(verify_agent_signature(
            &parts,
            body,
            "SEBAGENTONCALL",
            "agent-secret",
            at() + std::time::Duration::from_secs(3600),
        ));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(at()));
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn an_agents_declared_payload_hash_is_held_to_the_body() {
        let agent = Credentials {
            access_key_id: "SEBAGENTONCALL".into(),
            secret_access_key: "agent-secret".into(),
            session_token: None,
        };
        let signed = |declared: &str| {
            let mut req = http::Request::post("https://localhost:8443/")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "localhost:8443")
                .header("x-amz-content-sha256", declared)
                .body(())
                .unwrap();
            sign_request(
                &mut req,
                &agent,
                "ec2",
                "us-east-1",
                // As the SDKs do: the canonical request carries the declared hash.
                Payload::Sha256(declared.to_string()),
                at(),
            )
            .unwrap();
            req.into_parts().0
        };
        let captured = b"Action=DescribeInstances&Version=2016-11-15";
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(captured));
        let parts = signed(&sha);
        let verify = |body: &[u8]| {
            verify_agent_signature(&parts, body, "SEBAGENTONCALL", "agent-secret", at())
        };
        verify(captured).unwrap();
        // The captured read replayed with another body: the signature covers the declared
        // hash, and the declared hash is not this body's.
        let e =
            verify(b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1").unwrap_err();
        assert_eq!(e.reason, Reason::Unauthenticated);
        assert!(e.message.contains("x-amz-content-sha256"), "{e}");
        // UNSIGNED-PAYLOAD signs no body, so it authenticates only a request without one.
        let unsigned = signed("UNSIGNED-PAYLOAD");
        verify_agent_signature(&unsigned, b"", "SEBAGENTONCALL", "agent-secret", at()).unwrap();
        let e = verify_agent_signature(&unsigned, captured, "SEBAGENTONCALL", "agent-secret", at())
            .unwrap_err();
        assert_eq!(e.reason, Reason::Unauthenticated);
        // A declared hash in another spelling (upper case) is not the body's hash either.
        let upper = signed(&sha.to_ascii_uppercase());
        assert!(
            verify_agent_signature(&upper, captured, "SEBAGENTONCALL", "agent-secret", at())
                .is_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 64, ..Default::default() })]

        /// Whatever two bodies: the signature over one body's declared hash authenticates
        /// that body and no other.
        #[test]
        fn a_declared_hash_authenticates_only_its_body(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let agent = Credentials {
                access_key_id: "SEBAGENTONCALL".into(),
                secret_access_key: "agent-secret".into(),
                session_token: None,
            };
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&a));
            let mut req = http::Request::post("https://localhost:8443/")
                .header("host", "localhost:8443")
                .header("x-amz-content-sha256", sha.as_str())
                .body(())
                .unwrap();
            sign_request(&mut req, &agent, "ec2", "us-east-1", Payload::Sha256(sha.clone()), at())
                .unwrap();
            let parts = req.into_parts().0;
            let ok = |body: &[u8]| {
                verify_agent_signature(&parts, body, "SEBAGENTONCALL", "agent-secret", at()).is_ok()
            };
            proptest::prop_assert!(ok(&a));
            proptest::prop_assert_eq!(ok(&b), a == b);
        }
    }

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn at() -> SystemTime {
        // 2015-08-30T12:36:00Z, the AWS SigV4 test suite's date.
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160)
    }

    #[test]
    fn matches_the_aws_sigv4_test_suite_get_vanilla() {
        let mut req = http::Request::get("https://example.amazonaws.com/")
            .body(())
            .unwrap();
        sign_request(
            &mut req,
            &creds(),
            "service",
            "us-east-1",
            Payload::Bytes(b""),
            at(),
        )
        .unwrap();
        assert_eq!(
            req.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn s3_signs_the_payload_hash_and_keeps_the_path_as_sent() {
        let hash = "a".repeat(64);
        for path in [
            "/b/a%3Ab",
            "/b/x%252Fy",
            "/b/with%20space",
            "/b/caf%C3%A9",
            "/b/./x/../y",
        ] {
            let mut req = http::Request::put(format!("http://127.0.0.1:9000{path}"))
                .body(())
                .unwrap();
            sign_request(
                &mut req,
                &creds(),
                "s3",
                "us-east-1",
                Payload::Sha256(hash.clone()),
                at(),
            )
            .unwrap();
            assert_eq!(req.headers()["x-amz-content-sha256"], hash.as_str());
            assert_eq!(req.uri().path(), path, "the path is not rewritten");
            assert!(req.headers()["authorization"]
                .to_str()
                .unwrap()
                .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"));
        }
    }

    #[test]
    fn session_tokens_are_sent_and_signed() {
        let mut c = creds();
        c.session_token = Some("tok".into());
        let mut req = http::Request::post("http://127.0.0.1:9000/")
            .body(())
            .unwrap();
        sign_request(
            &mut req,
            &c,
            "ec2",
            "eu-west-1",
            Payload::Bytes(b"Action=X"),
            at(),
        )
        .unwrap();
        assert_eq!(req.headers()["x-amz-security-token"], "tok");
        assert!(req.headers()["authorization"]
            .to_str()
            .unwrap()
            .contains("/eu-west-1/ec2/aws4_request"));
    }
}
