//! The fast local upstream: HTTP/1.1 keep-alive, 200 with a tiny JSON body, nothing else.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback), e.g. 127.0.0.1:18080; port 0 picks one.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the bound address here once listening.
    #[arg(long)]
    addr_file: Option<std::path::PathBuf>,
}

const BODY: &[u8] = br#"{"ok":true}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body to its end so the connection stays reusable.
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("static response"))
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if !a.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen).await?;
        let addr = listener.local_addr()?;
        if let Some(f) = &a.addr_file {
            std::fs::write(f, format!("{addr}\n"))?;
        }
        eprintln!("loadgen upstream: listening on {addr}");
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}
