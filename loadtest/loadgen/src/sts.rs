//! A stand-in for AWS STS: answers `AssumeRole` with a well-formed response after a fixed
//! delay, so the broker's per-certificate identity minting can be measured without AWS.
//!
//! The delay stands for the real service's latency (~100 ms from a region's compute to its
//! STS endpoint), so each answer is held on its own deadline: many calls in flight are held
//! at once, none waits behind another. The deadlines are kept by one OS thread sleeping with
//! the kernel's high-resolution timers rather than tokio's 1 ms timer wheel, which rounds
//! every sleep up by up to a millisecond: the targets compare the broker's added latency with
//! this delay to within half a millisecond.
//!
//! `GET /stats` answers counters in the Prometheus text format, so run.sh can difference them
//! around each phase with the same code as seb's own `/metrics`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (loopback), e.g. 127.0.0.1:18090; port 0 picks one.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// How long each AssumeRole answer is held, counted from the end of its request body.
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the bound address here once listening.
    #[arg(long)]
    addr_file: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Stats {
    assume_role: AtomicU64,
    /// Requests that were not an AssumeRole call (answered 400): a broker misconfiguration.
    other: AtomicU64,
    /// Sum over AssumeRole answers of the time from the end of the request body to the answer
    /// being handed to hyper: the delay as it was actually served.
    held_ns: AtomicU64,
}

