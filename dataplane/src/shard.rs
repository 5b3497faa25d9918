//! One shard: a pinned executor, its state, and the one way work crosses to another shard.
//!
//! Every shard serves Kafka connections, and each partition has one owner shard ([`owner`], a
//! pure function of the topic id and partition). A connection's shard validates a request and
//! runs each partition's part on its owner with [`Shard::on_owner`], the only call that crosses
//! shards: it runs a closure there (through the channel mesh when the owner is another shard)
//! and brings the answer back. [`Shard::append`] and [`Shard::read`] are that call with the
//! owner's [`Partitions`].

use crate::config::Config;
use crate::error::Error;
use crate::meta::{MetaCache, TopicMeta};
use crate::metrics::ShardMetrics;
use crate::partition::{AppendReq, AppendResult, Marks, Partitions, ReadReq, ReadResult};
use crate::rpc_client::{Event, RpcClient};
use crate::store::ObjectStore;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use glommio::channels::channel_mesh::Senders;
use sluice_rpc::{body::Body, Broker, Topic};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

/// How long a request waits for the control plane before it answers with an error.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// The shard owning a partition, of `cores`. Partitions of one topic go round-robin from a
/// shard picked by hashing the topic id, so a topic's partitions spread evenly over the shards.
pub fn owner(topic_id: &uuid::Uuid, partition: i32, cores: usize) -> usize {
    let h = topic_id.as_u128();
    let mixed = (h as u64) ^ ((h >> 64) as u64).rotate_left(17);
    ((mixed % cores as u64) as usize + partition as usize) % cores
}

/// Work sent to another shard: a closure run there with that shard's state.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> LocalBoxFuture<'static, ()> + Send>;

/// Messages between shards.
pub enum ShardMsg {
    Run(Job),
}

/// A shard's state. Lives in an `Rc` on its executor.
pub struct Shard {
    pub id: usize,
    pub cfg: Config,
    pub mesh: Senders<ShardMsg>,
    pub rpc: Rc<RpcClient>,
    pub meta: RefCell<MetaCache>,
    /// The partitions this shard owns (and every stream's watermarks as this shard knows them).
    pub parts: Partitions,
    /// The object store this shard writes its WAL objects to and reads them from.
    pub store: Rc<dyn ObjectStore>,
    pub metrics: Rc<ShardMetrics>,
    /// This data plane's node id: the one asked for, else the one the control plane assigned
    /// (first shard's registration, handed to the others); -1 until known.
    pub node: Cell<i32>,
    /// Set on SIGTERM: the data plane is leaving; clients are sent elsewhere.
    pub draining: Cell<bool>,
    /// Bytes exchanged with clients, per client zone.
    pub traffic: crate::metrics::ZoneTraffic,
    /// Woken when draining starts (the accept loop stops).
    pub drain_started: crate::notify::Notify,
}

impl Shard {
    /// The shard owning a partition.
    pub fn owner(&self, topic_id: &uuid::Uuid, partition: i32) -> usize {
        owner(topic_id, partition, self.cfg.cores)
    }

