//! The owner's write and read paths on an in-memory object store, a fake sequencer and a clock
//! driven by hand: the cases that matter most and are hardest to reach end to end (puts that
//! finish out of order, lost commit replies, idempotent retries, failed puts, the cache's limit,
//! long polls). Nothing here sleeps: a test ticks the flush clock itself and waits for
//! conditions by yielding to the executor.

use super::*;
use crate::metrics::M;
use crate::store::MemObjectStore;
use futures::future::FutureExt;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use sluice_rpc::{ChunkResult, IndexEntry};
use std::cell::Cell;
use std::collections::HashMap;

/// A sequencer that assigns offsets as the control plane does: per stream, in the order commits
/// arrive; a repeated commit of an object gets its first answer; a commit naming a predecessor
/// it has not applied is refused (the writer then falls back to committing in order).
#[derive(Default)]
struct FakeSequencer {
    replies: RefCell<HashMap<String, CommitWalReply>>,
    /// Objects in the order applied.
    applied: RefCell<Vec<String>>,
    hwm: RefCell<HashMap<u64, i64>>,
    index: RefCell<HashMap<u64, Vec<IndexEntry>>>,
    /// Commits received, repeats included.
    calls: Cell<usize>,
    /// The next commits are applied but their answers lost.
    lose_replies: Cell<usize>,
    /// While set, commits wait (before being applied) until released.
    hold: Cell<bool>,
    held: RefCell<Vec<oneshot::Sender<()>>>,
}

impl FakeSequencer {
    fn apply(&self, c: &CommitWal) -> Result<CommitWalReply, RpcError> {
        self.calls.set(self.calls.get() + 1);
        if let Some(r) = self.replies.borrow().get(&c.object_key) {
            return Ok(r.clone());
        }
        if !c.after.is_empty() && !self.replies.borrow().contains_key(&c.after) {
            return Ok(CommitWalReply::default());
        }
        let mut reply = CommitWalReply::default();
        for ch in &c.chunks {
            let mut hwm = self.hwm.borrow_mut();
            let end = hwm.entry(ch.stream_id).or_default();
            let base = *end;
            *end += ch.offset_count as i64;
            self.index.borrow_mut().entry(ch.stream_id).or_default().push(IndexEntry {
                base_offset: base,
                end_offset: *end,
                object_key: c.object_key.clone(),
                position: ch.position,
                length: ch.length,
                crc: ch.crc,
                max_timestamp: ch.max_timestamp,
                batch_count: ch.batch_count,
                ..Default::default()
            });
            reply.chunks.push(ChunkResult { error: 0, base_offset: base, high_watermark: *end, log_start: 0 });
        }
        self.replies.borrow_mut().insert(c.object_key.clone(), reply.clone());
        self.applied.borrow_mut().push(c.object_key.clone());
        if self.lose_replies.get() > 0 {
            self.lose_replies.set(self.lose_replies.get() - 1);
            return Err(RpcError::TimedOut);
        }
        Ok(reply)
    }

    fn release_all(&self) {
        self.hold.set(false);
        for tx in self.held.take() {
            let _ = tx.send(());
        }
    }

    fn commit_now(&self, commit: CommitWal) -> SeqFuture<'_, CommitWalReply> {
        if !self.hold.get() {
            // Applied at once, in call order: as a commit sent on the control plane connection.
            return Box::pin(std::future::ready(self.apply(&commit)));
        }
        let (tx, rx) = oneshot::channel();
        self.held.borrow_mut().push(tx);
        Box::pin(async move {
            let _ = rx.await;
            self.apply(&commit)
        })
    }
}

impl Sequencer for FakeSequencer {
    fn session(&self) -> Option<u64> {
        Some(1)
    }

    fn start_commit(&self, commit: CommitWal, session: u64, _timeout: Duration) -> Option<SeqFuture<'_, CommitWalReply>> {
        (session == 1).then(|| self.commit_now(commit))
    }

    fn commit(&self, commit: CommitWal, _timeout: Duration) -> SeqFuture<'_, CommitWalReply> {
        self.commit_now(commit)
    }

    fn lookup(&self, req: Lookup, _timeout: Duration) -> SeqFuture<'_, LookupReply> {
        let index = self.index.borrow();
        let entries: Vec<IndexEntry> = index
            .get(&req.stream_id)
            .into_iter()
            .flatten()
            .filter(|e| e.end_offset > req.offset)
            .take(req.max_entries as usize)
            .cloned()
            .collect();
        let hwm = self.hwm.borrow().get(&req.stream_id).copied().unwrap_or(0);
        Box::pin(std::future::ready(Ok(LookupReply { error: 0, entries, log_start: 0, high_watermark: hwm })))
    }

    fn watermarks(&self, streams: Vec<u64>, _timeout: Duration) -> SeqFuture<'_, Vec<Watermark>> {
        let hwm = self.hwm.borrow();
        let marks = streams
            .into_iter()
            .map(|s| Watermark { stream_id: s, log_start: 0, high_watermark: hwm.get(&s).copied().unwrap_or(0) })
            .collect();
        Box::pin(std::future::ready(Ok(marks)))
    }
}

