//! The metadata store on etcd (v3 API, `etcd-client`): what a cluster of control planes shares.
//!
//! The primitives map one to one: a key's version is its `mod_revision`; a transaction is an
//! etcd `Txn` whose compares are `mod_revision == v` (or `version == 0` for "absent") and whose
//! success branch holds the writes; a session is a lease, kept alive by a task, and an ephemeral
//! key is a put on that lease; the watch feed is an etcd watch on the key root. A session whose
//! lease is lost (etcd unreachable for longer than its TTL, or the lease revoked) is reported on
//! [`MetaStore::lost_sessions`], so whoever registered keys under it registers them again.
//!
//! etcd keeps every revision until it is compacted: a task compacts, once a minute, up to the
//! revision that was current [`COMPACT_AFTER`] earlier, so history stays bounded while a
//! watcher that fell a little behind can still resume. Compaction frees space inside etcd's
//! database file without shrinking it; when the free part is large, the member is
//! defragmented, which gives it back.
//!
//! One transaction may hold more operations than etcd's default `--max-txn-ops` (128): a group
//! commit writes a few keys per committed object. `scripts/etcd.sh` starts etcd with a higher
//! limit; a deployment's etcd needs the same (README).

use super::{keys, Cond, MetaError, MetaResult, MetaStore, Op, SessionId, Versioned, WatchEvent};
use bytes::Bytes;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Lease TTL of a session: how long an ephemeral key outlives its owner's last keep-alive.
const SESSION_TTL_SECS: i64 = 10;
/// History kept before compaction.
const COMPACT_AFTER: Duration = Duration::from_secs(300);
/// How often the compaction task looks.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// Free space in etcd's database file (left by compaction) worth a defragmentation...
const DEFRAG_MIN_FREE: i64 = 32 << 20;

/// ...when it is also more than half of the file: compaction frees pages inside the file, and
/// only a defragmentation gives them back (etcd's quota counts the file's size). It blocks the
/// member it runs on for a moment, so it runs only when it pays.
async fn defragment_if_worth_it(c: &mut Client) {
    let Ok(status) = c.status().await else { return };
    let (size, used) = (status.db_size(), status.raft_used_db_size());
    if size - used < DEFRAG_MIN_FREE || (size - used) * 2 < size {
        return;
    }
    match c.defragment().await {
        Ok(_) => tracing::info!(before = size, in_use = used, "etcd database defragmented"),
        Err(e) => tracing::warn!(error = %e, "etcd defragmentation failed"),
    }
}

/// The etcd-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdMetaStore {
    client: Client,
    /// Prepended to every key (empty, or `/NAMESPACE`): several clusters can share one etcd.
    namespace: Arc<str>,
    inner: Arc<Inner>,
}

struct Inner {
    transactions: AtomicU64,
    /// Keep-alive task of each open session.
    sessions: Mutex<HashMap<SessionId, tokio::task::JoinHandle<()>>>,
    lost: broadcast::Sender<SessionId>,
}

fn backend(e: impl std::fmt::Display) -> MetaError {
    MetaError::Backend(e.to_string())
}

