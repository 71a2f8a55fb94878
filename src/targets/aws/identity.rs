//! The identity an AWS call runs under.
//!
//! `sts`: per certificate, `AssumeRole` on the target's execution role, signed with the broker's
//! base credentials (the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN` environment variables), with an inline session policy allowing only the
//! certified call, the agent as `SourceIdentity`, and session tags naming the certificate. The
//! credentials are cached per certificate id for its remaining uses and never leave the broker.
//! Reads and precondition checks assume the read role, cached for the broker.
//!
//! `static`: fixed credentials from the config, for emulators and tests; every audit record
//! says so.

use super::sigv4::{self, Credentials, Payload};
use crate::denial::{Denial, Reason};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Session length asked of STS: the shortest it grants.
pub const SESSION_SECONDS: u64 = 900;
/// Cached sessions are used for at most this long, so a call never starts on credentials about
/// to expire.
const CACHE_SECONDS: u64 = 600;

/// One minted (or fixed) identity.
#[derive(Debug)]
pub struct Minted {
    pub credentials: Credentials,
    pub audit: serde_json::Value,
}

/// What goes into one AssumeRole call.
pub struct AssumeRole<'a> {
    pub role_arn: &'a str,
    pub session_name: String,
    pub source_identity: Option<String>,
    pub policy: Option<String>,
    pub tags: Vec<(&'static str, String)>,
}

pub struct StsClient {
    /// STS URL (emulator, VPC endpoint); otherwise the regional endpoint of the call's region.
    endpoint: Option<String>,
    client: UpstreamClient,
    cache: moka::sync::Cache<String, Arc<Minted>>,
}

fn unavailable(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::IdentityUnavailable, msg)
}

/// `[\w+=,.@-]`, 2 to 64 characters: what STS accepts for RoleSessionName and SourceIdentity.
pub fn sanitize_session_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    while out.len() < 2 {
        out.push('_');
    }
    out
}

