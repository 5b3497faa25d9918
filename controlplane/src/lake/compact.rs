//! Compaction: committed WAL chunks become Parquet files of the topic's table, and the index
//! entries of their offsets are swapped for entries naming the files' row groups.
//!
//! A pass ([`pass`]) picks, per topic, the partitions whose WAL entries (after their last
//! Parquet entry) pass a size or an age threshold, reads those chunks from the object store,
//! decodes them (every codec), and writes one Parquet file per partition, in parallel on the
//! compaction runtime's threads (separate from the runtime that serves data planes, so produce
//! latency does not pay for it). Then, in this order:
//!
//! 1. an intent (`lake/intents/<topic id>`: the files, their offset ranges and row groups) is
//!    written to the metadata store, fenced like every write;
//! 2. the files are appended to the table in one Iceberg commit whose snapshot carries the
//!    intent's id (`sluice.compaction`);
//! 3. per file, one metadata transaction deletes the WAL entries of its range, puts one entry
//!    per row group, lowers the WAL objects' reference counts and counts the file's entries,
//!    conditioned on the entries it replaces being unchanged; then the intent goes.
//!
//! A process killed anywhere leaves either files no table and no index knows (1: deleted when
//! the intent is resumed, or never recorded), or an intent whose commit the table shows (the
//! swap is redone) or does not (the files are deleted). Offsets keep their entries throughout:
//! a fetch resolves an offset to a WAL chunk or to a row group holding the same records, never
//! to neither or both, and the WAL objects outlive the swap by the garbage grace period.

use super::rows::{decode_chunk, from_arrow, key_compact, parse_tombstones, to_arrow, tombstones_of, Row, TOMBSTONES_KEY};
use super::{hex, Lake};
use crate::controller::gc::{bad, lower_refs, now_ms, ObjectRefs};
use crate::controller::{Controller, Shared};
use crate::meta::{keys, Cond, MetaError, MetaStore, Op};
use bytes::Bytes;
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use prost::Message;
use sluice_rpc::{IndexEntry, Topic, ENTRY_PARQUET, ENTRY_WAL};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most WAL entries one file replaces: its swap is one metadata transaction, which holds a few
/// operations per entry (etcd bounds a transaction's operations with `--max-txn-ops`).
const MAX_FILE_ENTRIES: usize = 1000;

/// Snapshot summary property naming the intent a commit belongs to.
const INTENT_PROP: &str = "sluice.compaction";

/// When and how much to compact.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Compact a partition once this many bytes of WAL chunks wait...
    pub min_bytes: u64,
    /// ...or once its oldest waiting chunk was committed this long ago.
    pub max_age: Duration,
    /// Most WAL bytes turned into one Parquet file.
    pub max_bytes: u64,
    /// Target size of a row group (what one fetch of a compacted range reads), in record bytes.
    pub row_group_bytes: u64,
    /// Time between passes.
    pub interval: Duration,
    /// Objects no index or table refers to become garbage once this old (see [`super::sweep`]).
    pub orphan_grace: Duration,
    /// The pace of compaction's object-store reads and writes, shared by its tasks (None:
    /// as fast as they go).
    pub io_limit: Option<Arc<Throttle>>,
}

