//! The controller: the single writer of the metadata store.
//!
//! Every write goes through one actor task ([`Controller::run`]) that owns the write side:
//! WAL-object commits (the offset sequencer) and topic administration. Commits that are queued
//! together go into one metadata transaction (group commit); every transaction is fenced by this
//! control plane's epoch, so a deposed control plane can never commit. Reads (index look-ups,
//! topics, watermarks) go straight to the store or to the shared caches the actor updates after
//! each successful transaction.

use crate::meta::{keys, Cond, Fenced, MetaError, MetaStore, Op};
use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use prost::Message;
use sluice_rpc::configs::{validate_topic_config, validate_topic_name};
use sluice_rpc::{
    body::Body, AdminReply, AlterTopicConfigs, ChunkResult, CommitWal, CommitWalReply, DeleteRecordsResult, Envelope, IndexEntry, NewTopic,
    Topic, TopicResult, Watermark, Watermarks,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Most partitions one topic may have (a guard against requests that would allocate millions).
pub const MAX_PARTITIONS: i32 = 100_000;
/// How long the record of a committed WAL object (`wal/objects/<key>`, which answers a retried
/// commit with its first offsets) is kept. A data plane retries a commit for at most a minute
/// (its commit deadline), so ten minutes leave a wide margin; after that the record is deleted
/// and the metadata kept per object produced stays bounded.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// How often expired records are deleted (at most; a tenth of the window when that is less).
const DEDUP_SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most deletes in one transaction of a sweep.
const DEDUP_SWEEP_BATCH: usize = 100;
/// Most commits folded into one metadata transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// A stream's offsets as the sequencer knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamState {
    pub log_start: i64,
    pub hwm: i64,
    /// Version of the stream's watermark record this state was read from or written as (0: no
    /// record yet; [`UNKNOWN`]: a write of it failed, and may or may not have happened). Every
    /// commit is conditioned on it, so offsets are assigned from what the store holds even when
    /// a transaction's answer is lost (etcd unreachable after applying it).
    pub version: u64,
}

/// [`StreamState::version`] of a stream that must be read from the store again before use.
const UNKNOWN: u64 = u64::MAX;

/// State shared between the actor (writer) and the request handlers (readers).
pub struct Shared<M> {
    /// The metadata store; every write through it is fenced by this control plane's epoch.
    pub store: Fenced<M>,
    pub epoch: u64,
    pub cluster_id: String,
    pub topics: RwLock<BTreeMap<String, Topic>>,
    pub streams: RwLock<HashMap<u64, StreamState>>,
    /// Pushed to every data plane connection: encoded notification frames.
    pub notify: broadcast::Sender<Arc<Vec<u8>>>,
    /// WAL objects committed, and the transactions they took (group commit makes it fewer).
    pub commits: std::sync::atomic::AtomicU64,
    pub commit_groups: std::sync::atomic::AtomicU64,
    /// Retention passes finished, and log start offsets moved (by retention or DeleteRecords).
    pub retention_passes: std::sync::atomic::AtomicU64,
    pub log_start_moves: std::sync::atomic::AtomicU64,
    /// Garbage collection: index entries let go of, objects whose last entry went, objects the
    /// data planes reported deleted.
    pub entries_trimmed: std::sync::atomic::AtomicU64,
    pub objects_released: std::sync::atomic::AtomicU64,
    pub objects_deleted: std::sync::atomic::AtomicU64,
    /// How long an object stays in the object store after its last index entry went, in ms.
    pub gc_grace_ms: std::sync::atomic::AtomicU64,
    /// What compaction into the topics' tables did.
    pub compaction: Arc<crate::lake::compact::Stats>,
    /// The registered data planes and their traffic.
    pub dataplanes: crate::cluster::DataPlanes,
}

/// Default of [`Shared::gc_grace_ms`]: far longer than any read of an object takes.
pub const GC_GRACE: Duration = Duration::from_secs(300);

enum Command {
    Commit(CommitWal, oneshot::Sender<Result<CommitWalReply, MetaError>>),
    Create(Vec<NewTopic>, bool, oneshot::Sender<AdminReply>),
    Delete(Vec<String>, oneshot::Sender<AdminReply>),
    Partitions(Vec<(String, i32)>, bool, oneshot::Sender<AdminReply>),
    AlterConfigs(AlterTopicConfigs, oneshot::Sender<AdminReply>),
    LogStart(Vec<(u64, i64)>, oneshot::Sender<Vec<DeleteRecordsResult>>),
}

