//! Leadership among the control planes that share one metadata store: one leads (sequences
//! offsets, coordinates groups, answers data planes), the others stand by and tell data planes
//! where the leader is.
//!
//! The leader holds `cluster/leader`, an ephemeral key on its own session (an etcd lease) whose
//! value is its RPC address. A standby tries to create the key every [`RETRY`]; while it exists
//! the standby answers with its value. When the leader dies its lease expires, the key goes, and
//! the first standby to create it leads: it bumps the epoch ([`crate::controller`]), which fences
//! every write the old leader might still attempt. A leader whose session is lost (etcd did not
//! hear from it for a lease TTL) no longer holds the key and exits, so a process supervisor can
//! start it again as a standby. On the embedded store there is one control plane and it leads at
//! once.

use crate::meta::{keys, Cond, MetaError, MetaResult, MetaStore, Op, SessionId};
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::watch;

/// How often a standby tries to take over.
const RETRY: Duration = Duration::from_millis(250);

/// Waits until this control plane leads; meanwhile publishes the current leader's address on
/// `leader` (for the standby's answers). Returns the session that holds the leadership.
pub async fn campaign<M: MetaStore>(store: &M, me: &str, leader: &watch::Sender<String>) -> MetaResult<SessionId> {
    let session = store.open_session().await?;
    let mut announced = String::new();
    loop {
        let claim = Op::PutEphemeral(keys::leader(), Bytes::from(me.to_string()), session);
        match store.txn(vec![Cond::Absent(keys::leader())], vec![claim]).await {
            Ok(_) => {
                leader.send_replace(me.to_string());
                return Ok(session);
            }
            Err(MetaError::ConditionFailed) => {
                if let Some(v) = store.get(&keys::leader()).await? {
                    let current = String::from_utf8_lossy(&v.value).into_owned();
                    if current == me {
                        // The key names this very address: a previous run of this control
                        // plane, killed before its session expired (no other process can listen
                        // here). Take over now rather than wait for the lease.
                        let claim = Op::PutEphemeral(keys::leader(), Bytes::from(me.to_string()), session);
                        if store.txn(vec![Cond::Version(keys::leader(), v.version)], vec![claim]).await.is_ok() {
                            leader.send_replace(me.to_string());
                            return Ok(session);
                        }
                        continue;
                    }
                    if current != announced {
                        tracing::info!(leader = %current, "standing by");
                        announced.clone_from(&current);
                    }
                    leader.send_replace(current);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot campaign for leadership; trying again"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Resolves when the leadership held by `session` is lost (`lost` subscribed before the
/// campaign, so no report is missed).
pub async fn lost(mut lost: tokio::sync::broadcast::Receiver<SessionId>, session: SessionId) {
    loop {
        match lost.recv().await {
            Ok(s) if s == session => return,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            _ => {}
        }
    }
}
