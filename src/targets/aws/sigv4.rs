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

#[cfg(test)]
mod tests {
    use super::*;

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
