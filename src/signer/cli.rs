//! `seb signer …`, `seb request`, `seb exec` and `seb approve`: argument structs and runners
//! for the main binary.

use super::agent::{self, SignerClientArgs};
use super::config::SignerConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// The signer's commands and the agent's, flattened into `seb`'s own.
#[derive(Debug, clap::Subcommand)]
pub enum Commands {
    #[command(subcommand)]
    Signer(SignerCommand),
    Request(SignerClientArgs),
    Exec(ExecArgs),
    Approve(ApproveArgs),
}

pub fn run(c: Commands) -> ExitCode {
    match c {
        Commands::Signer(c) => run_signer(c),
        Commands::Request(a) => run_request(a),
        Commands::Exec(a) => run_exec(a),
        Commands::Approve(a) => run_approve(a),
    }
}

/// The signer: evidence-checked certificate issuance from Cedar policies.
#[derive(Debug, clap::Subcommand)]
pub enum SignerCommand {
    /// Run the signer: HTTPS for agents and brokers, a loopback admin port for the operator.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke certificates (one id, every certificate of a subject, or every certificate a
    /// key signed): a new revocation document, pushed to the configured brokers at once.
    Revoke {
        /// The signer's admin address.
        #[arg(long, default_value = "127.0.0.1:9911")]
        admin: String,
        #[arg(long, group = "what", required = true)]
        jti: Option<String>,
        #[arg(long, group = "what")]
        sub: Option<String>,
        #[arg(long, group = "what")]
        kid: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Re-read the policy folder; a changed set raises the policy epoch.
    Reload {
        #[arg(long, default_value = "127.0.0.1:9911")]
        admin: String,
    },
}

/// Sign an approval of one proposal (by its digest) as a configured approver.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The approver's private key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The approver's name, as the signer's config names this key.
    #[arg(long)]
    pub name: String,
    /// The proposal file the agent will send.
    #[arg(long)]
    pub proposal: PathBuf,
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// Post the approval to this signer (https://HOST:PORT) instead of printing it.
    #[arg(long)]
    pub post: Option<String>,
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// Obtain a certificate and run a command with it in place: AWS_SESSION_TOKEN (aws), the
/// kubeconfig's token (kubernetes), SEB_CERTIFICATE (http).
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub signer: SignerClientArgs,
    /// Present the certificate to the broker's target listener at this URL (for aws, the
    /// `AWS_ENDPOINT_URL` the command uses) with `POST /v1/prepare` before the command runs,
    /// so that the broker mints the execution identity while the command starts. A prepare
    /// that fails is reported and the command runs anyway: its use is judged in full.
    #[arg(long)]
    pub prepare: Option<String>,
    /// CA bundle that signed the broker's TLS certificate, for --prepare (default: --ca).
    #[arg(long, requires = "prepare")]
    pub prepare_ca: Option<PathBuf>,
    /// The command, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn run_signer(c: SignerCommand) -> ExitCode {
    let result = match c {
        SignerCommand::Serve { config } => serve(&config),
        SignerCommand::Revoke {
            admin,
            jti,
            sub,
            kid,
            reason,
        } => {
            let body = serde_json::json!({"jti": jti, "sub": sub, "kid": kid, "reason": reason});
            let mut body = body;
            if let Some(o) = body.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            admin_post(&admin, "/v1/revoke", body.to_string())
        }
        SignerCommand::Reload { admin } => admin_post(&admin, "/v1/reload", String::new()),
    };
    finish(result)
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = SignerConfig::load(path)?;
    runtime()?.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut running = super::serve(cfg).await?;
        let (p, r) = running.signer.epochs();
        eprintln!(
            "seb signer: listening on {}, admin on {}; key {}, policy epoch {p}, revocation epoch {r}",
            running.addr, running.admin_addr, running.signer.keys.active_kid
        );
        loop {
            tokio::select! {
                _ = running.wait() => anyhow::bail!("a listener stopped"),
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match running.signer.reload_policies() {
                    Ok(changed) => eprintln!("seb signer: SIGHUP: policies reloaded (changed: {changed})"),
                    Err(e) => eprintln!("seb signer: SIGHUP: policies not reloaded, the running set stays: {e:#}"),
                },
            }
        }
        // Every decision was durable before its answer; nothing is left to flush.
        eprintln!("seb signer: stopped");
        Ok(())
    })
}

