//! The request file `seb check` reads: a described HTTP request, turned into the same
//! `http::request::Parts` and body a listener would hand the pipeline.
//!
//! ```json
//! {"target": "payments", "method": "POST", "path": "/v1/refunds?dry=0",
//!  "headers": [["content-type", "application/json"]],
//!  "body_file": "refund.json"}
//! ```
//!
//! `headers` is a list of pairs, not an object, so a request with a header twice can be
//! described (and is then judged as the broker judges it). The body is `body_file` (relative
//! to the request file), `body` (UTF-8 text), or `body_sha256` alone for an upload the target
//! streams without reading (S3 objects); none of them is an empty body.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// The `[[targets]] name`; may be left out when the config has one target.
    pub target: Option<String>,
    pub method: String,
    /// Path and query, as on the request line.
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub body_file: Option<String>,
    pub body: Option<String>,
    pub body_sha256: Option<String>,
}

/// What the file describes: the request head, and the body or only its hash.
pub struct Described {
    pub target: Option<String>,
    pub parts: http::request::Parts,
    pub body: Body,
}

pub enum Body {
    Bytes(Bytes),
    /// Only the hash: the target must stream this body rather than read it.
    Sha256(String),
}

/// Reads and checks a request file. `dir` resolves `body_file`.
pub fn parse(text: &[u8], dir: &Path) -> anyhow::Result<Described> {
    // Strict JSON: a member twice is refused rather than one of them chosen.
    let value = crate::json::parse_strict(text).map_err(|e| anyhow!("not strict JSON: {e}"))?;
    let f: RequestFile =
        serde_json::from_value(value).map_err(|e| anyhow!("not a request description: {e}"))?;
    let method = http::Method::from_bytes(f.method.as_bytes())
        .map_err(|_| anyhow!("method {:?} is not an HTTP method", f.method))?;
    if !f.path.starts_with('/') {
        bail!("path {:?} must start with '/'", f.path);
    }
    let uri: http::Uri = f
        .path
        .parse()
        .map_err(|e| anyhow!("path {:?} is not a request target: {e}", f.path))?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (i, (name, value)) in f.headers.iter().enumerate() {
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow!("headers[{i}]: {name:?} is not a header name"))?;
        let v = http::HeaderValue::from_str(value)
            .map_err(|_| anyhow!("headers[{i}] ({name}): the value is not a header value"))?;
        req = req.header(n, v);
    }
    let body = match (&f.body_file, &f.body, &f.body_sha256) {
        (Some(p), None, None) => {
            let path = dir.join(p);
            Body::Bytes(
                std::fs::read(&path)
                    .with_context(|| format!("body_file {}", path.display()))?
                    .into(),
            )
        }
        (None, Some(b), None) => Body::Bytes(Bytes::from(b.clone().into_bytes())),
        (None, None, Some(h)) => {
            if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                bail!("body_sha256 must be 64 lowercase hex digits");
            }
            Body::Sha256(h.clone())
        }
        (None, None, None) => Body::Bytes(Bytes::new()),
        _ => bail!("give at most one of body_file, body and body_sha256"),
    };
    let (parts, ()) = req
        .body(())
        .map_err(|e| anyhow!("not a request: {e}"))?
        .into_parts();
    Ok(Described {
        target: f.target,
        parts,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir() -> &'static Path {
        Path::new(".")
    }

    #[test]
    fn reads_a_described_request_with_repeated_headers() {
        let d = parse(
            br#"{"target":"pay","method":"POST","path":"/v1/r?x=1","headers":[["a","1"],["a","2"]],"body":"{}"}"#,
            dir(),
        )
        .unwrap();
        assert_eq!(d.target.as_deref(), Some("pay"));
        assert_eq!(d.parts.method, http::Method::POST);
        assert_eq!(d.parts.uri.path_and_query().unwrap().as_str(), "/v1/r?x=1");
        assert_eq!(d.parts.headers.get_all("a").iter().count(), 2);
        assert!(matches!(d.body, Body::Bytes(b) if &b[..] == b"{}"));
    }

    #[test]
    fn refuses_what_it_cannot_read_exactly_and_says_what() {
        for (text, says) in [
            (r#"{"method":"GET","path":"/","path":"/x"}"#, "strict JSON"),
            (r#"{"method":"GET","path":"/","extra":1}"#, "unknown field"),
            (r#"{"method":"G T","path":"/"}"#, "not an HTTP method"),
            (r#"{"method":"GET","path":"x"}"#, "must start with '/'"),
            (
                r#"{"method":"GET","path":"/","headers":[["a b","1"]]}"#,
                "headers[0]",
            ),
            (
                r#"{"method":"GET","path":"/","headers":[["a","\n"]]}"#,
                "headers[0] (a)",
            ),
            (
                r#"{"method":"GET","path":"/","body":"","body_sha256":"00"}"#,
                "at most one",
            ),
            (
                r#"{"method":"GET","path":"/","body_sha256":"AB"}"#,
                "64 lowercase hex",
            ),
        ] {
            let e = parse(text.as_bytes(), dir()).err().expect(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: an error or a request, never a panic; a request read back has exactly
        /// the method and path the file named.
        #[test]
        fn never_panics_and_keeps_method_and_path(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            method in "[A-Z]{1,8}",
            path in "/[a-z0-9/?=&%.-]{0,40}",
        ) {
            let _ = parse(&bytes, dir());
            let text = serde_json::json!({"method": method, "path": path}).to_string();
            if let Ok(d) = parse(text.as_bytes(), dir()) {
                prop_assert_eq!(d.parts.method.as_str(), method.as_str());
                prop_assert_eq!(d.parts.uri.path_and_query().map(|p| p.as_str()), Some(path.as_str()));
            }
        }
    }
}
