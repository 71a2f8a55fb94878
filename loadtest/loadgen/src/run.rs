//! `loadgen run`: open-loop and closed-loop HTTP/1.1 load with HdrHistogram percentiles.
//!
//! Open loop (`--mode open --rate R`): a dispatcher thread releases request i at
//! `start + i/R` (an OS thread sleeping with the kernel's high-resolution timers, not the
//! 1 ms tokio timer wheel) into a queue that `--connections` workers drain, each over its own
//! keep-alive connection. Latency is measured from the request's *scheduled* time, so when
//! the server (or the generator) falls behind, the waiting counts: no coordinated omission.
//!
//! Closed loop (`--mode closed --connections C`): C workers each send back to back;
//! latency is measured from the actual send (the server sets the pace; these latencies are
//! for context, the figure of merit is throughput).
//!
//! Prepare ahead (`--prepare-lead-ms L`, open loop with a certificate pool): certificate i is
//! also presented to the broker's `POST /v1/prepare` at its request's scheduled time minus L,
//! on its own connections and schedule, as an agent would before using it, so the broker can
//! mint the identity in the background. The requests' latencies are measured as always; the
//! prepares are counted (answered 2xx or not, and whether any came back after its
//! certificate's use was due) and timed from their own scheduled time.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Open,
    Closed,
}

#[derive(clap::Args)]
pub struct Args {
    /// http:// or https:// URL on a loopback address, e.g. https://localhost:18443/v1/x
    #[arg(long)]
    url: String,
    /// CA bundle (PEM) that signed the server's certificate, for https.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Certificate pool (one per line); request i carries certificate i as
    /// `Authorization: Bearer <certificate>` (or in --cert-header). Running out stops the run
    /// with an error.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Put the certificate, bare, in this header instead of `Authorization: Bearer`
    /// (e.g. x-amz-security-token for the aws target).
    #[arg(long)]
    cert_header: Option<String>,
    /// An extra fixed header on every request, `Name: value` (repeatable). A Content-Type
    /// given here replaces the default application/json.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Open loop: requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Keep-alive connections (open loop: workers that drain the schedule; closed loop:
    /// concurrent back-to-back senders).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured duration: 20, 20s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured lead-in at the same load before the measured duration.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    warmup: Duration,
    /// Request body (sent as application/json).
    #[arg(long)]
    body: Option<String>,
    /// Defaults to POST with a body, GET without.
    #[arg(long)]
    method: Option<String>,
    /// Per-request timeout; a timed-out request counts as a transport error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Generator runtime threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the report as JSON on stdout (the human text goes to stderr).
    #[arg(long)]
    json: bool,
    /// A label carried into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// More ports on the --url's host serving the same thing (replicas of one broker):
    /// connection i goes to the i-th of the URL's port and these, round robin.
    #[arg(long = "also-port")]
    also_ports: Vec<u16>,
    /// Open loop with --certs: present certificate i at `--prepare-path` this many ms before
    /// request i is due (an empty POST with the request's headers, the certificate where the
    /// request carries it, no Content-Type).
    #[arg(long)]
    prepare_lead_ms: Option<u64>,
    #[arg(long, default_value = "/v1/prepare")]
    prepare_path: String,
    /// Keep-alive connections that carry the prepares (a prepare is answered without
    /// waiting for the identity, so a few suffice).
    #[arg(long, default_value_t = 16)]
    prepare_connections: usize,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (ms, s, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Everything a worker needs to open a connection and build a request.
struct Target {
    /// Connection i goes to `addrs[i % addrs.len()]`.
    addrs: Vec<std::net::SocketAddr>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    authority: String,
    path: String,
    method: Method,
    body: Bytes,
    certs: Vec<String>,
    /// Where the certificate goes; `None` = `Authorization: Bearer`.
    cert_header: Option<http::HeaderName>,
    /// Extra fixed headers, parsed once.
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    timeout: Duration,
    prepare_path: String,
}

/// Which request a worker sends for certificate i.
#[derive(Clone, Copy)]
enum Kind {
    /// The measured request.
    Use,
    /// The empty POST to the prepare path that announces the certificate ahead of its use.
    Prepare,
}

impl Target {
    async fn connect(&self, slot: usize) -> Result<SendRequest<Full<Bytes>>, &'static str> {
        let tcp = tokio::net::TcpStream::connect(self.addrs[slot % self.addrs.len()])
            .await
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| "tls_handshake")?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|_| "http_handshake")?;
                tokio::spawn(conn);
                Ok(sender)
            }
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|_| "http_handshake")?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }

    fn request(&self, cert: Option<&str>, kind: Kind) -> Request<Full<Bytes>> {
        let (method, path, body) = match kind {
            Kind::Use => (self.method.clone(), self.path.as_str(), self.body.clone()),
            Kind::Prepare => (Method::POST, self.prepare_path.as_str(), Bytes::new()),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.authority.as_str());
        if !body.is_empty()
            && !self
                .headers
                .iter()
                .any(|(n, _)| n == http::header::CONTENT_TYPE)
        {
            b = b.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (n, v) in &self.headers {
            // A prepare has no body, so nothing for a Content-Type to describe.
            if matches!(kind, Kind::Prepare) && n == http::header::CONTENT_TYPE {
                continue;
            }
            b = b.header(n, v);
        }
        if let Some(c) = cert {
            match &self.cert_header {
                Some(h) => b = b.header(h, c),
                None => b = b.header(http::header::AUTHORIZATION, format!("Bearer {c}")),
            }
        }
        b.body(Full::new(body)).expect("valid request")
    }
}

