//! The sequencer's invariants, on the embedded store: offsets dense, increasing and assigned
//! once; concurrent commits share transactions; a retried commit gets its first answer; a newer
//! control plane fences an older one; everything survives reopening the store.

use super::*;
use crate::meta::RedbMetaStore;
use sluice_rpc::CommitChunk;

fn chunk(stream: u64, count: u64) -> CommitChunk {
    CommitChunk { stream_id: stream, position: 44, length: 10, crc: 0, offset_count: count, max_timestamp: 1, batch_count: 1 }
}

fn commit(key: &str, chunks: Vec<CommitChunk>) -> CommitWal {
    CommitWal { object_key: key.to_string(), object_size: 100, chunks, after: String::new() }
}

async fn topic(ctl: &Controller<RedbMetaStore>, name: &str, partitions: i32) -> Topic {
    let r = ctl.create_topics(vec![NewTopic { name: name.into(), partitions, configs: Default::default() }], false).await;
    assert_eq!(r.results[0].error, 0, "{:?}", r.results[0].message);
    r.results[0].topic.clone().expect("created topic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_get_dense_offsets_in_shared_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let ctl = Controller::start(store.clone()).await.unwrap();
    let t = topic(&ctl, "orders", 2).await;
    let (s0, s1) = (t.streams[0], t.streams[1]);
    let before = store.txn(vec![], vec![]).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let ctl = ctl.clone();
        tasks.push(tokio::spawn(async move {
            let reply = ctl.commit(commit(&format!("obj-{i}"), vec![chunk(s0, 1 + i % 3), chunk(s1, 2)])).await.unwrap();
            (i, reply)
        }));
    }
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for t in tasks {
        let (i, reply) = t.await.unwrap();
        assert_eq!(reply.chunks.len(), 2);
        assert!(reply.chunks.iter().all(|c| c.error == 0));
        ranges.push((reply.chunks[0].base_offset, reply.chunks[0].base_offset + (1 + i % 3) as i64));
    }
    ranges.sort();
    // Dense and assigned once: the ranges tile [0, hwm) with no gap and no overlap.
    let mut next = 0;
    for (a, b) in &ranges {
        assert_eq!(*a, next, "gap or overlap at {a}");
        next = *b;
    }
    assert_eq!(ctl.watermark(s0).unwrap().hwm, next);
    assert_eq!(ctl.watermark(s1).unwrap().hwm, 400);
    // Group commit: 200 commits took fewer transactions than commits.
    let after = store.txn(vec![], vec![]).await.unwrap();
    assert!(after - before - 1 < 200, "{} transactions for 200 commits", after - before - 1);

    // The index answers look-ups from any offset.
    let entries = ctl.lookup(s1, 399, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].base_offset, entries[0].end_offset), (398, 400));
}

#[tokio::test]
async fn retried_commit_gets_its_first_offsets_and_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let (s, first) = {
        let store = RedbMetaStore::open(&path).unwrap();
        let ctl = Controller::start(store).await.unwrap();
        let s = topic(&ctl, "t", 1).await.streams[0];
        let first = ctl.commit(commit("a", vec![chunk(s, 5)])).await.unwrap();
        let again = ctl.commit(commit("a", vec![chunk(s, 5)])).await.unwrap();
        assert_eq!(first, again, "a retried commit must not take new offsets");
        assert_eq!(ctl.watermark(s).unwrap().hwm, 5);
        ctl.stop().await;
        (s, first)
    };
    // A restarted control plane continues the sequence and remembers the committed object.
    let store = RedbMetaStore::open(&path).unwrap();
    let ctl = Controller::start(store).await.unwrap();
    assert_eq!(ctl.watermark(s).unwrap().hwm, 5);
    assert_eq!(ctl.commit(commit("a", vec![chunk(s, 5)])).await.unwrap(), first);
    let next = ctl.commit(commit("b", vec![chunk(s, 3)])).await.unwrap();
    assert_eq!(next.chunks[0].base_offset, 5);
    assert_eq!(ctl.shared.topics.read().unwrap()["t"].streams, vec![s]);
}

