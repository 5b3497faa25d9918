//! One shard: a pinned executor that owns the partitions hashing to it, its WAL buffer, its batch
//! cache and its control plane connection, and serves the Kafka connections the kernel hands it.
//!
//! Crossing shards is explicit: a connection's shard validates a request and sends each
//! partition's part to its owner with [`Shard::append`] / [`Shard::read`], which go through the
//! channel mesh when the owner is another shard.

use crate::cache::BatchCache;
use crate::config::Config;
use crate::notify::Notify;
use crate::rpc_client::{Event, RpcClient, RpcError};
use crate::store::{LocalObjectStore, ObjectStore};
use crate::{conn, wal};
use bytes::Bytes;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel;
use sluice_rpc::{body::Body, Register, Topic};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Kafka error codes used by the data plane.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// How long a request waits for the control plane before it answers with an error.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// A topic as a shard knows it.
#[derive(Debug)]
pub struct TopicMeta {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub streams: Vec<u64>,
    pub configs: HashMap<String, String>,
}

impl TopicMeta {
    fn from_rpc(t: Topic) -> Self {
        let topic_id = uuid::Uuid::from_slice(&t.topic_id).unwrap_or_default();
        TopicMeta { name: t.name, topic_id, streams: t.streams, configs: t.configs }
    }

    /// A config set on the topic, if any.
    pub fn config(&self, name: &str) -> Option<&str> {
        self.configs.get(name).map(String::as_str)
    }
}

/// Log start offset and high watermark of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub log_start: i64,
    pub hwm: i64,
}

/// This shard's copy of cluster metadata, updated by control plane notifications.
#[derive(Default)]
pub struct MetaCache {
    pub cluster_id: String,
    /// The coordinator's group config defaults (DescribeConfigs of a GROUP resource).
    pub group_defaults: HashMap<String, String>,
    pub topics: HashMap<String, Rc<TopicMeta>>,
    /// The same topics by id (Fetch and Produce name topics by id from v13).
    pub topic_ids: HashMap<uuid::Uuid, Rc<TopicMeta>>,
    pub marks: HashMap<u64, Marks>,
}

impl MetaCache {
    fn put_topic(&mut self, t: Topic) {
        let t = Rc::new(TopicMeta::from_rpc(t));
        for s in &t.streams {
            self.marks.entry(*s).or_default();
        }
        self.topic_ids.insert(t.topic_id, t.clone());
        if let Some(old) = self.topics.insert(t.name.clone(), t.clone()) {
            if old.topic_id != t.topic_id {
                self.topic_ids.remove(&old.topic_id);
            }
        }
    }

    /// Forgets a topic.
    pub fn remove_topic(&mut self, name: &str) {
        if let Some(t) = self.topics.remove(name) {
            self.topic_ids.remove(&t.topic_id);
        }
    }

    /// Raises a stream's marks (never lowers them: notifications and replies race).
    pub fn advance(&mut self, stream: u64, m: Marks) -> bool {
        let e = self.marks.entry(stream).or_default();
        let changed = m.hwm > e.hwm || m.log_start > e.log_start;
        e.hwm = e.hwm.max(m.hwm);
        e.log_start = e.log_start.max(m.log_start);
        changed
    }
}

/// Request to append batches to a stream (sent to the stream's owner).
pub struct AppendReq {
    pub stream: u64,
    /// Whole, validated record batches.
    pub data: Bytes,
    /// Position of each batch in `data` and the offsets it takes.
    pub batches: Vec<(u32, i64)>,
    pub offset_count: i64,
    pub max_timestamp: i64,
    /// Idempotent producer id, epoch and first sequence, when the request holds one such batch.
    pub producer: Option<(i64, i16, i32)>,
    /// Told (sent to or dropped) once the batches hold their place in the partition's order:
    /// in the open WAL buffer, or known as a retry. The connection's next request waits for it.
    pub admitted: Option<oneshot::Sender<()>>,
}

/// Base offset and log start offset of an appended request, or a Kafka error code.
pub type AppendResult = Result<(i64, i64), i16>;

