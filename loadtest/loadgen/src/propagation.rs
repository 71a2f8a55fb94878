//! `loadgen propagation`: how long a revocation pushed to one replica takes to reach the
//! others. Each round signs a new revocation document (the next epoch), pushes it to one
//! replica's admin port and, from that replica's acknowledgement (it answers once etcd holds
//! the document), polls every other replica's `/readyz` until it reports that epoch. The
//! figure includes one poll's round trip, which the report gives as the resolution.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use seb::admission::revocation::{self, RevocationClaims, RevocationPayload, Revoked};
use seb::cert::keys;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The signer's private key (PKCS#8 PEM), whose documents the replicas trust.
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    iss: String,
    /// Admin port (loopback) of the replica each document is pushed to.
    #[arg(long)]
    push: u16,
    /// Admin ports of the replicas that must learn it (repeatable).
    #[arg(long = "watch", required = true)]
    watch: Vec<u16>,
    /// Revocations to push, one after the other.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// The first epoch to push: above any the replicas hold.
    #[arg(long)]
    first_epoch: u64,
    /// min_policy_epoch of the documents (keep the run's certificates admissible).
    #[arg(long, default_value_t = 0)]
    min_policy_epoch: u64,
    /// A label carried into the report.
    #[arg(long, default_value = "")]
    label: String,
}

async fn connect(port: u16) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let addr = crate::loopback_addr("127.0.0.1", port)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn call(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, Bytes)> {
    s.ready().await?;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::from(body)))?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Polls `/readyz` on `port` until the issuer's epoch there is at least `epoch`; the time
/// from `since`, and the duration of the last poll (the resolution).
async fn until_epoch(
    s: &mut SendRequest<Full<Bytes>>,
    iss: &str,
    epoch: u64,
    since: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    loop {
        let polled = Instant::now();
        let (_, body) = call(s, "GET", "/readyz", String::new()).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if v["revocation"]["issuers"][iss]["epoch"]
            .as_u64()
            .is_some_and(|e| e >= epoch)
        {
            return Ok((since.elapsed(), polled.elapsed()));
        }
        if since.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("a replica did not report epoch {epoch} within 10 s");
        }
    }
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let key = keys::load_signing_key(&a.key)?;
    let kid = keys::key_id(&key.verifying_key());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (hist, poll, acks) = rt.block_on(async {
        let mut pusher = connect(a.push).await?;
        let mut watchers = Vec::new();
        for p in &a.watch {
            watchers.push(connect(*p).await?);
        }
        // 1 µs .. 100 s at 3 significant digits.
        let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
        let mut poll = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
        let mut acks = Histogram::<u64>::new_with_bounds(1, 100_000_000, 3)?;
        for i in 0..a.count {
            let epoch = a.first_epoch + i;
            let doc = revocation::sign(
                &key,
                &kid,
                &RevocationPayload {
                    iss: a.iss.clone(),
                    iat: seb::cert::now_secs(),
                    seb: RevocationClaims {
                        v: 1,
                        revocation_epoch: epoch,
                        min_policy_epoch: a.min_policy_epoch,
                        revoked: Revoked {
                            jti: vec![format!("propagation-{epoch}")],
                            ..Default::default()
                        },
                    },
                },
            );
            let sent = Instant::now();
            let (status, body) = call(&mut pusher, "POST", "/v1/revocation", doc).await?;
            if status != 200 {
                anyhow::bail!(
                    "push of epoch {epoch}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let acked = Instant::now();
            acks.saturating_record((acked - sent).as_micros().max(1) as u64);
            let waits = watchers
                .iter_mut()
                .map(|w| until_epoch(w, &a.iss, epoch, acked));
            for r in futures_join(waits).await {
                let (took, last_poll) = r?;
                hist.saturating_record(took.as_micros().max(1) as u64);
                poll.saturating_record(last_poll.as_micros().max(1) as u64);
            }
        }
        anyhow::Ok((hist, poll, acks))
    })?;
    let ms = |us: u64| (us as f64 / 1000.0 * 100.0).round() / 100.0;
    let report = json!({
        "label": a.label,
        "revocations": a.count,
        "replicas_watched": a.watch.len(),
        "samples": hist.len(),
        "propagation_ms": {
            "p50": ms(hist.value_at_quantile(0.50)),
            "p90": ms(hist.value_at_quantile(0.90)),
            "p99": ms(hist.value_at_quantile(0.99)),
            "max": ms(hist.max()),
        },
        "ack_ms": {
            "p50": ms(acks.value_at_quantile(0.50)),
            "p99": ms(acks.value_at_quantile(0.99)),
        },
        "poll_resolution_ms_p50": ms(poll.value_at_quantile(0.50)),
    });
    eprintln!(
        "{}: {} revocations x {} replicas: propagation p50 {} ms, p99 {} ms, max {} ms (poll {} ms); push ack p50 {} ms, p99 {} ms",
        a.label,
        a.count,
        a.watch.len(),
        report["propagation_ms"]["p50"],
        report["propagation_ms"]["p99"],
        report["propagation_ms"]["max"],
        report["poll_resolution_ms_p50"],
        report["ack_ms"]["p50"],
        report["ack_ms"]["p99"],
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    // Each watcher has its own connection; polling them one after the other would add the
    // first's wait to the second's, so they are driven together.
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().map(|r| r.expect("ready")));
    out
}
