//! Garbage collection of WAL objects.
//!
//! Every committed object gets a reference count (`wal/refs/<key>`: how many index entries
//! refer to it, and its size), written in the transaction that commits it. Index entries leave
//! in two ways: below a stream's log start (retention, DeleteRecords) and with a deleted topic
//! (its streams are marked in `deleted_streams/`). The trimmer ([`run_trimmer`]) deletes those
//! entries a batch per transaction and, in the same transaction, lowers the counts of the
//! objects they referred to; an object whose count reaches zero becomes garbage
//! (`wal/garbage/<key>`, with the time it did). Data planes, which hold the object store, ask
//! for garbage past its grace period ([`take_garbage`]), delete it, and report what they
//! deleted with their next request, which removes the records.
//!
//! The grace period is what keeps deletion from racing a reader: a fetch that looked an entry up
//! just before it was trimmed reads the object within seconds, far inside the grace period.
//! Every write here is fenced and conditioned on the versions it read, so a pass that loses a
//! race (or whose answer was lost) changes nothing and the next pass starts again from the
//! store.

use super::{Controller, Shared};
use crate::meta::{keys, Cond, MetaError, MetaStore, Op};
use bytes::Bytes;
use prost::Message;
use sluice_rpc::{GarbageObject, IndexEntry};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Index entries let go of in one transaction (each also touches its object's count, so a
/// transaction holds a few hundred operations at most).
const TRIM_BATCH: usize = 100;
/// Garbage records read per page.
const PAGE: usize = 1000;

/// How many index entries refer to an object.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ObjectRefs {
    #[prost(uint32, tag = "1")]
    pub entries: u32,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// For a Parquet file: the topic id (hex) whose table holds it; such a file is kept while
    /// the table exists. Empty for WAL objects.
    #[prost(string, tag = "3")]
    pub table_of: String,
}

/// An object no entry refers to, since `since_ms`.
#[derive(Clone, PartialEq, Message)]
struct GarbageRecord {
    #[prost(uint64, tag = "1")]
    size: u64,
    #[prost(int64, tag = "2")]
    since_ms: i64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn bad(what: &str, e: prost::DecodeError) -> MetaError {
    MetaError::Backend(format!("bad {what} record: {e}"))
}

/// The operation that records a newly committed object with the number of index entries its
/// commit created: its reference count, or, when it created none (every chunk refused), its
/// garbage record.
pub(super) fn on_commit(object_key: &str, size: u64, entries: u32) -> Op {
    if entries > 0 {
        Op::Put(keys::wal_refs(object_key), Bytes::from(ObjectRefs { entries, size, table_of: String::new() }.encode_to_vec()))
    } else {
        Op::Put(keys::wal_garbage(object_key), Bytes::from(GarbageRecord { size, since_ms: now_ms() }.encode_to_vec()))
    }
}

/// Every `every`, lets go of the index entries below each stream's log start and of deleted
/// topics' streams.
pub async fn run_trimmer<M: MetaStore + Clone>(ctl: Controller<M>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = trim_pass(&ctl.shared).await {
            // A lost race or an unreachable store: the next pass starts again from the store.
            tracing::warn!(error = %e, "index trimming pass stopped");
        }
    }
}

/// One pass over every stream.
pub(super) async fn trim_pass<M: MetaStore>(shared: &Shared<M>) -> Result<(), MetaError> {
    let live: Vec<(u64, i64)> =
        shared.streams.read().expect("poisoned").iter().filter(|(_, st)| st.log_start > 0).map(|(s, st)| (*s, st.log_start)).collect();
    for (stream, log_start) in live {
        let (a, b) = keys::index_below(stream, log_start);
        trim(shared, &a, &b).await?;
    }
    let (a, b) = keys::deleted_streams();
    for (key, _) in shared.store.range(&a, &b, usize::MAX).await? {
        let Some(stream) = key.rsplit('/').next().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let (a, b) = keys::index_from(stream, -1);
        trim(shared, &a, &b).await?;
        shared.store.write(vec![], vec![Op::Delete(key)]).await?;
    }
    Ok(())
}