/// Paces compaction's object-store I/O to a byte rate, as Kafka's
/// `log.cleaner.io.max.bytes.per.second` paces its cleaner: each read or write of n bytes moves
/// a schedule n/rate on, and the next one waits while the schedule is ahead of the clock.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    due: std::sync::Mutex<tokio::time::Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle { bytes_per_sec: bytes_per_sec.max(1), due: std::sync::Mutex::new(tokio::time::Instant::now()) }
    }

    /// Waits for the turn of an I/O of `bytes`.
    async fn take(&self, bytes: u64, stats: &Stats) {
        let wait = {
            let mut due = self.due.lock().expect("poisoned");
            let now = tokio::time::Instant::now();
            let start = (*due).max(now);
            *due = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start - now
        };
        if !wait.is_zero() {
            stats.throttled_ms.fetch_add(wait.as_millis() as u64, Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

impl Policy {
    async fn pace(&self, bytes: u64, stats: &Stats) {
        if let Some(t) = &self.io_limit {
            t.take(bytes, stats).await;
        }
    }
}

/// What compaction did, for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub passes: AtomicU64,
    pub files: AtomicU64,
    pub rows: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub parquet_bytes: AtomicU64,
    /// Wall-clock milliseconds spent writing files (decode, encode, upload).
    pub write_ms: AtomicU64,
    /// WAL chunks that could not be decoded: they stay WAL (readable by Kafka clients).
    pub undecodable_chunks: AtomicU64,
    pub failures: AtomicU64,
    /// Objects written but never committed, made garbage by the orphan sweep.
    pub orphans: AtomicU64,
    /// Iceberg metadata files no table reaches any more, deleted by the sweep.
    pub metadata_files_deleted: AtomicU64,
    /// Milliseconds compaction waited for its I/O limit.
    pub throttled_ms: AtomicU64,
}

/// One row group of a file, as its index entry will name it.
#[derive(Clone, PartialEq, Message)]
struct RowGroup {
    #[prost(int64, tag = "1")]
    base: i64,
    #[prost(int64, tag = "2")]
    end: i64,
    #[prost(uint64, tag = "3")]
    position: u64,
    #[prost(uint32, tag = "4")]
    length: u32,
    #[prost(uint32, tag = "5")]
    rows: u32,
    #[prost(int64, tag = "6")]
    max_timestamp: i64,
    /// When the newest of its records was committed to the stream.
    #[prost(int64, tag = "7")]
    appended_ms: i64,
}

/// One file of an intent: the offsets `[base, end)` of a stream it replaces.
#[derive(Clone, PartialEq, Message)]
struct FilePlan {
    #[prost(uint64, tag = "1")]
    stream: u64,
    #[prost(int64, tag = "2")]
    base: i64,
    #[prost(int64, tag = "3")]
    end: i64,
    /// Object-store key (what data planes read it by).
    #[prost(string, tag = "4")]
    key: String,
    /// Location in the table.
    #[prost(string, tag = "5")]
    url: String,
    #[prost(uint64, tag = "6")]
    size: u64,
    #[prost(message, repeated, tag = "7")]
    row_groups: Vec<RowGroup>,
    /// Table files (locations) whose rows this one holds from now on (key compaction rewrites
    /// a partition's files): the commit removes them from the table.
    #[prost(string, repeated, tag = "8")]
    replaces: Vec<String>,
}

/// A compaction under way.
#[derive(Clone, PartialEq, Message)]
struct Intent {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    topic: String,
    /// Topic id, hex.
    #[prost(string, tag = "3")]
    topic_id: String,
    #[prost(message, repeated, tag = "4")]
    files: Vec<FilePlan>,
}

/// The object-store keys of the files of an intent (as stored).
pub(super) fn intent_keys(value: Bytes) -> Result<Vec<String>, prost::DecodeError> {
    Ok(Intent::decode(value)?.files.into_iter().map(|f| f.key).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("iceberg: {}", brief(.0))]
    Iceberg(#[from] iceberg::Error),
    #[error("{0}")]
    Other(String),
}

/// An iceberg error's text without the backtrace it may carry.
pub fn brief(e: &iceberg::Error) -> String {
    let text = e.to_string();
    text.split("\n\nBacktrace:").next().unwrap_or_default().trim_end().to_string()
}

/// Runs a pass every `policy.interval`, forever.
pub async fn run<M: MetaStore + Clone + 'static>(ctl: Controller<M>, lake: Arc<Lake>, policy: Policy, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut adopted = false;
    let lister = super::sweep::operator(&lake).map_err(|e| tracing::warn!(error = %e, "no orphan sweep")).ok();
    // Listing a bucket costs: the sweep runs about twice per grace period.
    let sweep_every = (policy.orphan_grace / 2).max(policy.interval);
    let mut swept: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !adopted {
            match adopt_tables(&ctl.shared, &lake).await {
                Ok(()) => adopted = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the tables' records from the metadata store");
                    continue;
                }
            }
        }
        if let Err(e) = pass(&ctl, &lake, &policy, &stats).await {
            stats.failures.fetch_add(1, Relaxed);
            // A lost race, an unreachable store or catalog: the next pass starts again.
            tracing::warn!(error = %e, "compaction pass stopped");
        }
        stats.passes.fetch_add(1, Relaxed);
        if let Some(op) = lister.as_ref().filter(|_| swept.is_none_or(|t| t.elapsed() >= sweep_every)) {
            swept = Some(Instant::now());
            let topics: Vec<Topic> = ctl.shared.topics.read().expect("poisoned").values().cloned().collect();
            match super::sweep::sweep(&ctl.shared, &lake, op, policy.orphan_grace, &topics).await {
                Ok(swept) => {
                    stats.orphans.fetch_add(swept.orphans, Relaxed);
                    stats.metadata_files_deleted.fetch_add(swept.metadata_files, Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "orphan sweep stopped"),
            }
        }
    }
}

/// Finishes compactions left under way, compacts every topic that has enough waiting, and lets
/// go of the files of dropped tables.
pub async fn pass<M: MetaStore + Clone + 'static>(
    ctl: &Controller<M>,
    lake: &Arc<Lake>,
    policy: &Policy,
    stats: &Arc<Stats>,
) -> Result<(), Error> {
    let shared = &ctl.shared;
    let (a, b) = keys::lake_intents();
    let mut stuck = std::collections::HashSet::new();
    for (key, v) in shared.store.range(&a, &b, usize::MAX).await? {
        let intent = Intent::decode(v.value).map_err(|e| bad("intent", e))?;
        tracing::info!(topic = %intent.topic, intent = %intent.id, "resuming a compaction");
        let topic_id = intent.topic_id.clone();
        if let Err(e) = resume(shared, lake, &key, intent).await {
            // Other topics go on; this one waits for its intent to be resolved.
            stats.failures.fetch_add(1, Relaxed);
            tracing::warn!(topic_id = %topic_id, error = %e, "cannot finish a compaction under way");
            stuck.insert(topic_id);
        }
    }
    let topics: Vec<Topic> = shared.topics.read().expect("poisoned").values().cloned().collect();
    for topic in topics.iter().filter(|t| !stuck.contains(&hex(&t.topic_id))) {
        if let Err(e) = compact_topic(shared, lake, policy, stats, topic).await {
            stats.failures.fetch_add(1, Relaxed);
            tracing::warn!(topic = %topic.name, error = %e, "compaction of a topic stopped");
        }
    }
    let live: HashMap<String, String> = topics.iter().map(|t| (t.name.clone(), hex(&t.topic_id))).collect();
    for name in lake.drop_orphan_tables(&live).await? {
        tracing::info!(table = %name, "dropped the table of a deleted topic");
    }
    super::retention::apply(shared, lake, &topics).await?;
    forget_dropped(shared, &live).await
}

