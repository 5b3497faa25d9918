//! The S3 [`ObjectStore`]: any S3-compatible server, spoken to from the shard's own executor.
//!
//! HTTP/1.1 is hyper's, over glommio TCP streams ([`crate::http::Io`]); requests are signed
//! with SigV4 by `aws-sigv4` (the payload left unsigned, as S3 allows: every WAL chunk carries
//! its own CRC); `ListObjectsV2` answers and error bodies are read with `quick-xml`. Each shard
//! keeps its own pool of keep-alive connections. Every request has a deadline; one that times
//! out, is reset, or is answered 5xx, 429 or SlowDown is tried again after an exponential
//! backoff with full jitter, a bounded number of times. A 4xx other than those is final.
//!
//! Keys are `PREFIX` + the data plane's key; nothing is kept on local disk.

use super::{ObjectStore, StoreFuture};
use crate::http::Io;
use crate::metrics::{ShardMetrics, M};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// Idle connections a shard keeps per store.
const POOL_MAX: usize = 64;
/// Longest wait between two tries.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First wait between two tries (doubled each time, then jittered).
const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Where and how to reach the bucket; resolved once from the flags.
#[derive(Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Prepended to every key: empty, or ending in `/`.
    pub prefix: String,
    /// `host:port` of the endpoint (plain HTTP).
    pub endpoint: String,
    pub region: String,
    /// `http://endpoint/bucket/key` rather than `http://bucket.endpoint/key`.
    pub path_style: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
    /// Deadline of one try of one request.
    pub request_timeout: Duration,
    /// Tries of one request before its error is returned.
    pub max_attempts: u32,
    /// A PUT slower than this percentile of recent PUTs sends a second copy (0: never).
    pub hedge_percentile: f64,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl S3Options {
    /// The host the requests go to (and name in their `Host` header).
    fn host(&self) -> String {
        if self.path_style {
            self.endpoint.clone()
        } else {
            format!("{}.{}", self.bucket, self.endpoint)
        }
    }

    /// The path of an object under the prefix (or of the bucket, for an empty key),
    /// percent-encoded.
    fn path(&self, key: &str) -> String {
        let key = if key.is_empty() { String::new() } else { encode(&format!("{}{key}", self.prefix), false) };
        match (self.path_style, key.is_empty()) {
            (true, true) => format!("/{}", self.bucket),
            (true, false) => format!("/{}/{key}", self.bucket),
            (false, _) => format!("/{key}"),
        }
    }
}

/// An answer: status, the `Retry-After`-free essentials, and the body.
struct Answer {
    status: StatusCode,
    body: BytesMut,
}

/// PUT durations remembered for the hedging delay.
const PUT_HISTORY: usize = 256;

/// Objects in one bucket (under a prefix). One per shard.
pub struct S3ObjectStore {
    opts: S3Options,
    /// Recent PUT durations (a ring), for the hedging delay.
    put_times: RefCell<std::collections::VecDeque<Duration>>,
    /// PUTs that sent a second copy.
    hedged: Cell<u64>,
    /// The shard's counters, when it has them.
    metrics: Option<Rc<ShardMetrics>>,
    host: String,
    addr: SocketAddr,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
    /// xorshift state for the backoff's jitter.
    rng: Cell<u64>,
}

impl S3ObjectStore {
    /// A store for `opts`; resolves the endpoint's address once.
    pub fn new(opts: S3Options) -> io::Result<Self> {
        let host = opts.host();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address")))?;
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
        Ok(Self {
            opts,
            host,
            addr,
            idle: RefCell::default(),
            rng: Cell::new(seed),
            put_times: RefCell::default(),
            hedged: Cell::new(0),
            metrics: None,
        })
    }

