//! Command-line flags (each also readable from a `SLUICE_*` environment variable) and the
//! resolved configuration every shard gets a copy of.

use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Sluice data plane: a Kafka-compatible broker.
#[derive(Parser, Debug)]
#[command(name = "sluice-dataplane", version, about)]
pub struct Args {
    /// Data directory: the local object store lives in DATA_DIR/objects.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Control plane internal-protocol address.
    #[arg(long, env = "SLUICE_CONTROLPLANE", default_value = "127.0.0.1:9093")]
    pub controlplane: String,
    /// Kafka listener address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: String,
    /// Host advertised to clients (default: the listener's host).
    #[arg(long, env = "SLUICE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,
    /// Kafka broker (node) id of this data plane.
    #[arg(long, env = "SLUICE_NODE_ID", default_value_t = 1)]
    pub node_id: i32,
    /// Availability zone (reported as the broker's rack).
    #[arg(long, env = "SLUICE_ZONE", default_value = "")]
    pub zone: String,
    /// Shards (pinned executors); default: every available core.
    #[arg(long, env = "SLUICE_CORES")]
    pub cores: Option<usize>,
    /// A shard cuts its WAL object when this many bytes are buffered.
    #[arg(long, env = "SLUICE_WAL_FLUSH_BYTES", default_value_t = 4 << 20)]
    pub wal_flush_bytes: usize,
    /// ... or at the first tick of this interval (one clock for all shards) after the oldest
    /// buffered batch arrived, so no batch waits longer. The default suits a local directory,
    /// where an object costs one fdatasync: it keeps produce p99 under 10 ms at half of a 2-core
    /// machine's throughput (BENCHMARKS.md). An object store that bills each PUT will want a
    /// longer interval.
    #[arg(long, env = "SLUICE_WAL_FLUSH_INTERVAL_MS", default_value_t = 3)]
    pub wal_flush_interval_ms: u64,
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

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub controlplane: String,
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub node_id: i32,
    pub zone: String,
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
        if a.controlplane.to_socket_addrs().ok().and_then(|mut it| it.next()).is_none() {
            return Err(format!("--controlplane {}: not an address", a.controlplane));
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
        if a.wal_flush_bytes == 0 || a.wal_max_inflight_bytes < a.wal_flush_bytes {
            return Err("--wal-flush-bytes must be positive and at most --wal-max-inflight-bytes".into());
        }
        let advertised_host =
            a.advertised_host.unwrap_or_else(|| a.listen.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default());
        Ok(Config {
            data_dir: a.data_dir,
            controlplane: a.controlplane,
            listen,
            advertised_host,
            node_id: a.node_id,
            zone: a.zone,
            cores,
            wal_flush_bytes: a.wal_flush_bytes,
            wal_flush_interval: Duration::from_millis(a.wal_flush_interval_ms.max(1)),
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
