//! Embedded metadata store on `redb`, in the data directory: the default for one machine.
//!
//! Each value is stored behind a 16-byte prefix:
//!
//! ```text
//! | version u64 (revision of the last write) | session u64 (0: persistent) | value ... |
//! ```
//!
//! The current revision lives in a second table. Every transaction runs in one redb write
//! transaction committed with `Durability::Immediate` (fsync), so a returned revision is on disk.
//! Sessions live only as long as this process: ephemeral keys left by a previous process are
//! deleted when the store opens, as etcd would once their lease expired.

use super::{Cond, MetaError, MetaResult, MetaStore, Op, SessionId, Versioned, WatchEvent};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const REVISION: TableDefinition<&str, u64> = TableDefinition::new("revision");
const PREFIX: usize = 16;
/// Changes kept in memory for watchers that start from an older revision.
const HISTORY: usize = 65_536;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct RedbMetaStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    never_lost: tokio::sync::broadcast::Sender<SessionId>,
    transactions: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_session: SessionId,
    sessions: HashMap<SessionId, HashSet<String>>,
    history: VecDeque<WatchEvent>,
    watchers: Vec<mpsc::UnboundedSender<WatchEvent>>,
    revision: u64,
}

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend(e.to_string())
}

fn split(raw: &[u8]) -> (u64, u64, &[u8]) {
    let version = u64::from_be_bytes(raw[0..8].try_into().expect("prefix"));
    let session = u64::from_be_bytes(raw[8..16].try_into().expect("prefix"));
    (version, session, &raw[PREFIX..])
}

fn join(version: u64, session: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(PREFIX + value.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&session.to_be_bytes());
    v.extend_from_slice(value);
    v
}

impl RedbMetaStore {
    /// Opens (or creates) the store at `path` and deletes ephemeral keys of dead sessions.
    pub fn open(path: &Path) -> MetaResult<Self> {
        let db = Database::create(path).map_err(|e| MetaError::Backend(format!("{}: {e}", path.display())))?;
        let revision;
        {
            let w = db.begin_write().map_err(backend)?;
            {
                let mut kv = w.open_table(KV).map_err(backend)?;
                let mut rev = w.open_table(REVISION).map_err(backend)?;
                revision = rev.get("rev").map_err(backend)?.map(|g| g.value()).unwrap_or(0);
                let stale: Vec<String> = kv
                    .iter()
                    .map_err(backend)?
                    .filter_map(|r| r.ok())
                    .filter(|(_, v)| split(v.value()).1 != 0)
                    .map(|(k, _)| k.value().to_string())
                    .collect();
                for k in &stale {
                    kv.remove(k.as_str()).map_err(backend)?;
                }
                rev.insert("rev", revision).map_err(backend)?;
            }
            w.commit().map_err(backend)?;
        }
        let state = State { next_session: 1, revision, ..State::default() };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                never_lost: tokio::sync::broadcast::channel(1).0,
                transactions: Default::default(),
                state: Mutex::new(state),
            }),
        })
    }

    fn apply(&self, conds: Vec<Cond>, ops: Vec<Op>) -> MetaResult<u64> {
        let mut state = self.inner.state.lock().expect("poisoned");
        let w = self.inner.db.begin_write().map_err(backend)?;
        let revision = state.revision + 1;
        let mut events = Vec::new();
        {
            let mut kv = w.open_table(KV).map_err(backend)?;
            for c in &conds {
                let ok = match c {
                    Cond::Version(k, v) => kv.get(k.as_str()).map_err(backend)?.is_some_and(|g| split(g.value()).0 == *v),
                    Cond::Absent(k) => kv.get(k.as_str()).map_err(backend)?.is_none(),
                };
                if !ok {
                    return Err(MetaError::ConditionFailed);
                }
            }
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        kv.insert(k.as_str(), join(revision, 0, v).as_slice()).map_err(backend)?;
                        events.push(WatchEvent { revision, key: k.clone(), value: Some(v.clone()) });
                    }
                    Op::PutEphemeral(k, v, s) => {
                        kv.insert(k.as_str(), join(revision, *s, v).as_slice()).map_err(backend)?;
                        events.push(WatchEvent { revision, key: k.clone(), value: Some(v.clone()) });
                    }
                    Op::Delete(k) => {
                        if kv.remove(k.as_str()).map_err(backend)?.is_some() {
                            events.push(WatchEvent { revision, key: k.clone(), value: None });
                        }
                    }
                    Op::DeleteRange(a, b) => {
                        let doomed: Vec<String> = kv
                            .range(a.as_str()..b.as_str())
                            .map_err(backend)?
                            .filter_map(|r| r.ok())
                            .map(|(k, _)| k.value().to_string())
                            .collect();
                        for k in doomed {
                            kv.remove(k.as_str()).map_err(backend)?;
                            events.push(WatchEvent { revision, key: k, value: None });
                        }
                    }
                }
            }
            let mut rev = w.open_table(REVISION).map_err(backend)?;
            rev.insert("rev", revision).map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        self.inner.transactions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.revision = revision;
        for op in &ops {
            if let Op::PutEphemeral(k, _, s) = op {
                state.sessions.entry(*s).or_default().insert(k.clone());
            }
        }
        for ev in events {
            state.watchers.retain(|w| w.send(ev.clone()).is_ok());
            if state.history.len() == HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(ev);
        }
        Ok(revision)
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> MetaResult<T>) -> MetaResult<T> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let kv = r.open_table(KV).map_err(backend)?;
        f(&kv)
    }
}