#[tokio::test]
async fn a_newer_control_plane_fences_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let old = Controller::start(store.clone()).await.unwrap();
    let s = topic(&old, "t", 1).await.streams[0];
    let new = Controller::start(store.clone()).await.unwrap();
    assert!(new.shared.epoch > old.shared.epoch);
    assert!(matches!(old.commit(commit("x", vec![chunk(s, 1)])).await, Err(MetaError::Fenced)));
    let r = new.commit(commit("y", vec![chunk(s, 1)])).await.unwrap();
    assert_eq!(r.chunks[0].base_offset, 0, "the fenced commit took no offsets");
}

#[tokio::test]
async fn admin_errors_use_kafka_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap()).await.unwrap();
    let s = topic(&ctl, "t", 1).await.streams[0];
    let create = |name: &str, partitions: i32, configs: &[(&str, &str)]| NewTopic {
        name: name.into(),
        partitions,
        configs: configs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let r = ctl
        .create_topics(
            vec![
                create("t", 1, &[]),
                create("bad name", 1, &[]),
                create("u", 0, &[]),
                create("v", 1, &[("retention.ms", "soon")]),
                create("w", 1, &[("no.such", "1")]),
            ],
            false,
        )
        .await;
    let codes: Vec<i32> = r.results.iter().map(|r| r.error).collect();
    assert_eq!(codes, [36, 17, 37, 40, 40]);
    // validate_only creates nothing.
    assert_eq!(ctl.create_topics(vec![create("z", 1, &[])], true).await.results[0].error, 0);
    assert!(!ctl.shared.topics.read().unwrap().contains_key("z"));
    // Partitions only grow; new ones get new streams.
    assert_eq!(ctl.create_partitions(vec![("t".into(), 1)], false).await.results[0].error, 37);
    let grown = ctl.create_partitions(vec![("t".into(), 3)], false).await;
    let streams = grown.results[0].topic.as_ref().unwrap().streams.clone();
    assert_eq!(streams.len(), 3);
    assert_eq!(streams[0], s);
    // Deleting a topic makes commits to its streams fail with UNKNOWN_TOPIC_OR_PARTITION.
    assert_eq!(ctl.delete_topics(vec!["t".into()]).await.results[0].error, 0);
    let r = ctl.commit(commit("late", vec![chunk(s, 1)])).await.unwrap();
    assert_eq!(r.chunks[0].error, 3);
    assert_eq!(ctl.delete_topics(vec!["t".into()]).await.results[0].error, 3);
}

#[tokio::test]
async fn pipelined_commits_apply_in_cut_order_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start(RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap()).await.unwrap();
    let s = topic(&ctl, "t", 1).await.streams[0];
    let after = |key: &str, prev: &str, n: u64| CommitWal { after: prev.into(), ..commit(key, vec![chunk(s, n)]) };

    // Queued back to back (as one connection reads them): applied in that order.
    let a = ctl.enqueue_commit(after("a", "", 2)).await;
    let b = ctl.enqueue_commit(after("b", "a", 3)).await;
    let c = ctl.enqueue_commit(after("c", "b", 1)).await;
    let mut offsets = Vec::new();
    for rx in [a, b, c] {
        offsets.push(rx.await.unwrap().unwrap().chunks[0].base_offset);
    }
    assert_eq!(offsets, [0, 2, 5]);

    // A commit whose predecessor never committed is refused and takes no offsets...
    assert!(ctl.commit(after("x", "lost", 5)).await.is_err());
    assert_eq!(ctl.watermark(s).unwrap().hwm, 6);
    // ...and is accepted once it names a committed predecessor.
    let x = ctl.commit(after("x", "c", 5)).await.unwrap();
    assert_eq!(x.chunks[0].base_offset, 6);
}

