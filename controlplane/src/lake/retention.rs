//! The table follows the topic's retention: a Parquet file whose every index entry went
//! (retention, DeleteRecords) is *released* (`lake/released/<key>`, see the garbage collector);
//! each pass removes the released files of a topic from its table in one Iceberg commit (a
//! `delete` snapshot whose manifests mark them deleted), expires the snapshots before it, and
//! only then makes the files garbage, which the data planes delete after the grace period. A
//! topic with `sluice.table.keep=true` keeps its rows in the table (its files stay until the
//! topic is deleted).
//!
//! iceberg-rust 0.10 has no action that removes data files, so the commit is made here from its
//! public parts (manifest and manifest-list writers) and committed by [`Lake::commit_snapshot`]:
//! into the SQL catalog with the same compare-and-set on the metadata location its own commits
//! use, or to a REST catalog through the protocol's commit endpoint.

use super::compact::{brief, Error};
use super::{hex, Lake};
use crate::controller::gc::{bad, garbage_op, now_ms, ObjectRefs};
use crate::controller::Shared;
use crate::meta::{keys, Cond, MetaStore, Op};
use iceberg::spec::{DataFile, ManifestFile, ManifestList, ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, Summary};
use iceberg::table::Table;
use prost::Message;
use sluice_rpc::Topic;
use std::collections::{HashMap, HashSet};

/// Topic config: keep the table's rows after the stream let go of them.
pub const KEEP: &str = "sluice.table.keep";

/// Removes released files from the tables of topics that follow retention, then makes them
/// garbage; released files of deleted topics (whose tables the caller dropped) become garbage
/// at once.
pub async fn apply<M: MetaStore>(shared: &Shared<M>, lake: &Lake, topics: &[Topic]) -> Result<(), Error> {
    let (a, b) = keys::lake_released_all();
    let prefix = a.clone();
    let mut by_topic: HashMap<String, Vec<Released>> = HashMap::new();
    for (key, v) in shared.store.range(&a, &b, usize::MAX).await? {
        let refs = ObjectRefs::decode(v.value).map_err(|e| bad("released", e))?;
        by_topic.entry(refs.table_of).or_default().push((key[prefix.len()..].to_string(), refs.size, v.version));
    }
    for topic in topics {
        let Some(files) = by_topic.remove(&hex(&topic.topic_id)) else { continue };
        let table = lake.table(topic).await?;
        if topic.configs.get(KEEP).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            // Kept in the table; only files a key compaction replaced there can go.
            let live = live_files(&table).await?;
            let replaced: Vec<Released> = files.into_iter().filter(|(k, _, _)| !live.contains(&lake.locate(k).0)).collect();
            if !replaced.is_empty() {
                expire_all(lake, &table).await;
                to_garbage(shared, &replaced).await?;
            }
            continue;
        }
        let urls: HashSet<String> = files.iter().map(|(k, _, _)| lake.locate(k).0).collect();
        remove_files(lake, &table, &urls).await?;
        super::compact::remember(shared, lake, &topic.name, &hex(&topic.topic_id)).await?;
        to_garbage(shared, &files).await?;
        tracing::info!(topic = %topic.name, files = files.len(), "released files left the table");
    }
    // What is left belongs to deleted topics.
    for files in by_topic.values() {
        to_garbage(shared, files).await?;
    }
    Ok(())
}

/// A released file: its key, size, and the version of its record.
type Released = (String, u64, u64);

/// Turns released records into garbage records, a bounded batch per transaction, each
/// conditioned on the record as read.
async fn to_garbage<M: MetaStore>(shared: &Shared<M>, files: &[Released]) -> Result<(), Error> {
    for batch in files.chunks(100) {
        let mut conds = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len() * 2);
        for (object, size, version) in batch {
            conds.push(Cond::Version(keys::lake_released(object), *version));
            ops.push(Op::Delete(keys::lake_released(object)));
            ops.push(garbage_op(object, *size));
        }
        shared.store.write(conds, ops).await?;
    }
    Ok(())
}

/// Commits a snapshot of `table` without the data files at `urls` (those it holds), and expires
/// the snapshots before it so no snapshot refers to them. A lost race with another commit is
/// retried from the table as it then is.
async fn remove_files(lake: &Lake, table: &Table, urls: &HashSet<String>) -> Result<(), Error> {
    let mut table = table.clone();
    for _ in 0..5 {
        match commit_change(lake, &table, urls, Vec::new(), HashMap::new()).await {
            Ok(_) => break,
            Err(Error::Other(e)) if e == CONFLICT => table = lake.catalog.load_table(table.identifier()).await?,
            Err(e) => return Err(e),
        }
    }
    expire_all(lake, &lake.catalog.load_table(table.identifier()).await?).await;
    Ok(())
}

