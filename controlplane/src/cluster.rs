//! The data planes of the cluster: who is registered, as the metadata store's ephemeral broker
//! keys say (each lapses with its data plane's session), pushed to every data plane whenever
//! that changes, and what each last reported of its traffic (for the status page).
//!
//! A data plane registers once (its first shard's connection), with a node id it was given or
//! one assigned here: the lowest id no registered data plane holds. A node id held by another
//! running process (another [`Register::instance`]) is refused, unless it was assigned, in
//! which case the newcomer gets another.

use crate::error::Error;
use crate::meta::{keys, Cond, MetaError, MetaStore, Op, SessionId};
use bytes::Bytes;
use prost::Message;
use sluice_rpc::body::Body;
use sluice_rpc::{Broker, Brokers, DataPlaneStats, Envelope, Register};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the list is read again from the store, to see sessions that lapsed (a data plane
/// whose control plane connection vanished without a close, or one registered with a control
/// plane that is gone).
pub const REFRESH: Duration = Duration::from_secs(1);

/// The registered data planes and their traffic.
#[derive(Default)]
pub struct DataPlanes {
    inner: Mutex<Inner>,
    /// Held across a refresh's read of the store and its update, so an older read is never
    /// applied after a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    /// As last read from the store, in node id order.
    brokers: Vec<Broker>,
    /// Leader epoch clients are told: grows with every change of `brokers`, kept in the store
    /// (so it grows across control planes too); 0 until this control plane read it.
    generation: i32,
    /// By node id: the latest report and the rates since the one before.
    traffic: HashMap<i32, Traffic>,
}

/// What a data plane last reported.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// The process that reported (a restarted data plane starts its counters again).
    pub instance: u64,
    pub stats: DataPlaneStats,
    /// Bytes per second produced through it and fetched from it, over the last report interval.
    pub produce_rate: f64,
    pub fetch_rate: f64,
    at: Option<Instant>,
}

impl DataPlanes {
    /// The registered data planes and the generation of that list.
    pub fn brokers(&self) -> Brokers {
        let inner = self.inner.lock().expect("poisoned");
        Brokers { brokers: inner.brokers.clone(), generation: inner.generation }
    }

    /// Whether a list read from the store differs from the one held.
    fn changed(&self, brokers: &[Broker]) -> bool {
        self.inner.lock().expect("poisoned").brokers != brokers
    }

    /// Takes a list read from the store and its generation; returns the notification to push.
    fn update(&self, brokers: Vec<Broker>, generation: i32) -> Brokers {
        let mut inner = self.inner.lock().expect("poisoned");
        inner.generation = generation;
        inner.traffic.retain(|id, t| brokers.iter().any(|b| b.node_id == *id && b.instance == t.instance));
        inner.brokers = brokers;
        Brokers { brokers: inner.brokers.clone(), generation }
    }

    /// Notes a data plane's report.
    pub fn report(&self, node_id: i32, instance: u64, stats: DataPlaneStats) {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("poisoned");
        let t = inner.traffic.entry(node_id).or_default();
        if t.instance == instance {
            if let Some(at) = t.at {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                t.produce_rate = stats.produce_bytes.saturating_sub(t.stats.produce_bytes) as f64 / secs;
                t.fetch_rate = stats.fetch_bytes.saturating_sub(t.stats.fetch_bytes) as f64 / secs;
            }
        } else {
            *t = Traffic { instance, ..Default::default() };
        }
        t.stats = stats;
        t.at = Some(now);
    }

    /// The latest report of a data plane (of the process registered under its node id).
    pub fn traffic(&self, node_id: i32) -> Option<Traffic> {
        let inner = self.inner.lock().expect("poisoned");
        let b = inner.brokers.iter().find(|b| b.node_id == node_id)?;
        inner.traffic.get(&node_id).filter(|t| t.instance == b.instance).cloned()
    }
}