/// Request to read a stream from an offset.
pub struct ReadReq {
    pub stream: u64,
    pub offset: i64,
    pub max_bytes: usize,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct ReadResult {
    pub error: i16,
    pub marks: Marks,
    /// Whole batches, the first holding the requested offset.
    pub batches: Vec<crate::cache::Piece>,
}

/// Messages between shards.
pub enum ShardMsg {
    Append(AppendReq, oneshot::Sender<AppendResult>),
    Read(ReadReq, oneshot::Sender<ReadResult>),
    /// Asks for the shard's counters (for `/metrics`).
    Metrics(oneshot::Sender<Vec<u64>>),
}

/// A shard's state. Lives in an `Rc` on its executor.
pub struct Shard {
    pub id: usize,
    pub cfg: Config,
    pub mesh: Senders<ShardMsg>,
    pub rpc: Rc<RpcClient>,
    pub meta: RefCell<MetaCache>,
    /// Fired whenever any watermark in `meta` advances (long-polling fetches wait on it).
    pub marks_changed: Notify,
    pub wal: wal::Wal,
    pub cache: RefCell<BatchCache>,
    /// The object store this shard writes its WAL objects to and reads them from.
    pub store: Rc<dyn ObjectStore>,
    pub metrics: crate::metrics::ShardMetrics,
}

impl Shard {
    /// The shard owning a partition. Partitions of one topic go round-robin from a shard picked
    /// by hashing the topic id, so a topic's partitions spread evenly over the shards.
    pub fn owner(&self, topic_id: &uuid::Uuid, partition: i32) -> usize {
        let h = topic_id.as_u128();
        let mixed = (h as u64) ^ ((h >> 64) as u64).rotate_left(17);
        ((mixed % self.cfg.cores as u64) as usize + partition as usize) % self.cfg.cores
    }

