//! A shard's start and its listeners: building the shard's state, connecting it to the control
//! plane, the Kafka accept loop (every shard accepts on the same port, SO_REUSEPORT) and, on
//! shard 0, the `/metrics` endpoint, which gathers every shard's counters through the mesh.

use crate::config::Config;
use crate::config::StoreConfig;
use crate::metrics::ShardMetrics;
use crate::partition::{Partitions, Settings, SystemClock};
use crate::rpc_client::RpcClient;
use crate::shard::{Shard, ShardMsg, RPC_TIMEOUT};
use crate::store::s3::S3ObjectStore;
use crate::store::{LocalObjectStore, ObjectStore};
use bytes::Bytes;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::local_channel;
use sluice_rpc::body::Body;
use sluice_rpc::Register;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// The process's signal socket ([`crate::drain::signal_socket`]), taken by the first shard.
pub type Signals = std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>>;

/// How often the first shard reports the data plane's traffic to the control plane.
const STATS_EVERY: Duration = Duration::from_secs(2);

/// Runs one shard until its listener fails or the data plane has drained.
pub async fn run(cfg: Config, mesh: MeshBuilder<ShardMsg, Full>, signals: Signals) -> Result<(), String> {
    let (senders, mut receivers) = mesh.join().await.map_err(|_| "channel mesh failed".to_string())?;
    let id = senders.peer_id();
    let rpc = RpcClient::new(cfg.controlplane.clone());
    let metrics = Rc::new(ShardMetrics::default());
    let store: Rc<dyn ObjectStore> = match &cfg.store {
        StoreConfig::Local(root) => {
            let local = LocalObjectStore::new(root);
            local.probe_device().await;
            Rc::new(local)
        }
        StoreConfig::S3(opts) => Rc::new(
            S3ObjectStore::new(opts.clone()).map_err(|e| format!("S3 endpoint {}: {e}", opts.endpoint))?.with_metrics(metrics.clone()),
        ),
    };
    let settings = Settings {
        flush_bytes: cfg.wal_flush_bytes,
        max_inflight_bytes: cfg.wal_max_inflight_bytes,
        cache_bytes: cfg.cache_bytes / cfg.cores,
        rpc_timeout: RPC_TIMEOUT,
    };
    let clock = Rc::new(SystemClock { interval: cfg.wal_flush_interval });
    let parts = Partitions::new(settings, store.clone(), rpc.clone(), clock, metrics.clone());
    let shard = Rc::new(Shard {
        id,
        mesh: senders,
        rpc: rpc.clone(),
        meta: RefCell::default(),
        parts,
        store,
        metrics,
        // Known once the first shard's registration is accepted (and handed to the others), so
        // no shard serves under a node id the control plane refused.
        node: Cell::new(-1),
        draining: Cell::new(false),
        traffic: Default::default(),
        drain_started: Default::default(),
        cfg,
    });
    let (ev_tx, ev_rx) = local_channel::new_bounded(1024);
    let register = Register {
        protocol_version: sluice_rpc::PROTOCOL_VERSION,
        node_id: shard.cfg.node_id.unwrap_or(sluice_rpc::ASSIGN_NODE_ID),
        zone: shard.cfg.zone.clone(),
        host: shard.cfg.advertised_host.clone(),
        port: i32::from(shard.cfg.listen.port()),
        shard: id as u32,
        cores: shard.cfg.cores as u32,
        instance: shard.cfg.instance,
        assigned: false,
        started_ms: shard.cfg.started_ms,
        leaving: false,
        reports_every_ms: STATS_EVERY.as_millis() as u32,
    };
    glommio::spawn_local(rpc.run(register, Rc::new(ev_tx))).detach();
    let s = shard.clone();
    glommio::spawn_local(async move {
        while let Some(ev) = ev_rx.recv().await {
            s.on_event(ev);
        }
    })
    .detach();
    for (_, rx) in receivers.streams() {
        let s = shard.clone();
        glommio::spawn_local(async move {
            while let Some(ShardMsg::Run(job)) = rx.recv().await {
                glommio::spawn_local(job(s.clone())).detach();
            }
        })
        .detach();
    }
    // Signals are heard from the start: one that comes before the data plane serves stops it.
    if id == 0 {
        if let Some(socket) = signals.lock().ok().and_then(|mut s| s.take()) {
            glommio::spawn_local(crate::drain::watch(shard.clone(), socket)).detach();
        }
    }
    // Serve clients only once this shard has registered, holds the cluster's metadata and knows
    // its data plane's node id: answering earlier would show clients an empty cluster (no
    // topics, no cluster id) or a broker without an id.
    let ready = |s: &Shard| !s.meta.borrow().cluster_id.is_empty() && s.node_id() >= 0;
    while !ready(&shard) {
        let changed = shard.parts.marks.changed();
        if ready(&shard) {
            break;
        }
        let _ = changed.await;
    }
    let listener = listen(shard.cfg.listen, true).map_err(|e| format!("cannot listen on {}: {e}", shard.cfg.listen))?;
    if id == 0 {
        tracing::info!(listen = %shard.cfg.listen, "Kafka listener ready");
        if let Some(addr) = shard.cfg.metrics_listen {
            glommio::spawn_local(serve_metrics(shard.clone(), addr)).detach();
        }
        glommio::spawn_local(crate::gc::run(shard.clone())).detach();
        glommio::spawn_local(report_stats(shard.clone())).detach();
    }
    loop {
        if shard.draining.get() {
            // Connections already open go on until the data plane exits.
            drop(listener);
            std::future::pending::<()>().await;
            unreachable!("pending never completes");
        }
        let stop = shard.drain_started.notified();
        let accept = std::pin::pin!(listener.accept());
        let accepted = match futures::future::select(accept, stop).await {
            futures::future::Either::Left((accepted, _)) => accepted,
            futures::future::Either::Right(_) => continue,
        };
        match accepted {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                let _ = stream.set_nodelay(true);
                glommio::spawn_local(crate::conn::serve(shard.clone(), stream, peer)).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A listener with SO_REUSEADDR (which glommio's own `bind` does not set), so a restart is not
/// refused while connections of the previous process linger in FIN_WAIT/TIME_WAIT; with
/// `reuse_port`, SO_REUSEPORT too, so every shard accepts on the same port.
#[allow(unsafe_code)]
pub fn listen(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(reuse_port)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    // SAFETY: the descriptor is a freshly created, bound and listening TCP socket whose
    // ownership moves to the glommio listener (into_raw_fd gives it up).
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) })
}

/// Serves `GET /metrics` on `addr` (HTTP/1.1 by hyper) until the listener fails.
async fn serve_metrics(shard: Rc<Shard>, addr: std::net::SocketAddr) {
    let listener = match listen(addr, false) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for metrics");
            return;
        }
    };
    tracing::info!(%addr, "metrics endpoint ready");
    while let Ok(stream) = listener.accept().await {
        let shard = shard.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let shard = shard.clone();
            async move {
                let resp = hyper::Response::builder();
                let resp = if req.method() == hyper::Method::GET && matches!(req.uri().path(), "/metrics" | "/") {
                    let text = crate::metrics::render(gather(&shard).await, gather_zones(&shard).await, &shard.cfg.zone);
                    resp.header(hyper::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                        .body(http_body_util::Full::new(Bytes::from(text)))
                } else {
                    resp.status(hyper::StatusCode::NOT_FOUND).body(http_body_util::Full::new(Bytes::from_static(b"try /metrics\n")))
                };
                resp
            }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(crate::http::Io(stream), service);
        glommio::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        })
        .detach();
    }
}

