//! Command-line flags (each also readable from a `SLUICE_*` environment variable) and the
//! resolved configuration every shard gets a copy of.

use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::store::s3::S3Options;

/// Sluice data plane: a Kafka-compatible broker.
#[derive(Parser, Debug)]
#[command(name = "sluice-dataplane", version, about)]
pub struct Args {
    /// A TOML file that sets any of these flags: keys are the long flag names (`data-dir` or
    /// `data_dir`). A flag on the command line or in its SLUICE_* variable beats the file.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory: the local object store lives in DATA_DIR/objects.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where WAL objects go: `file://DIR` (a local directory; default DATA_DIR/objects) or
    /// `s3://BUCKET[/PREFIX]` (any S3-compatible store; credentials from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN). On S3 nothing durable is written locally.
    #[arg(long, env = "SLUICE_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// S3 endpoint, `http://HOST[:PORT]`, for S3-compatible servers.
    #[arg(long, env = "SLUICE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (signed into every request).
    #[arg(long, env = "SLUICE_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`) instead of virtual hosts
    /// (`BUCKET.ENDPOINT/KEY`); default: on when the endpoint is an IP address or localhost,
    /// where virtual hosts cannot resolve.
    #[arg(long, env = "SLUICE_S3_PATH_STYLE", action = clap::ArgAction::Set)]
    pub s3_path_style: Option<bool>,
    /// Deadline of one try of one S3 request.
    #[arg(long, env = "SLUICE_S3_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub s3_request_timeout_ms: u64,
    /// Tries of one S3 request (timeouts, resets, 5xx and SlowDown are tried again, with
    /// exponential backoff and jitter) before it fails.
    #[arg(long, env = "SLUICE_S3_MAX_ATTEMPTS", default_value_t = 6)]
    pub s3_max_attempts: u32,
    /// On S3, a PUT slower than this percentile of the shard's recent PUTs sends a second copy
    /// under its own key; the first stored wins, the other is deleted (0 turns hedging off).
    #[arg(long, env = "SLUICE_S3_HEDGE_PERCENTILE", default_value_t = 95.0)]
    pub s3_hedge_percentile: f64,
    /// Control plane internal-protocol address; with several control planes, every one of them
    /// (`HOST:PORT,HOST:PORT`): standbys send the data plane to the leader.
    #[arg(long, env = "SLUICE_CONTROLPLANE", default_value = "127.0.0.1:9093")]
    pub controlplane: String,
    /// Kafka listener address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: String,
    /// Host advertised to clients (default: the listener's host).
    #[arg(long, env = "SLUICE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Kafka broker (node) id of this data plane, unique among the running data planes (a second
    /// one claiming it is refused); default: the control plane assigns the lowest free id.
    #[arg(long, env = "SLUICE_NODE_ID", value_parser = clap::value_parser!(i32).range(0..))]
    pub node_id: Option<i32>,
    /// Availability zone (reported as the broker's rack). Clients naming this zone in their
    /// `client.id` (`zone_id=ZONE`) are shown only the data planes of their zone.
    #[arg(long, env = "SLUICE_ZONE", default_value = "")]
    pub zone: String,
    /// On SIGTERM (or Ctrl-C) the data plane drains: it leaves the cluster, stops accepting
    /// connections, answers produce and fetch with a retriable NOT_LEADER_OR_FOLLOWER so clients
    /// move to the others, finishes what is in flight and exits once its clients have gone or
    /// after this many milliseconds.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Shards (pinned executors); default: every available core.
    #[arg(long, env = "SLUICE_CORES")]
    pub cores: Option<usize>,
    /// A shard cuts its WAL object when this many bytes are buffered. Default per store: 4 MiB
    /// on a local directory, 8 MiB on S3 (so that an interval's worth of a busy shard's data
    /// makes one object, not a full one and a remainder).
    #[arg(long, env = "SLUICE_WAL_FLUSH_BYTES")]
    pub wal_flush_bytes: Option<usize>,
    /// ... or at the first tick of this interval (one clock for all shards) after the oldest
    /// buffered batch arrived, so no batch waits longer. Default per store (BENCHMARKS.md):
    /// 3 ms on a local directory, where an object costs one fdatasync (produce p99 under 10 ms
    /// at half of a 2-core machine's throughput); 150 ms on S3, which bills each PUT (with
    /// 8 MiB objects about 263 PUTs per GB at 50 MB/s on 2 shards; 393 at 100 ms).
    #[arg(long, env = "SLUICE_WAL_FLUSH_INTERVAL_MS")]
    pub wal_flush_interval_ms: Option<u64>,
    /// Bytes a shard may hold in WAL buffers and in-flight flushes before it stops reading
    /// from its sockets (backpressure).
    #[arg(long, env = "SLUICE_WAL_MAX_INFLIGHT_BYTES", default_value_t = 64 << 20)]
    pub wal_max_inflight_bytes: usize,
    /// Byte limit of the committed-batch cache, shared out among the shards.
    #[arg(long, env = "SLUICE_CACHE_BYTES", default_value_t = 256 << 20)]
    pub cache_bytes: usize,
    /// Create topics named in Metadata requests (Kafka's auto.create.topics.enable).
    #[arg(long, env = "SLUICE_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1 (num.partitions).
    #[arg(long, env = "SLUICE_NUM_PARTITIONS", default_value_t = 1)]
    pub num_partitions: i32,
    /// Largest record batch accepted unless a topic sets max.message.bytes (message.max.bytes).
    #[arg(long, env = "SLUICE_MAX_MESSAGE_BYTES", default_value_t = 1_048_588)]
    pub max_message_bytes: i32,
    /// Largest request frame; a longer one closes the connection (socket.request.max.bytes).
    #[arg(long, env = "SLUICE_SOCKET_REQUEST_MAX_BYTES", default_value_t = 104_857_600)]
    pub socket_request_max_bytes: usize,
    /// Address of the Prometheus `/metrics` endpoint (off when not given).
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    pub log: String,
}