/// The flush clock, ticked by the test; back-off sleeps only yield.
#[derive(Default)]
struct ManualClock {
    ticks: crate::notify::Notify,
}

impl Clock for ManualClock {
    fn next_tick(&self) -> LocalBoxFuture<'static, ()> {
        let tick = self.ticks.notified();
        Box::pin(tick.map(|_| ()))
    }

    fn sleep(&self, _d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(futures_lite::future::yield_now())
    }
}

struct Rig {
    store: Rc<MemObjectStore>,
    seq: Rc<FakeSequencer>,
    clock: Rc<ManualClock>,
    metrics: Rc<ShardMetrics>,
    parts: Rc<Partitions>,
}

impl Rig {
    fn new(cache_bytes: usize) -> Self {
        let (store, seq, clock, metrics) =
            (Rc::new(MemObjectStore::new()), Rc::new(FakeSequencer::default()), Rc::new(ManualClock::default()), Rc::default());
        let parts = Rc::new(Rig::partitions(cache_bytes, &store, &seq, &clock, &metrics));
        Rig { store, seq, clock, metrics, parts }
    }

    fn partitions(
        cache_bytes: usize,
        store: &Rc<MemObjectStore>,
        seq: &Rc<FakeSequencer>,
        clock: &Rc<ManualClock>,
        metrics: &Rc<ShardMetrics>,
    ) -> Partitions {
        let settings = Settings { flush_bytes: 1 << 20, max_inflight_bytes: 64 << 20, cache_bytes, rpc_timeout: Duration::from_secs(1) };
        Partitions::new(settings, store.clone(), seq.clone(), clock.clone(), metrics.clone())
    }

    /// Another owner on the same store and sequencer, with an empty cache (reads load objects).
    fn cold_reader(&self) -> Partitions {
        let parts = Rig::partitions(1 << 20, &self.store, &self.seq, &self.clock, &Rc::default());
        for (s, hwm) in self.seq.hwm.borrow().iter() {
            parts.marks.advance(*s, Marks { log_start: 0, hwm: *hwm });
        }
        parts
    }

    /// Starts an append; its answer comes from the returned task.
    fn append(&self, stream: u64, batches: &[usize], producer: Option<(i64, i16, i32)>) -> glommio::task::JoinHandle<AppendResult> {
        let req = append_req(stream, batches, producer);
        let parts = self.parts.clone();
        glommio::spawn_local(async move { parts.append(req).await }).detach()
    }

    fn tick(&self) {
        self.clock.ticks.notify_all();
    }

    async fn read(&self, stream: u64, offset: i64) -> ReadResult {
        self.parts.read(ReadReq { stream, offset, max_bytes: 1 << 20 }).await
    }

    fn object_reads(&self) -> u64 {
        self.metrics.snapshot()[M::ObjectReads as usize]
    }
}

/// Yields to the executor until `cond` holds (a bounded number of times: a condition that never
/// comes fails the test instead of hanging it).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        futures_lite::future::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Lets every task that can run, run.
async fn settle() {
    for _ in 0..100 {
        futures_lite::future::yield_now().await;
    }
}

/// A record batch of `records` records at base offset 0.
fn batch(records: usize, producer: Option<(i64, i16, i32)>) -> Vec<u8> {
    let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let rs: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder keeps records in one batch while offset - sequence stays the same.
            sequence: seq.max(0) + i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(vec![b'v'; 40])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &rs, &RecordEncodeOptions { version: 2, compression: Compression::None }).expect("encode");
    buf.to_vec()
}

