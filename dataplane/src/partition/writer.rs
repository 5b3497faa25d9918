//! The produce path on a partition's owner.
//!
//! 1. [`Writer::append`] waits for room under the in-flight byte limit (backpressure: the
//!    connection that sent the batch stops being read while it waits), then adds the batches to
//!    the open buffer and waits for their commit.
//! 2. The buffer is cut when it holds `flush_bytes`, or at the first tick of the flush clock
//!    after its oldest batch arrived (so no batch waits longer than the interval). The clock is
//!    the same for every shard of the process, so shards cut together: a produce request
//!    spanning partitions of several shards waits for one cut, and their commits reach the
//!    control plane together and share its transaction. Each cut becomes one WAL object, put
//!    durably in the object store; several may be in flight.
//! 3. Objects are committed to the sequencer in the order they were cut, which assigns
//!    offsets: a commit is sent as soon as the previous one is on the wire, naming it as the one
//!    it must follow (see [`Ticket`]). Only then are the appends answered, their batches patched
//!    with real base offsets (once, in the object's buffer) and put in the cache.

use super::producers::{Producers, Seen};
use super::{AppendReq, AppendResult, Deps, Marks, Piece, Settings};
use crate::error::Error;
use crate::metrics::{H, M};
use crate::notify::Notify;
use bytes::Bytes;
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use sluice_rpc::{CommitChunk, CommitWal, CommitWalReply};
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
/// has been sent (`sent`: in which sequencer session), in the same session, naming this object
/// as the one it must follow (`CommitWal::after`), which the control plane checks; if anything
/// goes wrong it falls back to waiting until this one is `done`.
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

/// A shard's WAL buffer and flush pipeline.
pub struct Writer {
    settings: Settings,
    deps: Deps,
    producers: Producers,
    open: RefCell<Vec<Pending>>,
    open_bytes: Cell<usize>,
    /// Counts cuts: a tick armed for one buffer does not cut the next.
    generation: Cell<u64>,
    inflight: Rc<Semaphore>,
    /// The most recently cut object's commit; the next cut's commit follows it.
    last_commit: RefCell<Option<Rc<Ticket>>>,
}

impl Writer {
    pub(super) fn new(settings: Settings, deps: Deps) -> Rc<Self> {
        Rc::new(Writer {
            inflight: Rc::new(Semaphore::new(settings.max_inflight_bytes as u64)),
            settings,
            deps,
            producers: Producers::default(),
            open: RefCell::default(),
            open_bytes: Cell::new(0),
            generation: Cell::new(0),
            last_commit: RefCell::default(),
        })
    }

    /// Appends validated batches of a stream this shard owns; answers after commit. A retry of
    /// an idempotent batch already committed or on its way gets that batch's answer.
    pub async fn append(self: &Rc<Self>, mut req: AppendReq) -> AppendResult {
        let admitted = req.admitted.take();
        let Some((pid, epoch, seq)) = req.producer else { return self.append_new(req, admitted).await };
        let id = (req.stream, pid, epoch, seq);
        // A retry holds the original's place in the order (dropping `admitted` says so).
        match self.producers.check(id) {
            Seen::Committed(base) => {
                let log_start = self.deps.marks.get(req.stream).map(|m| m.log_start).unwrap_or(0);
                Ok((base, log_start))
            }
            Seen::InFlight(rx) => rx.await.unwrap_or(Err(Error::Internal("first copy of a retried batch lost"))),
            Seen::New => {
                let result = self.append_new(req, admitted).await;
                self.producers.finish(id, &result);
                result
            }
        }
    }

    /// Appends a batch not seen before; tells `admitted` once it is in the open buffer.
    async fn append_new(self: &Rc<Self>, req: AppendReq, admitted: Option<oneshot::Sender<()>>) -> AppendResult {
        let metrics = &self.deps.metrics;
        let size = req.data.len() as u64;
        metrics.add(M::ProduceBytes, size);
        metrics.add(M::ProduceRecords, req.offset_count as u64);
        // Held until the object holding these bytes is committed.
        let permit = self
            .inflight
            .acquire_static_permit(size.min(self.settings.max_inflight_bytes as u64))
            .await
            .map_err(|_| Error::Internal("in-flight limit closed"))?;
        let (tx, rx) = oneshot::channel();
        let was_empty = self.open.borrow().is_empty();
        self.open_bytes.set(self.open_bytes.get() + req.data.len());
        let at = Instant::now();
        self.open.borrow_mut().push(Pending { req, reply: tx, at });
        if let Some(a) = admitted {
            let _ = a.send(());
        }
        if self.open_bytes.get() >= self.settings.flush_bytes {
            self.cut();
        } else if was_empty {
            let generation = self.generation.get();
            let (me, tick) = (self.clone(), self.deps.clock.next_tick());
            glommio::spawn_local(async move {
                tick.await;
                if me.generation.get() == generation {
                    me.cut();
                }
            })
            .detach();
        }
        let r = rx.await.unwrap_or(Err(Error::Internal("flush task dropped")));
        metrics.observe(H::Append, at.elapsed());
        drop(permit);
        r
    }