/// The object store the shards use.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory on this machine (the objects' root).
    Local(PathBuf),
    S3(S3Options),
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub controlplane: Vec<String>,
    pub listen: SocketAddr,
    pub advertised_host: String,
    /// The node id asked for (None: assigned by the control plane).
    pub node_id: Option<i32>,
    pub zone: String,
    pub drain_timeout: Duration,
    /// Random id of this process (tells its own registrations from another's).
    pub instance: u64,
    /// When this process started (ms since the epoch).
    pub started_ms: i64,
    pub cores: usize,
    pub wal_flush_bytes: usize,
    pub wal_flush_interval: Duration,
    pub wal_max_inflight_bytes: usize,
    pub cache_bytes: usize,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub max_message_bytes: i32,
    pub socket_request_max_bytes: usize,
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// Checks the flags and fills in defaults.
    pub fn from_args(a: Args) -> Result<Self, String> {
        let listen =
            a.listen.to_socket_addrs().ok().and_then(|mut it| it.next()).ok_or_else(|| format!("--listen {}: not an address", a.listen))?;
        let controlplane: Vec<String> = a.controlplane.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
        if controlplane.is_empty() || controlplane.iter().any(|c| c.to_socket_addrs().ok().and_then(|mut it| it.next()).is_none()) {
            return Err(format!("--controlplane {}: not an address (HOST:PORT[,HOST:PORT...])", a.controlplane));
        }
        let metrics_listen = match &a.metrics_listen {
            None => None,
            Some(m) => {
                Some(m.to_socket_addrs().ok().and_then(|mut it| it.next()).ok_or_else(|| format!("--metrics-listen {m}: not an address"))?)
            }
        };
        let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores = a.cores.unwrap_or(available);
        if cores == 0 || cores > available {
            return Err(format!("--cores {cores}: must be between 1 and {available} (the cores this machine has)"));
        }
        if a.num_partitions < 1 {
            return Err("--num-partitions must be at least 1".into());
        }
        let store = store_config(&a)?;
        let wal_flush_bytes = a.wal_flush_bytes.unwrap_or(store.default_flush_bytes());
        if wal_flush_bytes == 0 || a.wal_max_inflight_bytes < wal_flush_bytes {
            return Err("--wal-flush-bytes must be positive and at most --wal-max-inflight-bytes".into());
        }
        let wal_flush_interval = Duration::from_millis(a.wal_flush_interval_ms.unwrap_or(store.default_flush_interval_ms()).max(1));
        let advertised_host =
            a.advertised_host.unwrap_or_else(|| a.listen.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default());
        Ok(Config {
            store,
            data_dir: a.data_dir,
            controlplane,
            listen,
            advertised_host,
            node_id: a.node_id,
            drain_timeout: Duration::from_millis(a.drain_timeout_ms),
            instance: random_instance(),
            started_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            zone: a.zone,
            cores,
            wal_flush_bytes,
            wal_flush_interval,
            wal_max_inflight_bytes: a.wal_max_inflight_bytes,
            cache_bytes: a.cache_bytes,
            auto_create_topics: a.auto_create_topics,
            num_partitions: a.num_partitions,
            max_message_bytes: a.max_message_bytes,
            socket_request_max_bytes: a.socket_request_max_bytes,
            metrics_listen,
        })
    }
}