    /// Counts hedged PUTs in the shard's metrics too.
    pub fn with_metrics(mut self, metrics: Rc<ShardMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks, with one listing of the prefix, that the endpoint answers, the credentials are
    /// accepted and the bucket exists; the error says which one failed.
    pub async fn probe(&self) -> io::Result<()> {
        self.list_page("", None, 1).await.map(|_| ())
    }

    /// One request, tried until it succeeds, fails for good or runs out of tries.
    async fn request(&self, method: Method, key: &str, query: &str, body: Bytes, range: Option<(u64, usize)>) -> io::Result<Answer> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = self.signed(method.clone(), key, query, body.clone(), range)?;
            let deadline = self.opts.request_timeout;
            let result = futures_lite::future::or(self.send(req), async {
                glommio::timer::sleep(deadline).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer in {deadline:?}")))
            })
            .await;
            let retry = match &result {
                Ok(a) => a.status.is_server_error() || a.status == StatusCode::TOO_MANY_REQUESTS || error_code(&a.body) == "SlowDown",
                Err(_) => true,
            };
            if !retry || attempt >= self.opts.max_attempts {
                return match result {
                    Ok(a) if a.status.is_success() => Ok(a),
                    Ok(a) => Err(status_error(&method, key, &a)),
                    Err(e) => Err(io::Error::new(e.kind(), format!("{method} {}: {e}", self.opts.path(key)))),
                };
            }
            match &result {
                Ok(a) => tracing::debug!(%method, key, status = %a.status, attempt, "S3 request retried"),
                Err(e) => tracing::debug!(%method, key, error = %e, attempt, "S3 request retried"),
            }
            glommio::timer::sleep(self.backoff(attempt)).await;
        }
    }

    /// How long a PUT may take before a second copy is sent: the `hedge_percentile` of recent
    /// PUTs (`None`: hedging off, or too few PUTs seen yet to know what is slow).
    fn hedge_delay(&self) -> Option<Duration> {
        let pct = self.opts.hedge_percentile;
        let times = self.put_times.borrow();
        if pct <= 0.0 || times.len() < 20 {
            return None;
        }
        let mut sorted: Vec<Duration> = times.iter().copied().collect();
        sorted.sort_unstable();
        let i = ((sorted.len() as f64 * pct / 100.0) as usize).min(sorted.len() - 1);
        Some(sorted[i].max(Duration::from_millis(2)))
    }

    fn put_took(&self, d: Duration) {
        let mut times = self.put_times.borrow_mut();
        if times.len() == PUT_HISTORY {
            times.pop_front();
        }
        times.push_back(d);
    }

    /// PUTs that sent a second copy, since start.
    #[allow(dead_code)] // Read by tests; for /metrics later.
    pub fn hedged(&self) -> u64 {
        self.hedged.get()
    }

    /// Deletes a losing hedged copy in the background: at once, and again once a request's
    /// deadline has passed, since the server may finish storing a PUT whose request was dropped
    /// after its body was sent, after the first DELETE (the 15-minute soak on s3s-fs left a few
    /// losing copies a minute behind before it deleted twice).
    fn forget(&self, key: String) {
        let (opts, host, addr) = (self.opts.clone(), self.host.clone(), self.addr);
        glommio::spawn_local(async move {
            let store = S3ObjectStore {
                opts,
                host,
                addr,
                idle: RefCell::default(),
                rng: Cell::new(1),
                put_times: RefCell::default(),
                hedged: Cell::new(0),
                metrics: None,
            };
            for again in [false, true] {
                if again {
                    glommio::timer::sleep(store.opts.request_timeout).await;
                }
                if let Err(e) = store.request(Method::DELETE, &key, "", Bytes::new(), None).await {
                    tracing::debug!(key, error = %e, "cannot delete a hedged PUT's losing copy");
                }
            }
        })
        .detach();
    }

    /// Full jitter: a random wait below `BACKOFF_BASE * 2^attempt`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let cap = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
        Duration::from_micros(x % (cap.as_micros() as u64).max(1))
    }

    /// A request with its SigV4 signature.
    fn signed(&self, method: Method, key: &str, query: &str, body: Bytes, range: Option<(u64, usize)>) -> io::Result<Request<Full<Bytes>>> {
        let path = self.opts.path(key);
        let path_and_query = if query.is_empty() { path } else { format!("{path}?{query}") };
        let mut req = Request::builder().method(method).uri(&path_and_query).header(hyper::header::HOST, &self.host);
        if let Some((pos, len)) = range {
            req = req.header(hyper::header::RANGE, format!("bytes={pos}-{}", pos + len as u64 - 1));
        }
        let mut req = req.body(Full::new(body)).map_err(io::Error::other)?;
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity =
            Credentials::new(&self.opts.access_key, &self.opts.secret_key, self.opts.session_token.clone(), None, "sluice").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.opts.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(io::Error::other)?
            .into();
        let url = format!("http://{}{path_and_query}", self.host);
        let headers = req.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable =
            SignableRequest::new(req.method().as_str(), &url, headers, SignableBody::UnsignedPayload).map_err(io::Error::other)?;
        let (instructions, _) = sign(signable, &params).map_err(io::Error::other)?.into_parts();
        instructions.apply_to_request_http1x(&mut req);
        Ok(req)
    }

    /// Sends one request on a pooled connection (or a new one) and reads the whole answer.
    async fn send(&self, req: Request<Full<Bytes>>) -> io::Result<Answer> {
        let mut conn = loop {
            let Some(mut c) = self.idle.borrow_mut().pop() else { break self.connect().await? };
            if c.ready().await.is_ok() {
                break c;
            }
        };
        let resp = conn.send_request(req).await.map_err(io::Error::other)?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() < POOL_MAX {
            idle.push(conn);
        }
        Ok(Answer { status, body: out })
    }

    async fn connect(&self) -> io::Result<SendRequest<Full<Bytes>>> {
        let stream = glommio::net::TcpStream::connect(self.addr).await.map_err(io::Error::from)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(Io(stream)).await.map_err(io::Error::other)?;
        glommio::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "S3 connection closed");
            }
        })
        .detach();
        Ok(sender)
    }

    /// One page of `ListObjectsV2` under `prefix`: keys (without the store's prefix) and the
    /// token of the next page.
    async fn list_page(&self, prefix: &str, token: Option<&str>, max: usize) -> io::Result<(Vec<String>, Option<String>)> {
        let mut query =
            vec![("list-type", "2".to_string()), ("max-keys", max.to_string()), ("prefix", format!("{}{prefix}", self.opts.prefix))];
        if let Some(t) = token {
            query.push(("continuation-token", t.to_string()));
        }
        query.sort();
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v, true))).collect();
        let a = self.request(Method::GET, "", &query.join("&"), Bytes::new(), None).await?;
        let listing =
            parse_listing(&a.body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("ListObjectsV2 answer: {e}")))?;
        let keys = listing.contents.into_iter().filter_map(|e| e.key.strip_prefix(&self.opts.prefix).map(str::to_string)).collect();
        Ok((keys, listing.next_continuation_token.filter(|_| listing.is_truncated)))
    }
}

