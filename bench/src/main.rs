//! `sluice-bench`: drives any Kafka-compatible bootstrap address with librdkafka (the `rdkafka`
//! crate) and reports produce latency (send to acknowledgement), end-to-end latency (send to a
//! consumer's receipt, from a timestamp carried in each record), throughput, and, when pointed
//! at Sluice's `/metrics` endpoints, object PUTs and metadata transactions per GB.
//!
//! ```text
//! sluice-bench --bootstrap 127.0.0.1:9092 --preset throughput --out bench-results/throughput
//! sluice-bench --bootstrap 127.0.0.1:9092 --rate 20000 --duration 20 --consumers 1
//! ```
//!
//! Fixed-rate runs are coordinated-omission correct: each record has an intended send time on a
//! fixed schedule and latency is measured from it, so a stalled broker shows up as latency of
//! every record that should have been sent during the stall.

mod metrics;
mod report;
mod workload;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Named workloads; any flag given explicitly overrides the preset's value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Preset {
    /// 1 KiB records, 1 producer, acks=all, unthrottled, 1 consumer.
    Throughput,
    /// 1 KiB records at a fixed 20,000 records/s (set --rate), acks=all, 1 consumer.
    FixedRate,
    /// 100-byte records, linger 5 ms, unthrottled, 1 consumer.
    SmallRecords,
    /// Produce a backlog first, then measure consumers reading it from the beginning.
    FetchOnly,
}

/// Load generator and latency recorder for Kafka-compatible brokers.
#[derive(Parser, Debug, Clone)]
#[command(name = "sluice-bench", version, about)]
pub struct Args {
    /// Bootstrap address of the broker under test.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Named workload (flags below override it).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Label for the report (e.g. "sluice" or "tansu").
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Topic (default: a fresh one per run).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of the topic the run creates.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Record value size in bytes (at least 16: the send timestamp travels in it).
    #[arg(long)]
    pub record_size: Option<usize>,
    /// Records per second across all producers; 0 for unthrottled.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Producer clients.
    #[arg(long)]
    pub producers: Option<usize>,
    /// acks: 0, 1 or all.
    #[arg(long)]
    pub acks: Option<String>,
    /// linger.ms of the producers.
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// batch.size of the producers in bytes.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// compression.type: none, gzip, snappy, lz4, zstd.
    #[arg(long)]
    pub compression: Option<String>,
    /// Consumer clients (0: produce only).
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Measured seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring starts.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Fetch-only: records in the backlog produced before consumers start.
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Sluice `/metrics` URLs (data plane and control plane, comma-separated) for PUTs and
    /// metadata transactions per GB.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Directory for the report files (.hgrm histograms, SVG plot, summary).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Records a producer may have queued in librdkafka (queue.buffering.max.messages). In an
    /// unthrottled run this queue depth, over the throughput, is most of the measured latency.
    #[arg(long, default_value_t = 100_000)]
    pub queue_messages: u64,
    /// Extra librdkafka properties for every client, as key=value (repeatable), e.g.
    /// -X socket.nagle.disable=true.
    #[arg(short = 'X', value_parser = parse_kv)]
    pub client_config: Vec<(String, String)>,
    /// Seconds to wait for consumers to receive every acknowledged record after producing stops.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// What fills record values after their 16-byte header: `pattern` (a repeating byte
    /// ramp, the same in every record) or `text` (JSON-like log lines, different in every
    /// record: what compression of real payloads looks like).
    #[arg(long, value_enum, default_value = "pattern")]
    pub payload: Payload,
    /// Fetch-only: a shell command run after the backlog is produced and before consumers start
    /// (e.g. one that waits for compaction and restarts the data plane so its cache is cold).
    #[arg(long)]
    pub before_consume: Option<String>,
}

/// Record value contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    Pattern,
    Text,
}