/// A random process id, which no other data plane will have.
fn random_instance() -> u64 {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    hi ^ lo
}

impl StoreConfig {
    /// The object size that suits the store when `--wal-flush-bytes` is not given.
    pub fn default_flush_bytes(&self) -> usize {
        match self {
            StoreConfig::Local(_) => 4 << 20,
            StoreConfig::S3(_) => 8 << 20,
        }
    }

    /// The flush interval that suits the store when `--wal-flush-interval-ms` is not given.
    pub fn default_flush_interval_ms(&self) -> u64 {
        match self {
            StoreConfig::Local(_) => 3,
            StoreConfig::S3(_) => 150,
        }
    }
}

impl Config {
    /// The object store, for the log: `file://DIR` or `s3://BUCKET/PREFIX at ENDPOINT`.
    pub fn store_name(&self) -> String {
        match &self.store {
            StoreConfig::Local(root) => format!("file://{}", root.display()),
            StoreConfig::S3(o) => format!("s3://{}/{} at http://{}", o.bucket, o.prefix, o.endpoint),
        }
    }
}

/// The object store the flags name.
fn store_config(a: &Args) -> Result<StoreConfig, String> {
    let url = match &a.object_store {
        None => return Ok(StoreConfig::Local(a.data_dir.join("objects"))),
        Some(u) => u,
    };
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(format!("--object-store {url}: no directory"));
        }
        return Ok(StoreConfig::Local(PathBuf::from(dir)));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!("--object-store {url}: unknown scheme (use file://DIR or s3://BUCKET[/PREFIX])"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("--object-store {url}: no bucket"));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    let endpoint = match &a.s3_endpoint {
        Some(e) => e.clone(),
        None => {
            return Err("--object-store s3://: --s3-endpoint is required (this build speaks plain http to S3-compatible servers)".into())
        }
    };
    let host = match endpoint.strip_prefix("http://") {
        Some(h) => h.trim_end_matches('/'),
        None if endpoint.starts_with("https://") => {
            return Err(format!("--s3-endpoint {endpoint}: https is not supported yet; use http://"))
        }
        None => return Err(format!("--s3-endpoint {endpoint}: must start with http://")),
    };
    let (name, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => (h, p.to_string()),
        _ if host.is_empty() || host.contains('/') => return Err(format!("--s3-endpoint {endpoint}: not an endpoint")),
        _ => (host, "80".to_string()),
    };
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    let path_style = a.s3_path_style.unwrap_or(literal == "localhost" || literal.parse::<std::net::IpAddr>().is_ok());
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(access_key), Some(secret_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) else {
        return Err("--object-store s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
    };
    if a.s3_max_attempts == 0 || a.s3_request_timeout_ms == 0 {
        return Err("--s3-max-attempts and --s3-request-timeout-ms must be positive".into());
    }
    if !(0.0..100.0).contains(&a.s3_hedge_percentile) {
        return Err(format!("--s3-hedge-percentile {}: must be at least 0 and below 100", a.s3_hedge_percentile));
    }
    Ok(StoreConfig::S3(S3Options {
        bucket: bucket.to_string(),
        prefix,
        endpoint: format!("{name}:{port}"),
        region: a.s3_region.clone(),
        path_style,
        access_key,
        secret_key,
        session_token: env("AWS_SESSION_TOKEN"),
        request_timeout: Duration::from_millis(a.s3_request_timeout_ms),
        max_attempts: a.s3_max_attempts,
        hedge_percentile: a.s3_hedge_percentile,
    }))
}