impl ObjectStore for S3ObjectStore {
    fn put<'a>(&'a self, key: &'a str, data: &'a [u8]) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let body = Bytes::copy_from_slice(data);
            let started = Instant::now();
            let mut first = Box::pin(self.request(Method::PUT, key, "", body.clone(), None));
            let Some(after) = self.hedge_delay() else {
                first.await?;
                self.put_took(started.elapsed());
                return Ok(key.to_string());
            };
            // Hedged: if the first copy is slower than most PUTs, a second copy goes under its
            // own key; whichever is stored first is the object, the other is deleted.
            let early = futures_lite::future::or(async { Some((&mut first).await) }, async {
                glommio::timer::sleep(after).await;
                None
            })
            .await;
            if let Some(r) = early {
                r?;
                self.put_took(started.elapsed());
                return Ok(key.to_string());
            }
            self.hedged.set(self.hedged.get() + 1);
            if let Some(m) = &self.metrics {
                m.add(M::HedgedPuts, 1);
            }
            let second_key = format!("{key}.hedge");
            let first_won = {
                let second = Box::pin(self.request(Method::PUT, &second_key, "", body, None));
                match futures::future::select(first, second).await {
                    futures::future::Either::Left((Ok(_), _)) => true,
                    futures::future::Either::Right((Ok(_), _)) => false,
                    // One copy failed for good: the other decides.
                    futures::future::Either::Left((Err(_), other)) => {
                        other.await?;
                        false
                    }
                    futures::future::Either::Right((Err(_), other)) => {
                        other.await?;
                        true
                    }
                }
            };
            let (winner, loser) = if first_won { (key.to_string(), second_key) } else { (second_key, key.to_string()) };
            self.put_took(started.elapsed());
            // The loser's request was dropped mid-flight (or failed); its copy may exist.
            self.forget(loser);
            Ok(winner)
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, pos: u64, len: usize) -> StoreFuture<'a, BytesMut> {
        Box::pin(async move {
            if len == 0 {
                return Ok(BytesMut::new());
            }
            let a = self.request(Method::GET, key, "", Bytes::new(), Some((pos, len))).await?;
            if a.body.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("GET {key} bytes {pos}+{len}: {} bytes came back", a.body.len()),
                ));
            }
            Ok(a.body)
        })
    }

    fn delete<'a>(&'a self, key: &'a str, _len: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            match self.request(Method::DELETE, key, "", Bytes::new(), None).await {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r.map(|_| ()),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (mut out, mut token) = (Vec::new(), None);
            loop {
                let (keys, next) = self.list_page(prefix, token.as_deref(), 1000).await?;
                out.extend(keys);
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            out.sort();
            Ok(out)
        })
    }
}