/// Handle to the controller actor.
#[derive(Clone)]
pub struct Controller<M> {
    pub shared: Arc<Shared<M>>,
    tx: mpsc::Sender<Command>,
    /// Closed when the actor has stopped (and let go of the store). Only tests wait on it: the
    /// process exits without draining, which loses nothing acknowledged.
    #[cfg_attr(not(test), allow(dead_code))]
    stopped: tokio::sync::watch::Receiver<()>,
}

impl<M: MetaStore + Clone> Controller<M> {
    /// Takes over the store: bumps the epoch (fencing any older control plane), loads topics and
    /// watermarks, and starts the actor.
    pub async fn start(store: M) -> Result<Self, MetaError> {
        Self::start_with(store, DEDUP_WINDOW).await
    }

    /// [`Controller::start`] keeping committed-object records for `dedup_window`.
    pub async fn start_with(store: M, dedup_window: Duration) -> Result<Self, MetaError> {
        let (epoch, epoch_version) = loop {
            let current = store.get(&keys::epoch()).await?;
            let (next, expected) = match &current {
                Some(v) => (decode_u64(&v.value) + 1, Some(v.version)),
                None => (1, None),
            };
            match store.put(&keys::epoch(), Bytes::copy_from_slice(&next.to_be_bytes()), expected).await {
                Ok(version) => break (next, version),
                Err(MetaError::ConditionFailed) => continue,
                Err(e) => return Err(e),
            }
        };
        let cluster_id = match store.get(&keys::cluster_id()).await? {
            Some(v) => String::from_utf8_lossy(&v.value).into_owned(),
            None => {
                let id = kafka_cluster_id();
                // Fenced like every later write: a newer control plane may have taken over.
                let conds = vec![Cond::Absent(keys::cluster_id()), Cond::Version(keys::epoch(), epoch_version)];
                match store.txn(conds, vec![Op::Put(keys::cluster_id(), Bytes::from(id.clone()))]).await {
                    Ok(_) => id,
                    Err(MetaError::ConditionFailed) => match store.get(&keys::cluster_id()).await? {
                        Some(v) => String::from_utf8_lossy(&v.value).into_owned(),
                        None => return Err(MetaError::Fenced),
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        let mut topics = BTreeMap::new();
        let (a, b) = keys::topics();
        for (_, v) in store.range(&a, &b, usize::MAX).await? {
            let mut t = Topic::decode(v.value).map_err(|e| MetaError::Backend(format!("bad topic record: {e}")))?;
            t.revision = v.version;
            topics.insert(t.name.clone(), t);
        }
        let mut streams = HashMap::new();
        for t in topics.values() {
            for s in &t.streams {
                streams.insert(*s, StreamState::default());
            }
        }
        for t in topics.values() {
            for s in &t.streams {
                if let Some(v) = store.get(&keys::hwm(*s)).await? {
                    let w = Watermark::decode(v.value).map_err(|e| MetaError::Backend(format!("bad hwm record: {e}")))?;
                    streams.insert(*s, StreamState { log_start: w.log_start, hwm: w.high_watermark, version: v.version });
                }
            }
        }
        // Records of objects committed before this control plane took over: kept one window
        // from now (when each was written is not recorded).
        let mut recent = RecentObjects { window: dedup_window, ..Default::default() };
        let (mut from, end) = keys::wal_objects();
        loop {
            let page = store.range(&from, &end, 10_000).await?;
            let Some((last, _)) = page.last() else { break };
            from = format!("{last}\0");
            let full = page.len() == 10_000;
            recent.expiring.extend(page.into_iter().map(|(k, _)| (Instant::now(), k)));
            if !full {
                break;
            }
        }
        let (notify, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Fenced::new(store, epoch_version),
            epoch,
            cluster_id,
            topics: RwLock::new(topics),
            streams: RwLock::new(streams),
            notify,
            commits: Default::default(),
            commit_groups: Default::default(),
            retention_passes: Default::default(),
            log_start_moves: Default::default(),
            entries_trimmed: Default::default(),
            objects_released: Default::default(),
            objects_deleted: Default::default(),
            gc_grace_ms: (GC_GRACE.as_millis() as u64).into(),
            compaction: Default::default(),
            dataplanes: Default::default(),
        });
        let (tx, rx) = mpsc::channel(4096);
        let (stopped_tx, stopped) = tokio::sync::watch::channel(());
        let actor = shared.clone();
        tokio::spawn(async move {
            run(actor, rx, recent).await;
            drop(stopped_tx);
        });
        Ok(Self { shared, tx, stopped })
    }

    /// Drops this handle and waits until the actor has stopped, once every other handle is
    /// dropped too.
    #[cfg(test)]
    pub async fn stop(self) {
        let mut stopped = self.stopped.clone();
        drop(self);
        let _ = stopped.changed().await;
    }

    /// Commits a durable WAL object: assigns offsets to every chunk.
    #[cfg(test)]
    pub async fn commit(&self, req: CommitWal) -> Result<CommitWalReply, MetaError> {
        self.enqueue_commit(req).await.await.map_err(|_| stopped())?
    }

    /// Queues a commit and returns where its answer will come. Commits queued one after another
    /// are applied in that order, so a connection that queues them in the order it reads them
    /// keeps its data plane's cut order.
    pub async fn enqueue_commit(&self, req: CommitWal) -> oneshot::Receiver<Result<CommitWalReply, MetaError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Commit(_, tx))) = self.tx.send(Command::Commit(req, tx)).await {
            let _ = tx.send(Err(stopped()));
        }
        rx
    }