/// Reads the registered data planes from the store and, when they changed, counts a new
/// generation in the store and pushes the list to every data plane.
pub async fn refresh<M: MetaStore + Clone>(shared: &crate::controller::Shared<M>) -> Result<(), MetaError> {
    let _one_at_a_time = shared.dataplanes.refreshing.lock().await;
    let (a, b) = keys::brokers();
    let rows = shared.store.range(&a, &b, usize::MAX).await?;
    let mut list: Vec<Broker> = rows.into_iter().filter_map(|(_, v)| Broker::decode(v.value).ok()).collect();
    list.sort_by_key(|b| b.node_id);
    if !shared.dataplanes.changed(&list) {
        return Ok(());
    }
    let key = keys::broker_generation();
    let held = shared.store.get(&key).await?;
    let stored = held.as_ref().and_then(|v| v.value.as_ref().try_into().ok()).map_or(0, i32::from_be_bytes);
    let generation = stored.saturating_add(1);
    let cond = match held {
        Some(v) => Cond::Version(key.clone(), v.version),
        None => Cond::Absent(key.clone()),
    };
    shared.store.write(vec![cond], vec![Op::Put(key, Bytes::copy_from_slice(&generation.to_be_bytes()))]).await?;
    let note = shared.dataplanes.update(list, generation);
    let frame = sluice_rpc::encode_frame(&Envelope { request_id: 0, body: Some(Body::Brokers(note)) });
    let _ = shared.notify.send(std::sync::Arc::new(frame));
    Ok(())
}

/// Reads the list again every [`REFRESH`], for as long as this control plane leads.
pub async fn run_refresh<M: MetaStore + Clone>(shared: std::sync::Arc<crate::controller::Shared<M>>) {
    loop {
        if let Err(e) = refresh(&shared).await {
            tracing::debug!(error = %e, "cannot read the registered data planes");
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Registers a data plane under `session`: the node id it asked for, or one assigned. Returns
/// the node id.
pub async fn claim<M: MetaStore + Clone>(shared: &crate::controller::Shared<M>, r: &Register, session: SessionId) -> Result<i32, Error> {
    let store = &shared.store;
    let mut want = r.node_id;
    // Node ids from 0 are asked for; ASSIGN_NODE_ID (negative) asks for one.
    // Each pass either succeeds or saw another registration win a race; that cannot go on.
    for _ in 0..64 {
        let id = if want >= 0 { want } else { lowest_free(shared).await? };
        let key = keys::broker(id);
        let cond = match store.get(&key).await? {
            Some(held) => {
                let other = Broker::decode(held.value.clone()).unwrap_or_default();
                if other.instance != r.instance {
                    if want < 0 || r.assigned {
                        want = sluice_rpc::ASSIGN_NODE_ID;
                        continue;
                    }
                    return Err(Error::DuplicateNode(format!(
                        "node id {id} is held by another running data plane ({}:{}, zone {:?}); give each data plane its own --node-id, or none to have one assigned",
                        other.host, other.port, other.zone
                    )));
                }
                Cond::Version(key.clone(), held.version)
            }
            None => Cond::Absent(key.clone()),
        };
        let broker = Broker {
            node_id: id,
            host: r.host.clone(),
            port: r.port,
            zone: r.zone.clone(),
            cores: r.cores,
            instance: r.instance,
            started_ms: r.started_ms,
        };
        match store.write(vec![cond], vec![Op::PutEphemeral(key, Bytes::from(broker.encode_to_vec()), session)]).await {
            Ok(_) => return Ok(id),
            Err(MetaError::ConditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Internal("node id registration kept losing races"))
}

/// Deletes a data plane's registration (a draining data plane leaving), if it is still its own.
pub async fn release<M: MetaStore + Clone>(shared: &crate::controller::Shared<M>, node_id: i32, instance: u64) -> Result<(), Error> {
    let key = keys::broker(node_id);
    if let Some(held) = shared.store.get(&key).await? {
        if Broker::decode(held.value.clone()).is_ok_and(|b| b.instance == instance) {
            match shared.store.write(vec![Cond::Version(key.clone(), held.version)], vec![Op::Delete(key)]).await {
                Ok(_) | Err(MetaError::ConditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    refresh(shared).await?;
    Ok(())
}

/// The lowest node id (from 1) no registered data plane holds (read from the keys, so one whose
/// value does not decode still counts as held).
async fn lowest_free<M: MetaStore + Clone>(shared: &crate::controller::Shared<M>) -> Result<i32, MetaError> {
    let (a, b) = keys::brokers();
    let rows = shared.store.range(&a, &b, usize::MAX).await?;
    let mut held: Vec<i32> = rows.iter().filter_map(|(k, _)| k.strip_prefix(a.as_str()).and_then(|id| id.parse().ok())).collect();
    held.sort_unstable();
    let mut id = 1;
    for h in held {
        if h == id {
            id += 1;
        } else if h > id {
            break;
        }
    }
    Ok(id)
}