/// Percent-encodes as SigV4 wants: unreserved characters stay, `/` stays in paths.
fn encode(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !query => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The error a failed answer becomes: its S3 code and message, in the kind that fits.
fn status_error(method: &Method, key: &str, a: &Answer) -> io::Error {
    let kind = match a.status {
        StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => io::ErrorKind::PermissionDenied,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    let code = error_code(&a.body);
    let what = if key.is_empty() { "the bucket".to_string() } else { key.to_string() };
    io::Error::new(kind, format!("{method} {what}: {} {code}", a.status.as_u16()).trim_end().to_string())
}

/// The `<Code>` of an S3 error body (empty when there is none).
fn error_code(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorBody {
        code: String,
    }
    std::str::from_utf8(body).ok().and_then(|b| quick_xml::de::from_str::<ErrorBody>(b).ok()).map(|e| e.code).unwrap_or_default()
}

/// What a `ListObjectsV2` page says.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listing {
    #[serde(default)]
    contents: Vec<Entry>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
}

fn parse_listing(body: &[u8]) -> Result<Listing, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    quick_xml::de::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real S3-compatible server (s3s-fs, installed by `scripts/s3-server.sh --install`) on
    /// a free port, with a bucket, for as long as the value lives.
    struct Server {
        child: std::process::Child,
        port: u16,
        _root: tempfile::TempDir,
    }

    impl Server {
        fn start() -> Self {
            let tools = std::env::var_os("SLUICE_TOOLS_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sluice-tools"));
            let exe = tools.join("bin/s3s-fs");
            assert!(exe.exists(), "{} not found: run scripts/s3-server.sh --install", exe.display());
            let root = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir(root.path().join("bkt")).expect("bucket");
            let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
            let child = std::process::Command::new(exe)
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "ak", "--secret-key", "sk"])
                .arg(root.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("s3s-fs starts");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "s3s-fs did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            Server { child, port, _root: root }
        }

        fn options(&self, secret: &str) -> S3Options {
            S3Options {
                bucket: "bkt".into(),
                prefix: "p/".into(),
                endpoint: format!("127.0.0.1:{}", self.port),
                region: "us-east-1".into(),
                path_style: true,
                access_key: "ak".into(),
                secret_key: secret.into(),
                session_token: None,
                request_timeout: Duration::from_secs(5),
                max_attempts: 2,
                hedge_percentile: 0.0,
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn on_glommio<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default().spawn(move || async move { f().await }).expect("executor").join().expect("join");
    }

    #[test]
    fn s3_store_keeps_the_object_store_contract_on_a_real_server() {
        let server = Server::start();
        let (good, bad) = (server.options("sk"), server.options("wrong"));
        on_glommio(move || async move {
            let store = S3ObjectStore::new(good).expect("store");
            store.probe().await.expect("the bucket answers");
            crate::store::tests::contract(&store).await;
            // delete and list, which the contract only touches lightly.
            for i in 0..3 {
                store.put(&format!("gc/{i}.wal"), b"x").await.expect("put");
            }
            assert_eq!(store.list("gc/").await.expect("list"), ["gc/0.wal", "gc/1.wal", "gc/2.wal"]);
            store.delete("gc/1.wal", 0).await.expect("delete");
            assert_eq!(store.list("gc/").await.expect("list"), ["gc/0.wal", "gc/2.wal"]);
            let missing = store.get_range("gc/1.wal", 0, 1).await.expect_err("deleted");
            assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
            let denied = S3ObjectStore::new(bad).expect("store").probe().await.expect_err("wrong secret");
            assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied, "{denied}");
        });
    }

    #[test]
    fn listing_and_error_bodies_are_read() {
        let page = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>
<Contents><Key>p/a&amp;b.wal</Key><Size>3</Size></Contents><Contents><Key>p/c.wal</Key></Contents>
<IsTruncated>true</IsTruncated><NextContinuationToken>tok==</NextContinuationToken></ListBucketResult>"#;
        let l = parse_listing(page).expect("parses");
        let keys: Vec<&str> = l.contents.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["p/a&b.wal", "p/c.wal"]);
        assert!(l.is_truncated);
        assert_eq!(l.next_continuation_token.as_deref(), Some("tok=="));
        let empty =
            parse_listing(br#"<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated></ListBucketResult>"#).expect("parses");
        assert!(empty.contents.is_empty() && !empty.is_truncated);
        let err = br#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>"#;
        assert_eq!(error_code(err), "NoSuchBucket");
        assert_eq!(error_code(b""), "");
        assert_eq!(error_code(b"not xml"), "");
    }

    #[test]
    fn paths_and_hosts_follow_the_addressing_style() {
        let mut o = S3Options {
            bucket: "bkt".into(),
            prefix: "sluice/".into(),
            endpoint: "127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key: "a".into(),
            secret_key: "s".into(),
            session_token: None,
            request_timeout: Duration::from_secs(1),
            max_attempts: 1,
            hedge_percentile: 0.0,
        };
        assert_eq!((o.host(), o.path("x y.wal")), ("127.0.0.1:9000".into(), "/bkt/sluice/x%20y.wal".into()));
        assert_eq!(o.path(""), "/bkt", "the bucket, not the prefix");
        o.path_style = false;
        o.endpoint = "s3.example:80".into();
        assert_eq!((o.host(), o.path("k.wal")), ("bkt.s3.example:80".into(), "/sluice/k.wal".into()));
        assert_eq!(o.path(""), "/");
        assert_eq!(encode("a/b c+=", true), "a%2Fb%20c%2B%3D");
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        let o = S3Options {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: "127.0.0.1:1".into(),
            region: "r".into(),
            path_style: true,
            access_key: "a".into(),
            secret_key: "s".into(),
            session_token: None,
            request_timeout: Duration::from_secs(1),
            max_attempts: 3,
            hedge_percentile: 0.0,
        };
        let s = S3ObjectStore::new(o).expect("resolves");
        for attempt in 1..20 {
            let cap = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
            assert!(s.backoff(attempt) < cap);
        }
    }
}