/// One pending answer: released at `at`.
struct Due {
    at: Instant,
    seq: u64,
    tx: tokio::sync::oneshot::Sender<()>,
}
impl PartialEq for Due {
    fn eq(&self, o: &Due) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must come out first.
    fn cmp(&self, o: &Due) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The deadline thread: releases each answer at its own time.
fn timer_thread(rx: std::sync::mpsc::Receiver<(Instant, tokio::sync::oneshot::Sender<()>)>) {
    let mut heap = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|d: &Due| d.at <= now) {
            let d = heap.pop().expect("peeked");
            // The request may have gone (client closed): nothing to release then.
            let _ = d.tx.send(());
        }
        let next = match heap.peek() {
            Some(d) => rx.recv_timeout(d.at.saturating_duration_since(now)),
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, tx)) => {
                seq += 1;
                heap.push(Due { at, seq, tx });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// RFC 3339 UTC (`2026-12-01T08:00:00Z`), as STS writes `Expiration`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The AssumeRole answer for one call; `n` makes its keys and request id unique.
fn assume_role_xml(form: &[(String, String)], n: u64, now: SystemTime) -> String {
    let get = |k: &str| {
        form.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let role_arn = get("RoleArn").unwrap_or("arn:aws:iam::000000000000:role/unknown");
    let session = get("RoleSessionName").unwrap_or("session");
    let seconds: u64 = get("DurationSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    // arn:aws:iam::ACCOUNT:role/NAME -> arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION
    let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
    let part = |i: usize, default| parts.get(i).copied().unwrap_or(default);
    let (partition, account, resource) =
        (part(1, "aws"), part(4, "000000000000"), part(5, "role/x"));
    let role_name = resource.rsplit('/').next().unwrap_or("unknown");
    let assumed_arn = format!("arn:{partition}:sts::{account}:assumed-role/{role_name}/{session}");
    let expiration = rfc3339(now + Duration::from_secs(seconds));
    format!(
        concat!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#,
            "<AssumeRoleResult>",
            "{source}",
            "<AssumedRoleUser><AssumedRoleId>AROALOADTEST{n:08X}:{session}</AssumedRoleId><Arn>{arn}</Arn></AssumedRoleUser>",
            "<Credentials><AccessKeyId>ASIALOADTEST{n:08X}</AccessKeyId>",
            "<SecretAccessKey>loadtest-sts-secret-{n:016x}</SecretAccessKey>",
            "<SessionToken>loadtest-sts-session-token-{n:016x}</SessionToken>",
            "<Expiration>{exp}</Expiration></Credentials>",
            "<PackedPolicySize>6</PackedPolicySize>",
            "</AssumeRoleResult>",
            "<ResponseMetadata><RequestId>00000000-0000-4000-8000-{n:012x}</RequestId></ResponseMetadata>",
            "</AssumeRoleResponse>"
        ),
        source = get("SourceIdentity")
            .map(|s| format!("<SourceIdentity>{}</SourceIdentity>", xml_escape(s)))
            .unwrap_or_default(),
        session = xml_escape(session),
        arn = xml_escape(&assumed_arn),
        exp = expiration,
        n = n,
    )
}

fn error_xml(code: &str, message: &str) -> String {
    format!(
        concat!(
            r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">"#,
            "<Error><Type>Sender</Type><Code>{}</Code><Message>{}</Message></Error>",
            "<RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
        ),
        code,
        xml_escape(message)
    )
}

fn xml_response(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}

type Timer = std::sync::mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>;

async fn answer(
    req: Request<hyper::body::Incoming>,
    stats: Arc<Stats>,
    timer: Timer,
    delay: Duration,
    delay_ms: u64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let text = format!(
            "# loadgen sts stub\nloadgen_sts_delay_ms {delay_ms}\nloadgen_sts_assume_role_calls_total {}\nloadgen_sts_other_calls_total {}\nloadgen_sts_held_seconds_total {:.9}\n",
            stats.assume_role.load(Ordering::Relaxed),
            stats.other.load(Ordering::Relaxed),
            stats.held_ns.load(Ordering::Relaxed) as f64 / 1e9,
        );
        return Ok(Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text)))
            .expect("static response"));
    }
    let is_post = req.method() == Method::POST;
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let arrived = Instant::now();
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let action = form
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.as_str());
    if !is_post || action != Some("AssumeRole") {
        stats.other.fetch_add(1, Ordering::Relaxed);
        return Ok(xml_response(
            400,
            error_xml(
                "InvalidAction",
                &format!("this stub answers POST Action=AssumeRole only, not {action:?}"),
            ),
        ));
    }
    let n = stats.assume_role.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::oneshot::channel();
    if timer.send((arrived + delay, tx)).is_ok() {
        let _ = rx.await;
    }
    let xml = assume_role_xml(&form, n, SystemTime::now());
    stats
        .held_ns
        .fetch_add(arrived.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(xml_response(200, xml))
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if !a.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address");
    }
    let (timer, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sts-deadlines".into())
        .spawn(move || timer_thread(rx))?;
    let stats = Arc::new(Stats::default());
    let delay = Duration::from_millis(a.delay_ms);
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
        eprintln!(
            "loadgen sts: listening on {addr}, AssumeRole answered after {} ms",
            a.delay_ms
        );
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let (stats, timer) = (stats.clone(), timer.clone());
            let delay_ms = a.delay_ms;
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    answer(req, stats.clone(), timer.clone(), delay, delay_ms)
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29 12:34:56 UTC: a leap day.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_798_761_599)),
            "2026-12-31T23:59:59Z"
        );
    }

    #[test]
    fn answer_names_the_assumed_role() {
        let form = vec![
            ("Action".to_string(), "AssumeRole".to_string()),
            (
                "RoleArn".to_string(),
                "arn:aws:iam::123456789012:role/seb-exec".to_string(),
            ),
            ("RoleSessionName".to_string(), "abc-1".to_string()),
            ("DurationSeconds".to_string(), "900".to_string()),
        ];
        let xml = assume_role_xml(&form, 7, UNIX_EPOCH);
        assert!(xml.contains("<Arn>arn:aws:sts::123456789012:assumed-role/seb-exec/abc-1</Arn>"));
        assert!(xml.contains("<Expiration>1970-01-01T00:15:00Z</Expiration>"));
        assert!(xml.contains("<AccessKeyId>ASIALOADTEST00000007</AccessKeyId>"));
    }
}
