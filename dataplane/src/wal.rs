//! The owner side of a partition: appending to the shard's WAL buffer, cutting and committing WAL
//! objects, and reading committed batches back (from the cache or from objects).
//!
//! Produce path, per shard:
//! 1. [`append`] waits for room under the shard's in-flight byte limit (backpressure: the
//!    connection that sent the batch stops being read while it waits), then adds the batches to
//!    the open buffer and waits for their commit.
//! 2. The buffer is cut when it holds `wal.flush.bytes`, or at the first tick of the
//!    `wal.flush.interval` clock after its oldest batch arrived (so no batch waits longer than
//!    the interval). The clock is the same for every shard of the process, so shards cut
//!    together: a produce request spanning partitions of several shards waits for one cut, not
//!    for the latest of several independent timers, and their commits reach the control plane
//!    together and share its transaction. Each cut becomes one WAL object, written durably to
//!    the object store; several may be in flight.
//! 3. Objects are committed to the control plane in the order they were cut, which assigns
//!    offsets: a commit is sent as soon as the previous one is on the wire, naming it as the
//!    one it must follow (see [`Ticket`]). Only then are the appends answered, their
//!    batches patched with real base offsets and put in the cache.

use crate::cache::Piece;
use crate::metrics::{H, M};
use crate::notify::Notify;
use crate::shard::{code, AppendReq, AppendResult, Marks, ReadReq, ReadResult, Shard, RPC_TIMEOUT};
use bytes::Bytes;
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use sluice_rpc::{body::Body, CommitChunk, CommitWal, IndexEntry, Lookup};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use wal_format::object::ObjectBuilder;

/// How long a cut object keeps retrying its commit before its appends fail.
const COMMIT_DEADLINE: Duration = Duration::from_secs(60);

struct Pending {
    req: AppendReq,
    reply: oneshot::Sender<AppendResult>,
    /// When it entered the open buffer.
    at: Instant,
}

/// Where an object's commit stands, for the commit of the object cut after it.
///
/// Commits must apply in cut order. The next object's commit may be sent as soon as this one's
/// has been sent (`sent`: on which connection generation), on the same connection, naming this
/// object as the one it must follow (`CommitWal::after`), which the control plane checks; if
/// anything goes wrong it falls back to waiting until this one is `done`.
struct Ticket {
    /// The object's key, known once it is stored.
    key: RefCell<String>,
    sent: Cell<Option<u64>>,
    /// `Some(true)` committed, `Some(false)` given up (its produces got errors).
    done: Cell<Option<bool>>,
    changed: Notify,
}

impl Ticket {
    fn new(key: String) -> Rc<Self> {
        Rc::new(Ticket { key: RefCell::new(key), sent: Cell::new(None), done: Cell::new(None), changed: Notify::default() })
    }

    async fn wait(&self, ready: impl Fn(&Self) -> bool) {
        while !ready(self) {
            let changed = self.changed.notified();
            if ready(self) {
                break;
            }
            let _ = changed.await;
        }
    }

    fn finish(&self, ok: bool) {
        self.done.set(Some(ok));
        self.changed.notify_all();
    }
}

/// Committed batches remembered per producer and stream, as Kafka does, to recognise retries.
const PRODUCER_WINDOW: usize = 5;
/// Most (stream, producer) windows a shard keeps.
const RECENT_LIMIT: usize = 100_000;

/// (stream, producer id): the recent committed batches' (epoch, first sequence, base offset).
type RecentBatches = std::collections::HashMap<(u64, i64), std::collections::VecDeque<(i16, i32, i64)>>;
/// (stream, producer id, epoch, first sequence): who waits for that batch's answer.
type PendingBatches = std::collections::HashMap<(u64, i64, i16, i32), Vec<oneshot::Sender<AppendResult>>>;

/// A shard's WAL buffer and flush pipeline.
pub struct Wal {
    /// Per (stream, producer id): the last committed batches' epoch, first sequence and base
    /// offset. A retried batch (same producer, epoch and sequence) gets its original offset and
    /// is not stored twice. Kept in memory: a retry that spans a data plane restart is stored
    /// again.
    recent: RefCell<RecentBatches>,
    /// Idempotent batches appended and not yet answered, by (stream, producer, epoch, first
    /// sequence): a retry arriving meanwhile waits for the original's answer instead of being
    /// stored a second time.
    pending_seqs: RefCell<PendingBatches>,
    open: RefCell<Vec<Pending>>,
    open_bytes: Cell<usize>,
    generation: Cell<u64>,
    inflight: Rc<Semaphore>,
    /// The most recently cut object's commit; the next cut's commit follows it.
    last_commit: RefCell<Option<Rc<Ticket>>>,
    flush_bytes: usize,
    flush_interval: Duration,
}

