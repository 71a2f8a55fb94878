//! `seb check`'s arguments and runner for the main binary.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// The verdict the broker would give a described request, from its config, offline (with
/// static issuer keys and a revocation file). Prints it as JSON. Exit 0 allow (or a read),
/// 1 deny, 2 usage; with --shadow, 0 whatever the verdict, which is appended as a signed
/// would_allow/would_deny record to the shadow log.
#[derive(Debug, Clone, clap::Args)]
#[command(long_about)]
pub struct CheckArgs {
    /// The broker's config (the same file `seb serve` reads).
    #[arg(long, default_value = "seb.toml")]
    pub config: PathBuf,
    /// The certificate, or `-` to read it from stdin; leave out to check a request without
    /// one, or one whose request file carries it.
    #[arg(long)]
    pub cert: Option<String>,
    /// The request, described as JSON: {"target", "method", "path", "headers": [[name,
    /// value]], "body_file" | "body" | "body_sha256"} (docs/FORMATS.md).
    #[arg(long)]
    pub request: PathBuf,
    /// Record the verdict in the shadow log and exit 0 whatever it is.
    #[arg(long)]
    pub shadow: bool,
    /// The shadow log; default shadow.jsonl beside the config's audit log.
    #[arg(long, requires = "shadow")]
    pub shadow_log: Option<PathBuf>,
}

pub fn run(a: &CheckArgs) -> ExitCode {
    let run = || -> anyhow::Result<super::CheckAnswer> {
        let shadow_log = match (&a.shadow_log, a.shadow) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(
                super::default_shadow_log(&crate::config::Config::load(&a.config)?).ok_or_else(
                    || anyhow::anyhow!("the config names no audit log: give --shadow-log"),
                )?,
            ),
            (None, false) => None,
        };
        super::check(&super::CheckRequest {
            config: a.config.clone(),
            request: a.request.clone(),
            cert: a.cert.as_deref().map(read_token).transpose()?,
            shadow_log,
        })
    };
    match run() {
        Ok(answer) => {
            println!("{}", answer.to_json());
            match (a.shadow, answer.denial) {
                (true, _) | (false, None) => ExitCode::SUCCESS,
                (false, Some(_)) => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("seb check: {e:#}");
            ExitCode::from(2)
        }
    }
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