/// The resolved workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub bootstrap: String,
    pub label: String,
    pub topic: String,
    pub partitions: i32,
    pub record_size: usize,
    pub rate: u64,
    pub producers: usize,
    pub acks: String,
    pub linger_ms: u64,
    pub batch_size: usize,
    pub compression: String,
    pub consumers: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub backlog: u64,
    pub fetch_only: bool,
    pub drain_timeout: Duration,
    pub queue_messages: u64,
    pub client_config: Vec<(String, String)>,
    pub payload: Payload,
    pub before_consume: Option<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("expected key=value, got {s}"))
}

impl Workload {
    fn from_args(a: &Args) -> Result<Self> {
        // (partitions, size, rate, producers, linger, consumers, duration, warmup, backlog)
        let (p, size, rate, prod, linger, cons, dur, warm, backlog) = match a.preset {
            None | Some(Preset::Throughput) => (4, 1024, 0, 1, 5, 1, 10.0, 2.0, 0),
            Some(Preset::FixedRate) => (4, 1024, 20_000, 1, 1, 1, 20.0, 2.0, 0),
            Some(Preset::SmallRecords) => (4, 100, 0, 1, 5, 1, 10.0, 2.0, 0),
            Some(Preset::FetchOnly) => (4, 1024, 0, 1, 5, 1, 0.0, 0.0, 1_000_000),
        };
        let fetch_only = matches!(a.preset, Some(Preset::FetchOnly)) || a.backlog.is_some();
        let w = Workload {
            bootstrap: a.bootstrap.clone(),
            label: a.label.clone(),
            topic: a.topic.clone().unwrap_or_else(|| format!("sluice-bench-{}-{}", std::process::id(), now_ms())),
            partitions: a.partitions.unwrap_or(p),
            record_size: a.record_size.unwrap_or(size),
            rate: a.rate.unwrap_or(rate),
            producers: a.producers.unwrap_or(prod),
            acks: a.acks.clone().unwrap_or_else(|| "all".into()),
            linger_ms: a.linger_ms.unwrap_or(linger),
            batch_size: a.batch_size.unwrap_or(1 << 20),
            compression: a.compression.clone().unwrap_or_else(|| "none".into()),
            consumers: a.consumers.unwrap_or(cons),
            duration: Duration::from_secs_f64(a.duration.unwrap_or(dur)),
            warmup: Duration::from_secs_f64(a.warmup.unwrap_or(warm)),
            backlog: a.backlog.unwrap_or(backlog),
            fetch_only,
            drain_timeout: Duration::from_secs_f64(a.drain_timeout),
            queue_messages: a.queue_messages.max(1),
            client_config: a.client_config.clone(),
            payload: a.payload,
            before_consume: a.before_consume.clone(),
        };
        if w.record_size < workload::HEADER_BYTES {
            bail!("--record-size must be at least {}", workload::HEADER_BYTES);
        }
        if w.payload == Payload::Text && w.record_size > 512 << 10 {
            bail!("--payload text takes records of at most 512 KiB");
        }
        if w.partitions < 1 || w.producers < 1 {
            bail!("--partitions and --producers must be at least 1");
        }
        if !["0", "1", "all", "-1"].contains(&w.acks.as_str()) {
            bail!("--acks must be 0, 1 or all");
        }
        if w.fetch_only && w.consumers == 0 {
            bail!("a fetch-only run needs --consumers of at least 1");
        }
        if !w.fetch_only && w.duration.is_zero() {
            bail!("--duration must be positive");
        }
        Ok(w)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sluice-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let w = Workload::from_args(&args)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let before = metrics::scrape_all(&args.metrics)?;
    let result = workload::run(&w)?;
    let after = metrics::scrape_all(&args.metrics)?;
    let summary = report::Summary::new(&w, &result, metrics::delta(&before, &after));
    report::write(&args.out, &summary, &result)?;
    print!("{}", summary.table());
    println!("report files in {}", args.out.display());
    if result.missing > 0 {
        bail!("{} acknowledged records were never consumed", result.missing);
    }
    Ok(())
}