/// One worker's tally; merged at the end.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    /// 2xx answers including the warm-up and any that finished after the measured window
    /// (to divide the server's whole CPU time by).
    ok_all: u64,
    status: BTreeMap<u16, u64>,
    transport: BTreeMap<&'static str, u64>,
    last_done: Option<Instant>,
    /// Prepares only: answered after their certificate's use was due, so the use could not
    /// have found the identity started by them.
    after_use: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 ns .. 100 s at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds"),
            ok: 0,
            ok_all: 0,
            status: BTreeMap::new(),
            transport: BTreeMap::new(),
            last_done: None,
            after_use: 0,
        }
    }

    fn merge(&mut self, o: Tally) {
        self.hist.add(&o.hist).expect("same bounds");
        self.ok += o.ok;
        self.ok_all += o.ok_all;
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in o.transport {
            *self.transport.entry(k).or_default() += v;
        }
        self.last_done = self.last_done.max(o.last_done);
        self.after_use += o.after_use;
    }
}

/// Sends one request on `conn` (reconnecting first if needed); returns the status or a
/// transport error kind. On a transport error the connection is dropped.
async fn one(
    t: &Target,
    slot: usize,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    cert: Option<&str>,
    kind: Kind,
) -> Result<u16, &'static str> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = Some(t.connect(slot).await?);
    }
    let sender = conn.as_mut().expect("connected");
    let fut = async {
        sender.ready().await.map_err(|_| "connection_closed")?;
        let resp = sender
            .send_request(t.request(cert, kind))
            .await
            .map_err(|_| "send")?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|_| "body")?;
        Ok(status)
    };
    let r = match tokio::time::timeout(t.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timeout"),
    };
    if r.is_err() {
        *conn = None;
    }
    r
}

