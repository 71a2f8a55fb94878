//! The fast local upstream: HTTP/1.1 keep-alive, 200 with a tiny JSON body. The precondition
//! reads of loadtest/precondition.sh get the answer the real service gives, in its protocol
//! (XML for ec2 and autoscaling, headers for an S3 HEAD, JSON for DynamoDB and Lambda), with
//! the values the certificates expect, so the broker admits and the path measured is the
//! whole check.

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

const EC2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><reservationSet><item><reservationId>r-1</reservationId><instancesSet><item><instanceId>i-0123456789abcdef0</instanceId><instanceState><code>16</code><name>running</name></instanceState><tagSet><item><key>tier</key><value>canary</value></item></tagSet></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
const ASG: &str = r#"<DescribeAutoScalingGroupsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeAutoScalingGroupsResult><AutoScalingGroups><member><AutoScalingGroupName>web</AutoScalingGroupName><DesiredCapacity>2</DesiredCapacity><MinSize>0</MinSize><MaxSize>10</MaxSize></member></AutoScalingGroups></DescribeAutoScalingGroupsResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></DescribeAutoScalingGroupsResponse>"#;
const ITEM: &str = r#"{"Item":{"pk":{"S":"order-000042"},"version":{"N":"1"}}}"#;
const LAMBDA: &str = r#"{"FunctionName":"resize","RevisionId":"rev-1","Timeout":3}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the request body to its end so the connection stays reusable.
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ok = |ct: &str, b: &'static str| {
        Response::builder()
            .status(200)
            .header("content-type", ct)
            .body(Full::new(Bytes::from_static(b.as_bytes())))
            .expect("static response")
    };
    Ok(if parts.method == hyper::Method::HEAD {
        Response::builder()
            .status(200)
            .header("etag", "\"loadtest-etag\"")
            .body(Full::new(Bytes::new()))
            .expect("static response")
    } else if has(b"Action=DescribeInstances") {
        ok("text/xml", EC2)
    } else if has(b"Action=DescribeAutoScalingGroups") {
        ok("text/xml", ASG)
    } else if target.ends_with(".GetItem") {
        ok("application/x-amz-json-1.0", ITEM)
    } else if parts.method == hyper::Method::GET && parts.uri.path().ends_with("/configuration") {
        ok("application/json", LAMBDA)
    } else {
        ok("application/json", std::str::from_utf8(BODY).expect("ascii"))
    })
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
