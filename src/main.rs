//! The `seb` command line. Every subcommand is a thin shell over the library.

use clap::{Args, Parser, Subcommand};
use seb::admission::revocation::{self, RevocationClaims, RevocationPayload, Revoked};
use seb::cert::{self, keys, Issuer, TrustedIssuers, WindowPolicy, CERT_TYP};
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// `seb --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SEB_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "seb",
    version = VERSION,
    about = "Sovereign Execution Broker: admits mutations only under signed, scoped, short-lived certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an Ed25519 key pair: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue, inspect and verify certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Issue signed revocation documents.
    #[command(subcommand)]
    Revocation(RevocationCommand),
    /// Run the broker.
    Serve {
        /// The broker's TOML config; every field is in docs/CONFIG.md, examples in deploy/.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask a running broker to reload its config file (as SIGHUP does): trusted issuer keys,
    /// TLS certificate, key and client CA, revocation source. Exit 0 when reloaded, 1 when
    /// the broker refused the new config (it keeps the running one), 2 when unreachable.
    Reload {
        /// The broker's admin address (its admin token, if any, from SEB_ADMIN_TOKEN).
        #[arg(long, default_value = "127.0.0.1:9901", conflicts_with = "config")]
        admin: String,
        /// Read the admin address and token from this config file instead.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The broker's verdict for a described request, offline (exit 0 allow, 1 deny, 2 usage).
    Check(seb::proxy::check::cli::CheckArgs),
    /// Check and search audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Make a local CA, a server certificate for localhost and an agent client certificate.
    DevCerts {
        #[arg(long)]
        out: PathBuf,
        /// Agent name for the client certificate (CN, and a spiffe:// URI SAN).
        #[arg(long, default_value = "agent:demo")]
        agent: String,
    },
    /// Print a kubeconfig whose server is a broker's kubernetes listener. Its token is the
    /// agent token for reads; pass a certificate per change with `kubectl --token`.
    Kubeconfig(KubeconfigArgs),
    #[command(flatten)]
    Ops(seb::ops::Commands),
    #[command(flatten)]
    Signer(seb::signer::cli::Commands),
}

// === seb kubeconfig ===

#[derive(Args)]
struct KubeconfigArgs {
    /// The broker's kubernetes listener, https://host:port.
    #[arg(long)]
    server: String,
    /// CA bundle that signed the broker's TLS certificate (embedded in the kubeconfig).
    #[arg(long)]
    ca: PathBuf,
    /// Bearer token: the agent token (reads) or a certificate (one change).
    #[arg(long)]
    token: Option<String>,
    /// Default namespace of the context.
    #[arg(long)]
    namespace: Option<String>,
}

/// JSON is valid YAML, and kubectl and client libraries read it as a kubeconfig.
fn kubeconfig(a: &KubeconfigArgs) -> anyhow::Result<()> {
    use base64::Engine;
    if !a.server.starts_with("https://") {
        anyhow::bail!("--server must be https://: client-go sends no bearer token over plain HTTP");
    }
    let ca = std::fs::read(&a.ca).map_err(|e| anyhow::anyhow!("{}: {e}", a.ca.display()))?;
    let mut user = json!({});
    if let Some(t) = &a.token {
        user["token"] = json!(t.trim());
    }
    let mut context = json!({"cluster": "seb", "user": "seb-agent"});
    if let Some(ns) = &a.namespace {
        context["namespace"] = json!(ns);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "seb", "cluster": {
            "server": a.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
        }}],
        "users": [{"name": "seb-agent", "user": user}],
        "contexts": [{"name": "seb", "context": context}],
        "current-context": "seb",
    });
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

// === end seb kubeconfig ===

#[derive(Subcommand)]
enum CertCommand {
    /// Print a certificate v1 token.
    Issue(IssueArgs),
    /// Print header and payload, WITHOUT verifying anything.
    Inspect {
        /// The token, or - to read it from stdin.
        token: String,
    },
    /// Verify signature, issuer key and validity window. Exit 0 when valid, 1 otherwise.
    Verify {
        /// A trusted issuer public key (SPKI PEM); repeat for several.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        skew: std::time::Duration,
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_ttl: std::time::Duration,
        /// The token, or - to read it from stdin.
        token: String,
    },
}