fn record(tally: &mut Tally, r: Result<u16, &'static str>, latency: Duration, done: Instant) {
    tally
        .hist
        .saturating_record(latency.as_nanos().max(1) as u64);
    match r {
        Ok(s) if (200..300).contains(&s) => tally.ok += 1,
        Ok(s) => *tally.status.entry(s).or_default() += 1,
        Err(k) => *tally.transport.entry(k).or_default() += 1,
    }
    tally.last_done = Some(done);
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let uri: Uri = a.url.parse()?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => anyhow::bail!("--url must be http:// or https://"),
    };
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = crate::loopback_addr(host, port)?;
    let mut addrs = vec![addr];
    for p in &a.also_ports {
        addrs.push(crate::loopback_addr(host, *p)?);
    }
    let tls = if https {
        let mut roots = rustls::RootCertStore::empty();
        let ca =
            a.ca.as_ref()
                .ok_or_else(|| anyhow::anyhow!("https needs --ca"))?;
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name =
            ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))?.to_owned();
        Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
    } else {
        None
    };
    let certs = match &a.certs {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect(),
        None => Vec::new(),
    };
    let body = Bytes::from(a.body.clone().unwrap_or_default());
    let method = match &a.method {
        Some(m) => Method::from_bytes(m.as_bytes())?,
        None if body.is_empty() => Method::GET,
        None => Method::POST,
    };
    let headers = a
        .headers
        .iter()
        .map(|h| {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--header {h:?} is not NAME:VALUE"))?;
            Ok((
                http::HeaderName::from_bytes(n.trim().as_bytes())?,
                http::HeaderValue::from_str(v.trim())?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cert_header = a
        .cert_header
        .as_deref()
        .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
        .transpose()?;
    let target = Arc::new(Target {
        addrs,
        tls,
        authority: uri
            .authority()
            .map(|x| x.as_str().to_string())
            .unwrap_or_default(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        method,
        body,
        certs,
        cert_header,
        headers,
        timeout: a.timeout,
        prepare_path: a.prepare_path.clone(),
    });
    let connections = a.connections.max(1);
    if a.prepare_lead_ms.is_some() && (a.mode != Mode::Open || a.certs.is_none()) {
        anyhow::bail!("--prepare-lead-ms needs --mode open and --certs");
    }
    if a.mode == Mode::Open {
        let rate = a
            .rate
            .ok_or_else(|| anyhow::anyhow!("--mode open needs --rate"))?;
        if rate <= 0.0 {
            anyhow::bail!("--rate must be positive");
        }
        let total = (rate * (a.warmup + a.duration).as_secs_f64()).round() as usize;
        if a.certs.is_some() && target.certs.len() < total {
            anyhow::bail!(
                "certificate pool has {} certificates, the run needs {total}",
                target.certs.len()
            );
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    let (tally, wall, exhausted, prepared) = rt.block_on(async {
        // Connections (and TLS handshakes) are made before the clock starts.
        let connect = |n: usize| {
            let target = target.clone();
            async move {
                let mut conns = Vec::with_capacity(n);
                for i in 0..n {
                    conns.push(target.connect(i).await.map_err(|k| {
                        anyhow::anyhow!(
                            "connecting to {}: {k}",
                            target.addrs[i % target.addrs.len()]
                        )
                    })?);
                }
                anyhow::Ok(conns)
            }
        };
        let conns = connect(connections).await?;
        let result = match a.mode {
            Mode::Open => {
                let prepare_conns = match a.prepare_lead_ms {
                    Some(_) => connect(a.prepare_connections.max(1)).await?,
                    None => Vec::new(),
                };
                run_open(&a, target.clone(), conns, prepare_conns).await
            }
            Mode::Closed => run_closed(&a, target.clone(), conns).await,
        };
        anyhow::Ok(result)
    })?;
    let report = report(&a, &tally, wall, target.certs.len(), prepared.as_ref());
    eprint!("{}", text(&report));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if exhausted {
        anyhow::bail!(
            "certificate pool exhausted ({} certificates): the run was cut short; issue a bigger pool",
            target.certs.len()
        );
    }
    Ok(())
}

/// The merged tally, the measured wall time, whether the pool ran out, and the prepares'
/// tally when they were sent.
type Outcome = (Tally, Duration, bool, Option<Tally>);

async fn run_open(
    a: &Args,
    target: Arc<Target>,
    conns: Vec<SendRequest<Full<Bytes>>>,
    prepare_conns: Vec<SendRequest<Full<Bytes>>>,
) -> Outcome {
    let rate = a.rate.expect("checked");
    let total = (rate * (a.warmup + a.duration).as_secs_f64()).round() as usize;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let lead = Duration::from_millis(a.prepare_lead_ms.unwrap_or(0));
    // The first prepare is due `lead` before the first request: the schedule starts that much
    // later, so no prepare is already late when the clock starts.
    let start = Instant::now() + Duration::from_millis(20) + lead;
    let prepares = a
        .prepare_lead_ms
        .map(|_| spawn_prepares(&target, prepare_conns, start, rate, total, lead));
    let measure_from = start + a.warmup;
    let use_certs = a.certs.is_some();
    let mut workers = Vec::new();
    for (slot, c) in conns.into_iter().enumerate() {
        let (rx, t) = (rx.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Some(c);
            let mut tally = Tally::new();
            loop {
                let job = rx.lock().await.recv().await;
                let Some((i, due)) = job else { break };
                let cert = if use_certs {
                    Some(t.certs[i].as_str())
                } else {
                    None
                };
                let r = one(&t, slot, &mut conn, cert, Kind::Use).await;
                let done = Instant::now();
                tally.ok_all += matches!(r, Ok(200..=299)) as u64;
                if due >= measure_from {
                    record(&mut tally, r, done.saturating_duration_since(due), done);
                }
            }
            tally
        }));
    }
    // The schedule, on an OS thread: nanosleep has ~50-100 µs slack where tokio's timer
    // wheel has 1 ms, and a late release is charged to the request anyway.
    let dispatcher = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await.expect("worker"));
    }
    let _ = dispatcher.join();
    let prepared = match prepares {
        Some((workers, dispatcher)) => {
            let mut p = Tally::new();
            for w in workers {
                p.merge(w.await.expect("prepare worker"));
            }
            let _ = dispatcher.join();
            Some(p)
        }
        None => None,
    };
    let wall = tally
        .last_done
        .map(|d| d.saturating_duration_since(measure_from))
        .unwrap_or_default();
    (tally, wall, false, prepared)
}

type PrepareWorkers = (
    Vec<tokio::task::JoinHandle<Tally>>,
    std::thread::JoinHandle<()>,
);

/// The prepares' own schedule: certificate i at `start + i/rate - lead`, on its own
/// connections, every prepare recorded (warm-up included: a refused prepare is a finding
/// wherever it falls), its latency from its scheduled time.
fn spawn_prepares(
    target: &Arc<Target>,
    conns: Vec<SendRequest<Full<Bytes>>>,
    start: Instant,
    rate: f64,
    total: usize,
    lead: Duration,
) -> PrepareWorkers {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let workers = conns
        .into_iter()
        .enumerate()
        .map(|(slot, c)| {
            let (rx, t) = (rx.clone(), target.clone());
            tokio::spawn(async move {
                let mut conn = Some(c);
                let mut tally = Tally::new();
                loop {
                    let job = rx.lock().await.recv().await;
                    let Some((i, due)) = job else { break };
                    let r = one(
                        &t,
                        slot,
                        &mut conn,
                        Some(t.certs[i].as_str()),
                        Kind::Prepare,
                    )
                    .await;
                    let done = Instant::now();
                    tally.ok_all += matches!(r, Ok(200..=299)) as u64;
                    tally.after_use += u64::from(done > due + lead);
                    record(&mut tally, r, done.saturating_duration_since(due), done);
                }
                tally
            })
        })
        .collect();
    let dispatcher = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate) - lead;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    (workers, dispatcher)
}

async fn run_closed(
    a: &Args,
    target: Arc<Target>,
    conns: Vec<SendRequest<Full<Bytes>>>,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let next = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let use_certs = a.certs.is_some();
    let mut workers = Vec::new();
    for (slot, c) in conns.into_iter().enumerate() {
        let (t, next, exhausted) = (target.clone(), next.clone(), exhausted.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Some(c);
            let mut tally = Tally::new();
            while Instant::now() < end && !exhausted.load(Ordering::Relaxed) {
                let cert = if use_certs {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    match t.certs.get(i) {
                        Some(c) => Some(c.as_str()),
                        None => {
                            exhausted.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                } else {
                    None
                };
                let sent = Instant::now();
                let r = one(&t, slot, &mut conn, cert, Kind::Use).await;
                let done = Instant::now();
                tally.ok_all += matches!(r, Ok(200..=299)) as u64;
                if sent >= measure_from && done <= end {
                    record(&mut tally, r, done - sent, done);
                }
            }
            tally
        }));
    }
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await.expect("worker"));
    }
    let wall = if exhausted.load(Ordering::Relaxed) {
        tally
            .last_done
            .map(|d| d.saturating_duration_since(measure_from))
            .unwrap_or_default()
    } else {
        a.duration
    };
    (tally, wall, exhausted.load(Ordering::Relaxed), None)
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 10.0).round() / 10.0
}