impl Wal {
    /// An empty buffer configured from the flags.
    pub fn new(cfg: &crate::config::Config) -> Self {
        Wal {
            recent: RefCell::default(),
            pending_seqs: RefCell::default(),
            open: RefCell::default(),
            open_bytes: Cell::new(0),
            generation: Cell::new(0),
            inflight: Rc::new(Semaphore::new(cfg.wal_max_inflight_bytes as u64)),
            last_commit: RefCell::default(),
            flush_bytes: cfg.wal_flush_bytes,
            flush_interval: cfg.wal_flush_interval,
        }
    }
}

/// Appends validated batches of a stream this shard owns; answers after commit.
pub async fn append(shard: &Rc<Shard>, mut req: AppendReq) -> AppendResult {
    let wal = &shard.wal;
    let admitted = req.admitted.take();
    let Some((pid, epoch, seq)) = req.producer else { return append_new(shard, req, admitted).await };
    let known = wal.recent.borrow().get(&(req.stream, pid)).and_then(|d| d.iter().find(|(e, s, _)| *e == epoch && *s == seq).map(|r| r.2));
    // A retry of a batch already committed or on its way holds the original's place.
    // (Dropping the sender tells the connection so.)
    let retry = known.is_some() || wal.pending_seqs.borrow().contains_key(&(req.stream, pid, epoch, seq));
    let admitted = if retry { None } else { admitted };
    if let Some(offset) = known {
        let log_start = shard.marks(req.stream).map(|m| m.log_start).unwrap_or(0);
        return Ok((offset, log_start));
    }
    let key = (req.stream, pid, epoch, seq);
    let waiting = wal.pending_seqs.borrow_mut().get_mut(&key).map(|waiters| {
        let (tx, rx) = oneshot::channel();
        waiters.push(tx);
        rx
    });
    if let Some(rx) = waiting {
        return rx.await.unwrap_or(Err(code::UNKNOWN_SERVER_ERROR));
    }
    wal.pending_seqs.borrow_mut().insert(key, Vec::new());
    let result = append_new(shard, req, admitted).await;
    for w in wal.pending_seqs.borrow_mut().remove(&key).unwrap_or_default() {
        let _ = w.send(result);
    }
    result
}

/// Appends a batch not seen before; tells `admitted` once it is in the open buffer.
async fn append_new(shard: &Rc<Shard>, req: AppendReq, admitted: Option<oneshot::Sender<()>>) -> AppendResult {
    let wal = &shard.wal;
    let size = req.data.len() as u64;
    shard.metrics.add(M::ProduceBytes, size);
    shard.metrics.add(M::ProduceRecords, req.offset_count as u64);
    // Held until the object holding these bytes is committed (moved into the flush task).
    let permit = match wal.inflight.acquire_static_permit(size.min(shard.cfg.wal_max_inflight_bytes as u64)).await {
        Ok(p) => p,
        Err(_) => return Err(code::UNKNOWN_SERVER_ERROR),
    };
    let (tx, rx) = oneshot::channel();
    let was_empty = wal.open.borrow().is_empty();
    wal.open_bytes.set(wal.open_bytes.get() + req.data.len());
    let at = Instant::now();
    wal.open.borrow_mut().push(Pending { req, reply: tx, at });
    if let Some(a) = admitted {
        let _ = a.send(());
    }
    if wal.open_bytes.get() >= wal.flush_bytes {
        cut(shard);
    } else if was_empty {
        let generation = wal.generation.get();
        let s = shard.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(until_tick(s.wal.flush_interval)).await;
            if s.wal.generation.get() == generation {
                cut(&s);
            }
        })
        .detach();
    }
    let r = rx.await.unwrap_or(Err(code::UNKNOWN_SERVER_ERROR));
    shard.metrics.observe(H::Append, at.elapsed());
    drop(permit);
    r
}

/// Time until the next tick of the flush clock: multiples of `interval` since the process's
/// first call, on the monotonic clock every shard shares.
fn until_tick(interval: Duration) -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let period = interval.as_nanos().max(1);
    let into = origin.elapsed().as_nanos() % period;
    Duration::from_nanos((period - into) as u64)
}

