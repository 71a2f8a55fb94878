//! AWS requests as an SDK sends them with the certificate as its session token, and the
//! certificates for them: shared by the tests that drive DynamoDB's JSON protocol by hand.

use super::{now, random_jti, Env};
use serde_json::json;

/// The headers of a DynamoDB JSON-protocol call (`op`, in `region`): the placeholder access
/// key and signature an agent's SDK signs with (the broker does not admit by them), and the
/// certificate in `X-Amz-Security-Token` when there is one.
pub fn dynamodb_headers(op: &str, region: &str, cert: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        (
            "content-type".to_string(),
            "application/x-amz-json-1.0".to_string(),
        ),
        ("x-amz-target".into(), format!("DynamoDB_20120810.{op}")),
        ("x-amz-date".into(), "20261201T000000Z".into()),
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/20261201/{region}/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
                seb::targets::aws::PLACEHOLDER_ACCESS_KEY_ID,
                "0".repeat(64)
            ),
        ),
    ];
    if let Some(c) = cert {
        h.push(("x-amz-security-token".into(), c.to_string()));
    }
    h
}

/// A single-use certificate for one PutItem on table `orders` in `region` with exactly
/// `body`, for the aws target named `aws`, audience `aud`, id `jti` (a fresh one if None).
pub fn put_item_cert(env: &Env, body: &[u8], region: &str, aud: &str, jti: Option<&str>) -> String {
    let t = now();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    let jti = jti.map_or_else(random_jti, str::to_owned);
    let p = json!({
        "iss": "signer", "sub": "agent:oncall", "jti": jti, "iat": t, "nbf": t, "exp": t + 300,
        "aud": aud,
        "seb": {"v": 1, "action": "write", "policy": "p-1", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "aws", "max_uses": 1,
                "request": {"service": "dynamodb", "region": region, "operation": "PutItem", "resource": "orders"},
                "body": {"sha256": sha}}
    });
    seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &p)
}
