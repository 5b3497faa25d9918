//! `sluice-s3-proxy`: an HTTP proxy in front of an S3-compatible server that makes it behave
//! like a real object store over a real network, for tests and benchmarks: latency drawn from a
//! named profile, and faults at given rates (503 SlowDown, connections reset, requests that
//! never answer), plus outages switched on through the proxy's own endpoint.
//!
//! ```text
//! sluice-s3-proxy --listen 127.0.0.1:9100 --upstream 127.0.0.1:9000 --profile s3-standard \
//!     --error-rate 0.05 --reset-rate 0.01
//! curl -X POST 'http://127.0.0.1:9100/__proxy/outage?seconds=10'   # every request reset for 10 s
//! curl http://127.0.0.1:9100/__proxy/stats
//! ```
//!
//! Requests are forwarded unchanged (the `Host` header too, so SigV4 signatures still verify).
//! Latency is log-normal, fitted to a profile's p50 and p99:
//! - `s3-standard`: PUT p50 100 ms / p99 400 ms, GET p50 50 ms / p99 200 ms (S3 Standard for
//!   2-8 MiB objects, as Aiven's Inkless performance notes, AutoMQ's tuning guide and AWS's S3
//!   performance guidelines report);
//! - `s3-express`: PUT p50 6 ms / p99 20 ms, GET p50 4 ms / p99 15 ms (S3 Express One Zone);
//! - `none`: no added latency.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "sluice-s3-proxy", about = "S3 proxy adding latency and faults")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// The S3-compatible server, HOST:PORT.
    #[arg(long)]
    upstream: SocketAddr,
    /// Latency profile: s3-standard, s3-express or none.
    #[arg(long, default_value = "none")]
    profile: String,
    /// Share of requests answered 503 SlowDown.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests whose connection is reset (closed without an answer).
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Share of requests never answered (held until the client gives up).
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// Seed of the random draws (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Log-normal latency with a given median and 99th percentile.
#[derive(Clone, Copy, Debug)]
struct Latency {
    mu: f64,
    sigma: f64,
}

impl Latency {
    fn new(p50_ms: f64, p99_ms: f64) -> Self {
        // The 99th percentile of a standard normal.
        const Z99: f64 = 2.326_347_874;
        Latency { mu: p50_ms.ln(), sigma: (p99_ms / p50_ms).ln() / Z99 }
    }

    fn draw(&self, rng: &mut Rng) -> Duration {
        Duration::from_secs_f64((self.mu + self.sigma * rng.normal()).exp() / 1e3)
    }
}

/// PUT and GET latency of a profile; `None` adds none.
fn profile(name: &str) -> Result<Option<(Latency, Latency)>, String> {
    match name {
        "s3-standard" => Ok(Some((Latency::new(100.0, 400.0), Latency::new(50.0, 200.0)))),
        "s3-express" => Ok(Some((Latency::new(6.0, 20.0), Latency::new(4.0, 15.0)))),
        "none" => Ok(None),
        other => Err(format!("--profile {other}: use s3-standard, s3-express or none")),
    }
}

/// xorshift64* with Box-Muller: enough randomness for latencies and fault rolls.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64().max(f64::MIN_POSITIVE), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// What happens to one request.
enum Fate {
    Forward(Duration),
    SlowDown,
    Reset,
    Hang,
}

struct Proxy {
    args: Args,
    latency: Option<(Latency, Latency)>,
    rng: Mutex<Rng>,
    outage_until: Mutex<Option<Instant>>,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    counts: [AtomicU64; 5],
}

const FORWARDED: usize = 0;
const SLOWDOWNS: usize = 1;
const RESETS: usize = 2;
const HANGS: usize = 3;
const OUTAGE_RESETS: usize = 4;