/// Runs blocking redb work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> MetaResult<T> + Send + 'static) -> MetaResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(backend)?
}

impl MetaStore for RedbMetaStore {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        let (me, key) = (self.clone(), key.to_string());
        blocking(move || {
            me.read(|kv| {
                Ok(kv.get(key.as_str()).map_err(backend)?.map(|g| {
                    let (version, _, v) = split(g.value());
                    Versioned { value: Bytes::copy_from_slice(v), version }
                }))
            })
        })
        .await
    }

    async fn range(&self, start: &str, end: &str, limit: usize) -> MetaResult<Vec<(String, Versioned)>> {
        let (me, start, end) = (self.clone(), start.to_string(), end.to_string());
        blocking(move || {
            me.read(|kv| {
                let mut out = Vec::new();
                for r in kv.range(start.as_str()..end.as_str()).map_err(backend)?.take(limit) {
                    let (k, v) = r.map_err(backend)?;
                    let (version, _, value) = split(v.value());
                    out.push((k.value().to_string(), Versioned { value: Bytes::copy_from_slice(value), version }));
                }
                Ok(out)
            })
        })
        .await
    }

    async fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>) -> MetaResult<u64> {
        let me = self.clone();
        blocking(move || me.apply(conds, ops)).await
    }

    async fn open_session(&self) -> MetaResult<SessionId> {
        let mut state = self.inner.state.lock().expect("poisoned");
        let id = state.next_session;
        state.next_session += 1;
        state.sessions.insert(id, HashSet::new());
        Ok(id)
    }

    async fn close_session(&self, session: SessionId) -> MetaResult<()> {
        let keys = self.inner.state.lock().expect("poisoned").sessions.remove(&session).unwrap_or_default();
        let me = self.clone();
        blocking(move || {
            // Delete only keys still owned by this session: another session may have taken one over.
            let owned: Vec<String> = me.read(|kv| {
                Ok(keys.into_iter().filter(|k| kv.get(k.as_str()).ok().flatten().is_some_and(|g| split(g.value()).1 == session)).collect())
            })?;
            me.apply(vec![], owned.into_iter().map(Op::Delete).collect()).map(|_| ())
        })
        .await
    }

    fn lost_sessions(&self) -> tokio::sync::broadcast::Receiver<SessionId> {
        // A session lives as long as this process: none is ever lost.
        self.inner.never_lost.subscribe()
    }

    fn transactions(&self) -> u64 {
        self.inner.transactions.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn watch(&self, from_revision: u64) -> MetaResult<mpsc::UnboundedReceiver<WatchEvent>> {
        let mut state = self.inner.state.lock().expect("poisoned");
        let oldest = state.history.front().map(|e| e.revision).unwrap_or(state.revision + 1);
        if from_revision + 1 < oldest && from_revision < state.revision {
            return Err(MetaError::Compacted(from_revision));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for ev in state.history.iter().filter(|e| e.revision > from_revision) {
            let _ = tx.send(ev.clone());
        }
        state.watchers.push(tx);
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_metadata_store_contract_and_forgets_sessions_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let store = RedbMetaStore::open(&path).unwrap();
        super::super::tests::contract(&store).await;

        // Ephemeral keys of a dead process are gone after reopening; persistent ones stay.
        let s = store.open_session().await.unwrap();
        store.txn(vec![], vec![Op::PutEphemeral("e".into(), Bytes::from_static(b"e"), s)]).await.unwrap();
        drop(store);
        let store = RedbMetaStore::open(&path).unwrap();
        assert!(store.get("e").await.unwrap().is_none());
        assert_eq!(store.get(&super::super::tests::k("a")).await.unwrap().unwrap().value, Bytes::from_static(b"2"));
    }
}