/// Deletes every index entry in `[a, b)` and lowers the counts of their objects, a batch per
/// transaction.
async fn trim<M: MetaStore>(shared: &Shared<M>, a: &str, b: &str) -> Result<(), MetaError> {
    loop {
        let rows = shared.store.range(a, b, TRIM_BATCH).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() == TRIM_BATCH;
        let mut conds = Vec::with_capacity(rows.len() * 2);
        let mut ops = Vec::with_capacity(rows.len() * 2);
        let mut per_object: BTreeMap<String, u32> = BTreeMap::new();
        for (key, v) in &rows {
            let e = IndexEntry::decode(v.value.clone()).map_err(|e| bad("index", e))?;
            *per_object.entry(e.object_key).or_default() += 1;
            // The entry as read: a swap that replaced it meanwhile makes this batch start over.
            conds.push(Cond::Version(key.clone(), v.version));
            ops.push(Op::Delete(key.clone()));
        }
        let released = lower_refs(shared, per_object, &mut conds, &mut ops).await?;
        shared.store.write(conds, ops).await?;
        shared.entries_trimmed.fetch_add(rows.len() as u64, Relaxed);
        shared.objects_released.fetch_add(released, Relaxed);
        if !full {
            return Ok(());
        }
    }
}

/// Adds to a transaction the conditions and writes that lower the reference counts of objects
/// by the number of entries given; an object at zero becomes garbage, or, when its table holds
/// it, released (see [`keys::lake_released`]). Returns how many went to zero.
pub(crate) async fn lower_refs<M: MetaStore>(
    shared: &Shared<M>,
    per_object: BTreeMap<String, u32>,
    conds: &mut Vec<Cond>,
    ops: &mut Vec<Op>,
) -> Result<u64, MetaError> {
    let now = now_ms();
    let mut released = 0;
    for (object, n) in per_object {
        let key = keys::wal_refs(&object);
        // No count: committed before counts were kept; it stays in the object store.
        let Some(v) = shared.store.get(&key).await? else { continue };
        let refs = ObjectRefs::decode(v.value).map_err(|e| bad("refs", e))?;
        conds.push(Cond::Version(key.clone(), v.version));
        if refs.entries > n {
            ops.push(Op::Put(key, Bytes::from(ObjectRefs { entries: refs.entries - n, ..refs }.encode_to_vec())));
        } else {
            ops.push(Op::Delete(key));
            if refs.table_of.is_empty() {
                let record = GarbageRecord { size: refs.size, since_ms: now };
                ops.push(Op::Put(keys::wal_garbage(&object), Bytes::from(record.encode_to_vec())));
            } else {
                let record = ObjectRefs { entries: 0, ..refs };
                ops.push(Op::Put(keys::lake_released(&object), Bytes::from(record.encode_to_vec())));
            }
            released += 1;
        }
    }
    Ok(released)
}

/// The operation that makes a released table file garbage (once its table is gone).
pub(crate) fn garbage_op(object_key: &str, size: u64) -> Op {
    Op::Put(keys::wal_garbage(object_key), Bytes::from(GarbageRecord { size, since_ms: now_ms() }.encode_to_vec()))
}

/// Forgets the objects a data plane deleted, then hands out up to `max` objects that have been
/// garbage for at least `grace`.
pub async fn take_garbage<M: MetaStore>(
    shared: &Shared<M>,
    deleted: Vec<String>,
    max: usize,
    grace: Duration,
) -> Result<Vec<GarbageObject>, MetaError> {
    for batch in deleted.chunks(TRIM_BATCH) {
        shared.store.write(vec![], batch.iter().map(|k| Op::Delete(keys::wal_garbage(k))).collect()).await?;
        shared.objects_deleted.fetch_add(batch.len() as u64, Relaxed);
    }
    let due = now_ms().saturating_sub(grace.as_millis() as i64);
    let (mut from, end) = keys::wal_garbage_all();
    let prefix = from.clone();
    let mut out = Vec::new();
    while out.len() < max {
        let page = shared.store.range(&from, &end, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        from = format!("{last}\0");
        let more = page.len() == PAGE;
        for (key, v) in page {
            let record = GarbageRecord::decode(v.value).map_err(|e| bad("garbage", e))?;
            if record.since_ms <= due && out.len() < max {
                out.push(GarbageObject { key: key[prefix.len()..].to_string(), size: record.size });
            }
        }
        if !more {
            break;
        }
    }
    Ok(out)
}