/// Every shard's bytes per client zone, summed per zone.
async fn gather_zones(shard: &Rc<Shard>) -> Vec<sluice_rpc::ZoneBytes> {
    crate::metrics::sum_zones(shard.on_every(|s| async move { s.traffic.snapshot() }).await)
}

/// Reports the data plane's traffic to the control plane every [`STATS_EVERY`] (for its status
/// page), for as long as it runs.
async fn report_stats(shard: Rc<Shard>) {
    use crate::metrics::M;
    loop {
        glommio::timer::sleep(STATS_EVERY).await;
        let shards = shard
            .on_every(|s| async move {
                ([s.metrics.get(M::ProduceBytes), s.metrics.get(M::FetchBytes), s.metrics.get(M::Connections)], s.traffic.snapshot())
            })
            .await;
        let mut stats = sluice_rpc::DataPlaneStats::default();
        let mut zones = Vec::with_capacity(shards.len());
        for (counts, z) in shards {
            stats.produce_bytes += counts[0];
            stats.fetch_bytes += counts[1];
            stats.connections += counts[2];
            zones.push(z);
        }
        stats.zones = crate::metrics::sum_zones(zones);
        // Best effort: a report lost to a reconnect is replaced by the next.
        let _ = shard.rpc.call(Body::DataPlaneStats(stats), STATS_EVERY).await;
    }
}

/// Every shard's counters, in shard order (empty for a shard that did not answer).
async fn gather(shard: &Rc<Shard>) -> Vec<Vec<u64>> {
    shard.on_every(|s| async move { s.metrics.snapshot() }).await
}