/// Expires every snapshot but the current one.
async fn expire_all(lake: &Lake, table: &Table) {
    if table.metadata().snapshots().count() < 2 {
        return;
    }
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let tx = Transaction::new(table);
    let expired = match tx.expire_snapshots().expire_older_than_ms(now_ms()).retain_last(1).apply(tx) {
        Ok(tx) => tx.commit(lake.catalog.as_ref()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = expired {
        // Old snapshots only keep time travel possible; the next pass expires them.
        tracing::warn!(table = %table.identifier(), error = %brief(&e), "cannot expire snapshots");
    }
}

/// The data files the table's current snapshot holds.
async fn live_files(table: &Table) -> Result<HashSet<String>, Error> {
    let meta = table.metadata();
    let Some(current) = meta.current_snapshot() else { return Ok(HashSet::new()) };
    let io = table.file_io();
    let list = ManifestList::parse_with_version(&io.new_input(current.manifest_list())?.read().await?, meta.format_version())?;
    let mut out = HashSet::new();
    for mf in list.entries() {
        let manifest = mf.load_manifest(io).await?;
        out.extend(manifest.entries().iter().filter(|e| e.is_alive()).map(|e| e.file_path().to_string()));
    }
    Ok(out)
}

pub(super) const CONFLICT: &str = "table changed meanwhile";

/// Commits one snapshot that removes the data files at `urls` (those the table holds) and adds
/// `add`, carrying `props` in its summary: a `delete` snapshot, or an `overwrite` when it adds.
/// False when there was nothing to do; [`CONFLICT`] when another commit came first.
pub(super) async fn commit_change(
    lake: &Lake,
    table: &Table,
    urls: &HashSet<String>,
    add: Vec<DataFile>,
    props: HashMap<String, String>,
) -> Result<bool, Error> {
    let meta = table.metadata();
    let io = table.file_io();
    let existing: Vec<ManifestFile> = match meta.current_snapshot() {
        Some(current) => {
            let bytes = io.new_input(current.manifest_list())?.read().await?;
            ManifestList::parse_with_version(&bytes, meta.format_version())?.consume_entries().into_iter().collect()
        }
        None if add.is_empty() => return Ok(false),
        None => Vec::new(),
    };
    let parent = meta.current_snapshot().map(|s| s.snapshot_id());
    let snapshot_id = loop {
        let id = (uuid::Uuid::new_v4().as_u128() as i64) & i64::MAX;
        if id > 0 && meta.snapshot_by_id(id).is_none() {
            break id;
        }
    };
    let seq = meta.next_sequence_number();
    let schema = meta.current_schema().clone();
    let (mut manifests, mut removed, mut removed_rows) = (Vec::new(), 0u64, 0u64);
    for mf in &existing {
        // A manifest holding only the entries of files an earlier commit removed says nothing
        // about this snapshot: left out, as Iceberg's own writers leave them out (otherwise every
        // removal would leave one in the table's manifest list for good).
        if mf.added_files_count == Some(0) && mf.existing_files_count == Some(0) {
            continue;
        }
        let manifest = mf.load_manifest(io).await?;
        if !manifest.entries().iter().any(|e| e.is_alive() && urls.contains(e.file_path())) {
            manifests.push(mf.clone());
            continue;
        }
        let spec = meta
            .partition_spec_by_id(mf.partition_spec_id)
            .ok_or_else(|| Error::Other(format!("no partition spec {}", mf.partition_spec_id)))?
            .as_ref()
            .clone();
        let out = io.new_output(format!("{}/metadata/{}-m0.avro", meta.location(), uuid::Uuid::new_v4()))?;
        let mut w = ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec).build_v2_data();
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let (seq_no, file_seq) =
                (e.sequence_number().unwrap_or(mf.sequence_number), e.file_sequence_number.or(Some(mf.sequence_number)));
            if urls.contains(e.file_path()) {
                w.add_delete_file(e.data_file().clone(), seq_no, file_seq)?;
                removed += 1;
                removed_rows += e.record_count();
            } else {
                w.add_existing_file(e.data_file().clone(), e.snapshot_id().or(parent).unwrap_or_default(), seq_no, file_seq)?;
            }
        }
        manifests.push(w.write_manifest_file().await?);
    }
    if removed == 0 && add.is_empty() {
        return Ok(false);
    }
    let (added, added_rows) = (add.len(), add.iter().map(|f| f.record_count()).sum::<u64>());
    if !add.is_empty() {
        let spec = meta.default_partition_spec().as_ref().clone();
        let out = io.new_output(format!("{}/metadata/{}-m0.avro", meta.location(), uuid::Uuid::new_v4()))?;
        let mut w = ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec).build_v2_data();
        for f in add {
            w.add_file(f, seq)?;
        }
        manifests.push(w.write_manifest_file().await?);
    }
    let list_url = format!("{}/metadata/snap-{snapshot_id}-0-{}.avro", meta.location(), uuid::Uuid::new_v4());
    let mut lw = ManifestListWriter::v2(io.new_output(&list_url)?.writer().await?, snapshot_id, parent, seq);
    lw.add_manifests(manifests.into_iter())?;
    lw.close().await?;
    let mut props = props;
    props.extend([
        ("deleted-data-files".to_string(), removed.to_string()),
        ("deleted-records".to_string(), removed_rows.to_string()),
        ("added-data-files".to_string(), added.to_string()),
        ("added-records".to_string(), added_rows.to_string()),
    ]);
    let operation = if added > 0 { Operation::Overwrite } else { Operation::Delete };
    let summary = Summary { operation, additional_properties: props };
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(parent)
        .with_sequence_number(seq)
        .with_timestamp_ms(now_ms())
        .with_manifest_list(list_url)
        .with_schema_id(meta.current_schema_id())
        .with_summary(summary)
        .build();
    if !lake.commit_snapshot(table, snapshot).await.map_err(Error::Other)? {
        return Err(Error::Other(CONFLICT.into()));
    }
    Ok(true)
}
