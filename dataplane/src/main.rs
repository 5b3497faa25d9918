//! `sluice-dataplane`: the Sluice broker. Kafka clients connect here.
//!
//! One pinned glommio executor (shard) per core. Every shard accepts connections on the same
//! port (SO_REUSEPORT), owns the partitions that hash to it, keeps one WAL buffer, one batch
//! cache and one connection to the control plane. See `../shared/DESIGN.md`.
//!
//! ```text
//! sluice-dataplane --data-dir ./data --controlplane 127.0.0.1:9093 --listen 127.0.0.1:9092
//! ```
//!
//! # Layout
//! Each module imports only those below it in this list (none imports one that imports it back):
//! - `main`: flags, one executor per core.
//! - [`server`]: a shard's start, the Kafka accept loop, the `/metrics` endpoint.
//! - [`conn`]: one connection: framing, bad input, replies in request order.
//! - [`api`]: one file per Kafka API, and the dispatcher.
//! - [`gc`]: shard 0 deletes the WAL objects the control plane names as garbage.
//! - [`drain`]: shard 0 leaves the cluster on SIGTERM and exits once clients have moved.
//! - [`order`]: the order of one connection's requests ([`order::Turn`]).
//! - [`context`]: what one connection's requests share (peer, client id, principal).
//! - [`shard`]: ownership: the owner function, the mesh, the one call that runs work on the
//!   owner shard.
//! - [`meta`]: this shard's copy of topics and cluster metadata.
//! - [`rpc_client`]: the connection to the control plane; it is the partitions' sequencer.
//! - [`partition`]: the owner's state: `writer` (buffer, cut, put, commit in order, apply),
//!   `reader` (cache, object loads), `producers` (idempotence), `marks` (watermarks, long poll).
//! - [`store`]: the object store seam and its implementations; the object key format.
//! - [`http`]: hyper's HTTP/1.1 over glommio streams.
//! - [`metrics`]: counters and histograms; [`config`]: flags; [`notify`]: a wake-all signal.
//! - [`error`]: the one error type and its Kafka error codes.

mod api;
mod config;
mod conn;
mod context;
mod drain;
mod error;
mod gc;
mod http;
mod meta;
mod metrics;
mod notify;
mod order;
mod partition;
mod rpc_client;
mod server;
mod shard;
mod store;

use config::{Args, Config};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

fn main() {
    let args = parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => fail(e),
    };
    if let Err(e) = check_store(&cfg.store) {
        fail(e);
    }
    for addr in std::iter::once(cfg.listen).chain(cfg.metrics_listen) {
        if let Err(e) = wait_until_free(addr) {
            fail(format!("cannot listen on {addr}: {e}"));
        }
    }
    // Before the executors start, so no signal finds the default handler (which would kill the
    // process without draining).
    let signals = match drain::signal_socket() {
        Ok(s) => std::sync::Arc::new(std::sync::Mutex::new(Some(s))),
        Err(e) => fail(format!("cannot handle signals: {e}")),
    };
    let cores = cfg.cores;
    let mesh = glommio::channels::channel_mesh::MeshBuilder::full(cores, 1024);
    // io_memory: without CAP_IPC_LOCK (ulimit -l is 8 MiB here) glommio's buffer registration
    // fails with only a warning and DMA reads then fail with EOPNOTSUPP; keep every executor's
    // share small enough that all of them fit under the limit.
    let io_memory = (6 << 20) / cores.max(1);
    let io_memory = io_memory.clamp(256 << 10, 2 << 20);
    tracing::info!(listen = %cfg.listen, cores, controlplane = %cfg.controlplane.join(","), data_dir = %cfg.data_dir.display(), store = %cfg.store_name(), "data plane starting");
    if cfg.cache_bytes / cfg.cores < cfg.wal_flush_bytes {
        // A cold read brings in a partition's whole chunk of a WAL object (up to about
        // wal.flush.bytes); a shard's cache that cannot hold one evicts it before the next fetch
        // needs the rest, and every chunk is read several times (BENCHMARKS.md, section e).
        tracing::warn!(
            per_shard = cfg.cache_bytes / cfg.cores,
            wal_flush_bytes = cfg.wal_flush_bytes,
            "the batch cache is smaller per shard than one WAL object: reads from objects will re-read chunks"
        );
    }
    let pool = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(cores, None))
        .name("sluice-shard")
        .io_memory(io_memory)
        .on_all_shards(move || {
            let (cfg, mesh, signals) = (cfg.clone(), mesh.clone(), signals.clone());
            async move { server::run(cfg, mesh, signals).await }
        });
    let handles = match pool {
        Ok(h) => h,
        Err(e) => fail(format!("cannot start executors: {e}")),
    };
    for r in handles.join_all() {
        match r {
            Ok(Err(e)) => fail(e),
            Err(e) => fail(format!("shard failed: {e}")),
            Ok(Ok(())) => {}
        }
    }
}

/// Waits (briefly) until nothing listens on `addr`. A data plane killed a moment ago may still
/// hold its ports: io_uring tears a dead process's ring, and the listeners it was accepting on,
/// down asynchronously. Probed without SO_REUSEPORT, since the shards bind with it and would
/// otherwise silently share the port with another broker already there.
fn wait_until_free(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Prepares the local store's directories, or checks that the S3 bucket answers to these
/// credentials (one listing, on a short-lived executor), so a bad store is one clear line.
fn check_store(store: &config::StoreConfig) -> Result<(), String> {
    match store {
        config::StoreConfig::Local(root) => store::prepare_dirs(root),
        config::StoreConfig::S3(opts) => {
            let o = opts.clone();
            let probe = glommio::LocalExecutorBuilder::default()
                .name("sluice-s3-probe")
                .spawn(move || async move {
                    let s3 = store::s3::S3ObjectStore::new(o)?;
                    s3.probe().await
                })
                .map_err(|e| format!("cannot start an executor: {e}"))?
                .join()
                .map_err(|e| format!("cannot start an executor: {e}"))?;
            let url = format!("s3://{}/{}", opts.bucket, opts.prefix);
            probe.map_err(|e| format!("object store {url} at http://{}: {e}", opts.endpoint))
        }
    }
}

/// Parses flags, and `--config FILE` under them; a bad flag or config file is one line on stderr
/// (no usage dump), `--help` prints as usual.
fn parse_args() -> Args {
    sluice_rpc::cli::parse("sluice-dataplane")
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("sluice-dataplane: error: {msg}");
    std::process::exit(1);
}
