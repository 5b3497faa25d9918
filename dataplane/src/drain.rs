//! Leaving the cluster on SIGTERM (or SIGINT) without an error reaching an application.
//!
//! The signal handler only writes a byte to a socket ([`signal_socket`]); the first shard reads
//! it and drains ([`watch`]): every shard stops accepting and marks itself draining, so Metadata
//! no longer lists this data plane and produce and fetch get the retriable
//! NOT_LEADER_OR_FOLLOWER (clients refresh their metadata and move); the control plane is told
//! at once (the others stop listing it too); what is in flight is answered (a produce only once
//! durable and committed); then, once the clients have gone or `--drain-timeout-ms` has passed
//! and nothing is in flight, the process exits.

use crate::metrics::M;
use crate::shard::Shard;
use futures_lite::AsyncReadExt;
use sluice_rpc::body::Body;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often the first shard looks at every shard's connections and requests while draining.
const POLL: Duration = Duration::from_millis(20);
/// Signals this soon after the first are taken as the same request to drain.
const ECHO: Duration = Duration::from_secs(1);
/// How long the control plane gets to take the leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time spent answering what is in flight once the drain timeout has passed.
const LAST_ANSWERS: Duration = Duration::from_secs(10);

/// A socket that receives a byte on each SIGTERM and SIGINT (written by signal-hook's
/// async-signal-safe handler); read by [`watch`].
pub fn signal_socket() -> std::io::Result<UnixStream> {
    let (read, write) = UnixStream::pair()?;
    write.set_nonblocking(true)?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
    }
    Ok(read)
}

/// Waits for the signal on the first shard, then drains and exits. A second signal while
/// draining exits at once, unless it came within [`ECHO`] of the first (Ctrl-C in a terminal
/// signals the whole process group, and a supervising script then sends its own SIGTERM).
#[allow(unsafe_code)]
pub async fn watch(shard: Rc<Shard>, socket: UnixStream) {
    // SAFETY: the descriptor is an open Unix stream socket whose ownership moves to glommio's
    // stream (into_raw_fd gives it up).
    let mut socket = unsafe { glommio::net::UnixStream::from_raw_fd(socket.into_raw_fd()) };
    let mut byte = [0u8; 1];
    if socket.read(&mut byte).await.is_err() {
        return;
    }
    let first = Instant::now();
    let drain = glommio::spawn_local(drain(shard));
    loop {
        if socket.read(&mut byte).await.is_err() || first.elapsed() >= ECHO {
            break;
        }
    }
    tracing::warn!("second signal while draining: exiting now");
    drop(drain);
    std::process::exit(1);
}

async fn drain(shard: Rc<Shard>) {
    let started = Instant::now();
    if shard.node_id() < 0 || shard.meta.borrow().cluster_id.is_empty() {
        // Not serving yet (no control plane answered): nothing to hand over.
        tracing::info!("stopping before joining the cluster");
        std::process::exit(0);
    }
    tracing::info!(node = shard.node_id(), timeout_ms = shard.cfg.drain_timeout.as_millis() as u64, "draining: leaving the cluster");
    shard
        .on_every(|s| async move {
            s.draining.set(true);
            s.rpc.leaving.set(true);
            s.drain_started.notify_all();
        })
        .await;
    match shard.rpc.call(Body::Deregister(sluice_rpc::Deregister {}), LEAVE_TIMEOUT).await {
        Ok(Body::Brokers(_)) => tracing::info!("left the cluster; waiting for clients to move"),
        other => tracing::warn!(reply = ?other, "control plane did not take the leave; its session lapses instead"),
    }
    // With no other data plane to go to, clients have nowhere to move: answer and go.
    let deadline = started + if shard.others_registered() { shard.cfg.drain_timeout } else { Duration::ZERO };
    loop {
        let (connections, in_flight) = load(&shard).await;
        if in_flight == 0 && (connections == 0 || Instant::now() >= deadline) {
            break;
        }
        if Instant::now() >= deadline + LAST_ANSWERS {
            tracing::warn!(in_flight, "requests still in flight after the drain timeout; exiting anyway");
            break;
        }
        glommio::timer::sleep(POLL).await;
    }
    // acks=0 produces are answered before they are stored: give the WAL buffers one interval.
    glommio::timer::sleep(shard.cfg.wal_flush_interval * 2).await;
    let (connections, _) = load(&shard).await;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, connections_left = connections, "drained; exiting");
    std::process::exit(0);
}

/// Open connections and requests in flight, over every shard.
async fn load(shard: &Rc<Shard>) -> (u64, u64) {
    let each = shard.on_every(|s| async move { (s.metrics.get(M::Connections), s.metrics.get(M::InFlight)) }).await;
    each.into_iter().fold((0, 0), |(c, f), (sc, sf)| (c + sc, f + sf))
}