/// Cuts the open buffer into an object and starts its flush.
fn cut(shard: &Rc<Shard>) {
    let wal = &shard.wal;
    let batch = wal.open.take();
    if batch.is_empty() {
        return;
    }
    wal.generation.set(wal.generation.get() + 1);
    let bytes = wal.open_bytes.replace(0);
    let object_id = uuid::Uuid::new_v4().as_u128();
    let me = Ticket::new(crate::store::wal_object_key(object_id));
    let previous = wal.last_commit.replace(Some(me.clone()));
    glommio::spawn_local(flush(shard.clone(), batch, bytes, object_id, previous, me)).detach();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn flush(shard: Rc<Shard>, mut batch: Vec<Pending>, bytes: usize, object_id: u128, previous: Option<Rc<Ticket>>, me: Rc<Ticket>) {
    let cut_at = Instant::now();
    for p in &batch {
        shard.metrics.observe(H::Buffer, cut_at.duration_since(p.at));
    }
    // Chunks are in stream order; within a stream, appends keep their arrival order.
    batch.sort_by_key(|p| p.req.stream);
    let key = me.key.borrow().clone();
    let mut builder = ObjectBuilder::new(object_id, now_ms(), bytes);
    let mut chunks: Vec<CommitChunk> = Vec::new();
    // Position of each append's first byte in the object.
    let mut positions = Vec::with_capacity(batch.len());
    for p in &batch {
        if chunks.last().map(|c| c.stream_id) != Some(p.req.stream) {
            builder.begin_chunk(p.req.stream);
            chunks.push(CommitChunk { stream_id: p.req.stream, max_timestamp: i64::MIN, ..Default::default() });
        }
        let c = chunks.last_mut().expect("chunk begun");
        c.offset_count += p.req.offset_count as u64;
        c.max_timestamp = c.max_timestamp.max(p.req.max_timestamp);
        c.batch_count += p.req.batches.len() as u32;
        positions.push(0usize); // filled below from the builder's chunk layout
        builder.append(&p.req.data);
    }
    let (mut object, layout) = builder.finish();
    {
        let mut at = 0usize;
        let mut chunk_i = 0usize;
        for (i, p) in batch.iter().enumerate() {
            if i > 0 && batch[i - 1].req.stream != p.req.stream {
                chunk_i += 1;
                at = 0;
            }
            positions[i] = layout[chunk_i].position as usize + at;
            at += p.req.data.len();
        }
    }
    for (c, l) in chunks.iter_mut().zip(&layout) {
        c.position = l.position;
        c.length = l.length;
        c.crc = l.crc;
    }

    let put_at = Instant::now();
    let written = shard.store.put(&key, &object).await;
    let durable_at = Instant::now();
    shard.metrics.observe(H::Put, durable_at - put_at);
    let key = match written {
        Ok(k) => {
            shard.metrics.add(M::WalObjects, 1);
            shard.metrics.add(M::WalObjectBytes, object.len() as u64);
            *me.key.borrow_mut() = k.clone();
            k
        }
        Err(e) => {
            tracing::error!(object = %key, error = %e, "WAL object write failed");
            // Stand in line anyway: the object after this one must still follow the one before.
            if let Some(p) = &previous {
                p.wait(|t| t.done.get().is_some()).await;
            }
            me.finish(false);
            for p in batch {
                let _ = p.reply.send(Err(code::KAFKA_STORAGE_ERROR));
            }
            return;
        }
    };
    let commit = CommitWal { object_key: key.clone(), object_size: object.len() as u64, chunks, after: String::new() };
    let reply = commit_in_order(&shard, commit, previous.as_deref(), &me).await;
    shard.metrics.observe(H::Commit, durable_at.elapsed());
    me.finish(reply.is_ok());
    let results = match reply {
        Ok(r) => r,
        Err(e) => {
            shard.metrics.add(M::WalCommitFailures, 1);
            for p in batch {
                let _ = p.reply.send(Err(e));
            }
            return;
        }
    };
    // Patch real base offsets into the object buffer once, then share slices of it with the
    // cache (the bytes on disk keep the producer's offsets; readers patch when they load).
    let mut next_offset: Option<(u64, i64)> = None;
    let mut chunk_i = 0usize;
    let mut answers = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        if i > 0 && batch[i - 1].req.stream != p.req.stream {
            chunk_i += 1;
        }
        let r = &results.chunks[chunk_i];
        if r.error != 0 {
            answers.push(Err(r.error as i16));
            continue;
        }
        let base = match next_offset {
            Some((s, o)) if s == p.req.stream => o,
            _ => r.base_offset,
        };
        let mut offset = base;
        for (pos, count) in &p.req.batches {
            let at = positions[i] + *pos as usize;
            wal_format::batch::set_base_offset(&mut object[at..], offset);
            offset += count;
        }
        next_offset = Some((p.req.stream, offset));
        answers.push(Ok((base, r.log_start)));
    }
    let object = Bytes::from(object);
    {
        let mut cache = shard.cache.borrow_mut();
        for (i, p) in batch.iter().enumerate() {
            let Ok((base, _)) = answers[i] else { continue };
            let mut offset = base;
            let ends: Vec<usize> = p.req.batches.iter().skip(1).map(|(pos, _)| *pos as usize).chain([p.req.data.len()]).collect();
            for ((pos, count), end) in p.req.batches.iter().zip(ends) {
                let piece = Piece { buf: object.clone(), range: positions[i] + *pos as usize..positions[i] + end };
                cache.insert(p.req.stream, offset, offset + count - 1, piece);
                offset += count;
            }
        }
    }
    for (r, c) in results.chunks.iter().zip(&layout) {
        if r.error == 0 {
            shard.advance(c.stream_id, Marks { log_start: r.log_start, hwm: r.high_watermark });
        }
    }
    {
        let mut recent = shard.wal.recent.borrow_mut();
        if recent.len() > RECENT_LIMIT {
            // Bounded memory: forget every window rather than grow with producers never seen again.
            recent.clear();
        }
        for (p, a) in batch.iter().zip(&answers) {
            if let (Some((pid, epoch, seq)), Ok((base, _))) = (p.req.producer, a) {
                let d = recent.entry((p.req.stream, pid)).or_default();
                if d.len() == PRODUCER_WINDOW {
                    d.pop_front();
                }
                d.push_back((epoch, seq, *base));
            }
        }
    }
    for (p, a) in batch.into_iter().zip(answers) {
        let _ = p.reply.send(a);
    }
}

