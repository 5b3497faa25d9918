//! `sluice-controlplane`: metadata, offset sequencing and topic administration for Sluice.
//!
//! Start it with a data directory (the embedded metadata store lives in `DATA_DIR/meta.redb`)
//! and an address for the internal protocol; data planes connect there.
//!
//! ```text
//! sluice-controlplane --data-dir ./data --rpc-listen 127.0.0.1:9093
//! ```

mod cluster;
mod controller;
mod election;
mod error;
mod groups;
mod lake;
mod meta;
mod metrics;
mod server;
mod status;

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Sluice control plane.
#[derive(Parser, Debug)]
#[command(name = "sluice-controlplane", version, about)]
struct Args {
    /// A TOML file that sets any of these flags: keys are the long flag names (`data-dir` or
    /// `data_dir`). A flag on the command line or in its SLUICE_* variable beats the file.
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: holds the embedded metadata store (meta.redb).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The metadata store: `redb://PATH` (an embedded file; default DATA_DIR/meta.redb) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]` (an etcd cluster, shared by every control
    /// plane; keys under /NAMESPACE when given, so clusters can share an etcd).
    #[arg(long, env = "SLUICE_METADATA")]
    metadata: Option<String>,
    /// Address the internal protocol listens on (data planes connect here).
    #[arg(long, env = "SLUICE_RPC_LISTEN", default_value = "127.0.0.1:9093")]
    rpc_listen: String,
    /// The RPC address data planes are sent to when this control plane leads (default: the
    /// listen address). Each control plane sharing a metadata store needs its own.
    #[arg(long, env = "SLUICE_ADVERTISED_RPC")]
    advertised_rpc: Option<String>,
    /// Address of the HTTP listener (off when not given): Prometheus `/metrics`, and the
    /// operator's status page at `/` (or `/status`; its data at `/status.json`).
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Smallest session timeout a classic group member may ask for (`group.min.session.timeout.ms`).
    #[arg(long, env = "SLUICE_GROUP_MIN_SESSION_TIMEOUT_MS", default_value_t = 6000)]
    group_min_session_timeout_ms: u64,
    /// How long an empty classic group waits for more members before its first rebalance
    /// completes (`group.initial.rebalance.delay.ms`).
    #[arg(long, env = "SLUICE_GROUP_INITIAL_REBALANCE_DELAY_MS", default_value_t = 3000)]
    group_initial_rebalance_delay_ms: u64,
    /// Session timeout of KIP-848 consumer group members (`group.consumer.session.timeout.ms`).
    #[arg(long, env = "SLUICE_GROUP_CONSUMER_SESSION_TIMEOUT_MS", default_value_t = 45000)]
    group_consumer_session_timeout_ms: u64,
    /// Heartbeat interval of KIP-848 consumer group members (`group.consumer.heartbeat.interval.ms`).
    #[arg(long, env = "SLUICE_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    group_consumer_heartbeat_interval_ms: u64,
    /// How often retention (each topic's `retention.ms` and `retention.bytes`) moves log start
    /// offsets forward, in milliseconds.
    #[arg(long, env = "SLUICE_RETENTION_CHECK_INTERVAL_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    retention_check_interval_ms: u64,
    /// How often index entries below log start offsets and of deleted topics are let go of
    /// (and their WAL objects released once no entry refers to them), in milliseconds.
    #[arg(long, env = "SLUICE_GC_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    gc_interval_ms: u64,
    /// How long a released WAL object stays in the object store before data planes delete it,
    /// in milliseconds (a read that found it just before keeps working meanwhile).
    #[arg(long, env = "SLUICE_GC_GRACE_MS", default_value_t = 300_000)]
    gc_grace_ms: u64,
    /// The object store the data planes write to, which compaction reads WAL objects from and
    /// writes the topics' tables to: `file://DIR` or `s3://BUCKET[/PREFIX]` (default
    /// DATA_DIR/objects, the data plane's default when both share a data directory).
    #[arg(long, env = "SLUICE_OBJECT_STORE")]
    object_store: Option<String>,
    /// S3 endpoint (`http://HOST:PORT`), for `--object-store s3://`.
    #[arg(long, env = "SLUICE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "SLUICE_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// The Iceberg catalog of the topics' tables: `sqlite://PATH?mode=rwc` (iceberg's SQL
    /// catalog; default DATA_DIR/catalog.db) or `http(s)://HOST[:PORT][/PATH]`, an Iceberg REST
    /// catalog (its bearer token in SLUICE_CATALOG_TOKEN).
    #[arg(long, env = "SLUICE_CATALOG")]
    catalog: Option<String>,
    /// The warehouse to ask a REST catalog for (catalogs that serve several need it).
    #[arg(long, env = "SLUICE_CATALOG_WAREHOUSE")]
    catalog_warehouse: Option<String>,
    /// How often compaction looks for partitions to turn into Parquet, in milliseconds.
    #[arg(long, env = "SLUICE_COMPACTION_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    compaction_interval_ms: u64,
    /// A partition is compacted once this many bytes of WAL chunks wait...
    #[arg(long, env = "SLUICE_COMPACTION_MIN_BYTES", default_value_t = 64 << 20)]
    compaction_min_bytes: u64,
    /// ...or once its oldest waiting chunk is this old, in milliseconds.
    #[arg(long, env = "SLUICE_COMPACTION_MAX_AGE_MS", default_value_t = 600_000)]
    compaction_max_age_ms: u64,
    /// Most WAL bytes that go into one Parquet file.
    #[arg(long, env = "SLUICE_COMPACTION_FILE_BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    compaction_file_bytes: u64,
    /// Target record bytes per Parquet row group (what a fetch of a compacted range reads).
    #[arg(long, env = "SLUICE_COMPACTION_ROW_GROUP_BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    compaction_row_group_bytes: u64,
    /// Threads compaction runs on (its own runtime, apart from the one serving data planes;
    /// default: half the cores).
    #[arg(long, env = "SLUICE_COMPACTION_THREADS", value_parser = clap::value_parser!(u64).range(1..))]
    compaction_threads: Option<u64>,
    /// Most bytes per second compaction reads from and writes to the object store, all its
    /// threads together (as Kafka's log.cleaner.io.max.bytes.per.second); 0: no limit.
    #[arg(long, env = "SLUICE_COMPACTION_IO_BYTES_PER_SEC", default_value_t = 0)]
    compaction_io_bytes_per_sec: u64,
    /// An object in the object store that no index entry, table or compaction refers to (a put
    /// whose commit never came) becomes garbage once this old, in milliseconds.
    #[arg(long, env = "SLUICE_ORPHAN_GRACE_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..))]
    orphan_grace_ms: u64,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