#[derive(Args)]
struct IssueArgs {
    /// Issuer private key (PKCS#8 PEM; openssl genpkey -algorithm ed25519 makes one).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    iss: String,
    #[arg(long)]
    sub: String,
    /// Lifetime, e.g. 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// JSON file holding the `seb` claims object. Top-level claims `jti`, `cnf` and `aud` may
    /// be given in it too; they are moved to the top level.
    #[arg(long)]
    claims: PathBuf,
    /// The broker target the certificate is for (`aud`, its `[[targets]] name`); repeat for
    /// several. Replaces an `aud` in the claims file.
    #[arg(long = "aud", value_name = "TARGET")]
    aud: Vec<String>,
    /// Key id for the header; defaults to the key's RFC 7638 thumbprint.
    #[arg(long)]
    kid: Option<String>,
    /// Start the validity window this long before now (for tests of expiry and skew).
    #[arg(long, value_parser = humantime::parse_duration)]
    backdate: Option<std::time::Duration>,
}

#[derive(Subcommand)]
enum RevocationCommand {
    /// Print a signed revocation document.
    Issue {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        iss: String,
        #[arg(long)]
        epoch: u64,
        #[arg(long, default_value_t = 0)]
        min_policy_epoch: u64,
        #[arg(long = "revoke-jti")]
        jti: Vec<String>,
        #[arg(long = "revoke-sub")]
        sub: Vec<String>,
        #[arg(long = "revoke-kid")]
        kid_revoked: Vec<String>,
        #[arg(long)]
        kid: Option<String>,
        /// Write to this file (atomically) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and every signature; print how many records verified.
    Verify(seb::audit::cli::VerifyArgs),
    /// Search records: every production write under policy X in March, in one command.
    Query(seb::audit::cli::QueryArgs),
    /// Label a would-block legitimate or harmful: a signed record in a label log of its own.
    Label(seb::audit::rollout_cli::LabelArgs),
    /// Would-block and false-block rates per day, target, agent and policy.
    Report(seb::audit::rollout_cli::ReportArgs),
    /// Records as OCSF API Activity or CloudTrail Lake PutAuditEvents input (docs/OPERATIONS.md).
    Export(seb::audit::export::ExportArgs),
}

// glibc's malloc was ~8% of the broker's CPU under load: every request frees 8-12 KiB buffers
// (hyper's read buffers, the boxed request future), and a free of that size makes glibc
// consolidate its fast bins. mimalloc's per-thread pages keep that off the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Cert(CertCommand::Issue(a)) => issue(&a),
        Command::Cert(CertCommand::Inspect { token }) => inspect(&token),
        Command::Cert(CertCommand::Verify {
            trust,
            skew,
            max_ttl,
            token,
        }) => return verify(&trust, skew, max_ttl, &token),
        Command::Revocation(RevocationCommand::Issue {
            key,
            iss,
            epoch,
            min_policy_epoch,
            jti,
            sub,
            kid_revoked,
            kid,
            out,
        }) => revocation_issue(
            &key,
            iss,
            epoch,
            min_policy_epoch,
            Revoked {
                jti,
                sub,
                kid: kid_revoked,
            },
            kid,
            out,
        ),
        Command::Serve { config } => serve(&config),
        Command::Reload { admin, config } => {
            return seb::proxy::admin::run_reload(&admin, config.as_deref())
        }
        Command::Check(a) => return seb::proxy::check::cli::run(&a),
        Command::Audit(AuditCommand::Verify(a)) => return seb::audit::cli::run_verify(&a),
        Command::Audit(AuditCommand::Query(a)) => return seb::audit::cli::run_query(&a),
        Command::Audit(AuditCommand::Label(a)) => return seb::audit::rollout_cli::run_label(&a),
        Command::Audit(AuditCommand::Report(a)) => return seb::audit::rollout_cli::run_report(&a),
        Command::Audit(AuditCommand::Export(a)) => return seb::audit::export::run(&a),
        Command::DevCerts { out, agent } => seb::devcerts::run_cli(&out, &agent),
        Command::Kubeconfig(a) => kubeconfig(&a),
        Command::Ops(c) => return seb::ops::run(&c),
        Command::Signer(c) => return seb::signer::cli::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let key = keys::generate();
    let (k, p) = keys::write_keypair(out, &key)?;
    eprintln!("wrote {} and {}", k.display(), p.display());
    println!("{}", keys::key_id(&key.verifying_key()));
    Ok(())
}