/// An append of one request holding batches of these record counts.
fn append_req(stream: u64, batches: &[usize], producer: Option<(i64, i16, i32)>) -> AppendReq {
    let mut data = Vec::new();
    let mut at = Vec::new();
    for n in batches {
        at.push((data.len() as u32, *n as i64));
        data.extend(batch(*n, producer));
    }
    let offset_count = batches.iter().sum::<usize>() as i64;
    AppendReq { stream, data: Bytes::from(data), batches: at, offset_count, max_timestamp: 0, producer, admitted: None }
}

/// An append's answer, which must be a success.
fn ok(r: Option<AppendResult>) -> (i64, i64) {
    match r {
        Some(Ok(v)) => v,
        Some(Err(e)) => panic!("append failed: {e}"),
        None => panic!("append task gone"),
    }
}

/// Base offsets of the batches a read returned.
fn bases(r: &ReadResult) -> Vec<i64> {
    r.batches.iter().map(|p| wal_format::batch::parse_header(&p.bytes()).expect("batch").base_offset).collect()
}

fn run<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default().spawn(|| async move { test().await }).expect("executor").join().expect("join");
}

#[test]
fn commits_apply_in_cut_order_when_puts_finish_out_of_order() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        rig.store.hold_puts(true);
        let first = rig.append(1, &[3], None);
        rig.tick();
        until("first object's put", || rig.store.held().len() == 1).await;
        let second = rig.append(1, &[2], None);
        let other_stream = rig.append(2, &[1], None);
        rig.tick();
        until("second object's put", || rig.store.held().len() == 2).await;
        let keys = rig.store.held();
        assert!(rig.store.release(&keys[1]), "the later object is stored first");
        settle().await;
        assert!(rig.seq.applied.borrow().is_empty(), "nothing is committed ahead of an object cut earlier");
        assert!(rig.store.release(&keys[0]));
        assert_eq!(ok(first.await), (0, 0));
        assert_eq!(ok(second.await), (3, 0));
        assert_eq!(ok(other_stream.await), (0, 0));
        assert_eq!(*rig.seq.applied.borrow(), keys, "committed in cut order");
        assert_eq!(rig.seq.calls.get(), 2, "the second commit was pipelined behind the first, not retried");
        assert_eq!(bases(&rig.read(1, 0).await), vec![0, 3]);
    });
}

#[test]
fn a_lost_commit_reply_is_retried_without_assigning_offsets_twice() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        rig.seq.lose_replies.set(1);
        let first = rig.append(1, &[4], None);
        rig.tick();
        assert_eq!(ok(first.await), (0, 0), "answered with the offsets of the first, lost, reply");
        assert_eq!(rig.seq.calls.get(), 2, "sent again after the reply was lost");
        assert_eq!(rig.seq.applied.borrow().len(), 1, "applied once");
        let next = rig.append(1, &[1], None);
        rig.tick();
        assert_eq!(ok(next.await), (4, 0), "no offsets were taken twice");
        assert_eq!(bases(&rig.read(1, 0).await), vec![0, 4]);
    });
}

#[test]
fn an_idempotent_retry_gets_its_first_offsets_even_while_the_first_copy_is_committing() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        let producer = Some((7, 0, 0));
        let before = rig.append(1, &[2], None);
        rig.tick();
        assert_eq!(ok(before.await), (0, 0));
        rig.seq.hold.set(true);
        let first = rig.append(1, &[3], producer);
        rig.tick();
        until("the first copy's commit is on its way", || rig.seq.held.borrow().len() == 1).await;
        let retry = rig.append(1, &[3], producer);
        rig.tick();
        settle().await;
        assert_eq!(rig.store.puts(), 2, "the retry is not stored again");
        rig.seq.release_all();
        assert_eq!(ok(first.await), (2, 0));
        assert_eq!(ok(retry.await), (2, 0), "the retry waited for the first copy's answer");
        let late = rig.append(1, &[3], producer);
        assert_eq!(ok(late.await), (2, 0), "a retry after the commit is answered at once");
        let next = rig.append(1, &[1], Some((7, 0, 3)));
        rig.tick();
        assert_eq!(ok(next.await), (5, 0));
        assert_eq!(rig.seq.applied.borrow().len(), 3);
        assert_eq!(bases(&rig.read(1, 0).await), vec![0, 2, 5]);
    });
}