/// Brings the catalog up to the tables the metadata store records (a new leader's catalog may
/// lag, or be empty).
async fn adopt_tables<M: MetaStore>(shared: &Shared<M>, lake: &Lake) -> Result<(), Error> {
    let by_id: HashMap<String, Topic> = shared.topics.read().expect("poisoned").values().map(|t| (hex(&t.topic_id), t.clone())).collect();
    let (a, b) = keys::lake_tables();
    for (key, v) in shared.store.range(&a, &b, usize::MAX).await? {
        if let Some(topic) = by_id.get(&key[a.len()..]) {
            lake.adopt(topic, &String::from_utf8_lossy(&v.value)).await?;
        }
    }
    Ok(())
}

/// Records where the table of `topic` is now (after a commit), for [`adopt_tables`].
pub(super) async fn remember<M: MetaStore>(shared: &Shared<M>, lake: &Lake, name: &str, topic_id: &str) -> Result<(), Error> {
    let table = lake.catalog.load_table(&Lake::ident(name)).await?;
    let Some(location) = table.metadata_location() else { return Ok(()) };
    let key = keys::lake_table(topic_id);
    shared.store.write(vec![], vec![Op::Put(key, Bytes::from(location.to_string()))]).await?;
    Ok(())
}

/// Forgets the table records of deleted topics (their tables were dropped above).
async fn forget_dropped<M: MetaStore>(shared: &Shared<M>, live: &HashMap<String, String>) -> Result<(), Error> {
    let ids: std::collections::HashSet<&String> = live.values().collect();
    let (a, b) = keys::lake_tables();
    for (key, _) in shared.store.range(&a, &b, usize::MAX).await? {
        if !ids.contains(&key[a.len()..].to_string()) {
            shared.store.write(vec![], vec![Op::Delete(key)]).await?;
        }
    }
    Ok(())
}

