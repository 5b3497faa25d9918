//! The control plane's Prometheus `/metrics` endpoint: a minimal HTTP/1.1 responder (one GET,
//! then close), which is all a scraper needs.

use crate::controller::Controller;
use crate::groups::Coordinator;
use crate::meta::MetaStore;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn render<M: MetaStore + Clone>(ctl: &Controller<M>, groups: &Coordinator<M>) -> String {
    let s = &ctl.shared;
    let metrics: [(&str, &str, &str, u64); 5] = [
        ("sluice_metadata_transactions_total", "counter", "Metadata store write transactions committed.", s.store.transactions()),
        ("sluice_wal_commits_total", "counter", "WAL objects committed (offsets assigned).", s.commits.load(Relaxed)),
        (
            "sluice_wal_commit_groups_total",
            "counter",
            "Transactions that committed WAL objects (group commit).",
            s.commit_groups.load(Relaxed),
        ),
        ("sluice_topics", "gauge", "Topics.", s.topics.read().expect("poisoned").len() as u64),
        ("sluice_control_plane_epoch", "gauge", "Epoch of this control plane.", s.epoch),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let lag = groups.lag().await;
    let _ = writeln!(out, "# HELP sluice_group_committed_offset Committed offset of a consumer group on a partition.\n# TYPE sluice_group_committed_offset gauge");
    for (g, t, p, committed, _) in &lag {
        let _ = writeln!(out, "sluice_group_committed_offset{{group=\"{}\",topic=\"{t}\",partition=\"{p}\"}} {committed}", escape(g));
    }
    let _ = writeln!(
        out,
        "# HELP sluice_group_lag High watermark minus committed offset of a consumer group on a partition.\n# TYPE sluice_group_lag gauge"
    );
    for (g, t, p, committed, hwm) in &lag {
        let _ = writeln!(out, "sluice_group_lag{{group=\"{}\",topic=\"{t}\",partition=\"{p}\"}} {}", escape(g), (hwm - committed).max(0));
    }
    out
}

/// Escapes a Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` until the listener fails.
pub async fn serve<M: MetaStore + Clone>(listener: TcpListener, ctl: Controller<M>, groups: Arc<Coordinator<M>>) {
    while let Ok((mut sock, _)) = listener.accept().await {
        let (ctl, groups) = (ctl.clone(), groups.clone());
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET / ") {
                ("200 OK", render(&ctl, &groups).await)
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