fn prepare_report(a: &Args, p: &Tally) -> serde_json::Value {
    let h = &p.hist;
    json!({
        "lead_ms": a.prepare_lead_ms,
        "path": a.prepare_path,
        "connections": a.prepare_connections,
        "sent": h.len(),
        "ok": p.ok,
        "failed": h.len() - p.ok,
        "status_errors": p.status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "transport_errors": p.transport,
        "answered_after_use_due": p.after_use,
        "latency_us": {
            "p50": us(h.value_at_quantile(0.50)),
            "p99": us(h.value_at_quantile(0.99)),
            "max": us(h.max()),
            "measured_from": "scheduled time",
        },
    })
}

fn report(
    a: &Args,
    t: &Tally,
    wall: Duration,
    pool: usize,
    prepared: Option<&Tally>,
) -> serde_json::Value {
    let h = &t.hist;
    let requests = h.len();
    let errors = requests - t.ok;
    let secs = wall.as_secs_f64().max(1e-9);
    json!({
        "label": a.label,
        "url": a.url,
        "mode": match a.mode { Mode::Open => "open", Mode::Closed => "closed" },
        "target_rate": a.rate,
        "connections": a.connections,
        "duration_s": a.duration.as_secs_f64(),
        "warmup_s": a.warmup.as_secs_f64(),
        "wall_s": secs,
        "certificate_pool": if a.certs.is_some() { Some(pool) } else { None },
        "requests": requests,
        "ok": t.ok,
        "ok_including_warmup": t.ok_all,
        "errors": errors,
        "status_errors": t.status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "transport_errors": t.transport,
        "throughput_rps": (requests as f64 / secs * 10.0).round() / 10.0,
        "ok_rps": (t.ok as f64 / secs * 10.0).round() / 10.0,
        "latency_us": {
            "p50": us(h.value_at_quantile(0.50)),
            "p90": us(h.value_at_quantile(0.90)),
            "p99": us(h.value_at_quantile(0.99)),
            "p99_9": us(h.value_at_quantile(0.999)),
            "max": us(h.max()),
            "mean": (h.mean() / 100.0).round() / 10.0,
            "measured_from": match a.mode { Mode::Open => "scheduled time", Mode::Closed => "send time" },
        },
        "prepare": prepared.map(|p| prepare_report(a, p)),
    })
}