impl Proxy {
    fn fate(&self, method: &Method) -> Fate {
        let mut rng = self.rng.lock().expect("poisoned");
        let roll = rng.next_f64();
        let a = &self.args;
        if roll < a.reset_rate {
            return Fate::Reset;
        }
        if roll < a.reset_rate + a.error_rate {
            return Fate::SlowDown;
        }
        if roll < a.reset_rate + a.error_rate + a.timeout_rate {
            return Fate::Hang;
        }
        let delay = match (&self.latency, method) {
            (None, _) => Duration::ZERO,
            (Some((put, _)), &Method::PUT | &Method::POST) => put.draw(&mut rng),
            (Some((_, get)), _) => get.draw(&mut rng),
        };
        Fate::Forward(delay)
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, String> {
        if let Some(what) = req.uri().path().strip_prefix("/__proxy/") {
            return Ok(self.control(what, req.uri().query().unwrap_or("")));
        }
        if self.outage_until.lock().expect("poisoned").is_some_and(|t| Instant::now() < t) {
            self.counts[OUTAGE_RESETS].fetch_add(1, Relaxed);
            return Err("outage".into());
        }
        match self.fate(req.method()) {
            Fate::Reset => {
                self.counts[RESETS].fetch_add(1, Relaxed);
                Err("injected reset".into())
            }
            Fate::SlowDown => {
                self.counts[SLOWDOWNS].fetch_add(1, Relaxed);
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                Ok(Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).body(Full::new(Bytes::from(body))).expect("response"))
            }
            Fate::Hang => {
                self.counts[HANGS].fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_secs(600)).await;
                Err("held".into())
            }
            Fate::Forward(delay) => {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                tokio::time::sleep(delay).await;
                let mut out = Request::from_parts(parts, Full::new(body));
                let path = out.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                *out.uri_mut() =
                    format!("http://{}{path}", self.args.upstream).parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
                let resp = self.client.request(out).await.map_err(|e| e.to_string())?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                self.counts[FORWARDED].fetch_add(1, Relaxed);
                Ok(Response::from_parts(parts, Full::new(body)))
            }
        }
    }

    /// `/__proxy/outage?seconds=N` (every request reset for N seconds) and `/__proxy/stats`.
    fn control(&self, what: &str, query: &str) -> Response<Full<Bytes>> {
        let text = match what {
            "outage" => {
                let secs: f64 = query.strip_prefix("seconds=").and_then(|s| s.parse().ok()).unwrap_or(10.0);
                *self.outage_until.lock().expect("poisoned") = Some(Instant::now() + Duration::from_secs_f64(secs));
                format!("outage for {secs} s\n")
            }
            "stats" => {
                let c = |i: usize| self.counts[i].load(Relaxed);
                format!(
                    "forwarded {}\nslowdowns {}\nresets {}\nhangs {}\noutage_resets {}\n",
                    c(FORWARDED),
                    c(SLOWDOWNS),
                    c(RESETS),
                    c(HANGS),
                    c(OUTAGE_RESETS)
                )
            }
            _ => "try /__proxy/outage?seconds=N or /__proxy/stats\n".to_string(),
        };
        Response::new(Full::new(Bytes::from(text)))
    }
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("sluice-s3-proxy: error: {}", e.to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("sluice-s3-proxy: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let latency = profile(&args.profile)?;
    for (name, rate) in [("--error-rate", args.error_rate), ("--reset-rate", args.reset_rate), ("--timeout-rate", args.timeout_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("{name} {rate}: must be between 0 and 1"));
        }
    }
    let seed = args
        .seed
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        eprintln!(
            "sluice-s3-proxy: {} -> {} profile {} (503 {}, resets {}, hangs {})",
            args.listen, args.upstream, args.profile, args.error_rate, args.reset_rate, args.timeout_rate
        );
        let proxy = Arc::new(Proxy {
            args,
            latency,
            rng: Mutex::new(Rng(seed | 1)),
            outage_until: Mutex::new(None),
            client,
            counts: Default::default(),
        });
        loop {
            let (sock, _) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
            let _ = sock.set_nodelay(true);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| proxy.clone().handle(req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(sock), service).await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_draws_match_the_profile_percentiles() {
        let l = Latency::new(100.0, 400.0);
        let mut rng = Rng(42);
        let mut ms: Vec<f64> = (0..100_000).map(|_| l.draw(&mut rng).as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let (p50, p99) = (ms[50_000], ms[99_000]);
        assert!((90.0..110.0).contains(&p50), "p50 {p50}");
        assert!((350.0..450.0).contains(&p99), "p99 {p99}");
    }
}
