//! The orphan sweep: objects written to the object store but never committed. A data plane that
//! dies between the put of a WAL object and its commit leaves an object no index entry names,
//! and a control plane killed while compaction writes a Parquet file (before its intent is
//! recorded) leaves a file no table and no index know. Neither has a record in the metadata
//! store, so the garbage collector, which works from reference counts, never sees them.
//!
//! The sweep lists the object store (WAL objects and the tables' data files; not the Iceberg
//! metadata, which snapshot expiry manages, and not the local store's segments, whose unused
//! ranges are not objects of their own) and makes garbage of every object that
//!
//! - was last modified more than the grace period ago (a WAL object's commit follows its put by
//!   milliseconds; the grace is an hour by default), and after the sweep first ran against this
//!   metadata store (objects of older versions, which kept no reference counts, are left alone),
//! - has no reference count, no garbage or released record and no commit record, and
//! - is not a file of a compaction under way (an intent).
//!
//! It runs between compaction passes, on the same task, so no compaction writes a file while it
//! lists; the data planes delete what it marks after the usual garbage grace period.
//!
//! It also deletes the tables' Iceberg metadata no table reaches any more (older than the grace
//! period, so a reader that loaded a table just before still finds its files): of a live
//! table, every metadata, manifest-list and manifest file that neither its current metadata,
//! its metadata log nor its snapshots (expired after an hour) name; of a dropped table (a
//! deleted topic), all of it.

use super::compact::Error;
use super::Lake;
use crate::controller::gc::{bad, garbage_op, now_ms};
use crate::controller::Shared;
use crate::meta::{keys, Cond, MetaStore, Op};
use bytes::Bytes;
use futures::TryStreamExt;
use iceberg::spec::ManifestList;
use sluice_rpc::Topic;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Builds the operator that lists the object store (the data planes' store, as the lake sees it).
pub fn operator(lake: &Lake) -> Result<opendal::Operator, String> {
    let cfg = &lake.cfg;
    let op = if let Some(dir) = cfg.store_root.strip_prefix("file://") {
        opendal::Operator::new(opendal::services::Fs::default().root(dir)).map(|b| b.finish())
    } else {
        let rest = cfg.store_root.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prop = |k: &str| cfg.props.get(k).map(String::as_str).unwrap_or_default();
        let s3 = opendal::services::S3::default()
            .bucket(bucket)
            .root(&format!("/{prefix}"))
            .endpoint(prop("s3.endpoint"))
            .region(prop("s3.region"))
            .access_key_id(prop("s3.access-key-id"))
            .secret_access_key(prop("s3.secret-access-key"))
            .disable_config_load()
            .disable_ec2_metadata();
        opendal::Operator::new(s3).map(|b| b.finish())
    };
    op.map_err(|e| format!("object store listing: {e}"))
}

/// The object-store key of a listed path, when the sweep looks after it: WAL objects
/// (`<id>.wal`; `wal/<id>.wal` in a local directory) and the tables' data files.
fn swept_key(path: &str, local: bool) -> Option<String> {
    if path.ends_with('/') {
        return None;
    }
    if path.starts_with("tables/") {
        return (path.contains("/data/") && path.ends_with(".parquet")).then(|| path.to_string());
    }
    let name = if local { path.strip_prefix("wal/")? } else { path };
    (!name.contains('/') && name.ends_with(".wal")).then(|| name.to_string())
}

/// What the sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Objects made garbage.
    pub orphans: u64,
    /// Iceberg metadata files deleted.
    pub metadata_files: u64,
}

/// The files of a table's metadata that its current metadata reaches (URLs).
async fn reachable(table: &iceberg::table::Table) -> Result<HashSet<String>, Error> {
    let meta = table.metadata();
    let io = table.file_io();
    let mut out: HashSet<String> = meta.metadata_log().iter().map(|m| m.metadata_file.clone()).collect();
    out.extend(table.metadata_location().map(str::to_string));
    for snapshot in meta.snapshots() {
        out.insert(snapshot.manifest_list().to_string());
        let bytes = io.new_input(snapshot.manifest_list())?.read().await?;
        for mf in ManifestList::parse_with_version(&bytes, meta.format_version())?.entries() {
            out.insert(mf.manifest_path.clone());
        }
    }
    Ok(out)
}

/// The table directory (`tables/<dir>`) of a listed path under a table's `metadata/`.
fn metadata_dir(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("tables/")?;
    let (dir, file) = rest.split_once("/metadata/")?;
    (!dir.contains('/') && !file.is_empty() && !file.ends_with('/')).then_some(dir)
}