fn read_token(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s.trim().to_string())
    } else {
        Ok(arg.trim().to_string())
    }
}

fn random_id() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    Ok(hex::encode(b))
}

fn issue(a: &IssueArgs) -> anyhow::Result<()> {
    let key = keys::load_signing_key(&a.key)?;
    let text =
        std::fs::read(&a.claims).map_err(|e| anyhow::anyhow!("{}: {e}", a.claims.display()))?;
    let mut seb = seb::json::parse_strict(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.claims.display()))?;
    let obj = seb
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("{}: must hold a JSON object", a.claims.display()))?;
    let jti = match obj.remove("jti") {
        Some(Value::String(j)) => j,
        Some(_) => anyhow::bail!("{}: jti must be a string", a.claims.display()),
        None => random_id()?,
    };
    let cnf = obj.remove("cnf");
    let file_aud = obj.remove("aud");
    let aud = match a.aud.as_slice() {
        [] => file_aud,
        [one] => Some(json!(one)),
        many => Some(json!(many)),
    };
    obj.entry("v").or_insert(json!(1));
    let now = cert::now_secs();
    let nbf = now - a.backdate.map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut payload = json!({
        "iss": a.iss, "sub": a.sub, "jti": jti, "iat": nbf, "nbf": nbf, "exp": nbf + a.ttl.as_secs() as i64, "seb": seb,
    });
    if let Some(cnf) = cnf {
        payload["cnf"] = cnf;
    }
    if let Some(aud) = aud {
        payload["aud"] = aud;
    }
    // Refuse to sign what the broker would refuse to read.
    cert::Claims::from_payload(payload.clone())
        .map_err(|e| anyhow::anyhow!("claims would not make a valid certificate: {e}"))?;
    let kid = a
        .kid
        .clone()
        .unwrap_or_else(|| keys::key_id(&key.verifying_key()));
    println!("{}", cert::jws::sign(&key, CERT_TYP, &kid, &payload));
    Ok(())
}

fn inspect(token: &str) -> anyhow::Result<()> {
    use base64::Engine;
    let token = read_token(token)?;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        anyhow::bail!("not a JWS in compact form");
    }
    let decode = |p: &str, what: &str| -> anyhow::Result<Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|e| anyhow::anyhow!("{what} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{what} is not JSON: {e}"))
    };
    eprintln!("NOT VERIFIED: this shows what the token claims; use `seb cert verify` to check it.");
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({"header": decode(parts[0], "header")?, "payload": decode(parts[1], "payload")?})
        )?
    );
    Ok(())
}