#[tokio::test]
async fn a_retry_in_the_same_group_as_its_original_takes_no_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let s = {
        let ctl = Controller::start(RedbMetaStore::open(&path).unwrap()).await.unwrap();
        let s = topic(&ctl, "t", 1).await.streams[0];
        // Queued back to back, so both land in one group.
        let first = ctl.enqueue_commit(commit("a", vec![chunk(s, 4)])).await;
        let retry = ctl.enqueue_commit(commit("a", vec![chunk(s, 4)])).await;
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.chunks[0].base_offset, 0);
        // The retry is either refused (its data plane asks again) or given the same offsets.
        if let Ok(r) = retry.await.unwrap() {
            assert_eq!(r, first);
        }
        assert_eq!(ctl.watermark(s).unwrap().hwm, 4);
        assert_eq!(ctl.commit(commit("a", vec![chunk(s, 4)])).await.unwrap(), first);
        ctl.stop().await;
        s
    };
    // A restarted control plane accepts a commit whose predecessor the previous one committed,
    // and still refuses one whose predecessor never committed.
    let ctl = Controller::start(RedbMetaStore::open(&path).unwrap()).await.unwrap();
    let after = |key: &str, prev: &str| CommitWal { after: prev.into(), ..commit(key, vec![chunk(s, 1)]) };
    assert!(ctl.commit(after("c", "lost")).await.is_err());
    assert_eq!(ctl.commit(after("b", "a")).await.unwrap().chunks[0].base_offset, 4);
    assert_eq!(ctl.commit(after("c", "b")).await.unwrap().chunks[0].base_offset, 5);
    assert_eq!(ctl.watermark(s).unwrap().hwm, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_object_records_expire_after_their_window_and_the_index_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let ctl = Controller::start_with(store.clone(), Duration::from_secs(1)).await.unwrap();
    let s = topic(&ctl, "expiring", 1).await.streams[0];
    ctl.commit(commit("obj-a", vec![chunk(s, 3)])).await.unwrap();
    assert!(store.get(&keys::wal_object("obj-a")).await.unwrap().is_some(), "kept within its window");
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get(&keys::wal_object("obj-a")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the record outlived its window by far");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ctl.lookup(s, 0, 10).await.unwrap().len(), 1, "the index entry stays");
    ctl.stop().await;

    // Records found at take-over are scheduled too.
    let ctl = Controller::start_with(store.clone(), Duration::from_secs(1)).await.unwrap();
    ctl.commit(commit("obj-b", vec![chunk(s, 1)])).await.unwrap();
    ctl.stop().await;
    assert!(store.get(&keys::wal_object("obj-b")).await.unwrap().is_some());
    let _ctl = Controller::start_with(store.clone(), Duration::from_secs(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get(&keys::wal_object("obj-b")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a record found at take-over was never deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store whose next transaction is applied but answered with an error, as when etcd applies
/// a transaction and the connection drops before its answer arrives.
#[derive(Clone)]
struct LosesAnswers {
    inner: RedbMetaStore,
    lose_next: Arc<std::sync::atomic::AtomicBool>,
}

impl MetaStore for LosesAnswers {
    async fn get(&self, key: &str) -> crate::meta::MetaResult<Option<crate::meta::Versioned>> {
        self.inner.get(key).await
    }
    async fn range(&self, start: &str, end: &str, limit: usize) -> crate::meta::MetaResult<Vec<(String, crate::meta::Versioned)>> {
        self.inner.range(start, end, limit).await
    }
    async fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>) -> crate::meta::MetaResult<u64> {
        let r = self.inner.txn(conds, ops).await;
        if r.is_ok() && self.lose_next.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(MetaError::Backend("connection lost before the answer".into()));
        }
        r
    }
    async fn open_session(&self) -> crate::meta::MetaResult<crate::meta::SessionId> {
        self.inner.open_session().await
    }
    async fn close_session(&self, session: crate::meta::SessionId) -> crate::meta::MetaResult<()> {
        self.inner.close_session(session).await
    }
    fn lost_sessions(&self) -> broadcast::Receiver<crate::meta::SessionId> {
        self.inner.lost_sessions()
    }
    fn watch(&self, from: u64) -> crate::meta::MetaResult<mpsc::UnboundedReceiver<crate::meta::WatchEvent>> {
        self.inner.watch(from)
    }
    fn transactions(&self) -> u64 {
        self.inner.transactions()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_applied_but_unanswered_never_lets_its_offsets_be_assigned_again() {
    let dir = tempfile::tempdir().unwrap();
    let inner = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let store = LosesAnswers { inner: inner.clone(), lose_next: Arc::default() };
    let ctl = Controller::start(store.clone()).await.unwrap();
    let s = {
        let r = ctl.create_topics(vec![NewTopic { name: "lost".into(), partitions: 1, configs: Default::default() }], false).await;
        r.results[0].topic.clone().expect("created").streams[0]
    };
    ctl.commit(commit("obj-1", vec![chunk(s, 10)])).await.unwrap();
    store.lose_next.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(ctl.commit(commit("obj-2", vec![chunk(s, 5)])).await.is_err(), "the answer was lost");
    // obj-2 was applied ([10, 15)): the next object follows it instead of reusing its offsets.
    let third = ctl.commit(commit("obj-3", vec![chunk(s, 7)])).await.unwrap();
    assert_eq!(third.chunks[0].base_offset, 15);
    // The data plane's retry of obj-2 gets the offsets obj-2 was given.
    let retried = ctl.commit(commit("obj-2", vec![chunk(s, 5)])).await.unwrap();
    assert_eq!(retried.chunks[0].base_offset, 10);
    let keys: Vec<String> = ctl.lookup(s, 0, 10).await.unwrap().into_iter().map(|e| e.object_key).collect();
    assert_eq!(keys, ["obj-1", "obj-2", "obj-3"], "each range indexed once, by its own object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_start_moves_forward_drops_the_index_below_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let ctl = Controller::start(store.clone()).await.unwrap();
    let t = topic(&ctl, "trimmed", 2).await;
    let (s0, s1) = (t.streams[0], t.streams[1]);
    for i in 0..4 {
        ctl.commit(commit(&format!("o{i}"), vec![chunk(s0, 10), chunk(s1, 5)])).await.unwrap();
    }
    // Inside an entry: the entries that end at or below it go, the one holding it stays.
    let r = ctl.move_log_starts(vec![(s0, 25), (s1, -1), (999, 0)]).await;
    assert_eq!((r[0].error, r[0].low_watermark), (0, 25));
    assert_eq!((r[1].error, r[1].low_watermark), (0, 20), "-1 is the high watermark");
    assert_eq!(r[2].error, i32::from(E::UnknownTopicOrPartition.code()));
    let offsets = |entries: Vec<IndexEntry>| entries.iter().map(|e| (e.base_offset, e.end_offset)).collect::<Vec<_>>();
    // Look-ups from the log start never see what is below it; the trimmer deletes it.
    assert_eq!(offsets(ctl.lookup(s0, 25, 10).await.unwrap()), vec![(20, 30), (30, 40)]);
    gc::trim_pass(&ctl.shared).await.unwrap();
    assert_eq!(offsets(ctl.lookup(s0, 0, 10).await.unwrap()), vec![(20, 30), (30, 40)]);
    assert!(ctl.lookup(s1, 0, 10).await.unwrap().is_empty());

    // Backwards changes nothing; past the high watermark is refused; the furthest of two moves
    // of one stream in one request wins.
    let r = ctl.move_log_starts(vec![(s0, 5), (s0, 41)]).await;
    assert_eq!((r[0].error, r[0].low_watermark), (0, 25));
    assert_eq!(r[1].error, i32::from(E::OffsetOutOfRange.code()));
    let r = ctl.move_log_starts(vec![(s0, 31), (s0, 28)]).await;
    assert_eq!((r[0].low_watermark, r[1].low_watermark), (31, 31));

    // Commits go on from the high watermark, and everything is in the store.
    assert_eq!(ctl.commit(commit("o4", vec![chunk(s0, 1)])).await.unwrap().chunks[0].base_offset, 40);
    ctl.stop().await;
    let ctl = Controller::start(store).await.unwrap();
    assert_eq!(ctl.watermark(s0).map(|w| (w.log_start, w.hwm)), Some((31, 41)));
    assert_eq!(ctl.watermark(s1).map(|w| (w.log_start, w.hwm)), Some((20, 20)));
    gc::trim_pass(&ctl.shared).await.unwrap();
    assert_eq!(offsets(ctl.lookup(s0, 0, 10).await.unwrap()), vec![(30, 40), (40, 41)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_is_garbage_once_its_last_entry_goes_and_is_forgotten_once_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
    let ctl = Controller::start(store.clone()).await.unwrap();
    ctl.shared.gc_grace_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    let (a, b) = (topic(&ctl, "a", 1).await.streams[0], topic(&ctl, "b", 1).await.streams[0]);
    // o0 and o1 hold both streams; o2 only a; o3 names only a stream that does not exist.
    for i in 0..2 {
        ctl.commit(commit(&format!("o{i}"), vec![chunk(a, 10), chunk(b, 10)])).await.unwrap();
    }
    ctl.commit(commit("o2", vec![chunk(a, 10)])).await.unwrap();
    ctl.commit(commit("o3", vec![chunk(999, 10)])).await.unwrap();
    let garbage = |ctl: Controller<RedbMetaStore>| async move {
        let mut keys: Vec<String> = ctl.take_garbage(vec![], 100).await.unwrap().into_iter().map(|g| g.key).collect();
        keys.sort();
        keys
    };
    assert_eq!(garbage(ctl.clone()).await, vec!["o3"], "an object whose commit created no entry is garbage at once");

    // a's entries in o0 and o1 go: b still refers to both.
    ctl.move_log_starts(vec![(a, 20)]).await;
    gc::trim_pass(&ctl.shared).await.unwrap();
    assert_eq!(garbage(ctl.clone()).await, vec!["o3"]);
    // b's go too: o0 and o1 are garbage, o2 is not.
    ctl.move_log_starts(vec![(b, -1)]).await;
    gc::trim_pass(&ctl.shared).await.unwrap();
    assert_eq!(garbage(ctl.clone()).await, vec!["o0", "o1", "o3"]);
    assert!(store.get(&keys::wal_refs("o0")).await.unwrap().is_none());
    assert!(store.get(&keys::wal_refs("o2")).await.unwrap().is_some());

    // A deleted topic lets go of its entries (and so of o2) with the trimmer.
    let r = ctl.delete_topics(vec!["a".into()]).await;
    assert_eq!(r.results[0].error, 0);
    assert_eq!(ctl.lookup(a, 0, 10).await.unwrap().len(), 1, "entries stay until the trimmer runs");
    gc::trim_pass(&ctl.shared).await.unwrap();
    assert!(ctl.lookup(a, 0, 10).await.unwrap().is_empty());
    let (x, y) = keys::deleted_streams();
    assert!(store.range(&x, &y, 10).await.unwrap().is_empty(), "the deleted stream's marker goes once it is trimmed");
    assert_eq!(garbage(ctl.clone()).await, vec!["o0", "o1", "o2", "o3"]);

    // Reported deleted: forgotten. Within the grace period: not handed out.
    assert!(ctl.take_garbage(vec!["o0".into(), "o1".into(), "o3".into()], 100).await.unwrap().iter().all(|g| g.key == "o2"));
    ctl.shared.gc_grace_ms.store(60_000, std::sync::atomic::Ordering::Relaxed);
    assert!(ctl.take_garbage(vec![], 100).await.unwrap().is_empty());
    ctl.shared.gc_grace_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ctl.take_garbage(vec![], 100).await.unwrap()[0].size, 100, "the object's size comes with it");
}