/// Marks the orphans older than `grace` as garbage and deletes unreachable table metadata.
pub async fn sweep<M: MetaStore>(
    shared: &Shared<M>,
    lake: &Lake,
    op: &opendal::Operator,
    grace: Duration,
    topics: &[Topic],
) -> Result<Swept, Error> {
    let since = since(shared).await?;
    let now = now_ms();
    let horizon = now - grace.as_millis() as i64;
    let mut known: HashSet<String> = HashSet::new();
    for (a, b) in [keys::wal_refs_all(), keys::wal_garbage_all(), keys::wal_objects(), keys::lake_released_all()] {
        for (key, _) in shared.store.range(&a, &b, usize::MAX).await? {
            known.insert(key[a.len()..].to_string());
        }
    }
    let (a, b) = keys::lake_intents();
    for (_, v) in shared.store.range(&a, &b, usize::MAX).await? {
        known.extend(super::compact::intent_keys(v.value).map_err(|e| bad("intent", e))?);
    }
    // The reachable metadata of each live topic's table, by table directory (None: no table yet).
    let mut live: HashMap<String, Option<HashSet<String>>> = HashMap::new();
    for topic in topics {
        let id = super::hex(&topic.topic_id);
        let ident = Lake::ident(&topic.name);
        let files = if lake.catalog.table_exists(&ident).await? {
            let table = lake.catalog.load_table(&ident).await?;
            let props = table.metadata().properties();
            (props.get(super::TOPIC_ID_PROP) == Some(&id)).then_some(reachable(&table).await?)
        } else {
            None
        };
        live.insert(id[..16.min(id.len())].to_string(), files);
    }
    let local = lake.cfg.local();
    let mut lister = op.lister_with("").recursive(true).await.map_err(other)?;
    let mut orphans = Vec::new();
    let mut unreachable = Vec::new();
    while let Some(entry) = lister.try_next().await.map_err(other)? {
        let path = entry.path();
        let key = swept_key(path, local);
        let dir = metadata_dir(path);
        let candidate = match (&key, dir) {
            (Some(k), _) => !known.contains(k),
            (None, Some(d)) => match live.get(d) {
                Some(Some(files)) => !files.contains(&lake.locate(path).0),
                Some(None) => false,
                None => true,
            },
            (None, None) => false,
        };
        if !candidate {
            continue;
        }
        let modified = match entry.metadata().last_modified() {
            Some(t) => t,
            None => match op.stat(path).await {
                Ok(m) => match m.last_modified() {
                    Some(t) => t,
                    None => continue,
                },
                // Gone meanwhile.
                Err(_) => continue,
            },
        };
        let ms = SystemTime::from(modified).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        if ms >= horizon || ms <= since {
            continue;
        }
        match key {
            Some(k) => orphans.push((k, entry.metadata().content_length())),
            None => unreachable.push(path.to_string()),
        }
    }
    let mut deleted = 0;
    for path in &unreachable {
        match op.delete(path).await {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(file = %path, error = %e, "cannot delete unreachable table metadata"),
        }
    }
    if deleted > 0 {
        tracing::info!(files = deleted, "deleted table metadata no table reaches");
    }
    for batch in orphans.chunks(100) {
        let mut conds = Vec::with_capacity(batch.len() * 2);
        let mut ops = Vec::with_capacity(batch.len());
        for (key, size) in batch {
            tracing::info!(object = %key, "an object no index or table refers to (written, never committed) is garbage");
            conds.push(Cond::Absent(keys::wal_refs(key)));
            conds.push(Cond::Absent(keys::wal_garbage(key)));
            ops.push(garbage_op(key, *size));
        }
        shared.store.write(conds, ops).await?;
    }
    Ok(Swept { orphans: orphans.len() as u64, metadata_files: deleted })
}

/// When the sweep first ran against this metadata store (recorded then).
async fn since<M: MetaStore>(shared: &Shared<M>) -> Result<i64, Error> {
    let key = keys::lake_sweep_since();
    if let Some(v) = shared.store.get(&key).await? {
        return std::str::from_utf8(&v.value).ok().and_then(|s| s.parse().ok()).ok_or_else(|| Error::Other(format!("bad {key}")));
    }
    let now = now_ms();
    shared.store.write(vec![Cond::Absent(key.clone())], vec![Op::Put(key, Bytes::from(now.to_string()))]).await?;
    Ok(now)
}

fn other(e: opendal::Error) -> Error {
    Error::Other(format!("object store listing: {e}"))
}

#[cfg(test)]
mod tests {
    use super::swept_key;

    #[test]
    fn only_wal_objects_and_table_data_files_are_swept() {
        let id = "0123456789abcdef0123456789abcdef.wal";
        assert_eq!(swept_key(id, false).as_deref(), Some(id));
        assert_eq!(swept_key(&format!("wal/{id}"), true).as_deref(), Some(id));
        assert_eq!(swept_key(id, true), None, "a local store keeps WAL files under wal/");
        assert_eq!(swept_key("seg/00000001", true), None, "segments are not objects");
        let data = "tables/00112233445566778/data/partition=0/a-0-00001.parquet";
        assert_eq!(swept_key(data, false).as_deref(), Some(data));
        assert_eq!(swept_key("tables/00112233445566778/metadata/00001-x.metadata.json", false), None);
        assert_eq!(swept_key("tables/00112233445566778/metadata/snap-1.avro", true), None);
        assert_eq!(swept_key("tmp/x.wal", true), None);
        assert_eq!(swept_key("wal/", true), None);
    }

    #[test]
    fn metadata_files_are_known_by_their_table_directory() {
        use super::metadata_dir;
        assert_eq!(metadata_dir("tables/0011223344556677/metadata/00001-x.metadata.json"), Some("0011223344556677"));
        assert_eq!(metadata_dir("tables/0011223344556677/metadata/snap-1-0-x.avro"), Some("0011223344556677"));
        assert_eq!(metadata_dir("tables/0011223344556677/data/partition=0/x.parquet"), None);
        assert_eq!(metadata_dir("tables/0011223344556677/metadata/"), None);
        assert_eq!(metadata_dir("x.wal"), None);
    }
}
