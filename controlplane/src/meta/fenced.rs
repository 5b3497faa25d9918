//! The metadata store as a control plane uses it once it has taken over: reads as they are, and
//! every write through [`Fenced::write`], which applies it only while this control plane still
//! holds the epoch it took over with. A newer control plane rewrites the epoch key, and from then
//! on every write of the older one is refused ([`MetaError::Fenced`]): a deposed control plane
//! can commit no offsets, change no group, register no data plane and hand out no producer id.
//!
//! The only writes that bypass it are the takeover itself (the epoch bump, which is what fences
//! the others) and a session's end, which removes only that session's own ephemeral keys.

use super::{keys, Cond, MetaError, MetaResult, MetaStore, Op, SessionId, Versioned};

/// A [`MetaStore`] whose writes carry this control plane's epoch condition.
pub struct Fenced<M> {
    store: M,
    /// Revision at which this control plane wrote its epoch: the version every write checks.
    epoch_version: u64,
}

impl<M: MetaStore> Fenced<M> {
    /// The store, fenced by the epoch key at `epoch_version`.
    pub fn new(store: M, epoch_version: u64) -> Self {
        Fenced { store, epoch_version }
    }

    /// Applies `ops` if every condition holds and this control plane still holds its epoch;
    /// returns the new revision. [`MetaError::Fenced`] when another control plane took over,
    /// [`MetaError::ConditionFailed`] when one of `conds` failed.
    pub async fn write(&self, mut conds: Vec<Cond>, ops: Vec<Op>) -> MetaResult<u64> {
        conds.push(Cond::Version(keys::epoch(), self.epoch_version));
        match self.store.txn(conds, ops).await {
            Err(MetaError::ConditionFailed) if self.deposed().await? => Err(MetaError::Fenced),
            r => r,
        }
    }

    /// Whether the epoch key moved on since this control plane wrote it.
    async fn deposed(&self) -> MetaResult<bool> {
        Ok(self.store.get(&keys::epoch()).await?.is_none_or(|v| v.version != self.epoch_version))
    }

    /// Reads a key.
    pub async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        self.store.get(key).await
    }

    /// Lists keys in `[start, end)` in order, at most `limit`.
    pub async fn range(&self, start: &str, end: &str, limit: usize) -> MetaResult<Vec<(String, Versioned)>> {
        self.store.range(start, end, limit).await
    }

    /// Starts a session for ephemeral keys.
    pub async fn open_session(&self) -> MetaResult<SessionId> {
        self.store.open_session().await
    }

    /// Ends a session, deleting its ephemeral keys.
    pub async fn close_session(&self, session: SessionId) -> MetaResult<()> {
        self.store.close_session(session).await
    }

    /// Sessions that ended without being closed.
    pub fn lost_sessions(&self) -> tokio::sync::broadcast::Receiver<SessionId> {
        self.store.lost_sessions()
    }

    /// Write transactions this process committed (for `/metrics`).
    pub fn transactions(&self) -> u64 {
        self.store.transactions()
    }
}