fn text(r: &serde_json::Value) -> String {
    let l = &r["latency_us"];
    let ms = |k: &str| l[k].as_f64().unwrap_or(0.0) / 1000.0;
    let mut s = format!(
        "{} {} {}: {} requests, {} ok, {} errors in {:.1}s = {:.1} req/s\n",
        r["label"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["url"].as_str().unwrap_or(""),
        r["requests"],
        r["ok"],
        r["errors"],
        r["wall_s"].as_f64().unwrap_or(0.0),
        r["throughput_rps"].as_f64().unwrap_or(0.0),
    );
    s += &format!(
        "  latency (from {}): p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
        l["measured_from"].as_str().unwrap_or(""),
        ms("p50"),
        ms("p90"),
        ms("p99"),
        ms("p99_9"),
        ms("max"),
    );
    if r["errors"].as_u64().unwrap_or(0) > 0 {
        s += &format!(
            "  errors: status {}  transport {}\n",
            r["status_errors"], r["transport_errors"]
        );
    }
    let p = &r["prepare"];
    if p.is_object() {
        let pl = &p["latency_us"];
        s += &format!(
            "  prepare {} ms ahead at {}: {} sent, {} ok, {} failed, {} answered after their use was due; latency (from scheduled time) p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n",
            p["lead_ms"],
            p["path"].as_str().unwrap_or(""),
            p["sent"],
            p["ok"],
            p["failed"],
            p["answered_after_use_due"],
            pl["p50"].as_f64().unwrap_or(0.0) / 1000.0,
            pl["p99"].as_f64().unwrap_or(0.0) / 1000.0,
            pl["max"].as_f64().unwrap_or(0.0) / 1000.0,
        );
        if p["failed"].as_u64().unwrap_or(0) > 0 {
            s += &format!(
                "  prepare errors: status {}  transport {}\n",
                p["status_errors"], p["transport_errors"]
            );
        }
    }
    s
}