fn verify(
    trust: &[PathBuf],
    skew: std::time::Duration,
    max_ttl: std::time::Duration,
    token: &str,
) -> ExitCode {
    let run = || -> anyhow::Result<Result<cert::Certificate, seb::denial::Denial>> {
        let mut issuers = Vec::new();
        for p in trust {
            let key = keys::load_verifying_key(p)?;
            issuers.push(Issuer {
                name: None,
                kid: keys::key_id(&key),
                key,
            });
        }
        let token = read_token(token)?;
        let window = WindowPolicy {
            skew_secs: skew.as_secs() as i64,
            max_ttl_secs: max_ttl.as_secs() as i64,
        };
        Ok(cert::verify(
            &token,
            &TrustedIssuers::new(issuers),
            window,
            cert::now_secs(),
        ))
    };
    match run() {
        Ok(Ok(c)) => {
            println!(
                "valid: jti={} iss={} sub={} kid={} expires={}",
                c.claims.jti, c.claims.iss, c.claims.sub, c.kid, c.claims.exp
            );
            ExitCode::SUCCESS
        }
        Ok(Err(d)) => {
            println!("{}: {}", d.reason, d.message);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn revocation_issue(
    key: &std::path::Path,
    iss: String,
    epoch: u64,
    min_policy_epoch: u64,
    revoked: Revoked,
    kid: Option<String>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let key = keys::load_signing_key(key)?;
    let kid = kid.unwrap_or_else(|| keys::key_id(&key.verifying_key()));
    let payload = RevocationPayload {
        iss,
        iat: cert::now_secs(),
        seb: RevocationClaims {
            v: 1,
            revocation_epoch: epoch,
            min_policy_epoch,
            revoked,
        },
    };
    let token = revocation::sign(&key, &kid, &payload);
    match out {
        Some(path) => seb::fsutil::write_atomic(&path, format!("{token}\n").as_bytes(), 0o644)?,
        None => println!("{token}"),
    }
    Ok(())
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = seb::config::Config::load(path)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.shards() > 0 {
        // Agent connections run on the shards; this runtime keeps the accept loops, the admin
        // port and background refreshes, which one thread carries.
        rt.worker_threads(1);
    }
    let rt = rt.enable_all().build()?;
    let code = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // A file-size limit (RLIMIT_FSIZE) would otherwise kill the process with SIGXFSZ; as a
        // handled signal it becomes a failed write, which the audit log turns into refusals.
        let _xfsz = signal(SignalKind::from_raw(libc::SIGXFSZ))?;
        // Handled from before the broker starts, so that no signal that arrives meanwhile
        // takes its default action (SIGHUP's would end the process).
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut running = seb::proxy::start(config).await?;
        for (name, addr) in &running.target_addrs {
            eprintln!("seb: target {name} listening on {addr}");
        }
        eprintln!("seb: admin listening on {}", running.admin_addr);
        let reloader = running.reloader.clone();
        let signo = loop {
            tokio::select! {
                _ = running.wait() => anyhow::bail!("a listener stopped"),
                _ = term.recv() => break libc::SIGTERM,
                _ = int.recv() => break libc::SIGINT,
                _ = hup.recv() => match reloader.reload().await {
                    Ok(r) => {
                        eprintln!("seb: SIGHUP: reloaded: {}", r.applied.join("; "));
                        if !r.restart_needed.is_empty() {
                            eprintln!(
                                "seb: SIGHUP: changed but needing a restart (the running values stay): {}",
                                r.restart_needed.join(", ")
                            );
                        }
                    }
                    Err(e) => eprintln!("seb: SIGHUP: not reloaded, the running configuration stays: {e}"),
                },
            }
        };
        eprintln!(
            "seb: {}: draining (at most {:?}); a second signal exits at once",
            signal_name(signo),
            running.shutdown_grace
        );
        let drain = running.drain();
        tokio::pin!(drain);
        let drained = loop {
            tokio::select! {
                d = &mut drain => break d,
                _ = term.recv() => return Ok(second_signal(libc::SIGTERM)),
                _ = int.recv() => return Ok(second_signal(libc::SIGINT)),
                _ = hup.recv() => eprintln!("seb: SIGHUP ignored while draining"),
            }
        };
        if drained.cut > 0 {
            eprintln!(
                "seb: grace period over: {} connection(s) cut; their outcomes are recorded as unknown at the next start",
                drained.cut
            );
        }
        if let Err(e) = &drained.audit {
            eprintln!("seb: {e}");
            return Ok(ExitCode::from(1));
        }
        eprintln!("seb: stopped");
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })?;
    // The shards and the audit writer are threads of their own; nothing of theirs is left to
    // wait for, and the runtime's tasks (upgraded sessions past the grace period) are cut.
    rt.shutdown_background();
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// A second SIGTERM or SIGINT while draining: the operator wants out now. Decisions are
/// already durable; outcomes not yet written are recorded as unknown at the next start.
fn second_signal(signo: i32) -> ExitCode {
    eprintln!(
        "seb: second {}: exiting now without waiting for requests in flight",
        signal_name(signo)
    );
    std::process::exit(128 + signo)
}