    /// Runs `f` on shard `owner` and brings its answer back.
    pub async fn on_owner<T, F, Fut>(self: &Rc<Self>, owner: usize, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if owner == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(f(shard).await);
            })
        });
        self.mesh.send_to(owner, ShardMsg::Run(job)).await.map_err(|_| Error::Internal("shard mesh closed"))?;
        rx.await.map_err(|_| Error::Internal("owner shard dropped the work"))
    }

    /// Runs `f` on every shard, one after another, and brings their answers back in shard
    /// order (a shard that could not be reached answers `T::default()`).
    pub async fn on_every<T, F, Fut>(self: &Rc<Self>, f: F) -> Vec<T>
    where
        T: Send + Default + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let mut all = Vec::with_capacity(self.cfg.cores);
        for peer in 0..self.cfg.cores {
            all.push(self.on_owner(peer, f.clone()).await.unwrap_or_default());
        }
        all
    }

    /// Appends on the owner; answers once the batches are durable and committed.
    pub async fn append(self: &Rc<Self>, owner: usize, req: AppendReq) -> AppendResult {
        self.on_owner(owner, move |s| async move { s.parts.append(req).await }).await.unwrap_or_else(Err)
    }

    /// Reads on the owner.
    pub async fn read(self: &Rc<Self>, owner: usize, req: ReadReq) -> ReadResult {
        match self.on_owner(owner, move |s| async move { s.parts.read(req).await }).await {
            Ok(r) => r,
            Err(e) => ReadResult { error: Some(e), ..Default::default() },
        }
    }

    /// This data plane's node id (-1 before registration).
    pub fn node_id(&self) -> i32 {
        self.node.get()
    }

    /// The data planes a client of `zone` is shown, never this one while it drains (unless
    /// there is no other). Before the first list arrives, this data plane alone.
    pub fn serving(&self, zone: Option<&str>) -> Vec<Broker> {
        let brokers = self.meta.borrow().brokers.clone();
        let me = self.node_id();
        let draining = self.draining.get();
        let others: Vec<Broker> = brokers.iter().filter(|b| !(draining && b.node_id == me)).cloned().collect();
        let pool = if others.is_empty() { vec![self.me()] } else { others };
        sluice_rpc::routing::serving(&pool, zone).into_iter().cloned().collect()
    }

    /// Draining, with another data plane to send clients to: produce and fetch are refused with
    /// a retriable error, so clients look the partition up again and go there.
    pub fn sends_clients_away(&self) -> bool {
        self.draining.get() && self.others_registered()
    }

    /// Whether another data plane is registered (somewhere to send clients).
    pub fn others_registered(&self) -> bool {
        self.meta.borrow().brokers.iter().any(|b| b.node_id != self.node_id())
    }

    /// This data plane as a broker.
    pub fn me(&self) -> Broker {
        Broker {
            node_id: self.node_id(),
            host: self.cfg.advertised_host.clone(),
            port: i32::from(self.cfg.listen.port()),
            zone: self.cfg.zone.clone(),
            cores: self.cfg.cores as u32,
            ..Default::default()
        }
    }

    /// Takes the node id registration gave; the first shard hands it to the others.
    fn adopt_node_id(self: &Rc<Self>, id: i32) {
        let changed = self.node.replace(id) != id;
        if self.id == 0 && changed {
            let s = self.clone();
            glommio::spawn_local(async move {
                for peer in (0..s.cfg.cores).filter(|p| *p != s.id) {
                    let _ = s.on_owner(peer, move |p| async move { p.adopt_node_id(id) }).await;
                }
            })
            .detach();
        }
        self.parts.marks.wake_all();
    }

    /// Looks up a topic in the local cache.
    pub fn topic(&self, name: &str) -> Option<Rc<TopicMeta>> {
        self.meta.borrow().topics.get(name).cloned()
    }

    /// Looks up a topic by id in the local cache.
    pub fn topic_by_id(&self, id: &uuid::Uuid) -> Option<Rc<TopicMeta>> {
        self.meta.borrow().topic_ids.get(id).cloned()
    }

    /// Applies topics returned by an admin call to the local cache at once, so this client's
    /// next request sees them even before the pushed notification arrives.
    pub fn learn_topic(&self, t: Topic) {
        let t = self.meta.borrow_mut().put_topic(t);
        for s in &t.streams {
            self.parts.marks.know(*s);
        }
    }

    /// Applies what the control plane tells this shard.
    pub fn on_event(self: &Rc<Self>, ev: Event) {
        let marks = &self.parts.marks;
        match ev {
            Event::Registered(r) => {
                if self.id == 0 {
                    // The id asked for, once accepted (a control plane from before assigned
                    // ids answers 0 here), else the one assigned.
                    self.adopt_node_id(self.cfg.node_id.unwrap_or(r.node_id));
                }
                {
                    let mut m = self.meta.borrow_mut();
                    if let Some(b) = r.brokers {
                        m.put_brokers(b);
                    }
                    m.cluster_id = r.cluster_id;
                    m.group_defaults = r.group_defaults;
                    m.retain(&r.topics.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
                }
                for t in r.topics {
                    self.learn_topic(t);
                }
                for w in r.marks {
                    marks.advance(w.stream_id, Marks { log_start: w.log_start, hwm: w.high_watermark });
                }
                marks.wake_all();
            }
            Event::Note(Body::Watermarks(w)) => {
                for m in w.streams {
                    marks.advance(m.stream_id, Marks { log_start: m.log_start, hwm: m.high_watermark });
                }
            }
            Event::Note(Body::Brokers(b)) => self.meta.borrow_mut().put_brokers(b),
            Event::Note(Body::Topics(t)) => {
                for t in t.topics {
                    self.learn_topic(t);
                }
            }
            Event::Note(Body::TopicsDeleted(d)) => {
                let mut m = self.meta.borrow_mut();
                for n in d.names {
                    m.remove_topic(&n);
                }
                for s in d.streams {
                    self.parts.forget(s);
                }
            }
            Event::Note(other) => tracing::debug!(note = ?other, "ignored notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn a_topics_partitions_spread_evenly_over_the_shards() {
        let id = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let mut counts = [0usize; 4];
        for p in 0..64 {
            counts[owner(&id, p, 4)] += 1;
        }
        assert_eq!(counts, [16; 4]);
        assert_eq!(owner(&id, 0, 1), 0);
    }
}
