//! STS takes its parameters as an `application/x-www-form-urlencoded` body, and AWS reads any
//! valid spelling of it. Emulators do not all: moto parses the form and re-encodes it the way
//! Python's `urlencode` does before checking the signature, so a body spelled otherwise (the
//! SDK writes a space as `%20`, Python as `+`) fails there with `SignatureDoesNotMatch`. Before
//! signing, the body is re-spelled that way: the same parameters, in the same order.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What Python's `quote_plus` leaves alone; the space is turned into `+` after encoding.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b' ');

pub fn respell(form: &[u8]) -> String {
    let enc = |s: &str| utf8_percent_encode(s, KEEP).to_string().replace(' ', "+");
    form_urlencoded::parse(form)
        .map(|(k, v)| format!("{}={}", enc(&k), enc(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Debug)]
pub struct Respell;

impl Intercept for Respell {
    fn name(&self) -> &'static str {
        "seb form respelling"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        let is_form = req
            .headers()
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Ok(());
        }
        let Some(body) = req.body().bytes() else {
            return Ok(());
        };
        let body = respell(body);
        req.headers_mut()
            .insert("content-length", body.len().to_string());
        *req.body_mut() = SdkBody::from(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms_are_spelled_as_python_spells_them() {
        assert_eq!(
            respell(b"Action=AssumeRole&Policy=%7B%22a%22%3A%20%22b%2Fc%22%7D&K=a-b_c.d%7E"),
            "Action=AssumeRole&Policy=%7B%22a%22%3A+%22b%2Fc%22%7D&K=a-b_c.d~"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Re-spelling never changes what the form says.
        #[test]
        fn respelling_keeps_every_parameter(pairs in proptest::collection::vec((".{0,12}", ".{0,24}"), 0..8)) {
            let sdk: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter())
                .finish();
            let respelled = respell(sdk.as_bytes());
            let back: Vec<(String, String)> = form_urlencoded::parse(respelled.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let want: Vec<(String, String)> = form_urlencoded::parse(sdk.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            prop_assert_eq!(back, want);
        }
    }
}