/// Session tag values allow letters, digits, spaces and `_.:/=+-@`, up to 256 characters.
fn sanitize_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// Where the broker's own (base) credentials come from, in the order the AWS SDKs use:
/// environment variables, then the container credentials endpoint (ECS/Fargate task role:
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`), then the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or default).
/// Read when needed, so rotated credentials are picked up, and a missing source is an
/// `identity_unavailable` refusal, not a crash.
pub async fn base_credentials(client: &UpstreamClient) -> Result<Credentials, Denial> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(a), Some(s)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    let container_url = match (
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        // The ECS agent's fixed link-local address.
        (Some(rel), _) => Some(format!("http://169.254.170.2{rel}")),
        (None, Some(full)) => Some(full),
        _ => None,
    };
    if let Some(url) = container_url {
        return container_credentials(client, &url, var("AWS_CONTAINER_AUTHORIZATION_TOKEN")).await;
    }
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
        if let Some(c) = shared_file_credentials(&text, &profile) {
            return Ok(c);
        }
    }
    Err(unavailable(
        "the broker has no base AWS credentials to call STS with (environment, container credentials or shared credentials file)",
    ))
}

async fn container_credentials(
    client: &UpstreamClient,
    url: &str,
    token: Option<String>,
) -> Result<Credentials, Denial> {
    let mut req = http::Request::get(url);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, t);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| unavailable(format!("container credentials URL {url:?}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.send(req))
        .await
        .map_err(|_| unavailable("the container credentials endpoint did not answer within 5s"))?
        .map_err(|e| {
            unavailable(format!(
                "the container credentials endpoint is unreachable: {e}"
            ))
        })?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| unavailable(format!("container credentials could not be read: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(unavailable(format!(
            "the container credentials endpoint answered {status}"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| unavailable(format!("container credentials are not JSON: {e}")))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| unavailable(format!("container credentials have no {k}")))
    };
    Ok(Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: v.get("Token").and_then(|x| x.as_str()).map(str::to_string),
    })
}

/// `[profile]` sections of an AWS shared credentials file (INI).
fn shared_file_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_string());
            match k.trim() {
                "aws_access_key_id" => id = v,
                "aws_secret_access_key" => secret = v,
                "aws_session_token" => token = v,
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// Text of the first `<tag>` element, entities decoded. STS answers are small and flat; the
/// values read here (keys, tokens, ARNs, codes) hold no markup.
pub fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&close)?;
    Some(
        doc[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// `application/x-www-form-urlencoded` as Python's `urlencode` writes it (unreserved
/// characters kept, space as `+`): AWS reads any valid spelling, and emulators that re-encode
/// the parsed form before checking the signature (moto) then hash the same bytes we signed.
fn form_encode(pairs: &[(String, String)]) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b' ');
    let enc = |s: &str| utf8_percent_encode(s, SET).to_string().replace(' ', "+");
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl StsClient {
    pub fn new(endpoint: Option<String>, client: UpstreamClient) -> StsClient {
        StsClient {
            endpoint,
            client,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(CACHE_SECONDS))
                .build(),
        }
    }

    /// Cached by `key` (the certificate id, or the read role).
    pub async fn assume_cached(
        &self,
        key: &str,
        region: &str,
        req: AssumeRole<'_>,
    ) -> Result<Arc<Minted>, Denial> {
        if let Some(m) = self.cache.get(key) {
            return Ok(m);
        }
        let minted = Arc::new(self.assume(region, req).await?);
        self.cache.insert(key.to_string(), minted.clone());
        Ok(minted)
    }

    pub async fn assume(&self, region: &str, req: AssumeRole<'_>) -> Result<Minted, Denial> {
        let endpoint = match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://sts.{region}.amazonaws.com"),
        };
        let base = base_credentials(&self.client).await?;
        let mut pairs: Vec<(String, String)> = vec![
            ("Action".into(), "AssumeRole".into()),
            ("Version".into(), "2011-06-15".into()),
            ("RoleArn".into(), req.role_arn.into()),
            ("RoleSessionName".into(), req.session_name.clone()),
            ("DurationSeconds".into(), SESSION_SECONDS.to_string()),
        ];
        if let Some(s) = &req.source_identity {
            pairs.push(("SourceIdentity".into(), s.clone()));
        }
        if let Some(p) = &req.policy {
            pairs.push(("Policy".into(), p.clone()));
        }
        for (i, (k, v)) in req.tags.iter().enumerate() {
            pairs.push((format!("Tags.member.{}.Key", i + 1), (*k).into()));
            pairs.push((format!("Tags.member.{}.Value", i + 1), sanitize_tag(v)));
        }
        let body = form_encode(&pairs);
        let mut http_req = http::Request::post(format!("{endpoint}/"))
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| unavailable(format!("cannot build the STS request: {e}")))?;
        sigv4::sign_request(
            &mut http_req,
            &base,
            "sts",
            region,
            Payload::Bytes(body.as_bytes()),
            SystemTime::now(),
        )?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.send(http_req))
            .await
            .map_err(|_| unavailable("STS did not answer within 10s"))?
            .map_err(|e| unavailable(format!("STS is unreachable: {e}")))?;
        let status = resp.status();
        let text = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| unavailable(format!("STS answer could not be read: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        if !status.is_success() {
            return Err(unavailable(format!(
                "STS AssumeRole on {} failed ({status}): {}: {}",
                req.role_arn,
                xml_text(&text, "Code").unwrap_or_default(),
                xml_text(&text, "Message").unwrap_or_default()
            )));
        }
        let field = |t: &str| {
            xml_text(&text, t).ok_or_else(|| unavailable(format!("STS answer has no {t}")))
        };
        let credentials = Credentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        };
        Ok(Minted {
            audit: serde_json::json!({
                "kind": "sts",
                "role": req.role_arn,
                "session": req.session_name,
                "arn": xml_text(&text, "Arn"),
                "access_key_id": credentials.access_key_id,
                "source_identity": req.source_identity,
                "expires": xml_text(&text, "Expiration"),
                "session_policy": req.policy.as_deref().map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap_or_default()),
            }),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(sanitize_session_name("c1"), "c1");
        assert_eq!(sanitize_session_name("x"), "x_");
        assert_eq!(
            sanitize_session_name("agent:oncall v3/é"),
            "agent_oncall_v3__"
        );
        let long = sanitize_session_name(&"a".repeat(100));
        assert_eq!(long.len(), 64);
        assert_eq!(sanitize_session_name("ok+=,.@-_"), "ok+=,.@-_");
    }

    #[test]
    fn shared_credentials_files_are_read_by_profile() {
        let text = "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n# comment\n[ops]\naws_access_key_id=AKIAOPS\naws_secret_access_key=s2\naws_session_token=t\n";
        let d = shared_file_credentials(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.session_token),
            ("AKIADEFAULT", None)
        );
        let o = shared_file_credentials(text, "ops").unwrap();
        assert_eq!(
            (o.secret_access_key.as_str(), o.session_token.as_deref()),
            ("s2", Some("t"))
        );
        assert!(shared_file_credentials(text, "missing").is_none());
    }

    #[tokio::test]
    async fn container_credentials_are_fetched_with_their_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let body = r#"{"AccessKeyId":"ASIATASK","SecretAccessKey":"sk","Token":"tok","Expiration":"2030-01-01T00:00:00Z"}"#;
            s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            req
        });
        let client = UpstreamClient::new(None).unwrap();
        let c = container_credentials(
            &client,
            &format!("http://{addr}/creds"),
            Some("secret-token".into()),
        )
        .await
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("ASIATASK", Some("tok"))
        );
        let seen = server.await.unwrap();
        assert!(seen.starts_with("get /creds "), "{seen}");
        assert!(seen.contains("authorization: secret-token"), "{seen}");
        let dead = format!("http://{addr}/creds");
        let e = container_credentials(&client, &dead, None)
            .await
            .unwrap_err();
        assert_eq!(e.reason, Reason::IdentityUnavailable);
    }

    #[test]
    fn sts_answers_are_read() {
        let doc = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s/e+c=</SecretAccessKey><SessionToken>t&amp;k</SessionToken></Credentials><AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(xml_text(doc, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(doc, "SessionToken").as_deref(), Some("t&k"));
        assert_eq!(xml_text(doc, "Missing"), None);
    }

    #[test]
    fn forms_encode_reserved_characters() {
        assert_eq!(
            form_encode(&[
                ("Policy".into(), "{\"a\": \"b/c\"}".into()),
                ("K".into(), "a-b_c.d~".into())
            ]),
            "Policy=%7B%22a%22%3A+%22b%2Fc%22%7D&K=a-b_c.d~"
        );
    }
}
