//! Counters of one shard, and the Prometheus `/metrics` endpoint (served by shard 0, which asks
//! every other shard for its counters through the mesh).
//!
//! Counters are plain `Cell`s on their shard: no atomics on the hot path.

use crate::shard::{Shard, ShardMsg};
use futures::channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::cell::Cell;
use std::fmt::Write;
use std::rc::Rc;

/// Every metric: name, Prometheus type, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("sluice_produce_requests_total", "counter", "Produce requests answered or, with acks=0, accepted."),
    ("sluice_produce_bytes_total", "counter", "Record batch bytes appended on this shard (as owner)."),
    ("sluice_produce_records_total", "counter", "Offsets appended on this shard (as owner)."),
    ("sluice_fetch_requests_total", "counter", "Fetch requests answered."),
    ("sluice_fetch_bytes_total", "counter", "Record bytes returned by fetches."),
    ("sluice_wal_objects_total", "counter", "WAL objects written to the object store (PUTs)."),
    ("sluice_wal_object_bytes_total", "counter", "Bytes of WAL objects written."),
    ("sluice_wal_commit_failures_total", "counter", "WAL objects whose commit failed (their produces got errors)."),
    ("sluice_object_reads_total", "counter", "Ranged reads from the object store (cache misses)."),
    ("sluice_object_read_bytes_total", "counter", "Bytes read from the object store."),
    ("sluice_connections", "gauge", "Open Kafka client connections."),
];

/// Index into [`METRICS`].
#[derive(Clone, Copy)]
pub enum M {
    ProduceRequests,
    ProduceBytes,
    ProduceRecords,
    FetchRequests,
    FetchBytes,
    WalObjects,
    WalObjectBytes,
    WalCommitFailures,
    ObjectReads,
    ObjectReadBytes,
    Connections,
}

/// A shard's counters.
#[derive(Default)]
pub struct ShardMetrics {
    values: [Cell<u64>; METRICS.len()],
}

impl ShardMetrics {
    /// Adds to a counter.
    pub fn add(&self, m: M, n: u64) {
        let c = &self.values[m as usize];
        c.set(c.get().wrapping_add(n));
    }

    /// Lowers a gauge.
    pub fn sub(&self, m: M, n: u64) {
        let c = &self.values[m as usize];
        c.set(c.get().saturating_sub(n));
    }

    /// The current values, in [`METRICS`] order.
    pub fn snapshot(&self) -> Vec<u64> {
        self.values.iter().map(Cell::get).collect()
    }
}

/// Renders snapshots of all shards in the Prometheus text format.
pub fn render(shards: &[Vec<u64>]) -> String {
    let mut out = String::new();
    for (i, (name, kind, help)) in METRICS.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, values) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", values.get(i).copied().unwrap_or(0));
        }
    }
    out
}

/// Serves `GET /metrics` on `addr` until the listener fails.
pub async fn serve(shard: Rc<Shard>, addr: std::net::SocketAddr) {
    let listener = match crate::shard::listen(addr, false) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen for metrics");
            return;
        }
    };
    tracing::info!(%addr, "metrics endpoint ready");
    while let Ok(mut stream) = listener.accept().await {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                ("200 OK", render(&gather(&shard).await))
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}

async fn gather(shard: &Rc<Shard>) -> Vec<Vec<u64>> {
    let mut all = Vec::with_capacity(shard.cfg.cores);
    for peer in 0..shard.cfg.cores {
        if peer == shard.id {
            all.push(shard.metrics.snapshot());
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let got = match shard.mesh.send_to(peer, ShardMsg::Metrics(tx)).await {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        all.push(got);
    }
    all
}