fn main() {
    let args = parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fail(format!("cannot start runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(args)) {
        fail(e);
    }
}

/// Parses flags, and `--config FILE` under them; a bad flag or config file is one line on stderr
/// (no usage dump), `--help` prints as usual.
fn parse_args() -> Args {
    sluice_rpc::cli::parse("sluice-controlplane")
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("sluice-controlplane: error: {msg}");
    std::process::exit(1);
}

async fn run(args: Args) -> Result<(), String> {
    let url = match &args.metadata {
        Some(u) => u.clone(),
        None => format!("redb://{}", args.data_dir.join("meta.redb").display()),
    };
    if let Some(path) = url.strip_prefix("redb://") {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        }
        let store = meta::RedbMetaStore::open(path).map_err(|e| format!("cannot open metadata store: {e}"))?;
        serve(args, url, store).await
    } else if let Some(rest) = url.strip_prefix("etcd://") {
        let (list, namespace) = match rest.split_once('/') {
            Some((l, ns)) if !ns.trim_matches('/').is_empty() => (l, format!("/{}", ns.trim_matches('/'))),
            Some((l, _)) => (l, String::new()),
            None => (rest, String::new()),
        };
        let endpoints: Vec<String> =
            list.split(',').map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(format!("--metadata {url}: list etcd endpoints as HOST:PORT[,HOST:PORT...]"));
        }
        let store = meta::EtcdMetaStore::connect(&endpoints, &namespace).await.map_err(|e| format!("cannot reach etcd at {list}: {e}"))?;
        serve(args, url, store).await
    } else {
        Err(format!("--metadata {url}: unknown scheme (use redb://PATH or etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE])"))
    }
}