    /// Appends on the owner; answers once the batches are durable and committed.
    pub async fn append(self: &Rc<Self>, owner: usize, req: AppendReq) -> AppendResult {
        if owner == self.id {
            return wal::append(self, req).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.mesh.send_to(owner, ShardMsg::Append(req, tx)).await.is_err() {
            return Err(code::UNKNOWN_SERVER_ERROR);
        }
        rx.await.unwrap_or(Err(code::UNKNOWN_SERVER_ERROR))
    }

    /// Reads on the owner.
    pub async fn read(self: &Rc<Self>, owner: usize, req: ReadReq) -> ReadResult {
        if owner == self.id {
            return wal::read(self, req).await;
        }
        let (tx, rx) = oneshot::channel();
        if self.mesh.send_to(owner, ShardMsg::Read(req, tx)).await.is_err() {
            return ReadResult { error: code::UNKNOWN_SERVER_ERROR, ..Default::default() };
        }
        rx.await.unwrap_or(ReadResult { error: code::UNKNOWN_SERVER_ERROR, ..Default::default() })
    }

    /// Looks up a topic in the local cache.
    pub fn topic(&self, name: &str) -> Option<Rc<TopicMeta>> {
        self.meta.borrow().topics.get(name).cloned()
    }

    /// Looks up a topic by id in the local cache.
    pub fn topic_by_id(&self, id: &uuid::Uuid) -> Option<Rc<TopicMeta>> {
        self.meta.borrow().topic_ids.get(id).cloned()
    }

    /// A stream's marks as this shard last heard them.
    pub fn marks(&self, stream: u64) -> Option<Marks> {
        self.meta.borrow().marks.get(&stream).copied()
    }

    /// Records new marks and wakes long-polls if they moved.
    pub fn advance(&self, stream: u64, m: Marks) {
        if self.meta.borrow_mut().advance(stream, m) {
            self.marks_changed.notify_all();
        }
    }

    /// Asks the control plane for the authoritative marks of streams (this shard's view may lag
    /// behind commits made by other data planes).
    pub async fn refresh_marks(&self, streams: Vec<u64>) -> Result<(), RpcError> {
        match self.rpc.call(Body::GetWatermarks(sluice_rpc::GetWatermarks { streams }), RPC_TIMEOUT).await? {
            Body::Watermarks(w) => {
                for m in w.streams {
                    self.advance(m.stream_id, Marks { log_start: m.log_start, hwm: m.high_watermark });
                }
                Ok(())
            }
            _ => Err(RpcError::Unavailable),
        }
    }

    /// Applies topics returned by an admin call to the local cache at once, so this client's
    /// next request sees them even before the pushed notification arrives.
    pub fn learn_topic(&self, t: Topic) {
        self.meta.borrow_mut().put_topic(t);
    }

    fn on_event(&self, ev: Event) {
        match ev {
            Event::Registered(r) => {
                let mut m = self.meta.borrow_mut();
                m.cluster_id = r.cluster_id;
                m.group_defaults = r.group_defaults;
                let names: Vec<String> = r.topics.iter().map(|t| t.name.clone()).collect();
                m.topics.retain(|n, _| names.contains(n));
                let ids: Vec<uuid::Uuid> = m.topics.values().map(|t| t.topic_id).collect();
                m.topic_ids.retain(|id, _| ids.contains(id));
                for t in r.topics {
                    m.put_topic(t);
                }
                for w in r.marks {
                    m.advance(w.stream_id, Marks { log_start: w.log_start, hwm: w.high_watermark });
                }
                drop(m);
                self.marks_changed.notify_all();
            }
            Event::Note(Body::Watermarks(w)) => {
                for m in w.streams {
                    self.advance(m.stream_id, Marks { log_start: m.log_start, hwm: m.high_watermark });
                }
            }
            Event::Note(Body::Topics(t)) => {
                let mut m = self.meta.borrow_mut();
                for t in t.topics {
                    m.put_topic(t);
                }
            }
            Event::Note(Body::TopicsDeleted(d)) => {
                let mut m = self.meta.borrow_mut();
                for n in d.names {
                    m.remove_topic(&n);
                }
                let mut cache = self.cache.borrow_mut();
                for s in d.streams {
                    m.marks.remove(&s);
                    cache.remove_stream(s);
                }
            }
            Event::Note(other) => tracing::debug!(note = ?other, "ignored notification"),
        }
    }
}

/// Runs one shard until its listener fails.
pub async fn run(cfg: Config, mesh: MeshBuilder<ShardMsg, Full>) -> Result<(), String> {
    let (senders, mut receivers) = mesh.join().await.map_err(|_| "channel mesh failed".to_string())?;
    let id = senders.peer_id();
    let rpc = RpcClient::new(cfg.controlplane.clone());
    let shard = Rc::new(Shard {
        id,
        mesh: senders,
        rpc: rpc.clone(),
        meta: RefCell::default(),
        marks_changed: Notify::default(),
        wal: wal::Wal::new(&cfg),
        cache: RefCell::new(BatchCache::new(cfg.cache_bytes / cfg.cores)),
        store: {
            let local = LocalObjectStore::new(&cfg.data_dir);
            local.probe_device().await;
            Rc::new(local)
        },
        metrics: Default::default(),
        cfg,
    });
    let (ev_tx, ev_rx) = local_channel::new_bounded(1024);
    let register = Register {
        protocol_version: sluice_rpc::PROTOCOL_VERSION,
        node_id: shard.cfg.node_id,
        zone: shard.cfg.zone.clone(),
        host: shard.cfg.advertised_host.clone(),
        port: i32::from(shard.cfg.listen.port()),
        shard: id as u32,
        cores: shard.cfg.cores as u32,
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
            while let Some(msg) = rx.recv().await {
                let s = s.clone();
                glommio::spawn_local(async move {
                    match msg {
                        ShardMsg::Append(req, tx) => {
                            let _ = tx.send(wal::append(&s, req).await);
                        }
                        ShardMsg::Read(req, tx) => {
                            let _ = tx.send(wal::read(&s, req).await);
                        }
                        ShardMsg::Metrics(tx) => {
                            let _ = tx.send(s.metrics.snapshot());
                        }
                    }
                })
                .detach();
            }
        })
        .detach();
    }
    // Serve clients only once this shard has registered and holds the cluster's metadata:
    // answering earlier would show clients an empty cluster (no topics, no cluster id).
    while shard.meta.borrow().cluster_id.is_empty() {
        let changed = shard.marks_changed.notified();
        if !shard.meta.borrow().cluster_id.is_empty() {
            break;
        }
        let _ = changed.await;
    }
    let listener = listen(shard.cfg.listen, true).map_err(|e| format!("cannot listen on {}: {e}", shard.cfg.listen))?;
    if id == 0 {
        tracing::info!(listen = %shard.cfg.listen, "Kafka listener ready");
        if let Some(addr) = shard.cfg.metrics_listen {
            glommio::spawn_local(crate::metrics::serve(shard.clone(), addr)).detach();
        }
    }
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
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