    /// Cuts the open buffer into an object and starts its flush.
    fn cut(self: &Rc<Self>) {
        let batch = self.open.take();
        if batch.is_empty() {
            return;
        }
        self.generation.set(self.generation.get() + 1);
        let bytes = self.open_bytes.replace(0);
        let object_id = uuid::Uuid::new_v4().as_u128();
        let me = Ticket::new(crate::store::wal_object_key(object_id));
        let previous = self.last_commit.replace(Some(me.clone()));
        glommio::spawn_local(self.clone().flush(batch, bytes, object_id, previous, me)).detach();
    }

    async fn flush(self: Rc<Self>, mut batch: Vec<Pending>, bytes: usize, object_id: u128, previous: Option<Rc<Ticket>>, me: Rc<Ticket>) {
        let metrics = &self.deps.metrics;
        let cut_at = Instant::now();
        for p in &batch {
            metrics.observe(H::Buffer, cut_at.duration_since(p.at));
        }
        // Chunks are in stream order; within a stream, appends keep their arrival order.
        batch.sort_by_key(|p| p.req.stream);
        let (object, chunks, positions) = build(object_id, bytes, &batch);

        let key = me.key.borrow().clone();
        let put_at = Instant::now();
        let written = self.deps.store.put(&key, &object).await;
        let durable_at = Instant::now();
        metrics.observe(H::Put, durable_at - put_at);
        let key = match written {
            Ok(k) => {
                metrics.add(M::WalObjects, 1);
                metrics.add(M::WalObjectBytes, object.len() as u64);
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
                let e = Error::from(e);
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let commit = CommitWal { object_key: key, object_size: object.len() as u64, chunks, after: String::new() };
        let reply = self.commit_in_order(commit, previous.as_deref(), &me).await;
        metrics.observe(H::Commit, durable_at.elapsed());
        me.finish(reply.is_ok());
        match reply {
            Ok(r) => self.apply(batch, object, &positions, &r),
            Err(e) => {
                metrics.add(M::WalCommitFailures, 1);
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Applies a committed object: patches real base offsets into its buffer (once; the bytes
    /// in the store keep the producer's, readers patch what they load), shares slices of it with
    /// the cache, raises the watermarks, remembers idempotent batches, and answers.
    fn apply(&self, batch: Vec<Pending>, mut object: Vec<u8>, positions: &[usize], results: &CommitWalReply) {
        let mut next_offset: Option<(u64, i64)> = None;
        let mut chunk_i = 0usize;
        let mut answers: Vec<AppendResult> = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            if i > 0 && batch[i - 1].req.stream != p.req.stream {
                chunk_i += 1;
            }
            let r = &results.chunks[chunk_i];
            if let Some(e) = Error::remote(r.error) {
                answers.push(Err(e));
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
            let mut cache = self.deps.cache.borrow_mut();
            for (i, p) in batch.iter().enumerate() {
                let Ok((base, _)) = answers[i] else { continue };
                let mut offset = base;
                let ends = p.req.batches.iter().skip(1).map(|(pos, _)| *pos as usize).chain([p.req.data.len()]);
                for ((pos, count), end) in p.req.batches.iter().zip(ends) {
                    let piece = Piece { buf: object.clone(), range: positions[i] + *pos as usize..positions[i] + end };
                    cache.insert(p.req.stream, offset, offset + count - 1, piece);
                    offset += count;
                }
            }
        }
        let mut chunk_streams: Vec<u64> = batch.iter().map(|p| p.req.stream).collect();
        chunk_streams.dedup();
        for (r, stream) in results.chunks.iter().zip(chunk_streams) {
            if r.error == 0 {
                self.deps.marks.advance(stream, Marks { log_start: r.log_start, hwm: r.high_watermark });
            }
        }
        for (p, a) in batch.iter().zip(&answers) {
            if let (Some((pid, epoch, seq)), Ok((base, _))) = (p.req.producer, a) {
                self.producers.remember((p.req.stream, pid, epoch, seq), *base);
            }
        }
        for (p, a) in batch.into_iter().zip(answers) {
            let _ = p.reply.send(a);
        }
    }

    /// Commits an object after its predecessor: pipelined behind it when that one's commit is on
    /// the wire of the current session, otherwise once it is done.
    async fn commit_in_order(&self, mut commit: CommitWal, prev: Option<&Ticket>, me: &Ticket) -> Result<CommitWalReply, Error> {
        let seq = &self.deps.sequencer;
        if let Some(p) = prev {
            p.wait(|t| t.sent.get().is_some() || t.done.get().is_some()).await;
        }
        let session = match prev {
            Some(p) if p.done.get().is_none() => {
                commit.after = p.key.borrow().clone();
                p.sent.get()
            }
            _ => seq.session(),
        };
        let started = session.and_then(|s| seq.start_commit(commit.clone(), s, self.settings.rpc_timeout).map(|f| (s, f)));
        if let Some((s, answer)) = started {
            me.sent.set(Some(s));
            me.changed.notify_all();
            match answer.await {
                Ok(r) if r.chunks.len() == commit.chunks.len() => return Ok(r),
                other => tracing::debug!(object = %commit.object_key, reply = ?other, "pipelined commit not applied; retrying in order"),
            }
        }
        // In order the slow way: once the predecessor is through, nothing else to follow.
        if let Some(p) = prev {
            p.wait(|t| t.done.get().is_some()).await;
        }
        commit.after.clear();
        self.commit_with_retry(commit).await
    }

    /// Commits an object, retrying through control plane restarts. The sequencer answers a
    /// repeated commit of the same object with the offsets it assigned the first time, so a
    /// retry after a lost reply never assigns offsets twice.
    async fn commit_with_retry(&self, commit: CommitWal) -> Result<CommitWalReply, Error> {
        let deadline = Instant::now() + COMMIT_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(object = %commit.object_key, "commit gave up after retrying");
                return Err(Error::CommitTimedOut);
            }
            match self.deps.sequencer.commit(commit.clone(), left).await {
                Ok(r) if r.chunks.len() == commit.chunks.len() => return Ok(r),
                Ok(other) => tracing::warn!(object = %commit.object_key, reply = ?other, "commit refused; retrying"),
                Err(e) => tracing::warn!(object = %commit.object_key, error = %e, "commit unanswered; retrying"),
            }
            self.deps.clock.sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Lays a cut's appends out as one WAL object: a chunk per stream. Returns the object, the
/// chunks to commit and where each append's first byte is in the object.
fn build(object_id: u128, bytes: usize, batch: &[Pending]) -> (Vec<u8>, Vec<CommitChunk>, Vec<usize>) {
    let mut builder = ObjectBuilder::new(object_id, now_ms(), bytes);
    let mut chunks: Vec<CommitChunk> = Vec::new();
    for p in batch {
        if chunks.last().map(|c| c.stream_id) != Some(p.req.stream) {
            builder.begin_chunk(p.req.stream);
            chunks.push(CommitChunk { stream_id: p.req.stream, max_timestamp: i64::MIN, ..Default::default() });
        }
        let c = chunks.last_mut().expect("chunk begun");
        c.offset_count += p.req.offset_count as u64;
        c.max_timestamp = c.max_timestamp.max(p.req.max_timestamp);
        c.batch_count += p.req.batches.len() as u32;
        builder.append(&p.req.data);
    }
    let (object, layout) = builder.finish();
    let mut positions = Vec::with_capacity(batch.len());
    let (mut at, mut chunk_i) = (0usize, 0usize);
    for (i, p) in batch.iter().enumerate() {
        if i > 0 && batch[i - 1].req.stream != p.req.stream {
            chunk_i += 1;
            at = 0;
        }
        positions.push(layout[chunk_i].position as usize + at);
        at += p.req.data.len();
    }
    for (c, l) in chunks.iter_mut().zip(&layout) {
        c.position = l.position;
        c.length = l.length;
        c.crc = l.crc;
    }
    (object, chunks, positions)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
