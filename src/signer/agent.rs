//! The agent's side: `seb request` asks a signer for a certificate (waiting for approvals up
//! to a deadline, with progress on stderr) and `seb exec` runs a command with it in place.

use super::proposal::{CertificateRequest, EvidenceRefs};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Ask a signer for a certificate and print it (waiting for approvals up to --wait).
#[derive(Debug, Clone, clap::Args)]
pub struct SignerClientArgs {
    /// The signer, https://HOST:PORT.
    #[arg(long, env = "SEB_SIGNER")]
    pub signer: String,
    /// CA bundle that signed the signer's TLS certificate (default: the platform's roots).
    #[arg(long, env = "SEB_SIGNER_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate for mTLS: the agent's identity (with --client-key).
    #[arg(long, env = "SEB_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, env = "SEB_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Agent token, when not using mTLS.
    #[arg(long, env = "SEB_SIGNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The proposal: a JSON file holding {"proposal": ..., "evidence": ...} or the proposal alone.
    #[arg(long)]
    pub proposal: PathBuf,
    /// Evidence references (JSON), replacing any in the proposal file.
    #[arg(long)]
    pub evidence: Option<PathBuf>,
    /// How long to wait for approvals before giving up.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// Reads the proposal (and evidence) files into one request, refusing what the signer would.
pub fn load_request(
    proposal: &Path,
    evidence: Option<&Path>,
) -> anyhow::Result<CertificateRequest> {
    let read = |p: &Path| -> anyhow::Result<Value> {
        let b = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        crate::json::parse_strict(&b).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let v = read(proposal)?;
    let mut whole = if v.get("proposal").is_some() {
        v
    } else {
        serde_json::json!({ "proposal": v })
    };
    if let Some(e) = evidence {
        let refs: EvidenceRefs = serde_json::from_value(read(e)?)
            .map_err(|err| anyhow::anyhow!("{}: {err}", e.display()))?;
        whole["evidence"] = serde_json::to_value(refs)?;
    }
    CertificateRequest::parse(whole.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", proposal.display()))
}

/// What the signer answered.
pub enum Answer {
    Certificate(String),
    Refused {
        status: u16,
        code: String,
        message: String,
        retry: bool,
    },
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTPS-only client trusting `ca` (else the platform's roots), with the agent's client
/// certificate when it has one.
pub fn https_client(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<HttpsClient> {
    let tls = crate::tls::client_config(ca, identity)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

pub async fn ask(a: &SignerClientArgs, req: &CertificateRequest) -> anyhow::Result<Answer> {
    let client = https_client(
        a.ca.as_deref(),
        a.client_cert.as_deref().zip(a.client_key.as_deref()),
    )?;
    let url = format!("{}/v1/certificates", a.signer.trim_end_matches('/'));
    let mut r = http::Request::post(&url).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = &a.token {
        r = r.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let r = r.body(Full::new(Bytes::from(serde_json::to_vec(req)?)))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(r))
        .await
        .map_err(|_| anyhow::anyhow!("{url}: no answer within 60s"))?
        .map_err(|e| anyhow::anyhow!("{url}: {}", crate::upstream::error_chain(&e)))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("{url}: status {status}, answer is not JSON: {e}"))?;
    if status == 200 {
        return match v.get("certificate").and_then(Value::as_str) {
            Some(c) => Ok(Answer::Certificate(c.to_string())),
            None => anyhow::bail!("{url}: answer has no certificate"),
        };
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(Answer::Refused {
        status,
        code: s("code"),
        message: s("message"),
        retry: v.get("retry").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Asks until a certificate comes, a final refusal, or the wait is over.
pub async fn obtain(a: &SignerClientArgs) -> anyhow::Result<String> {
    let req = load_request(&a.proposal, a.evidence.as_deref())?;
    let deadline = Instant::now() + a.wait;
    let digest = req.proposal.digest();
    loop {
        match ask(a, &req).await? {
            Answer::Certificate(c) => return Ok(c),
            Answer::Refused {
                retry: true,
                code,
                message,
                ..
            } if Instant::now() < deadline => {
                eprintln!(
                    "seb: waiting for approvals of proposal {digest} ({}s left): {code}: {message}",
                    deadline.saturating_duration_since(Instant::now()).as_secs()
                );
                tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
            }
            Answer::Refused {
                status,
                code,
                message,
                ..
            } => {
                anyhow::bail!("the signer refused ({status} {code}): {message}")
            }
        }
    }
}

/// Presents the certificate to a broker's target listener (`POST /v1/prepare`, where that
/// target reads a certificate, over the agent's own TLS identity) so that the broker mints the
/// execution identity while the command starts. Returns the broker's answer.
pub async fn prepare(
    a: &SignerClientArgs,
    broker: &str,
    ca: Option<&Path>,
    target: crate::cert::TargetKind,
    cert: &str,
) -> anyhow::Result<Value> {
    let client = https_client(ca, a.client_cert.as_deref().zip(a.client_key.as_deref()))?;
    let url = format!("{}/v1/prepare", broker.trim_end_matches('/'));
    let r = http::Request::post(&url);
    let r = match target {
        crate::cert::TargetKind::Aws => r.header("x-amz-security-token", cert),
        _ => r.header(http::header::AUTHORIZATION, format!("Bearer {cert}")),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(r.body(Full::new(Bytes::new()))?),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{url}: no answer within 10s"))?
    .map_err(|e| anyhow::anyhow!("{url}: {}", crate::upstream::error_chain(&e)))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        .to_bytes();
    if status != http::StatusCode::ACCEPTED {
        anyhow::bail!("{url}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{url}: answer is not JSON: {e}"))
}

/// Where the certificate goes for the command: by target kind.
pub fn exec_env(
    target: crate::cert::TargetKind,
    cert: &str,
    dir: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    use crate::cert::TargetKind;
    let mut env = Vec::new();
    match target {
        TargetKind::Aws => {
            env.push(("AWS_SESSION_TOKEN".into(), cert.into()));
            // The certificate is the authority; SDKs still want a key pair to sign with.
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                env.push(("AWS_ACCESS_KEY_ID".into(), "SEBAGENTPLACEHOLDER".into()));
                env.push((
                    "AWS_SECRET_ACCESS_KEY".into(),
                    "placeholder-not-a-secret".into(),
                ));
            }
        }
        TargetKind::Kubernetes => {
            let src = std::env::var_os("KUBECONFIG").ok_or_else(|| {
                anyhow::anyhow!("KUBECONFIG is not set: point it at `seb kubeconfig` output")
            })?;
            let src = PathBuf::from(src);
            let text =
                std::fs::read(&src).map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?;
            let mut kc: Value = serde_json::from_slice(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a JSON kubeconfig as `seb kubeconfig` writes ({e})",
                    src.display()
                )
            })?;
            let users = kc
                .get_mut("users")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| anyhow::anyhow!("{}: no users", src.display()))?;
            for u in users {
                u["user"] = serde_json::json!({"token": cert});
            }
            let out = dir.join("kubeconfig");
            crate::fsutil::write_atomic(&out, kc.to_string().as_bytes(), 0o600)?;
            env.push(("KUBECONFIG".into(), out.display().to_string()));
        }
        TargetKind::Http => env.push(("SEB_CERTIFICATE".into(), cert.into())),
    }
    Ok(env)
}
