//! The control plane's HTTP listener (`--metrics-listen`), served over HTTP/1.1 by hyper: the
//! Prometheus `/metrics` endpoint, values read at each scrape and exposed by prometheus-client,
//! and the operator's status page (`/`, `/status`, `/status.json`: see [`crate::status`]).

use crate::controller::Controller;
use crate::groups::Coordinator;
use crate::meta::MetaStore;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A group's offsets are labelled by group, topic and partition.
type Labels = Vec<(&'static str, String)>;

/// The text of one scrape, in the OpenMetrics format.
async fn render<M: MetaStore + Clone>(ctl: &Controller<M>, groups: &Coordinator<M>) -> String {
    let s = &ctl.shared;
    let mut r = Registry::default();
    // prometheus-client adds a counter's `_total` suffix itself.
    r.register("sluice_metadata_transactions", "Metadata store write transactions committed.", ConstCounter::new(s.store.transactions()));
    r.register("sluice_wal_commits", "WAL objects committed (offsets assigned).", ConstCounter::new(s.commits.load(Relaxed)));
    r.register(
        "sluice_wal_commit_groups",
        "Transactions that committed WAL objects (group commit).",
        ConstCounter::new(s.commit_groups.load(Relaxed)),
    );
    r.register(
        "sluice_retention_passes",
        "Retention passes over every topic finished.",
        ConstCounter::new(s.retention_passes.load(Relaxed)),
    );
    r.register(
        "sluice_log_start_moves",
        "Partition log start offsets moved forward (retention and DeleteRecords).",
        ConstCounter::new(s.log_start_moves.load(Relaxed)),
    );
    for (name, help, v) in [
        ("sluice_index_entries_trimmed", "Index entries let go of (below log start offsets, of deleted topics).", &s.entries_trimmed),
        ("sluice_wal_objects_released", "WAL objects whose last index entry went (garbage from then on).", &s.objects_released),
        ("sluice_wal_objects_deleted", "Garbage WAL objects the data planes deleted from the object store.", &s.objects_deleted),
    ] {
        r.register(name, help, ConstCounter::new(v.load(Relaxed)));
    }
    let c = &s.compaction;
    for (name, help, v) in [
        ("sluice_compaction_passes", "Compaction passes over every topic.", &c.passes),
        ("sluice_compaction_files", "Parquet files compaction committed to topics' tables.", &c.files),
        ("sluice_compaction_rows", "Records compaction wrote to topics' tables.", &c.rows),
        ("sluice_compaction_wal_bytes", "WAL chunk bytes compaction read (of files it wrote).", &c.wal_bytes),
        ("sluice_compaction_parquet_bytes", "Bytes of the Parquet files compaction committed.", &c.parquet_bytes),
        ("sluice_compaction_write_ms", "Milliseconds compaction spent writing files (read, decode, encode, upload).", &c.write_ms),
        ("sluice_compaction_undecodable_chunks", "WAL chunks compaction could not decode (they stay WAL).", &c.undecodable_chunks),
        ("sluice_compaction_failures", "Compaction passes or topics that stopped on an error.", &c.failures),
        ("sluice_compaction_throttled_ms", "Milliseconds compaction waited for --compaction-io-bytes-per-sec.", &c.throttled_ms),
        ("sluice_orphans_swept", "Objects written but never committed that the orphan sweep made garbage.", &c.orphans),
        (
            "sluice_table_metadata_files_deleted",
            "Iceberg metadata files no table reaches any more, deleted by the sweep.",
            &c.metadata_files_deleted,
        ),
    ] {
        r.register(name, help, ConstCounter::new(v.load(Relaxed)));
    }
    let topics = s.topics.read().expect("poisoned").len();
    r.register("sluice_topics", "Topics.", ConstGauge::new(i64::try_from(topics).unwrap_or(i64::MAX)));
    r.register("sluice_control_plane_epoch", "Epoch of this control plane.", ConstGauge::new(i64::try_from(s.epoch).unwrap_or(i64::MAX)));
    let (committed, lag) = (Family::<Labels, Gauge>::default(), Family::<Labels, Gauge>::default());
    for (g, t, p, offset, hwm) in groups.lag().await {
        let labels = vec![("group", g), ("topic", t), ("partition", p.to_string())];
        committed.get_or_create(&labels).set(offset);
        lag.get_or_create(&labels).set((hwm - offset).max(0));
    }
    r.register("sluice_group_committed_offset", "Committed offset of a consumer group on a partition.", committed);
    r.register("sluice_group_lag", "High watermark minus committed offset of a consumer group on a partition.", lag);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// Serves `GET /metrics`, the status page and its data until the listener fails.
pub async fn serve<M: MetaStore + Clone>(listener: TcpListener, ctl: Controller<M>, groups: Arc<Coordinator<M>>) {
    let sizes = Arc::new(crate::status::Sizes::default());
    while let Ok((sock, _)) = listener.accept().await {
        let (ctl, groups, sizes) = (ctl.clone(), groups.clone(), sizes.clone());
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (ctl, groups, sizes) = (ctl.clone(), groups.clone(), sizes.clone());
            async move {
                let (content_type, body) = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => {
                        ("application/openmetrics-text; version=1.0.0; charset=utf-8", Bytes::from(render(&ctl, &groups).await))
                    }
                    (&Method::GET, "/" | "/status") => ("text/html; charset=utf-8", Bytes::from_static(crate::status::PAGE.as_bytes())),
                    (&Method::GET, "/status.json") => {
                        ("application/json", Bytes::from(crate::status::render(&ctl, &groups, &sizes).await.to_string()))
                    }
                    _ => {
                        return Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"try /metrics or /status\n")));
                    }
                };
                Response::builder()
                    .header(hyper::header::CONTENT_TYPE, content_type)
                    .header(hyper::header::CACHE_CONTROL, "no-store")
                    // The page loads nothing from anywhere but its own /status.json.
                    .header(
                        hyper::header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                    )
                    .body(Full::new(body))
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(sock);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}