    /// Creates topics.
    pub async fn create_topics(&self, topics: Vec<NewTopic>, validate_only: bool) -> AdminReply {
        self.ask(|tx| Command::Create(topics, validate_only, tx)).await
    }

    /// Deletes topics.
    pub async fn delete_topics(&self, names: Vec<String>) -> AdminReply {
        self.ask(|tx| Command::Delete(names, tx)).await
    }

    /// Raises partition counts.
    pub async fn create_partitions(&self, incs: Vec<(String, i32)>, validate_only: bool) -> AdminReply {
        self.ask(|tx| Command::Partitions(incs, validate_only, tx)).await
    }

    /// Changes topic configs.
    pub async fn alter_configs(&self, req: AlterTopicConfigs) -> AdminReply {
        self.ask(|tx| Command::AlterConfigs(req, tx)).await
    }

    /// Moves streams' log start offsets forward (DeleteRecords, retention): one result per
    /// `(stream, offset)`, offset -1 meaning the high watermark.
    pub async fn move_log_starts(&self, moves: Vec<(u64, i64)>) -> Vec<DeleteRecordsResult> {
        let n = moves.len();
        let (tx, rx) = oneshot::channel();
        let unavailable = || {
            let error = i32::from(crate::error::Error::from(stopped()).response().code());
            vec![DeleteRecordsResult { error, low_watermark: -1 }; n]
        };
        if self.tx.send(Command::LogStart(moves, tx)).await.is_err() {
            return unavailable();
        }
        rx.await.unwrap_or_else(|_| unavailable())
    }

    /// Forgets the objects a data plane deleted and hands out up to `max` more to delete.
    pub async fn take_garbage(&self, deleted: Vec<String>, max: usize) -> Result<Vec<sluice_rpc::GarbageObject>, MetaError> {
        let grace = Duration::from_millis(self.shared.gc_grace_ms.load(std::sync::atomic::Ordering::Relaxed));
        gc::take_garbage(&self.shared, deleted, max, grace).await
    }

