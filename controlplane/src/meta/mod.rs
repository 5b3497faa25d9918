//! The metadata store, seen through Oxia's primitives: versioned get/put/delete, compare-and-set
//! on version, ordered range listing, atomic multi-key transactions, a watch feed from a
//! revision, and ephemeral keys bound to a session.
//!
//! The control plane is the only writer; everything it writes goes through [`MetaStore`], so the
//! embedded backend ([`RedbMetaStore`]) and a networked one (etcd) are interchangeable. Once it
//! has taken over, it sees the store only through [`Fenced`], whose every write carries its
//! epoch.

mod etcd_store;
mod fenced;
mod redb_store;

pub use etcd_store::EtcdMetaStore;
pub use fenced::Fenced;
pub use redb_store::RedbMetaStore;

use bytes::Bytes;
use std::future::Future;

/// A value and the revision that last wrote it (its version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Stored bytes.
    pub value: Bytes,
    /// Revision of the write that produced this value.
    pub version: u64,
}

/// A condition a transaction checks before it applies its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key exists at exactly this version.
    Version(String, u64),
    /// The key does not exist.
    Absent(String),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(String, Bytes),
    /// Set a key that disappears when `session` ends.
    PutEphemeral(String, Bytes, SessionId),
    /// Remove a key (no error when absent).
    Delete(String),
    /// Remove every key in `[start, end)`.
    DeleteRange(String, String),
}

/// Identifies a session that owns ephemeral keys.
pub type SessionId = u64;

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Revision of the transaction that made the change.
    pub revision: u64,
    /// Key changed.
    pub key: String,
    /// New value, `None` when deleted.
    pub value: Option<Bytes>,
}

/// Errors of the metadata store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    /// The backend failed (I/O, corruption, lost connection).
    #[error("metadata store: {0}")]
    Backend(String),
    /// A condition of a transaction or a compare-and-set did not hold.
    #[error("condition failed")]
    ConditionFailed,
    /// Another control plane took over: this one's writes are refused.
    #[error("fenced: another control plane took over the metadata store")]
    Fenced,
    /// Watch requested from a revision that is no longer retained.
    #[allow(dead_code)]
    #[error("revision {0} compacted")]
    Compacted(u64),
}

/// Result with [`MetaError`].
pub type MetaResult<T> = Result<T, MetaError>;

/// Oxia's primitives. Every method is atomic; a transaction's operations apply together or not
/// at all, and all keys it writes get the same new revision as their version.
pub trait MetaStore: Send + Sync + 'static {
    /// Reads a key.
    fn get(&self, key: &str) -> impl Future<Output = MetaResult<Option<Versioned>>> + Send;
    /// Lists keys in `[start, end)` in order, at most `limit`.
    fn range(&self, start: &str, end: &str, limit: usize) -> impl Future<Output = MetaResult<Vec<(String, Versioned)>>> + Send;
    /// Applies `ops` if every condition holds; returns the new revision.
    fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>) -> impl Future<Output = MetaResult<u64>> + Send;
    /// Starts a session for ephemeral keys.
    fn open_session(&self) -> impl Future<Output = MetaResult<SessionId>> + Send;
    /// Ends a session, deleting its ephemeral keys.
    fn close_session(&self, session: SessionId) -> impl Future<Output = MetaResult<()>> + Send;
    /// Sessions that ended without being closed (their ephemeral keys are gone): whoever put
    /// keys under one must put them again under a new session.
    fn lost_sessions(&self) -> tokio::sync::broadcast::Receiver<SessionId>;
    /// Changes after `from_revision`, in revision order, then live changes. Part of the Oxia
    /// contract (a standby control plane follows the leader's writes with it); the single-node
    /// control plane pushes its own changes directly and does not call it yet.
    #[allow(dead_code)]
    fn watch(&self, from_revision: u64) -> MetaResult<tokio::sync::mpsc::UnboundedReceiver<WatchEvent>>;

    /// Write transactions this process committed (for `/metrics`).
    fn transactions(&self) -> u64;

    /// Compare-and-set of one key: `expected` `None` means the key must be absent.
    fn put(&self, key: &str, value: Bytes, expected: Option<u64>) -> impl Future<Output = MetaResult<u64>> + Send {
        let cond = match expected {
            Some(v) => Cond::Version(key.to_string(), v),
            None => Cond::Absent(key.to_string()),
        };
        self.txn(vec![cond], vec![Op::Put(key.to_string(), value)])
    }
}

/// The key layout under `/sluice/v1/`.
pub mod keys {
    const ROOT: &str = "/sluice/v1/";

