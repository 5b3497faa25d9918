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
use sluice_rpc::{body::Body, Topic};
use std::cell::RefCell;
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
    pub fn on_event(&self, ev: Event) {
        let marks = &self.parts.marks;
        match ev {
            Event::Registered(r) => {
                {
                    let mut m = self.meta.borrow_mut();
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