/// Commits an object after its predecessor: pipelined behind it when that one's commit is on
/// the wire of the current connection, otherwise once it is done.
async fn commit_in_order(
    shard: &Shard,
    mut commit: CommitWal,
    prev: Option<&Ticket>,
    me: &Ticket,
) -> Result<sluice_rpc::CommitWalReply, i16> {
    if let Some(p) = prev {
        p.wait(|t| t.sent.get().is_some() || t.done.get().is_some()).await;
    }
    let generation = match prev {
        Some(p) if p.done.get().is_none() => {
            commit.after = p.key.borrow().clone();
            p.sent.get()
        }
        _ => shard.rpc.generation(),
    };
    if let Some((id, rx)) = generation.and_then(|g| shard.rpc.start_on(Body::CommitWal(commit.clone()), g).map(|s| (g, s))).map(|(g, s)| {
        me.sent.set(Some(g));
        me.changed.notify_all();
        s
    }) {
        match shard.rpc.finish(id, rx, RPC_TIMEOUT).await {
            Ok(Body::CommitWalReply(r)) if r.chunks.len() == commit.chunks.len() => return Ok(r),
            other => tracing::debug!(object = %commit.object_key, reply = ?other, "pipelined commit not applied; retrying in order"),
        }
    }
    // In order the slow way: once the predecessor is through, nothing else to follow.
    if let Some(p) = prev {
        p.wait(|t| t.done.get().is_some()).await;
    }
    commit.after.clear();
    commit_with_retry(shard, commit).await
}