impl EtcdMetaStore {
    /// Connects to the endpoints (`host:port` each) and checks that etcd answers; starts the
    /// compaction task. Keys live under `namespace` (empty, or `/NAME`).
    pub async fn connect(endpoints: &[String], namespace: &str) -> MetaResult<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let mut client = Client::connect(&urls, Some(opts)).await.map_err(backend)?;
        tokio::time::timeout(Duration::from_secs(5), client.status())
            .await
            .map_err(|_| MetaError::Backend("no answer from etcd in 5s".into()))?
            .map_err(backend)?;
        let (lost, _) = broadcast::channel(64);
        let store = EtcdMetaStore {
            client,
            namespace: namespace.into(),
            inner: Arc::new(Inner { transactions: AtomicU64::new(0), sessions: Mutex::default(), lost }),
        };
        tokio::spawn(store.clone().compact_forever());
        Ok(store)
    }

    /// Compacts etcd's history to the revision that was current [`COMPACT_AFTER`] ago.
    async fn compact_forever(self) {
        let mut seen: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut compacted = 0;
        loop {
            tokio::time::sleep(COMPACT_EVERY).await;
            let mut c = self.client.clone();
            let Ok(resp) = c.get(self.key(&keys::epoch()), None).await else { continue };
            let Some(rev) = resp.header().map(|h| h.revision()) else { continue };
            seen.push_back((Instant::now(), rev));
            let mut target = None;
            while seen.front().is_some_and(|(at, _)| at.elapsed() >= COMPACT_AFTER) {
                target = seen.pop_front().map(|(_, r)| r);
            }
            if let Some(rev) = target.filter(|r| *r > compacted) {
                match c.compact(rev, None).await {
                    Ok(_) => {
                        compacted = rev;
                        tracing::debug!(revision = rev, "etcd history compacted");
                        defragment_if_worth_it(&mut c).await;
                    }
                    // Someone (another control plane, an operator) compacted further already.
                    Err(e) if e.to_string().contains("compacted") => compacted = rev,
                    Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
                }
            }
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// A key as etcd returned it, without the namespace.
    fn unkey(&self, kv: &etcd_client::KeyValue) -> MetaResult<String> {
        let k = kv.key_str().map_err(backend)?;
        Ok(k.strip_prefix(&*self.namespace).unwrap_or(k).to_string())
    }

    /// Keeps a lease alive until it is lost, then reports it. A lease is lost when etcd says so
    /// (its TTL ran out) or when no refresh went through for a whole TTL; a connection that
    /// drops for less (etcd restarting, a leader election) is opened again.
    async fn keep_alive(mut client: Client, id: i64, lost: broadcast::Sender<SessionId>) {
        let ttl = Duration::from_secs(SESSION_TTL_SECS as u64);
        let every = Duration::from_secs((SESSION_TTL_SECS / 3).max(1) as u64);
        let mut refreshed = Instant::now();
        let why = 'session: loop {
            let problem = match client.lease_keep_alive(id).await {
                Err(e) => e.to_string(),
                Ok((mut keeper, mut answers)) => loop {
                    if let Err(e) = keeper.keep_alive().await {
                        break e.to_string();
                    }
                    match answers.message().await {
                        Ok(Some(a)) if a.ttl() > 0 => refreshed = Instant::now(),
                        Ok(Some(_)) => break 'session "lease expired".to_string(),
                        Ok(None) => break "keep-alive stream closed".to_string(),
                        Err(e) => break e.to_string(),
                    }
                    tokio::time::sleep(every).await;
                },
            };
            if refreshed.elapsed() >= ttl {
                break format!("no refresh for {ttl:?}: {problem}");
            }
            tracing::debug!(lease = id, error = %problem, "etcd keep-alive interrupted; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tracing::warn!(lease = id, reason = %why, "etcd session lost");
        let _ = lost.send(id as SessionId);
    }
}

fn versioned(kv: &etcd_client::KeyValue) -> Versioned {
    Versioned { value: Bytes::copy_from_slice(kv.value()), version: kv.mod_revision() as u64 }
}

impl MetaStore for EtcdMetaStore {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        let resp = self.client.clone().get(self.key(key), None).await.map_err(backend)?;
        Ok(resp.kvs().first().map(versioned))
    }

    async fn range(&self, start: &str, end: &str, limit: usize) -> MetaResult<Vec<(String, Versioned)>> {
        let opts = GetOptions::new().with_range(self.key(end)).with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = self.client.clone().get(self.key(start), Some(opts)).await.map_err(backend)?;
        resp.kvs().iter().map(|kv| Ok((self.unkey(kv)?, versioned(kv)))).collect()
    }

    async fn txn(&self, conds: Vec<Cond>, ops: Vec<Op>) -> MetaResult<u64> {
        let compares: Vec<Compare> = conds
            .into_iter()
            .map(|c| match c {
                Cond::Version(k, v) => Compare::mod_revision(self.key(&k), CompareOp::Equal, v as i64),
                Cond::Absent(k) => Compare::version(self.key(&k), CompareOp::Equal, 0),
            })
            .collect();
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|o| match o {
                Op::Put(k, v) => TxnOp::put(self.key(&k), v.to_vec(), None),
                Op::PutEphemeral(k, v, s) => TxnOp::put(self.key(&k), v.to_vec(), Some(PutOptions::new().with_lease(s as i64))),
                Op::Delete(k) => TxnOp::delete(self.key(&k), None),
                Op::DeleteRange(a, b) => TxnOp::delete(self.key(&a), Some(DeleteOptions::new().with_range(self.key(&b)))),
            })
            .collect();
        let resp = self.client.clone().txn(Txn::new().when(compares).and_then(ops)).await.map_err(backend)?;
        if !resp.succeeded() {
            return Err(MetaError::ConditionFailed);
        }
        self.inner.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0) as u64)
    }

    async fn open_session(&self) -> MetaResult<SessionId> {
        let mut c = self.client.clone();
        let id = c.lease_grant(SESSION_TTL_SECS, None).await.map_err(backend)?.id();
        let task = tokio::spawn(Self::keep_alive(c, id, self.inner.lost.clone()));
        self.inner.sessions.lock().expect("poisoned").insert(id as SessionId, task);
        Ok(id as SessionId)
    }

    async fn close_session(&self, session: SessionId) -> MetaResult<()> {
        if let Some(task) = self.inner.sessions.lock().expect("poisoned").remove(&session) {
            task.abort();
        }
        match self.client.clone().lease_revoke(session as i64).await {
            Ok(_) => Ok(()),
            // Already expired: its keys are gone, which is what closing asks for.
            Err(e) if e.to_string().contains("lease not found") => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    fn lost_sessions(&self) -> broadcast::Receiver<SessionId> {
        self.inner.lost.subscribe()
    }

    fn watch(&self, from_revision: u64) -> MetaResult<mpsc::UnboundedReceiver<WatchEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut client, this) = (self.client.clone(), self.clone());
        tokio::spawn(async move {
            let root = this.key(keys::root());
            let opts = WatchOptions::new().with_prefix().with_start_revision(from_revision as i64 + 1);
            let mut stream = match client.watch(root, Some(opts)).await {
                Ok(s) => s,
                Err(e) => return tracing::warn!(error = %e, "etcd watch failed"),
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    tracing::warn!(revision = resp.compact_revision(), "etcd watch: history compacted");
                    return;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let value = (ev.event_type() == EventType::Put).then(|| Bytes::copy_from_slice(kv.value()));
                    let Ok(key) = this.unkey(kv) else { continue };
                    let event = WatchEvent { revision: kv.mod_revision() as u64, key, value };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real one-member etcd (from PATH: `scripts/etcd.sh --install`) on free ports, for as
    /// long as the value lives.
    struct Etcd {
        child: std::process::Child,
        endpoint: String,
        _dir: tempfile::TempDir,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
    }

    impl Etcd {
        fn start() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let (port, peer) = (free_port(), free_port());
            let (client, peer) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{peer}"));
            let child = std::process::Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path())
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "error"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("etcd starts (scripts/etcd.sh --install)");
            Etcd { child, endpoint: format!("127.0.0.1:{port}"), _dir: dir }
        }

        async fn connect(&self, namespace: &str) -> EtcdMetaStore {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match EtcdMetaStore::connect(std::slice::from_ref(&self.endpoint), namespace).await {
                    Ok(s) => return s,
                    Err(e) if Instant::now() > deadline => panic!("etcd did not answer: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn keeps_the_metadata_store_contract_on_a_real_etcd() {
        let etcd = Etcd::start();
        let store = etcd.connect("/one").await;
        crate::meta::tests::contract(&store).await;

        // Namespaces keep clusters apart.
        let other = etcd.connect("/two").await;
        let a = crate::meta::tests::k("a");
        assert!(other.get(&a).await.unwrap().is_none());
        other.put(&a, Bytes::from_static(b"other"), None).await.unwrap();
        assert_eq!(store.get(&a).await.unwrap().unwrap().value, Bytes::from_static(b"2"));

        // A session whose lease goes away is reported lost, and its keys are gone.
        let mut lost = store.lost_sessions();
        let s = store.open_session().await.unwrap();
        let e = crate::meta::tests::k("e");
        store.txn(vec![], vec![Op::PutEphemeral(e.clone(), Bytes::from_static(b"e"), s)]).await.unwrap();
        store.client.clone().lease_revoke(s as i64).await.unwrap();
        let reported = tokio::time::timeout(Duration::from_secs(30), lost.recv()).await.expect("reported in time").unwrap();
        assert_eq!(reported, s);
        assert!(store.get(&e).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_an_error_not_a_hang() {
        let started = Instant::now();
        let e = EtcdMetaStore::connect(&[format!("127.0.0.1:{}", free_port())], "").await.err().expect("nothing listens there");
        assert!(matches!(e, MetaError::Backend(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}
