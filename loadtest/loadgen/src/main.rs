//! loadgen: the load generator behind loadtest/run.sh.
//!
//! * `upstream`: a minimal, fast HTTP/1.1 server answering 200 with a tiny JSON body.
//! * `sts`: a stand-in for AWS STS answering `AssumeRole` after a fixed delay (100 ms by
//!   default), each call on its own deadline, counting the calls.
//! * `certs`: pre-issues single-use seb certificates into a file, one per line, so the
//!   generator never signs on the hot path.
//! * `run`: open-loop fixed-rate load (coordinated-omission-free: request i is due at
//!   start + i/rate and its latency counts from then) or closed-loop load (C connections each
//!   sending back to back), HTTP/1.1 keep-alive, plain or TLS, reporting HdrHistogram
//!   percentiles as text and JSON.
//!
//! Traffic goes to loopback addresses only; anything else is refused.

mod certs;
mod propagation;
mod run;
mod sts;
mod table;
mod targets;
mod upstream;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadgen", about = "seb load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve 200 {"ok":true} to every request, as fast as possible.
    Upstream(upstream::Args),
    /// Answer STS AssumeRole after a fixed delay, each call on its own deadline.
    Sts(sts::Args),
    /// Pre-issue N single-use certificates into a file, one per line.
    Certs(certs::Args),
    /// Generate load against a URL and report latency percentiles and throughput.
    Run(run::Args),
    /// Push revocations to one replica and time until the others report them.
    Propagation(propagation::Args),
    /// Print N free loopback TCP ports (bound and released; for scripts).
    Ports {
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Build the comparison table (markdown) from a results directory written by run.sh.
    Table(table::Args),
    /// The targets against a results directory's figures (markdown).
    Targets(targets::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream(a) => upstream::main(a),
        Command::Sts(a) => sts::main(a),
        Command::Certs(a) => certs::main(a),
        Command::Run(a) => run::main(a),
        Command::Propagation(a) => propagation::main(a),
        Command::Ports { n } => ports(n),
        Command::Table(a) => table::main(a),
        Command::Targets(a) => targets::main(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn ports(n: usize) -> anyhow::Result<()> {
    // Hold all of them until every one is chosen, so the N ports are distinct.
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

/// Resolves `host:port` and refuses anything that is not a loopback address.
pub fn loopback_addr(host: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = (host, port).to_socket_addrs()?.collect();
    // Prefer IPv4 loopback (`localhost` may list ::1 first).
    addrs
        .iter()
        .find(|a| a.is_ipv4() && a.ip().is_loopback())
        .or_else(|| addrs.iter().find(|a| a.ip().is_loopback()))
        .copied()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{host}:{port} is not a loopback address; loadgen only sends to loopback"
            )
        })
}