#[test]
fn a_failed_put_fails_exactly_its_produces() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        rig.store.fail_next_puts(1);
        let lost_a = rig.append(1, &[2], None);
        let lost_b = rig.append(2, &[1], None);
        rig.tick();
        for lost in [lost_a, lost_b] {
            match lost.await {
                Some(Err(e)) => assert_eq!(e.code(), 56, "KAFKA_STORAGE_ERROR: {e}"),
                other => panic!("a produce of the failed object was answered {other:?}"),
            }
        }
        assert_eq!(rig.seq.calls.get(), 0, "nothing of the failed object was committed");
        let kept = rig.append(1, &[5], None);
        rig.tick();
        assert_eq!(ok(kept.await), (0, 0), "the next object is unaffected and takes no skipped offsets");
        assert_eq!(rig.seq.applied.borrow().len(), 1);
        assert_eq!(bases(&rig.read(1, 0).await), vec![0]);
    });
}

#[test]
fn base_offsets_are_patched_once_in_the_cache_and_on_load() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        let first = rig.append(1, &[2, 3], None);
        let second = rig.append(1, &[1, 4], None);
        let other = rig.append(2, &[2], None);
        rig.tick();
        assert_eq!(ok(first.await), (0, 0));
        assert_eq!(ok(second.await), (5, 0), "the second request of the object follows the first");
        assert_eq!(ok(other.await), (0, 0));
        for _ in 0..2 {
            assert_eq!(bases(&rig.read(1, 0).await), vec![0, 2, 5, 6], "read from the cache, again and again");
        }
        assert_eq!(bases(&rig.read(1, 6).await), vec![6]);
        assert_eq!(rig.object_reads(), 0, "all from the cache");
        let cold = rig.cold_reader();
        let loaded = cold.read(ReadReq { stream: 1, offset: 0, max_bytes: 1 << 20 }).await;
        assert_eq!(bases(&loaded), vec![0, 2, 5, 6], "loaded from the object and patched the same");
        assert_eq!(bases(&cold.read(ReadReq { stream: 2, offset: 0, max_bytes: 1 << 20 }).await), vec![0]);
        let key = rig.seq.applied.borrow()[0].clone();
        let stored = rig.store.get_range(&key, 0, 1).await;
        assert!(stored.is_ok(), "the object is in the store");
    });
}

#[test]
fn the_cache_keeps_to_its_byte_limit_and_misses_load_from_objects() {
    run(|| async {
        let one = batch(1, None).len();
        // Room for two batches.
        let rig = Rig::new(2 * one + one / 2);
        for i in 0..4 {
            let a = rig.append(1, &[1], None);
            rig.tick();
            assert_eq!(ok(a.await), (i, 0));
        }
        assert_eq!(bases(&rig.read(1, 3).await), vec![3], "the newest is cached");
        assert_eq!(rig.object_reads(), 0);
        let all = rig.read(1, 0).await;
        assert_eq!(bases(&all), vec![0, 1, 2, 3]);
        assert!(rig.object_reads() >= 1, "evicted batches are loaded from their objects");
        assert!(rig.parts.cache.borrow().bytes() <= 2 * one + one / 2, "never over the limit");
    });
}

#[test]
fn a_long_poll_wakes_on_a_watermark_advance_and_not_before() {
    run(|| async {
        let rig = Rig::new(1 << 20);
        rig.parts.marks.know(1);
        let (timeout_tx, timeout_rx) = oneshot::channel::<()>();
        let marks = rig.parts.marks.clone();
        let woke = Rc::new(Cell::new(None));
        let w = woke.clone();
        glommio::spawn_local(async move {
            let r = marks.wait_past(&[(1, 0)], timeout_rx.map(|_| ())).await;
            w.set(Some(r));
        })
        .detach();
        settle().await;
        assert_eq!(woke.get(), None);
        rig.parts.marks.advance(2, Marks { log_start: 0, hwm: 10 });
        rig.parts.marks.advance(1, Marks { log_start: 0, hwm: 0 });
        settle().await;
        assert_eq!(woke.get(), None, "another stream, or no move, does not wake it");
        let a = rig.append(1, &[1], None);
        settle().await;
        assert_eq!(woke.get(), None, "buffered, not committed: nothing to read yet");
        rig.tick();
        ok(a.await);
        until("woken by the commit", || woke.get().is_some()).await;
        assert_eq!(woke.get(), Some(true));
        drop(timeout_tx);

        // And the timeout ends the wait when nothing moves.
        let (timeout_tx, timeout_rx) = oneshot::channel::<()>();
        let marks = rig.parts.marks.clone();
        let waited = glommio::spawn_local(async move { marks.wait_past(&[(1, 1)], timeout_rx.map(|_| ())).await }).detach();
        settle().await;
        let _ = timeout_tx.send(());
        assert_eq!(waited.await, Some(false));
    });
}