    async fn ask(&self, cmd: impl FnOnce(oneshot::Sender<AdminReply>) -> Command) -> AdminReply {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(cmd(tx)).await.is_err() {
            return AdminReply::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Index entries of a stream from the one holding `offset`.
    pub async fn lookup(&self, stream: u64, offset: i64, max: usize) -> Result<Vec<IndexEntry>, MetaError> {
        let (a, b) = keys::index_from(stream, offset);
        let rows = self.shared.store.range(&a, &b, max).await?;
        rows.into_iter()
            .map(|(_, v)| IndexEntry::decode(v.value).map_err(|e| MetaError::Backend(format!("bad index entry: {e}"))))
            .collect()
    }

    /// First index entry of a stream whose max timestamp is at or after `ts`; for
    /// [`sluice_rpc::MAX_TIMESTAMP`], the first entry holding the stream's largest timestamp.
    pub async fn offset_for_time(&self, stream: u64, ts: i64) -> Result<Option<IndexEntry>, MetaError> {
        let mut from = self.watermark(stream).map(|w| w.log_start).unwrap_or(0);
        // For MAX_TIMESTAMP: the first entry with the largest max timestamp, over the whole index.
        let mut max: Option<IndexEntry> = None;
        loop {
            let entries = self.lookup(stream, from, 1024).await?;
            let Some(last) = entries.last() else { return Ok(max) };
            from = last.end_offset;
            if ts == sluice_rpc::MAX_TIMESTAMP {
                for e in entries {
                    if max.as_ref().is_none_or(|m| e.max_timestamp > m.max_timestamp) {
                        max = Some(e);
                    }
                }
            } else if let Some(e) = entries.into_iter().find(|e| e.max_timestamp >= ts) {
                return Ok(Some(e));
            }
        }
    }

    /// A stream's watermarks, if the stream exists.
    pub fn watermark(&self, stream: u64) -> Option<StreamState> {
        self.shared.streams.read().expect("poisoned").get(&stream).copied()
    }
}

fn stopped() -> MetaError {
    MetaError::Backend("controller stopped".into())
}

fn decode_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A Kafka-style cluster id: 16 random bytes in URL-safe base64 without padding (22 chars).
fn kafka_cluster_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u128 = u128::from_be_bytes(bytes);
    (0..22)
        .map(|_| {
            let c = ALPHABET[(bits & 63) as usize] as char;
            bits >>= 6;
            c
        })
        .collect()
}

fn frame(body: Body) -> Arc<Vec<u8>> {
    Arc::new(sluice_rpc::encode_frame(&Envelope { request_id: 0, body: Some(body) }))
}

async fn run<M: MetaStore + Clone>(shared: Arc<Shared<M>>, mut rx: mpsc::Receiver<Command>, mut recent: RecentObjects) {
    let mut pending = Vec::new();
    let mut sweep = tokio::time::interval((recent.window / 10).clamp(Duration::from_millis(100), DEDUP_SWEEP_EVERY));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => break,
            },
            _ = sweep.tick() => {
                expire_records(&shared, recent.due(Instant::now())).await;
                continue;
            }
        };
        match cmd {
            Command::Commit(req, reply) => {
                pending.push((req, reply));
                // Group commit: everything already queued behind this commit joins its transaction.
                while pending.len() < GROUP_COMMIT_MAX {
                    match rx.try_recv() {
                        Ok(Command::Commit(req, reply)) => pending.push((req, reply)),
                        Ok(other) => {
                            commit_group(&shared, std::mem::take(&mut pending), &mut recent).await;
                            admin(&shared, other).await;
                        }
                        Err(_) => break,
                    }
                }
                if !pending.is_empty() {
                    commit_group(&shared, std::mem::take(&mut pending), &mut recent).await;
                }
            }
            other => admin(&shared, other).await,
        }
    }
}

type Pending = (CommitWal, oneshot::Sender<Result<CommitWalReply, MetaError>>);

/// Reads again the watermarks of the streams the commits touch whose state is [`UNKNOWN`].
async fn reload_unknown<M: MetaStore>(shared: &Shared<M>, commits: &[Pending]) -> Result<(), MetaError> {
    reload_streams(shared, commits.iter().flat_map(|(req, _)| req.chunks.iter().map(|c| c.stream_id)).collect()).await
}