    /// The prefix of every key.
    pub fn root() -> &'static str {
        ROOT
    }

    /// The control plane epoch (fences commits of a deposed control plane).
    pub fn epoch() -> String {
        format!("{ROOT}cluster/epoch")
    }
    /// The leading control plane's RPC address, on its session (the election).
    pub fn leader() -> String {
        format!("{ROOT}cluster/leader")
    }
    /// Cluster id.
    pub fn cluster_id() -> String {
        format!("{ROOT}cluster/id")
    }
    /// Next stream id to allocate.
    pub fn next_stream() -> String {
        format!("{ROOT}cluster/next_stream_id")
    }
    /// Next producer id to hand out.
    pub fn next_producer_id() -> String {
        format!("{ROOT}cluster/next_producer_id")
    }
    /// A registered data plane (ephemeral).
    pub fn broker(node_id: i32) -> String {
        format!("{ROOT}cluster/brokers/{node_id:010}")
    }
    /// The generation of the registered data planes' list (the leader epoch clients see).
    pub fn broker_generation() -> String {
        format!("{ROOT}cluster/broker_generation")
    }
    /// Prefix of every broker key.
    pub fn brokers() -> (String, String) {
        (format!("{ROOT}cluster/brokers/"), format!("{ROOT}cluster/brokers0"))
    }
    /// A topic.
    pub fn topic(name: &str) -> String {
        format!("{ROOT}topics/{name}")
    }
    /// Range of every topic key.
    pub fn topics() -> (String, String) {
        (format!("{ROOT}topics/"), format!("{ROOT}topics0"))
    }
    /// Log start and high watermark of a stream.
    pub fn hwm(stream: u64) -> String {
        format!("{ROOT}streams/{stream:020}/hwm")
    }
    /// Index entry of a stream, keyed by its exclusive end offset.
    pub fn index(stream: u64, end_offset: i64) -> String {
        format!("{ROOT}streams/{stream:020}/index/{end_offset:020}")
    }
    /// Every index key of a stream from the entry holding `offset` on.
    pub fn index_from(stream: u64, offset: i64) -> (String, String) {
        (index(stream, offset + 1), format!("{ROOT}streams/{stream:020}/index0"))
    }
    /// Every index key of a stream whose entry ends at or below `offset`.
    pub fn index_below(stream: u64, offset: i64) -> (String, String) {
        (index(stream, 0), index(stream, offset.saturating_add(1)))
    }
    /// A stream of a deleted topic whose index entries are still to be let go of.
    pub fn deleted_stream(stream: u64) -> String {
        format!("{ROOT}deleted_streams/{stream:020}")
    }
    /// Range of every [`deleted_stream`] key.
    pub fn deleted_streams() -> (String, String) {
        (format!("{ROOT}deleted_streams/"), format!("{ROOT}deleted_streams0"))
    }
    /// How many index entries refer to a committed WAL object, and its size.
    pub fn wal_refs(object_key: &str) -> String {
        format!("{ROOT}wal/refs/{object_key}")
    }
    /// Range of every [`wal_refs`] key.
    pub fn wal_refs_all() -> (String, String) {
        (format!("{ROOT}wal/refs/"), format!("{ROOT}wal/refs0"))
    }
    /// When the orphan sweep first ran against this store (milliseconds since the epoch).
    pub fn lake_sweep_since() -> String {
        format!("{ROOT}lake/sweep_since")
    }
    /// A WAL object no index entry refers to any more: to be deleted from the object store.
    pub fn wal_garbage(object_key: &str) -> String {
        format!("{ROOT}wal/garbage/{object_key}")
    }
    /// Range of every [`wal_garbage`] key.
    pub fn wal_garbage_all() -> (String, String) {
        (format!("{ROOT}wal/garbage/"), format!("{ROOT}wal/garbage0"))
    }
    /// A committed WAL object, with the offsets its commit assigned.
    pub fn wal_object(object_key: &str) -> String {
        format!("{ROOT}wal/objects/{object_key}")
    }
    /// Range of every committed-WAL-object record.
    pub fn wal_objects() -> (String, String) {
        (format!("{ROOT}wal/objects/"), format!("{ROOT}wal/objects0"))
    }
    /// A Parquet file of a topic's table that no index entry refers to any more: it stays in
    /// the object store while its table holds it. The value is the topic id.
    pub fn lake_released(object_key: &str) -> String {
        format!("{ROOT}lake/released/{object_key}")
    }
    /// Range of every [`lake_released`] key.
    pub fn lake_released_all() -> (String, String) {
        (format!("{ROOT}lake/released/"), format!("{ROOT}lake/released0"))
    }
    /// The current metadata file of a topic's table: the catalog's own record, kept here too so
    /// a control plane taking over (or one whose disk was lost) continues the same table.
    pub fn lake_table(topic_id: &str) -> String {
        format!("{ROOT}lake/tables/{topic_id}")
    }
    /// Range of every [`lake_table`] key.
    pub fn lake_tables() -> (String, String) {
        (format!("{ROOT}lake/tables/"), format!("{ROOT}lake/tables0"))
    }
    /// A compaction of a topic under way: its files, maybe committed to the table, whose index
    /// swap is not done.
    pub fn lake_intent(topic_id: &str) -> String {
        format!("{ROOT}lake/intents/{topic_id}")
    }
    /// Range of every [`lake_intent`] key.
    pub fn lake_intents() -> (String, String) {
        (format!("{ROOT}lake/intents/"), format!("{ROOT}lake/intents0"))
    }
    /// Every key of every group.
    pub fn groups() -> (String, String) {
        (format!("{ROOT}groups/"), format!("{ROOT}groups0"))
    }
    /// A group's membership record.
    pub fn group_meta(group: &str) -> String {
        format!("{ROOT}groups/{}/meta", escape(group))
    }
    /// A group's committed offset of one partition.
    pub fn group_offset(group: &str, topic: &str, partition: i32) -> String {
        format!("{ROOT}groups/{}/offsets/{topic}/{partition:010}", escape(group))
    }
    /// Every committed offset of one group on one topic.
    pub fn group_topic_offsets(group: &str, topic: &str) -> (String, String) {
        let g = escape(group);
        (format!("{ROOT}groups/{g}/offsets/{topic}/"), format!("{ROOT}groups/{g}/offsets/{topic}0"))
    }
    /// Every key of one group.
    pub fn group_all(group: &str) -> (String, String) {
        let g = escape(group);
        (format!("{ROOT}groups/{g}/"), format!("{ROOT}groups/{g}0"))
    }
    /// Group id and the rest of a key inside [`groups`].
    pub fn parse_group_key(key: &str) -> Option<(String, &str)> {
        let rest = key.strip_prefix(ROOT)?.strip_prefix("groups/")?;
        let (g, rest) = rest.split_once('/')?;
        Some((unescape(g)?, rest))
    }
    /// Group ids are any string; `/` and `%` are escaped so a group's keys stay under one prefix.
    fn escape(group: &str) -> String {
        group.replace('%', "%25").replace('/', "%2F")
    }
    fn unescape(g: &str) -> Option<String> {
        Some(g.replace("%2F", "/").replace("%25", "%"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A key under the root, as every key Sluice writes is.
    pub(crate) fn k(name: &str) -> String {
        format!("{}test/{name}", keys::root())
    }

    /// What every metadata store must do; run by each implementation's tests on a fresh store.
    pub(crate) async fn contract<M: MetaStore>(store: &M) {
        let mut watch = store.watch(0).unwrap();
        let v1 = store.put(&k("a"), Bytes::from_static(b"1"), None).await.unwrap();
        assert!(matches!(store.put(&k("a"), Bytes::from_static(b"x"), None).await, Err(MetaError::ConditionFailed)));
        let v2 = store.put(&k("a"), Bytes::from_static(b"2"), Some(v1)).await.unwrap();
        assert!(v2 > v1);
        assert_eq!(store.get(&k("a")).await.unwrap().map(|v| (v.value, v.version)), Some((Bytes::from_static(b"2"), v2)));
        assert!(matches!(store.put(&k("a"), Bytes::from_static(b"3"), Some(v1)).await, Err(MetaError::ConditionFailed)));
        store
            .txn(vec![Cond::Absent(k("b"))], vec![Op::Put(k("b"), Bytes::from_static(b"b")), Op::Put(k("c"), Bytes::from_static(b"c"))])
            .await
            .unwrap();
        let keys: Vec<String> = store.range(&k("a"), &k("z"), 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [k("a"), k("b"), k("c")]);
        assert_eq!(store.range(&k("a"), &k("z"), 2).await.unwrap().len(), 2);
        // A failed condition applies nothing.
        let failed = store.txn(vec![Cond::Absent(k("a"))], vec![Op::Delete(k("b"))]).await;
        assert!(matches!(failed, Err(MetaError::ConditionFailed)));
        assert!(store.get(&k("b")).await.unwrap().is_some());
        store.txn(vec![], vec![Op::DeleteRange(k("b"), k("c0"))]).await.unwrap();
        assert!(store.get(&k("b")).await.unwrap().is_none() && store.get(&k("c")).await.unwrap().is_none());
        let first = watch.recv().await.unwrap();
        assert_eq!((first.key, first.revision, first.value), (k("a"), v1, Some(Bytes::from_static(b"1"))));

        let s = store.open_session().await.unwrap();
        store.txn(vec![], vec![Op::PutEphemeral(k("e"), Bytes::from_static(b"e"), s)]).await.unwrap();
        assert!(store.get(&k("e")).await.unwrap().is_some());
        store.close_session(s).await.unwrap();
        assert!(store.get(&k("e")).await.unwrap().is_none());
        assert!(store.transactions() >= 4);
    }
}