async fn serve<M: meta::MetaStore + Clone>(args: Args, url: String, store: M) -> Result<(), String> {
    // Checked before campaigning, so a standby with a bad flag fails now, not at takeover.
    let lake_cfg = lake::LakeConfig::from_flags(
        &args.data_dir,
        args.object_store.as_deref(),
        args.s3_endpoint.as_deref(),
        &args.s3_region,
        args.catalog.as_deref(),
        args.catalog_warehouse.as_deref(),
    )?;
    let listener =
        Arc::new(tokio::net::TcpListener::bind(&args.rpc_listen).await.map_err(|e| format!("cannot listen on {}: {e}", args.rpc_listen))?);
    let metrics_listener = match &args.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?),
        None => None,
    };
    // Stand by (answering data planes with the leader's address) until this one leads.
    let me = args.advertised_rpc.clone().unwrap_or_else(|| args.rpc_listen.clone());
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(String::new());
    let lost = store.lost_sessions();
    let standby = tokio::spawn(server::serve_standby(listener.clone(), leader_rx));
    let session = tokio::select! {
        s = election::campaign(&store, &me, &leader_tx) => s.map_err(|e| format!("cannot campaign for leadership: {e}"))?,
        _ = shutdown() => return Ok(()),
    };
    standby.abort();
    let ctl = controller::Controller::start(store.clone()).await.map_err(|e| format!("cannot start controller: {e}"))?;
    let group_cfg = groups::GroupConfig {
        min_session_timeout: Duration::from_millis(args.group_min_session_timeout_ms),
        initial_rebalance_delay: Duration::from_millis(args.group_initial_rebalance_delay_ms),
        consumer_session_timeout: Duration::from_millis(args.group_consumer_session_timeout_ms),
        consumer_heartbeat_interval: Duration::from_millis(args.group_consumer_heartbeat_interval_ms),
        ..Default::default()
    };
    let coordinator = groups::Coordinator::start(ctl.shared.clone(), group_cfg).await.map_err(|e| format!("cannot load groups: {e}"))?;
    ctl.shared.gc_grace_ms.store(args.gc_grace_ms, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(cluster::run_refresh(ctl.shared.clone()));
    tokio::spawn(controller::run_trimmer(ctl.clone(), Duration::from_millis(args.gc_interval_ms)));
    tokio::spawn(controller::run_retention(ctl.clone(), Duration::from_millis(args.retention_check_interval_ms)));
    start_compaction(&args, lake_cfg, &ctl).await?;
    if let Some(l) = metrics_listener {
        tokio::spawn(metrics::serve(l, ctl.clone(), coordinator.clone()));
    }
    tracing::info!(
        rpc = %args.rpc_listen,
        advertised = %me,
        metadata = %url,
        epoch = ctl.shared.epoch,
        cluster_id = %ctl.shared.cluster_id,
        "control plane ready (leading)"
    );
    tokio::select! {
        r = server::serve(listener, ctl, coordinator) => r.map_err(|e| format!("listener failed: {e}")),
        _ = election::lost(lost, session) => Err("lost leadership (the metadata store did not hear from this control plane in time); exiting".into()),
        _ = shutdown() => {
            tracing::info!("control plane stopping");
            // Hands leadership over at once instead of after the session's TTL.
            let _ = store.close_session(session).await;
            Ok(())
        }
    }
}

/// The nice value of compaction's threads (the CPU scheduler gives a thread at 10 about a
/// tenth of the share of one at 0 when both want the CPU).
const COMPACTION_NICE: i32 = 10;

/// Opens the lake and starts compaction on a runtime of its own (kept for the life of the
/// process), so its CPU work never delays the answers to data planes.
async fn start_compaction<M: meta::MetaStore + Clone + 'static>(
    args: &Args,
    cfg: lake::LakeConfig,
    ctl: &controller::Controller<M>,
) -> Result<(), String> {
    let threads = args
        .compaction_threads
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("compaction")
        // Below everything else on the machine (a data plane sharing it included): compaction
        // waits, produce latency does not.
        .on_thread_start(|| {
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), COMPACTION_NICE) {
                tracing::warn!(error = %e, "cannot lower the priority of a compaction thread");
            }
        })
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the compaction runtime: {e}"))?;
    let lake = match rt.spawn(lake::Lake::open(cfg)).await.map_err(|e| format!("compaction runtime: {e}")).and_then(|r| r) {
        Ok(l) => l,
        Err(e) => {
            // Dropping a runtime inside another one's task would panic.
            rt.shutdown_background();
            return Err(e);
        }
    };
    let policy = lake::compact::Policy {
        min_bytes: args.compaction_min_bytes,
        max_age: Duration::from_millis(args.compaction_max_age_ms),
        max_bytes: args.compaction_file_bytes,
        row_group_bytes: args.compaction_row_group_bytes,
        interval: Duration::from_millis(args.compaction_interval_ms),
        orphan_grace: Duration::from_millis(args.orphan_grace_ms),
        io_limit: (args.compaction_io_bytes_per_sec > 0).then(|| Arc::new(lake::compact::Throttle::new(args.compaction_io_bytes_per_sec))),
    };
    let stats = ctl.shared.compaction.clone();
    rt.spawn(lake::compact::run(ctl.clone(), Arc::new(lake), policy, stats));
    // The runtime lives as long as the process: dropping it here would stop compaction.
    std::mem::forget(rt);
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
