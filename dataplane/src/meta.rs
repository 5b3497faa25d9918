//! This shard's copy of the cluster's metadata (cluster id, topics, group defaults), kept
//! current by the control plane's notifications. Watermarks live with the partitions
//! ([`crate::partition::Watermarks`]).

use sluice_rpc::{Broker, Brokers, Topic};
use std::collections::HashMap;
use std::rc::Rc;

/// A topic as a shard knows it.
#[derive(Debug)]
pub struct TopicMeta {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub streams: Vec<u64>,
    pub configs: HashMap<String, String>,
    /// Revision of the metadata write this copy comes from: a reply and a notification of two
    /// changes may arrive in either order, and the older one must not win.
    pub revision: u64,
}

impl TopicMeta {
    fn from_rpc(t: Topic) -> Self {
        let topic_id = uuid::Uuid::from_slice(&t.topic_id).unwrap_or_default();
        TopicMeta { name: t.name, topic_id, streams: t.streams, configs: t.configs, revision: t.revision }
    }

    /// A config set on the topic, if any.
    pub fn config(&self, name: &str) -> Option<&str> {
        self.configs.get(name).map(String::as_str)
    }
}

/// Topics by name and by id, and what registration told this shard.
#[derive(Default)]
pub struct MetaCache {
    pub cluster_id: String,
    /// The coordinator's group config defaults (DescribeConfigs of a GROUP resource).
    pub group_defaults: HashMap<String, String>,
    pub topics: HashMap<String, Rc<TopicMeta>>,
    /// The same topics by id (Fetch and Produce name topics by id from v13).
    pub topic_ids: HashMap<uuid::Uuid, Rc<TopicMeta>>,
    /// The registered data planes, in node id order.
    pub brokers: Rc<[Broker]>,
    /// Generation of `brokers` (the leader epoch clients are told).
    pub generation: i32,
}

impl MetaCache {
    /// Adds or replaces a topic (unless the copy held is newer); returns what is held.
    pub fn put_topic(&mut self, t: Topic) -> Rc<TopicMeta> {
        if let Some(held) = self.topics.get(&t.name) {
            if held.topic_id.as_bytes() == t.topic_id.as_slice() && held.revision > t.revision {
                return held.clone();
            }
        }
        let t = Rc::new(TopicMeta::from_rpc(t));
        self.topic_ids.insert(t.topic_id, t.clone());
        if let Some(old) = self.topics.insert(t.name.clone(), t.clone()) {
            if old.topic_id != t.topic_id {
                self.topic_ids.remove(&old.topic_id);
            }
        }
        t
    }

    /// Takes a list of data planes, unless it is older than the one held.
    pub fn put_brokers(&mut self, b: Brokers) {
        if b.generation >= self.generation {
            self.generation = b.generation;
            self.brokers = b.brokers.into();
        }
    }

    /// Keeps only the topics named.
    pub fn retain(&mut self, names: &[String]) {
        self.topics.retain(|n, _| names.contains(n));
        let ids: Vec<uuid::Uuid> = self.topics.values().map(|t| t.topic_id).collect();
        self.topic_ids.retain(|id, _| ids.contains(id));
    }

    /// Forgets a topic.
    pub fn remove_topic(&mut self, name: &str) {
        if let Some(t) = self.topics.remove(name) {
            self.topic_ids.remove(&t.topic_id);
        }
    }
}
