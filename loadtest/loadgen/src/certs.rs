//! Pre-issued certificate pools: N single-use certificates, each with its own jti, one per
//! line, signed before the run so that signing never sits on the generator's hot path.
//! `--target http` (the default) or `--target aws` shapes `seb.request`; the body is bound by
//! its sha256 either way (for an aws json-protocol call that is the JSON body as sent).

use seb::cert::{self, keys, CERT_TYP};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Issuer private key (PKCS#8 PEM, as `seb keygen` writes it).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    iss: String,
    #[arg(long)]
    sub: String,
    #[arg(long)]
    count: usize,
    #[arg(long)]
    out: PathBuf,
    /// `seb.target`: `http` (the default; `seb.request` is built from --upstream, --method and
    /// --path) or `aws` (`seb.request` is built from the --aws-* options).
    #[arg(long, default_value = "http", value_parser = ["http", "aws"])]
    target: String,
    /// http: the target's name (`seb.request.upstream`).
    #[arg(long, required_if_eq("target", "http"))]
    upstream: Option<String>,
    /// http: the request path.
    #[arg(long, required_if_eq("target", "http"))]
    path: Option<String>,
    /// http: the request method.
    #[arg(long, default_value = "POST")]
    method: String,
    /// aws: the SigV4 signing name (`seb.request.service`), e.g. dynamodb.
    #[arg(long, required_if_eq("target", "aws"))]
    aws_service: Option<String>,
    /// aws: the region (`seb.request.region`), as in the agent's credential scope.
    #[arg(long, required_if_eq("target", "aws"))]
    aws_region: Option<String>,
    /// aws: the operation (`seb.request.operation`), e.g. PutItem.
    #[arg(long, required_if_eq("target", "aws"))]
    aws_operation: Option<String>,
    /// aws: the resource the broker derives from the call (`seb.request.resource`): for
    /// DynamoDB the TableName. Optional.
    #[arg(long)]
    aws_resource: Option<String>,
    /// The broker target the certificates are for (`aud`); aws and kubernetes targets refuse
    /// certificates without one unless configured otherwise.
    #[arg(long)]
    aud: Option<String>,
    /// The exact request body; its SHA-256 is pinned in `seb.body`. Without it, the
    /// certificate admits only an empty body.
    #[arg(long)]
    body: Option<String>,
    /// Bind the body by these constraints (`seb.body.constraints`, with `others: "deny"`)
    /// instead of by --body's sha256: a JSON object of POINTER -> constraint. For rest calls
    /// whose headers or body members are parameters (S3 `If-Match`, Lambda `RevisionId`).
    #[arg(long, conflicts_with = "body")]
    constraints: Option<String>,
    /// `seb.precondition`, as JSON (the drift check the broker makes before the write).
    #[arg(long)]
    precondition: Option<String>,
    /// Lifetime in seconds (the broker's default maximum is 3600).
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    #[arg(long, default_value = "loadtest")]
    action: String,
    #[arg(long, default_value = "loadtest")]
    policy: String,
    #[arg(long, default_value_t = 1)]
    policy_epoch: u64,
    #[arg(long, default_value_t = 1)]
    revocation_epoch: u64,
    /// For long runs with short-lived certificates: certificate i becomes valid at
    /// now + start_in + i/schedule_rate - 60 s (and lives --ttl from then), matching an
    /// open-loop run at that rate that starts within a minute or so of now + start_in.
    #[arg(long)]
    schedule_rate: Option<f64>,
    #[arg(long, default_value_t = 0)]
    start_in: i64,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let key = keys::load_signing_key(&a.key)?;
    let kid = keys::key_id(&key.verifying_key());
    let mut run_id = [0u8; 6];
    getrandom::getrandom(&mut run_id).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let run_id = hex::encode(run_id);
    let body_rule = match (&a.body, &a.constraints) {
        (Some(b), _) => Some(json!({"sha256": hex::encode(Sha256::digest(b.as_bytes()))})),
        (None, Some(c)) => {
            let c: serde_json::Value = serde_json::from_str(c)
                .map_err(|e| anyhow::anyhow!("--constraints is not JSON: {e}"))?;
            Some(json!({"constraints": c, "others": "deny"}))
        }
        (None, None) => None,
    };
    let precondition = a
        .precondition
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--precondition is not JSON: {e}"))?;
    let request = if a.target == "aws" {
        let mut r = json!({
            "service": a.aws_service, "region": a.aws_region, "operation": a.aws_operation,
        });
        if let Some(res) = &a.aws_resource {
            r["resource"] = json!(res);
        }
        r
    } else {
        json!({"upstream": a.upstream, "method": a.method, "path": a.path})
    };
    let now = cert::now_secs();
    let tmp = a.out.with_extension("tmp");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    for i in 0..a.count {
        let nbf = match a.schedule_rate {
            Some(r) => now + a.start_in + (i as f64 / r) as i64 - 60,
            None => now,
        };
        let mut seb = json!({
            "v": 1, "action": a.action, "policy": a.policy, "policy_epoch": a.policy_epoch,
            "revocation_epoch": a.revocation_epoch, "target": a.target,
            "request": request,
        });
        if let Some(r) = &body_rule {
            seb["body"] = r.clone();
        }
        if let Some(p) = &precondition {
            seb["precondition"] = p.clone();
        }
        let mut payload = json!({
            "iss": a.iss, "sub": a.sub, "jti": format!("{run_id}-{i}"),
            "iat": nbf, "nbf": nbf, "exp": nbf + a.ttl, "seb": seb,
        });
        if let Some(aud) = &a.aud {
            payload["aud"] = json!(aud);
        }
        if i == 0 {
            // Refuse to write a pool the broker would refuse to read.
            cert::Claims::from_payload(payload.clone())
                .map_err(|e| anyhow::anyhow!("claims would not make a valid certificate: {e}"))?;
        }
        w.write_all(cert::jws::sign(&key, CERT_TYP, &kid, &payload).as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &a.out)?;
    eprintln!(
        "loadgen certs: wrote {} certificates (jti {run_id}-0..) to {}",
        a.count,
        a.out.display()
    );
    Ok(())
}