/// Commits an object, retrying through control plane restarts. The control plane answers a
/// repeated commit of the same object with the offsets it assigned the first time, so a retry
/// after a lost reply never assigns offsets twice.
async fn commit_with_retry(shard: &Shard, commit: CommitWal) -> Result<sluice_rpc::CommitWalReply, i16> {
    let deadline = Instant::now() + COMMIT_DEADLINE;
    let mut backoff = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::error!(object = %commit.object_key, "commit gave up after retrying");
            return Err(code::REQUEST_TIMED_OUT);
        }
        match shard.rpc.call(Body::CommitWal(commit.clone()), left).await {
            Ok(Body::CommitWalReply(r)) if r.chunks.len() == commit.chunks.len() => return Ok(r),
            Ok(other) => tracing::warn!(object = %commit.object_key, reply = ?other, "commit refused; retrying"),
            Err(_) => tracing::warn!(object = %commit.object_key, "commit unanswered; retrying"),
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Reads whole batches of a stream from `offset`, up to about `max_bytes` (always at least one
/// batch when any is available, as Kafka does, so a consumer can make progress).
pub async fn read(shard: &Rc<Shard>, req: ReadReq) -> ReadResult {
    let Some(mut marks) = shard.marks(req.stream) else {
        return ReadResult { error: code::UNKNOWN_TOPIC_OR_PARTITION, ..Default::default() };
    };
    if req.offset > marks.hwm || req.offset < marks.log_start {
        // This shard may not have heard of recent commits made elsewhere: ask before refusing.
        if shard.refresh_marks(vec![req.stream]).await.is_err() {
            return ReadResult { error: code::REQUEST_TIMED_OUT, marks, ..Default::default() };
        }
        marks = shard.marks(req.stream).unwrap_or(marks);
        if req.offset > marks.hwm || req.offset < marks.log_start {
            return ReadResult { error: code::OFFSET_OUT_OF_RANGE, marks, ..Default::default() };
        }
    }
    let mut out = ReadResult { error: code::NONE, marks, batches: Vec::new() };
    let mut offset = req.offset;
    let mut bytes = 0usize;
    while offset < marks.hwm && (bytes < req.max_bytes || out.batches.is_empty()) {
        let hit = shard.cache.borrow().get(req.stream, offset);
        if let Some((_, last, data)) = hit {
            if !out.batches.is_empty() && bytes + data.len() > req.max_bytes {
                break;
            }
            bytes += data.len();
            out.batches.push(data);
            offset = last + 1;
            continue;
        }
        let loaded = match load(shard, req.stream, offset, req.max_bytes.saturating_sub(bytes)).await {
            Ok(l) => l,
            Err(e) => {
                if out.batches.is_empty() {
                    out.error = e;
                }
                break;
            }
        };
        // Use what was loaded directly: the cache may be too small to keep it.
        let before = offset;
        for (base, last, data) in loaded {
            if last < offset || base > offset {
                continue;
            }
            if !out.batches.is_empty() && bytes + data.len() > req.max_bytes {
                break;
            }
            bytes += data.len();
            out.batches.push(data);
            offset = last + 1;
        }
        if offset == before {
            break;
        }
    }
    out
}

/// Loads the index entries from `offset` on from their objects (into the cache too) and returns
/// their batches: base offset, last offset, bytes. Empty when the index has nothing there.
async fn load(shard: &Rc<Shard>, stream: u64, offset: i64, want_bytes: usize) -> Result<Vec<(i64, i64, Piece)>, i16> {
    let reply = shard.rpc.call(Body::Lookup(Lookup { stream_id: stream, offset, max_entries: 8 }), RPC_TIMEOUT).await;
    let entries = match reply {
        Ok(Body::LookupReply(r)) if r.error == 0 => r.entries,
        Ok(Body::LookupReply(r)) => return Err(r.error as i16),
        _ => return Err(code::REQUEST_TIMED_OUT),
    };
    let mut out = Vec::new();
    // Read only the chunks this fetch needs (the first always): with a cache too small to keep
    // read-ahead, anything more would be read for nothing.
    let mut read = 0usize;
    for e in entries {
        if read > 0 && read >= want_bytes {
            break;
        }
        read += e.length as usize;
        out.extend(load_entry(shard, stream, &e).await?);
    }
    Ok(out)
}

async fn load_entry(shard: &Shard, stream: u64, e: &IndexEntry) -> Result<Vec<(i64, i64, Piece)>, i16> {
    shard.metrics.add(M::ObjectReads, 1);
    shard.metrics.add(M::ObjectReadBytes, u64::from(e.length));
    let data = shard.store.get_range(&e.object_key, e.position, e.length as usize).await.map_err(|err| {
        tracing::error!(object = %e.object_key, error = %err, "object read failed");
        code::KAFKA_STORAGE_ERROR
    })?;
    let info = wal_format::object::ChunkInfo { stream_id: stream, position: e.position, length: e.length, crc: e.crc };
    if let Err(err) = info.verify(&data) {
        tracing::error!(object = %e.object_key, error = %err, "object chunk corrupt");
        return Err(code::KAFKA_STORAGE_ERROR);
    }
    let batches = wal_format::batch::split(&data).map_err(|_| code::KAFKA_STORAGE_ERROR)?;
    let mut buf = data;
    let mut offset = e.base_offset;
    let mut spans = Vec::with_capacity(batches.len());
    for (pos, h) in &batches {
        wal_format::batch::set_base_offset(&mut buf[*pos..], offset);
        spans.push((*pos, h.size(), offset, offset + h.offset_count() - 1));
        offset += h.offset_count();
    }
    let buf = buf.freeze();
    let mut cache = shard.cache.borrow_mut();
    let mut out = Vec::with_capacity(spans.len());
    for (pos, len, base, last) in spans {
        let piece = Piece { buf: buf.clone(), range: pos..pos + len };
        cache.insert(stream, base, last, piece.clone());
        out.push((base, last, piece));
    }
    Ok(out)
}