/// The WAL entries of a stream after its last Parquet entry (at most `max_bytes` of them, at
/// least one), in offset order.
async fn waiting<M: MetaStore>(shared: &Shared<M>, stream: u64, from: i64, max_bytes: u64) -> Result<Vec<IndexEntry>, Error> {
    let (mut a, b) = keys::index_from(stream, from);
    let mut out: Vec<IndexEntry> = Vec::new();
    let mut bytes = 0u64;
    loop {
        let page = shared.store.range(&a, &b, 256).await?;
        let Some((last, _)) = page.last() else { break };
        a = format!("{last}\0");
        let full = page.len() == 256;
        for (_, v) in page {
            let e = IndexEntry::decode(v.value).map_err(|e| bad("index", e))?;
            if e.format != ENTRY_WAL {
                out.clear();
                bytes = 0;
                continue;
            }
            if !out.is_empty() && (bytes + u64::from(e.length) > max_bytes || out.len() == MAX_FILE_ENTRIES) {
                return Ok(out);
            }
            bytes += u64::from(e.length);
            out.push(e);
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// The entries of a stream from `log_start` to `until` (its first waiting WAL entry): what key
/// compaction made of it before.
async fn compacted<M: MetaStore>(shared: &Shared<M>, stream: u64, log_start: i64, until: i64) -> Result<Vec<IndexEntry>, Error> {
    let (a, _) = keys::index_from(stream, log_start);
    let b = keys::index(stream, until + 1);
    let mut out = Vec::new();
    for (_, v) in shared.store.range(&a, &b, MAX_FILE_ENTRIES).await? {
        out.push(IndexEntry::decode(v.value).map_err(|e| bad("index", e))?);
    }
    Ok(out)
}

/// `delete.retention.ms` of a topic whose `cleanup.policy` includes `compact`; None for a topic
/// that is not key-compacted.
fn key_compaction(topic: &Topic) -> Option<i64> {
    if !sluice_rpc::configs::cleanup_policy_includes(topic.configs.get("cleanup.policy").map(String::as_str), "compact") {
        return None;
    }
    Some(topic.configs.get("delete.retention.ms").and_then(|v| v.parse().ok()).unwrap_or(86_400_000))
}

/// The partition a file is written for.
#[derive(Clone, Copy)]
struct Part {
    partition: i32,
    stream: u64,
    /// Records below it are past retention and stay out of the file.
    log_start: i64,
    /// `delete.retention.ms` when the topic is key-compacted.
    keyed: Option<i64>,
}

/// Compacts the partitions of one topic that have enough waiting.
async fn compact_topic<M: MetaStore + Clone + 'static>(
    shared: &Arc<Shared<M>>,
    lake: &Arc<Lake>,
    policy: &Policy,
    stats: &Arc<Stats>,
    topic: &Topic,
) -> Result<(), Error> {
    let now = now_ms();
    let keyed = key_compaction(topic);
    let mut plans = Vec::new();
    for (partition, stream) in topic.streams.iter().enumerate() {
        let Some(st) = shared.streams.read().expect("poisoned").get(stream).copied() else { continue };
        let entries = waiting(shared, *stream, st.log_start, policy.max_bytes).await?;
        let Some(first) = entries.first() else { continue };
        let bytes: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
        if bytes < policy.min_bytes && now.saturating_sub(first.committed_ms) < policy.max_age.as_millis() as i64 {
            continue;
        }
        // A key-compacted partition is rewritten from its log start: the waiting records
        // supersede older ones of their keys (while the transaction's bound allows; past it,
        // the waiting records are compacted among themselves).
        let mut region = Vec::new();
        if keyed.is_some() {
            region = compacted(shared, *stream, st.log_start, first.base_offset).await?;
            if region.len() >= MAX_FILE_ENTRIES {
                region.clear();
            }
        }
        let room = MAX_FILE_ENTRIES - region.len();
        region.extend(entries.into_iter().take(room));
        plans.push((partition as i32, *stream, region, st.log_start));
    }
    if plans.is_empty() {
        return Ok(());
    }
    let table = lake.table(topic).await?;
    let intent_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (partition, stream, entries, log_start) in plans {
        let (lake, table, id, policy, stats) = (lake.clone(), table.clone(), intent_id.clone(), policy.clone(), stats.clone());
        let part = Part { partition, stream, log_start, keyed };
        tasks.push(tokio::spawn(async move { write_file(&lake, &table, &id, &policy, &stats, part, entries).await }));
    }
    let mut files = Vec::new();
    let mut data_files = Vec::new();
    let mut failed = None;
    for t in tasks {
        match t.await.map_err(|e| Error::Other(format!("compaction task: {e}"))).and_then(|r| r) {
            Ok(Some((plan, df))) => {
                files.push(plan);
                data_files.push(df);
            }
            Ok(None) => {}
            Err(e) => failed = Some(e),
        }
    }
    stats.write_ms.fetch_add(started.elapsed().as_millis() as u64, Relaxed);
    if let Some(e) = failed {
        delete_files(lake, &files).await;
        return Err(e);
    }
    if files.is_empty() {
        return Ok(());
    }
    let intent = Intent { id: intent_id.clone(), topic: topic.name.clone(), topic_id: hex(&topic.topic_id), files };
    let key = keys::lake_intent(&intent.topic_id);
    if let Err(e) =
        shared.store.write(vec![Cond::Absent(key.clone())], vec![Op::Put(key.clone(), Bytes::from(intent.encode_to_vec()))]).await
    {
        delete_files(lake, &intent.files).await;
        return Err(e.into());
    }
    let props = HashMap::from([(INTENT_PROP.to_string(), intent_id.clone())]);
    let replaced: std::collections::HashSet<String> = intent.files.iter().flat_map(|f| f.replaces.iter().cloned()).collect();
    let committed = if replaced.is_empty() {
        let tx = Transaction::new(&table);
        let append = tx.fast_append().add_data_files(data_files).set_snapshot_properties(props);
        match append.apply(tx) {
            Ok(tx) => tx.commit(lake.catalog.as_ref()).await.map_err(Error::from),
            Err(e) => Err(e.into()),
        }
    } else {
        // One `overwrite` snapshot: the rewritten files in, the files they replace out.
        match super::retention::commit_change(lake, &table, &replaced, data_files, props).await {
            Ok(_) => lake.catalog.load_table(&Lake::ident(&topic.name)).await.map_err(Error::from),
            Err(e) => Err(e),
        }
    };
    let table = match committed {
        Ok(t) => t,
        Err(e) => {
            // The commit may still have happened (its answer lost): resuming looks at the table.
            tracing::warn!(topic = %topic.name, error = %e, "table commit failed; resolving");
            return resume(shared, lake, &key, intent).await;
        }
    };
    let (rows, parquet): (u64, u64) =
        intent.files.iter().fold((0, 0), |(r, b), f| (r + f.row_groups.iter().map(|g| u64::from(g.rows)).sum::<u64>(), b + f.size));
    stats.files.fetch_add(intent.files.len() as u64, Relaxed);
    stats.rows.fetch_add(rows, Relaxed);
    stats.parquet_bytes.fetch_add(parquet, Relaxed);
    finish(shared, &key, &intent).await?;
    // Only now: a pending intent is resolved by finding its snapshot.
    expire_snapshots(lake, &table).await;
    remember(shared, lake, &topic.name, &intent.topic_id).await
}

/// How long a table keeps the snapshots before its current one (time travel); every commit adds
/// one to the table's metadata, so they cannot all stay.
const SNAPSHOT_MAX_AGE_MS: i64 = 3_600_000;

/// Expires the table's snapshots older than [`SNAPSHOT_MAX_AGE_MS`] (never the current one).
async fn expire_snapshots(lake: &Lake, table: &iceberg::table::Table) {
    let now = now_ms();
    let oldest = table.metadata().snapshots().map(|s| s.timestamp_ms()).min();
    if oldest.is_none_or(|t| now - t < SNAPSHOT_MAX_AGE_MS) || table.metadata().snapshots().count() < 2 {
        return;
    }
    let tx = Transaction::new(table);
    let expired = match tx.expire_snapshots().expire_older_than_ms(now - SNAPSHOT_MAX_AGE_MS).retain_last(1).apply(tx) {
        Ok(tx) => tx.commit(lake.catalog.as_ref()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = expired {
        tracing::warn!(table = %table.identifier(), error = %brief(&e), "cannot expire old snapshots");
    }
}

/// An intent found in the store: swap when its commit is in the table, else delete its files.
async fn resume<M: MetaStore>(shared: &Shared<M>, lake: &Lake, key: &str, intent: Intent) -> Result<(), Error> {
    let ident = Lake::ident(&intent.topic);
    let committed = if lake.catalog.table_exists(&ident).await? {
        let table = lake.catalog.load_table(&ident).await?;
        let found = table.metadata().snapshots().any(|s| s.summary().additional_properties.get(INTENT_PROP) == Some(&intent.id));
        found
    } else {
        false
    };
    if committed {
        finish(shared, key, &intent).await?;
        return remember(shared, lake, &intent.topic, &intent.topic_id).await;
    }
    delete_files(lake, &intent.files).await;
    shared.store.write(vec![], vec![Op::Delete(key.to_string())]).await?;
    Ok(())
}

async fn delete_files(lake: &Lake, files: &[FilePlan]) {
    for f in files {
        if let Err(e) = lake.file_io.delete(&f.url).await {
            tracing::warn!(file = %f.url, error = %brief(&e), "cannot delete an uncommitted Parquet file");
        }
    }
}

/// Swaps every file of a committed intent into the index, then forgets the intent.
async fn finish<M: MetaStore>(shared: &Shared<M>, key: &str, intent: &Intent) -> Result<(), Error> {
    for f in &intent.files {
        swap(shared, &intent.topic_id, f).await?;
    }
    shared.store.write(vec![], vec![Op::Delete(key.to_string())]).await?;
    Ok(())
}

/// Replaces the index entries of `[f.base, f.end)` with the file's row groups, in one
/// transaction conditioned on the entries it read. Entries already gone (trimmed below the log
/// start meanwhile, or the whole stream deleted) are simply not replaced; a file left with no
/// entry is released at once.
async fn swap<M: MetaStore>(shared: &Shared<M>, topic_id: &str, f: &FilePlan) -> Result<(), Error> {
    loop {
        let (a, _) = keys::index_from(f.stream, f.base);
        let b = keys::index(f.stream, f.end + 1);
        let rows = shared.store.range(&a, &b, usize::MAX).await?;
        let log_start = shared.streams.read().expect("poisoned").get(&f.stream).map(|s| s.log_start);
        let mut conds = Vec::new();
        let mut ops = Vec::new();
        let mut per_object: BTreeMap<String, u32> = BTreeMap::new();
        let new: Vec<(usize, &RowGroup)> = match log_start {
            Some(ls) => f.row_groups.iter().enumerate().filter(|(_, g)| g.end > ls).collect(),
            None => Vec::new(),
        };
        let new_keys: std::collections::HashSet<String> = new.iter().map(|(_, g)| keys::index(f.stream, g.end)).collect();
        let mut already = false;
        for (k, v) in &rows {
            let e = IndexEntry::decode(v.value.clone()).map_err(|e| bad("index", e))?;
            if e.format == ENTRY_PARQUET && e.object_key == f.key {
                already = true;
                break;
            }
            *per_object.entry(e.object_key).or_default() += 1;
            conds.push(Cond::Version(k.clone(), v.version));
            if !new_keys.contains(k) {
                ops.push(Op::Delete(k.clone()));
            }
        }
        if already {
            // Swapped before (an answer lost): nothing to do.
            return Ok(());
        }
        lower_refs(shared, per_object, &mut conds, &mut ops).await?;
        for (i, g) in &new {
            let e = IndexEntry {
                base_offset: g.base,
                end_offset: g.end,
                object_key: f.key.clone(),
                position: g.position,
                length: g.length,
                crc: 0,
                max_timestamp: g.max_timestamp,
                batch_count: g.rows,
                format: ENTRY_PARQUET,
                file_size: f.size,
                row_group: *i as u32,
                committed_ms: if g.appended_ms > 0 { g.appended_ms } else { now_ms() },
            };
            ops.push(Op::Put(keys::index(f.stream, g.end), Bytes::from(e.encode_to_vec())));
        }
        let refs = ObjectRefs { entries: new.len() as u32, size: f.size, table_of: topic_id.to_string() };
        let refs_key = if new.is_empty() { keys::lake_released(&f.key) } else { keys::wal_refs(&f.key) };
        ops.push(Op::Put(refs_key, Bytes::from(refs.encode_to_vec())));
        match shared.store.write(conds, ops).await {
            Ok(_) => return Ok(()),
            Err(MetaError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the records of `entries` (WAL chunks, decoded; row groups of files written before)
/// and writes them (key-compacted when the topic is) as one Parquet file of the table.
/// Decoding stops at the first chunk that cannot be decoded (it stays WAL and is reported);
/// None when not even the first can.
async fn write_file(
    lake: &Lake,
    table: &iceberg::table::Table,
    intent_id: &str,
    policy: &Policy,
    stats: &Stats,
    part: Part,
    entries: Vec<IndexEntry>,
) -> Result<Option<(FilePlan, DataFile)>, Error> {
    let Part { partition, stream, .. } = part;
    let mut rows: Vec<Row> = Vec::new();
    let mut end = entries[0].base_offset;
    let mut wal_bytes = 0u64;
    let mut replaces: Vec<String> = Vec::new();
    let mut file: Option<(String, Bytes, ArrowReaderMetadata, HashMap<i64, i64>)> = None;
    let parquet_err = |url: &str, e: parquet::errors::ParquetError| Error::Other(format!("{url}: {e}"));
    for e in &entries {
        if e.format == ENTRY_PARQUET {
            let url = lake.locate(&e.object_key).0;
            if file.as_ref().is_none_or(|f| f.0 != url) {
                let data = lake.file_io.new_input(&url)?.read().await?;
                // Paced after the fact, as the writes are: the size is known once it is read.
                policy.pace(data.len() as u64, stats).await;
                let meta = ArrowReaderMetadata::load(&data, Default::default()).map_err(|e| parquet_err(&url, e))?;
                let kv = meta.metadata().file_metadata().key_value_metadata();
                let marks = kv.and_then(|kv| kv.iter().find(|m| m.key == TOMBSTONES_KEY)).and_then(|m| m.value.as_deref());
                let marks = marks.map(parse_tombstones).unwrap_or_default();
                replaces.push(url.clone());
                file = Some((url, data, meta, marks));
            }
            let Some((url, data, meta, marks)) = &file else { unreachable!("loaded above") };
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(data.clone(), meta.clone())
                .with_row_groups(vec![e.row_group as usize])
                .build()
                .map_err(|err| parquet_err(url, err))?;
            for batch in reader {
                let batch = batch.map_err(|err| Error::Other(format!("{url}: {err}")))?;
                let appended = |offset: i64, tombstone: bool| {
                    if tombstone {
                        marks.get(&offset).copied().unwrap_or(e.committed_ms)
                    } else {
                        e.committed_ms
                    }
                };
                rows.extend(from_arrow(&batch, appended).map_err(|err| Error::Other(format!("{url}: {err}")))?);
            }
            end = e.end_offset;
            continue;
        }
        let (url, at) = lake.locate(&e.object_key);
        policy.pace(u64::from(e.length), stats).await;
        let data = lake.file_io.new_input(&url)?.reader().await?.read(at + e.position..at + e.position + u64::from(e.length)).await?;
        let info = wal_format::object::ChunkInfo { stream_id: stream, position: e.position, length: e.length, crc: e.crc };
        let decoded =
            info.verify(&data).map_err(|err| err.to_string()).and_then(|_| decode_chunk(&data, e.base_offset, e.committed_ms, &mut rows));
        if let Err(err) = decoded {
            stats.undecodable_chunks.fetch_add(1, Relaxed);
            tracing::error!(stream, object = %e.object_key, offset = e.base_offset, error = %err,
                "a WAL chunk cannot be decoded: it stays in the WAL (Kafka clients still read it) and compaction of this partition stops before it");
            break;
        }
        wal_bytes += u64::from(e.length);
        end = e.end_offset;
    }
    rows.retain(|r| r.offset >= part.log_start);
    if let Some(delete_retention_ms) = part.keyed {
        rows = key_compact(rows, now_ms(), delete_retention_ms);
    }
    if end == entries[0].base_offset || rows.is_empty() {
        return Ok(None);
    }
    let schema = table.metadata().current_schema().clone();
    let arrow_schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    let record_bytes: usize =
        rows.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len()) + r.key.as_ref().map_or(0, |k| k.len()) + 24).sum();
    let per_group = (policy.row_group_bytes as usize).saturating_mul(rows.len().max(1)) / record_bytes.max(1);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| Error::Other(e.to_string()))?))
        .set_max_row_group_row_count(Some(per_group.clamp(1, 1 << 20)))
        .set_key_value_metadata(part.keyed.map(|_| vec![KeyValue::new(TOMBSTONES_KEY.to_string(), tombstones_of(&rows))]))
        .build();
    let names = DefaultFileNameGenerator::new(format!("{intent_id}-{partition}"), None, DataFileFormat::Parquet);
    let location = DefaultLocationGenerator::new(table.metadata())?;
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema.clone()),
        usize::MAX / 2,
        table.file_io().clone(),
        location,
        names,
    );
    let spec = table.metadata().default_partition_spec().as_ref().clone();
    let key = PartitionKey::new(spec, schema.clone(), Struct::from_iter([Some(Literal::int(partition))]));
    let mut writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await?;
    let base = entries[0].base_offset;
    for slice in rows.chunks(64 * 1024) {
        let batch = to_arrow(&arrow_schema, partition, slice).map_err(|e| Error::Other(format!("arrow: {e}")))?;
        writer.write(batch).await?;
    }
    let mut written = writer.close().await?;
    if written.len() != 1 {
        return Err(Error::Other(format!("expected one Parquet file, the writer made {}", written.len())));
    }
    let df = written.remove(0);
    let url = df.file_path().to_string();
    let size = df.file_size_in_bytes();
    // Paced after the fact (the writer uploads as it goes): the next I/O waits for this one.
    policy.pace(size, stats).await;
    let Some(object_key) = lake.key_of(&url) else {
        return Err(Error::Other(format!("table file {url} is outside the object store")));
    };
    let row_groups = row_groups(lake, &url, size, &rows, base, end).await?;
    stats.wal_bytes.fetch_add(wal_bytes, Relaxed);
    let plan = FilePlan { stream, base, end, key: object_key, url, size, row_groups, replaces };
    Ok(Some((plan, df)))
}

/// Reads the footer of a written file back and describes its row groups: the byte range of
/// their column chunks and the offsets they hold (rows are in offset order, so row group `i`
/// holds the rows after those of the groups before it). The first starts at `base`, the last
/// ends at `end`, and each starts where the one before ends.
async fn row_groups(lake: &Lake, url: &str, size: u64, rows: &[Row], base: i64, end: i64) -> Result<Vec<RowGroup>, Error> {
    let reader = lake.file_io.new_input(url)?.reader().await?;
    let tail = reader.read(size - 8..size).await?;
    let len = FooterTail::try_from(&tail[..]).map_err(|e| Error::Other(e.to_string()))?.metadata_length() as u64;
    let meta_bytes = reader.read(size - 8 - len..size - 8).await?;
    let meta = ParquetMetaDataReader::decode_metadata(&meta_bytes).map_err(|e| Error::Other(e.to_string()))?;
    let mut out = Vec::new();
    let mut row = 0usize;
    let mut at = base;
    let n = meta.num_row_groups();
    for (i, rg) in meta.row_groups().iter().enumerate() {
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for c in rg.columns() {
            let (start, len) = c.byte_range();
            lo = lo.min(start);
            hi = hi.max(start + len);
        }
        let count = rg.num_rows() as usize;
        let group = &rows[row..row + count];
        row += count;
        let group_end = if i + 1 == n { end } else { rows[row].offset };
        out.push(RowGroup {
            base: at,
            end: group_end,
            position: lo,
            length: (hi - lo) as u32,
            rows: count as u32,
            max_timestamp: group.iter().map(|r| r.timestamp).max().unwrap_or(-1),
            appended_ms: group.iter().map(|r| r.appended_ms).max().unwrap_or(0),
        });
        at = group_end;
    }
    if row != rows.len() {
        return Err(Error::Other(format!("{url}: the footer holds {row} rows, {} were written", rows.len())));
    }
    Ok(out)
}