/// Reads again the watermarks of those of `ids` whose state is [`UNKNOWN`].
async fn reload_streams<M: MetaStore>(shared: &Shared<M>, mut ids: Vec<u64>) -> Result<(), MetaError> {
    let unknown: Vec<u64> = {
        let streams = shared.streams.read().expect("poisoned");
        ids.retain(|s| streams.get(s).is_some_and(|st| st.version == UNKNOWN));
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    for s in unknown {
        let state = match shared.store.get(&keys::hwm(s)).await? {
            Some(v) => {
                let w = Watermark::decode(v.value).map_err(|e| MetaError::Backend(format!("bad hwm record: {e}")))?;
                StreamState { log_start: w.log_start, hwm: w.high_watermark, version: v.version }
            }
            None => StreamState::default(),
        };
        if let Some(slot) = shared.streams.write().expect("poisoned").get_mut(&s) {
            *slot = state;
        }
    }
    Ok(())
}

/// Deletes the records of committed objects whose window passed, a batch per transaction.
async fn expire_records<M: MetaStore>(shared: &Shared<M>, due: Vec<String>) {
    for batch in due.chunks(DEDUP_SWEEP_BATCH) {
        let ops = batch.iter().map(|k| Op::Delete(k.clone())).collect();
        if let Err(e) = shared.store.write(vec![], ops).await {
            // Left for the next control plane to take over, which schedules every record again.
            tracing::warn!(error = %e, records = batch.len(), "cannot delete expired committed-object records");
            return;
        }
    }
}

/// The WAL objects this control plane committed most recently: a commit naming one of them as
/// its predecessor needs no read of the store to know it is through. Also every committed
/// object's record, in commit order, until its window passes.
#[derive(Default)]
struct RecentObjects {
    keys: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    /// Full keys of `wal/objects/` records and when they were written (or found).
    expiring: std::collections::VecDeque<(Instant, String)>,
    window: Duration,
}

impl RecentObjects {
    const LIMIT: usize = 4096;

    /// Records whose window has passed at `now`, oldest first; forgotten here.
    fn due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while self.expiring.front().is_some_and(|(at, _)| *at + self.window <= now) {
            out.extend(self.expiring.pop_front().map(|(_, k)| k));
        }
        out
    }

    fn insert(&mut self, key: &str) {
        self.expiring.push_back((Instant::now(), keys::wal_object(key)));
        if self.keys.insert(key.to_string()) {
            self.order.push_back(key.to_string());
            if self.order.len() > Self::LIMIT {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }

    /// Whether the group can skip the look-ups: every object appears once and was not committed
    /// recently, and every predecessor is known to be committed (recently, or earlier in the
    /// group).
    fn usual(&self, group: &[Pending]) -> bool {
        group.iter().enumerate().all(|(i, (req, _))| {
            let earlier = &group[..i];
            !self.keys.contains(&req.object_key)
                && !earlier.iter().any(|(f, _)| f.object_key == req.object_key)
                && (req.after.is_empty() || self.keys.contains(&req.after) || earlier.iter().any(|(f, _)| f.object_key == req.after))
        })
    }
}

/// Commits a group of WAL objects in one transaction.
///
/// The usual group (new objects whose predecessors this control plane just committed) is one
/// transaction and nothing else: its conditions check that no object in it was committed
/// before. Only when that check fails (a data plane retrying a commit whose reply it lost) or a
/// predecessor is unknown here (after a restart) is each commit looked up first.
async fn commit_group<M: MetaStore>(shared: &Shared<M>, group: Vec<Pending>, recent: &mut RecentObjects) {
    let group = if recent.usual(&group) {
        let new = group.iter().map(|(req, _)| Cond::Absent(keys::wal_object(&req.object_key))).collect();
        match apply_commits(shared, group, new, recent).await {
            Some(group) => group,
            None => return,
        }
    } else {
        group
    };
    let fresh = screen_commits(shared, group).await;
    if !fresh.is_empty() {
        apply_commits(shared, fresh, Vec::new(), recent).await;
    }
}

/// Answers the commits that were already applied (a data plane retrying after a lost reply gets
/// the offsets it was given) and those whose predecessor (`after`) is neither committed nor
/// earlier in this group (its data plane retries once the predecessor is through); returns
/// the rest.
async fn screen_commits<M: MetaStore>(shared: &Shared<M>, group: Vec<Pending>) -> Vec<Pending> {
    let mut fresh: Vec<Pending> = Vec::with_capacity(group.len());
    for (req, reply) in group {
        if fresh.iter().any(|(f, _)| f.object_key == req.object_key) {
            // The same commit twice in one group (a retry overtaking its original): the
            // original is applied here, and the retry is answered from the store when it comes
            // again.
            let _ = reply.send(Err(MetaError::Backend(format!("{} is being committed", req.object_key))));
            continue;
        }
        match shared.store.get(&keys::wal_object(&req.object_key)).await {
            Ok(Some(v)) => {
                let _ = reply.send(CommitWalReply::decode(v.value).map_err(|e| MetaError::Backend(e.to_string())));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = reply.send(Err(e));
                continue;
            }
        }
        if !req.after.is_empty() && !fresh.iter().any(|(f, _)| f.object_key == req.after) {
            match shared.store.get(&keys::wal_object(&req.after)).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = reply.send(Err(MetaError::Backend(format!("{} must be committed after {}", req.object_key, req.after))));
                    continue;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            }
        }
        fresh.push((req, reply));
    }
    fresh
}

/// Assigns offsets to the commits and applies them in one transaction under `conds` (plus the
/// epoch). When `conds` is not empty and a condition fails, nothing is answered and the
/// commits are handed back.
async fn apply_commits<M: MetaStore>(
    shared: &Shared<M>,
    fresh: Vec<Pending>,
    conds: Vec<Cond>,
    recent: &mut RecentObjects,
) -> Option<Vec<Pending>> {
    let checked = !conds.is_empty();
    let mut conds = conds;
    if let Err(e) = reload_unknown(shared, &fresh).await {
        tracing::error!(error = %e, commits = fresh.len(), "cannot read watermarks back");
        for (_, tx) in fresh {
            let _ = tx.send(Err(e.clone()));
        }
        return None;
    }
    let mut next: HashMap<u64, StreamState> = HashMap::new();
    let mut ops = Vec::new();
    let mut replies = Vec::with_capacity(fresh.len());
    let committed_ms = gc::now_ms();
    {
        let streams = shared.streams.read().expect("poisoned");
        for (req, _) in &fresh {
            let mut results = Vec::with_capacity(req.chunks.len());
            for c in &req.chunks {
                let Some(cur) = next.get(&c.stream_id).or_else(|| streams.get(&c.stream_id)).copied() else {
                    results.push(ChunkResult { error: i32::from(E::UnknownTopicOrPartition.code()), ..Default::default() });
                    continue;
                };
                let base = cur.hwm;
                let end = base + c.offset_count as i64;
                let entry = IndexEntry {
                    base_offset: base,
                    end_offset: end,
                    object_key: req.object_key.clone(),
                    position: c.position,
                    length: c.length,
                    crc: c.crc,
                    max_timestamp: c.max_timestamp,
                    batch_count: c.batch_count,
                    committed_ms,
                    ..Default::default()
                };
                ops.push(Op::Put(keys::index(c.stream_id, end), Bytes::from(entry.encode_to_vec())));
                if !next.contains_key(&c.stream_id) {
                    // The first chunk of this stream in the group: the store must still hold
                    // the watermark this state came from.
                    conds.push(match cur.version {
                        0 => Cond::Absent(keys::hwm(c.stream_id)),
                        v => Cond::Version(keys::hwm(c.stream_id), v),
                    });
                }
                next.insert(c.stream_id, StreamState { log_start: cur.log_start, hwm: end, version: cur.version });
                results.push(ChunkResult { error: crate::error::NONE, base_offset: base, high_watermark: end, log_start: cur.log_start });
            }
            let entries = results.iter().filter(|r| r.error == crate::error::NONE).count() as u32;
            ops.push(gc::on_commit(&req.object_key, req.object_size, entries));
            let reply = CommitWalReply { chunks: results };
            ops.push(Op::Put(keys::wal_object(&req.object_key), Bytes::from(reply.encode_to_vec())));
            replies.push(reply);
        }
    }
    for (s, st) in &next {
        let w = Watermark { stream_id: *s, log_start: st.log_start, high_watermark: st.hwm };
        ops.push(Op::Put(keys::hwm(*s), Bytes::from(w.encode_to_vec())));
    }
    match shared.store.write(conds, ops).await {
        Ok(revision) => {
            use std::sync::atomic::Ordering::Relaxed;
            shared.commits.fetch_add(fresh.len() as u64, Relaxed);
            shared.commit_groups.fetch_add(1, Relaxed);
            let mut streams = shared.streams.write().expect("poisoned");
            let mut marks = Vec::with_capacity(next.len());
            for (s, st) in next {
                if let Some(slot) = streams.get_mut(&s) {
                    *slot = StreamState { version: revision, ..st };
                    marks.push(Watermark { stream_id: s, log_start: st.log_start, high_watermark: st.hwm });
                }
            }
            drop(streams);
            let _ = shared.notify.send(frame(Body::Watermarks(Watermarks { streams: marks })));
            for ((req, tx), reply) in fresh.into_iter().zip(replies) {
                recent.insert(&req.object_key);
                let _ = tx.send(Ok(reply));
            }
            None
        }
        Err(e) => {
            // Applied or not, nobody knows (an answer lost on the way back) or another writer
            // moved the watermarks: read them again before the next commit.
            {
                let mut streams = shared.streams.write().expect("poisoned");
                for s in next.keys() {
                    if let Some(slot) = streams.get_mut(s) {
                        slot.version = UNKNOWN;
                    }
                }
            }
            if matches!(e, MetaError::ConditionFailed) && checked {
                return Some(fresh);
            }
            tracing::error!(error = %e, commits = fresh.len(), "commit transaction failed");
            for (_, tx) in fresh {
                let _ = tx.send(Err(e.clone()));
            }
            None
        }
    }
}

async fn admin<M: MetaStore>(shared: &Shared<M>, cmd: Command) {
    match cmd {
        Command::Commit(..) => unreachable!("commits are grouped by run()"),
        Command::Create(topics, validate_only, tx) => {
            let mut results = Vec::with_capacity(topics.len());
            for t in topics {
                results.push(create_topic(shared, t, validate_only).await);
            }
            let _ = tx.send(AdminReply { results });
        }
        Command::Delete(names, tx) => {
            let mut results = Vec::with_capacity(names.len());
            for n in names {
                results.push(delete_topic(shared, n).await);
            }
            let _ = tx.send(AdminReply { results });
        }
        Command::Partitions(incs, validate_only, tx) => {
            let mut results = Vec::with_capacity(incs.len());
            for (name, count) in incs {
                results.push(add_partitions(shared, name, count, validate_only).await);
            }
            let _ = tx.send(AdminReply { results });
        }
        Command::AlterConfigs(req, tx) => {
            let mut results = Vec::with_capacity(req.topics.len());
            for change in req.topics {
                results.push(topic_configs::alter(shared, change, req.validate_only).await);
            }
            let _ = tx.send(AdminReply { results });
        }
        Command::LogStart(moves, tx) => {
            let _ = tx.send(log_start::apply(shared, moves).await);
        }
    }
}

fn failure(name: String, error: E, message: impl Into<String>) -> TopicResult {
    TopicResult { name, error: i32::from(error.code()), message: Some(message.into()), topic: None }
}

fn storage_failure(name: String, e: MetaError) -> TopicResult {
    tracing::error!(error = %e, topic = %name, "admin transaction failed");
    let e = crate::error::Error::from(e);
    failure(name, e.response(), e.to_string())
}

/// Allocates `count` stream ids in `ops`, returning them.
async fn allocate_streams<M: MetaStore>(
    shared: &Shared<M>,
    count: usize,
    conds: &mut Vec<Cond>,
    ops: &mut Vec<Op>,
) -> Result<Vec<u64>, MetaError> {
    let current = shared.store.get(&keys::next_stream()).await?;
    let first = current.as_ref().map(|v| decode_u64(&v.value)).unwrap_or(1);
    conds.push(match &current {
        Some(v) => Cond::Version(keys::next_stream(), v.version),
        None => Cond::Absent(keys::next_stream()),
    });
    let next = first + count as u64;
    ops.push(Op::Put(keys::next_stream(), Bytes::copy_from_slice(&next.to_be_bytes())));
    Ok((first..next).collect())
}

fn publish_topic<M>(shared: &Shared<M>, topic: Topic) {
    {
        let mut streams = shared.streams.write().expect("poisoned");
        for s in &topic.streams {
            streams.entry(*s).or_default();
        }
    }
    shared.topics.write().expect("poisoned").insert(topic.name.clone(), topic.clone());
    let _ = shared.notify.send(frame(Body::Topics(sluice_rpc::Topics { topics: vec![topic] })));
}

async fn create_topic<M: MetaStore>(shared: &Shared<M>, t: NewTopic, validate_only: bool) -> TopicResult {
    let name = t.name.clone();
    if let Err(m) = validate_topic_name(&name) {
        return failure(name, E::InvalidTopicException, m);
    }
    if shared.topics.read().expect("poisoned").contains_key(&name) {
        return failure(name.clone(), E::TopicAlreadyExists, format!("Topic '{name}' already exists."));
    }
    if t.partitions < 1 || t.partitions > MAX_PARTITIONS {
        return failure(name, E::InvalidPartitions, format!("Number of partitions must be between 1 and {MAX_PARTITIONS}."));
    }
    let mut configs: Vec<_> = t.configs.iter().collect();
    configs.sort();
    for (k, v) in configs {
        if let Err(m) = validate_topic_config(k, v) {
            return failure(name, E::InvalidConfig, m);
        }
    }
    let mut topic = Topic {
        name: name.clone(),
        topic_id: uuid::Uuid::new_v4().into_bytes().to_vec(),
        streams: Vec::new(),
        configs: t.configs,
        revision: 0,
    };
    if validate_only {
        return TopicResult { name, error: crate::error::NONE, message: None, topic: None };
    }
    let mut conds = vec![Cond::Absent(keys::topic(&name))];
    let mut ops = Vec::new();
    let streams = match allocate_streams(shared, t.partitions as usize, &mut conds, &mut ops).await {
        Ok(s) => s,
        Err(e) => return storage_failure(name, e),
    };
    topic.streams = streams;
    ops.push(Op::Put(keys::topic(&name), Bytes::from(topic.encode_to_vec())));
    match shared.store.write(conds, ops).await {
        Ok(rev) => {
            topic.revision = rev;
            publish_topic(shared, topic.clone());
            tracing::info!(topic = %name, partitions = t.partitions, "topic created");
            TopicResult { name, error: crate::error::NONE, message: None, topic: Some(topic) }
        }
        Err(e) => storage_failure(name, e),
    }
}

async fn delete_topic<M: MetaStore>(shared: &Shared<M>, name: String) -> TopicResult {
    let Some(topic) = shared.topics.read().expect("poisoned").get(&name).cloned() else {
        return failure(name, E::UnknownTopicOrPartition, "This server does not host this topic-partition.");
    };
    // The index entries go with the trimmer, which lets go of their objects too.
    let mut ops = vec![Op::Delete(keys::topic(&name))];
    for s in &topic.streams {
        ops.push(Op::Delete(keys::hwm(*s)));
        ops.push(Op::Put(keys::deleted_stream(*s), Bytes::new()));
    }
    match shared.store.write(vec![], ops).await {
        Ok(_) => {
            shared.topics.write().expect("poisoned").remove(&name);
            let mut streams = shared.streams.write().expect("poisoned");
            for s in &topic.streams {
                streams.remove(s);
            }
            drop(streams);
            let deleted = sluice_rpc::TopicsDeleted { names: vec![name.clone()], streams: topic.streams.clone() };
            let _ = shared.notify.send(frame(Body::TopicsDeleted(deleted)));
            tracing::info!(topic = %name, "topic deleted");
            TopicResult { name, error: crate::error::NONE, message: None, topic: None }
        }
        Err(e) => storage_failure(name, e),
    }
}

async fn add_partitions<M: MetaStore>(shared: &Shared<M>, name: String, count: i32, validate_only: bool) -> TopicResult {
    let Some(mut topic) = shared.topics.read().expect("poisoned").get(&name).cloned() else {
        return failure(name, E::UnknownTopicOrPartition, "This server does not host this topic-partition.");
    };
    let have = topic.streams.len() as i32;
    if count <= have {
        return failure(name, E::InvalidPartitions, format!("Topic currently has {have} partitions, {count} would not be an increase."));
    }
    if count > MAX_PARTITIONS {
        return failure(name, E::InvalidPartitions, format!("Number of partitions must be at most {MAX_PARTITIONS}."));
    }
    if validate_only {
        return TopicResult { name, error: crate::error::NONE, message: None, topic: None };
    }
    let mut conds = Vec::new();
    let mut ops = Vec::new();
    match allocate_streams(shared, (count - have) as usize, &mut conds, &mut ops).await {
        Ok(s) => topic.streams.extend(s),
        Err(e) => return storage_failure(name, e),
    }
    ops.push(Op::Put(keys::topic(&name), Bytes::from(topic.encode_to_vec())));
    match shared.store.write(conds, ops).await {
        Ok(rev) => {
            topic.revision = rev;
            publish_topic(shared, topic.clone());
            TopicResult { name, error: crate::error::NONE, message: None, topic: Some(topic) }
        }
        Err(e) => storage_failure(name, e),
    }
}

pub(crate) mod gc;
mod log_start;
mod topic_configs;

pub use gc::run_trimmer;
pub use log_start::run_retention;

#[cfg(test)]
mod tests;
