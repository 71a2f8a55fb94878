//! The AWS error dialect of a request: which of AWS's error documents its SDK parses. The
//! documents themselves are rendered with every other refusal (`crate::denial`).

use super::model::{self, Protocol};
use crate::denial::AwsFormat;

/// Chooses the dialect from the credential scope's service; without one, `X-Amz-Target` means
/// a json client and anything else gets the query dialect most AWS clients parse.
pub fn error_format(parts: &http::request::Parts) -> AwsFormat {
    let protocol = super::protocol::scope(parts)
        .ok()
        .and_then(|s| model::service(&s.service))
        .map(|s| s.protocol);
    match protocol {
        Some(Protocol::Query) => AwsFormat::QueryXml,
        Some(Protocol::Ec2) => AwsFormat::Ec2Xml,
        Some(Protocol::RestXml) => AwsFormat::RestXml,
        Some(Protocol::Json) | Some(Protocol::RestJson) => AwsFormat::Json,
        None if parts.headers.contains_key("x-amz-target") => AwsFormat::Json,
        None => AwsFormat::QueryXml,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_follows_the_scope_service() {
        let parts = |svc: &str, target: bool| {
            let mut b = http::Request::post("/").header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=K/20240101/us-east-1/{svc}/aws4_request, SignedHeaders=host, Signature=0"),
            );
            if target {
                b = b.header("x-amz-target", "X.Y");
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(error_format(&parts("ec2", false)), AwsFormat::Ec2Xml);
        assert_eq!(
            error_format(&parts("autoscaling", false)),
            AwsFormat::QueryXml
        );
        assert_eq!(error_format(&parts("s3", false)), AwsFormat::RestXml);
        assert_eq!(error_format(&parts("lambda", false)), AwsFormat::Json);
        assert_eq!(error_format(&parts("dynamodb", true)), AwsFormat::Json);
        assert_eq!(error_format(&parts("nosuch", true)), AwsFormat::Json);
        assert_eq!(error_format(&parts("nosuch", false)), AwsFormat::QueryXml);
    }
}