fn admin_post(addr: &str, path: &str, body: String) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, addr)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        println!("{}", String::from_utf8_lossy(&text));
        if !status.is_success() {
            anyhow::bail!("the signer refused ({status})");
        }
        Ok(())
    })
}

pub fn run_request(a: SignerClientArgs) -> ExitCode {
    finish(
        runtime()
            .and_then(|rt| rt.block_on(agent::obtain(&a)))
            .map(|c| println!("{c}")),
    )
}

/// Obtains a certificate and runs the command with it in place; the command's exit status is
/// seb's.
pub fn run_exec(a: ExecArgs) -> ExitCode {
    let run = || -> anyhow::Result<ExitCode> {
        let req = agent::load_request(&a.signer.proposal, a.signer.evidence.as_deref())?;
        let rt = runtime()?;
        let cert = rt.block_on(agent::obtain(&a.signer))?;
        if let Some(url) = &a.prepare {
            let ca = a.prepare_ca.as_deref().or(a.signer.ca.as_deref());
            let target = req.proposal.target;
            match rt.block_on(agent::prepare(&a.signer, url, ca, target, &cert)) {
                Ok(answer) => tracing::debug!(%answer, "prepared"),
                Err(e) => eprintln!(
                    "seb: the broker did not prepare the certificate, running the command anyway: {e:#}"
                ),
            }
        }
        drop(rt);
        let dir = tempfile_dir()?;
        let env = agent::exec_env(req.proposal.target, &cert, &dir)?;
        let (prog, args) = a
            .command
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no command given after --"))?;
        let status = std::process::Command::new(prog)
            .args(args)
            .envs(env)
            .status()
            .map_err(|e| anyhow::anyhow!("{prog}: {e}"));
        let _ = std::fs::remove_dir_all(&dir);
        let status = status?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    };
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A private directory for the command's kubeconfig, removed after it ran.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let dir = std::env::temp_dir().join(format!("seb-exec-{}", hex::encode(b)));
    std::fs::create_dir(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

pub fn run_approve(a: ApproveArgs) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let key = crate::cert::keys::load_signing_key(&a.key)?;
        let req = agent::load_request(&a.proposal, None)?;
        let now = crate::cert::now_secs();
        let statement = super::evidence::sign_approval(
            &key,
            &super::evidence::ApprovalPayload {
                approver: a.name.clone(),
                proposal: req.proposal.digest(),
                iat: now,
                exp: now + a.ttl.as_secs() as i64,
            },
        );
        match &a.post {
            None => println!("{statement}"),
            Some(url) => runtime()?.block_on(post_approval(url, a.ca.as_deref(), &statement))?,
        }
        Ok(())
    };
    finish(run())
}

async fn post_approval(
    url: &str,
    ca: Option<&std::path::Path>,
    statement: &str,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let client = agent::https_client(ca, None)?;
    let target = format!("{}/v1/approvals", url.trim_end_matches('/'));
    let resp = client
        .request(http::Request::post(&target).body(http_body_util::Full::new(
            bytes::Bytes::from(statement.to_string()),
        ))?)
        .await
        .map_err(|e| anyhow::anyhow!("{target}: {}", crate::upstream::error_chain(&e)))?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    eprintln!("{}", String::from_utf8_lossy(&text));
    if !status.is_success() {
        anyhow::bail!("the signer refused the approval ({status})");
    }
    Ok(())
}
