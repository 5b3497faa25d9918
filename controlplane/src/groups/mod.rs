//! The group coordinator: consumer groups of both protocols (classic JoinGroup/SyncGroup in
//! [`classic`], KIP-848 ConsumerGroupHeartbeat in [`consumer`]), committed offsets, and the
//! group admin APIs.
//!
//! Data planes forward group requests here undecoded ([`sluice_rpc::KafkaRequest`]); nothing
//! depends on which data plane forwarded a request. Each group sits behind its own async lock:
//! a request holds it while it changes the group and writes the change to the metadata store,
//! and lets go before it waits (for a rebalance to complete). A sweeper task enforces session
//! and rebalance timeouts.
//!
//! Durable state, under `groups/<group>/` in the metadata store: `meta` (the membership of the
//! last completed rebalance, so members keep their ids, generation or epoch, and assignments
//! across a control plane restart) and `offsets/<topic>/<partition>`.

mod admin;
mod classic;
mod consumer;
mod offsets;

use crate::controller::Shared;
use crate::error::Error;
use crate::meta::{keys, MetaError, MetaStore, Op};
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use prost::Message;
use sluice_rpc::{forward, KafkaRequest};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Coordinator settings (Kafka's broker configs of the same names).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms` (classic).
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// `group.initial.rebalance.delay.ms`: an empty group waits this long for more members
    /// before its first rebalance completes.
    pub initial_rebalance_delay: Duration,
    /// `group.consumer.session.timeout.ms` (KIP-848).
    pub consumer_session_timeout: Duration,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848).
    pub consumer_heartbeat_interval: Duration,
    /// `group.max.size`.
    pub max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(1800),
            initial_rebalance_delay: Duration::from_secs(3),
            consumer_session_timeout: Duration::from_secs(45),
            consumer_heartbeat_interval: Duration::from_secs(5),
            max_size: 1000,
        }
    }
}

/// `offset.metadata.max.bytes`.
const OFFSET_METADATA_MAX: usize = 4096;
/// Largest total of the assignments a classic leader may hand out (Kafka's limit is the size of
/// the group's metadata record, `message.max.bytes`, 1 MiB by default).
const MAX_ASSIGNMENT_BYTES: usize = 1 << 20;

/// A committed offset, as stored.
#[derive(Clone, PartialEq, Message)]
pub struct OffsetRecord {
    #[prost(int64, tag = "1")]
    pub offset: i64,
    #[prost(int32, tag = "2")]
    pub leader_epoch: i32,
    #[prost(string, optional, tag = "3")]
    pub metadata: Option<String>,
    #[prost(int64, tag = "4")]
    pub commit_timestamp: i64,
}

/// A group's membership, as stored (the last completed rebalance).
#[derive(Clone, PartialEq, Message)]
pub struct GroupRecord {
    #[prost(message, optional, tag = "1")]
    pub classic: Option<classic::ClassicRecord>,
    #[prost(message, optional, tag = "2")]
    pub consumer: Option<consumer::ConsumerRecord>,
}

/// One group.
#[derive(Default)]
pub struct Group {
    pub id: String,
    pub classic: classic::Classic,
    pub consumer: consumer::Consumer,
    /// Committed offsets: topic, partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, OffsetRecord>>,
    /// Whether anything of the group exists in the store (so an unknown group is not listed).
    pub exists: bool,
}

/// The type of a group, from its members (an empty group has none and may become either).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Classic,
    Consumer,
}

impl Group {
    fn kind(&self) -> Option<Kind> {
        if !self.classic.members.is_empty() || !self.classic.pending.is_empty() {
            Some(Kind::Classic)
        } else if !self.consumer.members.is_empty() {
            Some(Kind::Consumer)
        } else {
            None
        }
    }

    /// The type reported by ListGroups (an empty group reports the protocol it last used).
    fn group_type(&self) -> &'static str {
        match self.kind() {
            Some(Kind::Classic) => "classic",
            Some(Kind::Consumer) => "consumer",
            None if self.consumer.group_epoch > 0 && self.classic.generation == 0 => "consumer",
            None => "classic",
        }
    }

    fn is_empty(&self) -> bool {
        self.kind().is_none()
    }

    fn state_name(&self) -> &'static str {
        match self.kind() {
            Some(Kind::Consumer) => self.consumer.state_name(),
            _ => self.classic.state.name(),
        }
    }

    fn protocol_type(&self) -> String {
        match self.kind() {
            Some(Kind::Consumer) => "consumer".into(),
            _ => self.classic.protocol_type.clone().unwrap_or_default(),
        }
    }

    fn record(&self) -> GroupRecord {
        GroupRecord { classic: self.classic.record(), consumer: self.consumer.record() }
    }
}

type GroupRef = Arc<Mutex<Group>>;

/// The coordinator. Cheap to clone.
pub struct Coordinator<M> {
    shared: Arc<Shared<M>>,
    cfg: GroupConfig,
    groups: std::sync::Mutex<HashMap<String, GroupRef>>,
}

impl<M: MetaStore + Clone> Coordinator<M> {
    /// The group configs whose defaults come from the coordinator's flags, with those
    /// defaults (Kafka's `GroupConfig`: the broker's `group.consumer.*` settings).
    pub fn config_defaults(&self) -> HashMap<String, String> {
        HashMap::from([
            ("consumer.session.timeout.ms".to_string(), self.cfg.consumer_session_timeout.as_millis().to_string()),
            ("consumer.heartbeat.interval.ms".to_string(), self.cfg.consumer_heartbeat_interval.as_millis().to_string()),
        ])
    }

    /// Loads every group from the store and starts the timeout sweeper.
    pub async fn start(shared: Arc<Shared<M>>, cfg: GroupConfig) -> Result<Arc<Self>, MetaError> {
        let (a, b) = keys::groups();
        let rows = shared.store.range(&a, &b, usize::MAX).await?;
        let mut groups: HashMap<String, Group> = HashMap::new();
        let now = Instant::now();
        for (key, v) in rows {
            let Some((id, rest)) = keys::parse_group_key(&key) else { continue };
            let g = groups.entry(id.clone()).or_insert_with(|| Group { id, exists: true, ..Default::default() });
            if rest == "meta" {
                if let Ok(r) = GroupRecord::decode(v.value) {
                    g.classic.restore(r.classic, now);
                    g.consumer.restore(r.consumer, now, &cfg);
                }
            } else if let Some(tp) = rest.strip_prefix("offsets/") {
                let Some((topic, p)) = tp.rsplit_once('/') else { continue };
                let (Ok(p), Ok(o)) = (p.parse::<i32>(), OffsetRecord::decode(v.value)) else { continue };
                g.offsets.entry(topic.to_string()).or_default().insert(p, o);
            }
        }
        if !groups.is_empty() {
            tracing::info!(groups = groups.len(), "groups loaded");
        }
        let topics = topic_table(&shared);
        for g in groups.values_mut() {
            g.consumer.resync_topics(&topics);
        }
        let me = Arc::new(Self {
            shared,
            cfg,
            groups: std::sync::Mutex::new(groups.into_iter().map(|(k, g)| (k, Arc::new(Mutex::new(g)))).collect()),
        });
        let sweeper = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(c) = sweeper.upgrade() else { return };
                c.sweep().await;
            }
        });
        Ok(me)
    }

    /// Answers one forwarded request: the encoded response body, or a code for the whole
    /// request when it cannot be served.
    pub async fn handle(&self, req: KafkaRequest) -> Result<Bytes, Error> {
        let version = req.api_version as i16;
        let api = ApiKey::try_from(req.api_key as i16).map_err(|_| Error::Malformed(format!("unknown API key {}", req.api_key)))?;
        let Some((_, min, max)) = forward::GROUP_APIS.iter().find(|(k, _, _)| *k == api) else {
            return Err(Error::Malformed(format!("{api:?} is not a group API")));
        };
        if !(*min..=*max).contains(&version) {
            return Err(Error::Malformed(format!("{api:?} v{version} unsupported")));
        }
        let client = Client { id: req.client_id, host: req.client_host };
        let mut body = req.body;
        macro_rules! run {
            ($handler:expr) => {{
                let r = Decodable::decode(&mut body, version)
                    .map_err(|e| Error::Malformed(format!("cannot decode {api:?} v{version}: {e}")))?;
                let resp = $handler(self, r, version, &client).await;
                encode(&resp, version)
            }};
        }
        match api {
            ApiKey::JoinGroup => run!(Self::join_group),
            ApiKey::SyncGroup => run!(Self::sync_group),
            ApiKey::Heartbeat => run!(Self::heartbeat),
            ApiKey::LeaveGroup => run!(Self::leave_group),
            ApiKey::OffsetCommit => run!(Self::offset_commit),
            ApiKey::OffsetFetch => run!(Self::offset_fetch),
            ApiKey::OffsetDelete => run!(Self::offset_delete),
            ApiKey::DescribeGroups => run!(Self::describe_groups),
            ApiKey::ListGroups => run!(Self::list_groups),
            ApiKey::DeleteGroups => run!(Self::delete_groups),
            ApiKey::ConsumerGroupHeartbeat => run!(Self::consumer_heartbeat),
            ApiKey::ConsumerGroupDescribe => run!(Self::consumer_describe),
            _ => Err(Error::Malformed(format!("{api:?} is not a group API"))),
        }
    }

    /// The group, created (in memory only) when absent.
    fn group(&self, id: &str) -> GroupRef {
        let mut groups = self.groups.lock().expect("poisoned");
        groups.entry(id.to_string()).or_insert_with(|| Arc::new(Mutex::new(Group { id: id.to_string(), ..Default::default() }))).clone()
    }

    /// The group if it exists.
    fn existing(&self, id: &str) -> Option<GroupRef> {
        self.groups.lock().expect("poisoned").get(id).cloned()
    }

    fn all_groups(&self) -> Vec<GroupRef> {
        self.groups.lock().expect("poisoned").values().cloned().collect()
    }

    /// Writes the group's membership record.
    async fn persist(&self, g: &mut Group) -> Result<(), MetaError> {
        let record = g.record();
        let op = Op::Put(keys::group_meta(&g.id), Bytes::from(record.encode_to_vec()));
        self.shared.store.write(vec![], vec![op]).await?;
        g.classic.written(record.classic);
        g.exists = true;
        Ok(())
    }

    /// Enforces session and rebalance timeouts of every group, and forgets groups that exist
    /// only in memory with nothing in them (a join that never came back, say).
    /// Groups are handled concurrently, so one that waits for its lock or for a slow store
    /// write does not hold up the others' timeouts; the next sweep starts when all are done.
    async fn sweep(self: &Arc<Self>) {
        self.groups.lock().expect("poisoned").retain(|_, g| {
            // Only the map holds it, so no request is about to use it.
            Arc::strong_count(g) > 1 || g.try_lock().map_or(true, |g| g.exists || !g.is_empty() || !g.offsets.is_empty())
        });
        let now = Instant::now();
        let mut ticks = tokio::task::JoinSet::new();
        for g in self.all_groups() {
            let me = self.clone();
            ticks.spawn(async move {
                let mut g = g.lock().await;
                let changed_classic = me.classic_tick(&mut g, now).await;
                let changed_consumer = me.consumer_tick(&mut g, now);
                if changed_consumer && !changed_classic {
                    if let Err(e) = me.persist(&mut g).await {
                        tracing::warn!(group = %g.id, error = %e, "cannot persist group");
                    }
                }
            });
        }
        while ticks.join_next().await.is_some() {}
    }

    /// Topic metadata for assignment and validation: name to (topic id, partition count).
    fn topics(&self) -> BTreeMap<String, ([u8; 16], i32)> {
        topic_table(&self.shared)
    }

    /// Forgets every group's committed offsets on deleted topics, as Kafka does, so a topic
    /// created again under the same name starts with none.
    pub async fn forget_topics(&self, names: &[String]) {
        for g in self.all_groups() {
            let mut g = g.lock().await;
            let gone: Vec<String> = names.iter().filter(|n| g.offsets.contains_key(*n)).cloned().collect();
            if gone.is_empty() {
                continue;
            }
            let ops = gone
                .iter()
                .map(|t| {
                    let (a, b) = keys::group_topic_offsets(&g.id, t);
                    Op::DeleteRange(a, b)
                })
                .collect();
            match self.shared.store.write(vec![], ops).await {
                Ok(_) => {
                    for t in &gone {
                        g.offsets.remove(t);
                    }
                }
                Err(e) => tracing::warn!(group = %g.id, error = %e, "cannot forget offsets of deleted topics"),
            }
        }
    }

    /// Committed offset and high watermark of every partition of every group with offsets
    /// (for the lag metrics).
    pub async fn lag(&self) -> Vec<(String, String, i32, i64, i64)> {
        let topics = self.shared.topics.read().expect("poisoned").clone();
        let mut out = Vec::new();
        for g in self.all_groups() {
            let g = g.lock().await;
            for (topic, parts) in &g.offsets {
                for (p, o) in parts {
                    let hwm = topics
                        .get(topic)
                        .and_then(|t| t.streams.get(*p as usize))
                        .and_then(|s| self.shared.streams.read().expect("poisoned").get(s).map(|w| w.hwm))
                        .unwrap_or(o.offset);
                    out.push((g.id.clone(), topic.clone(), *p, o.offset, hwm));
                }
            }
        }
        out.sort();
        out
    }
}

fn topic_table<M>(shared: &Shared<M>) -> BTreeMap<String, ([u8; 16], i32)> {
    let topics = shared.topics.read().expect("poisoned");
    topics
        .iter()
        .map(|(name, t)| {
            let mut id = [0u8; 16];
            if t.topic_id.len() == 16 {
                id.copy_from_slice(&t.topic_id);
            }
            (name.clone(), (id, t.streams.len() as i32))
        })
        .collect()
}

/// Who sent a request.
pub struct Client {
    pub id: String,
    pub host: String,
}

fn encode<R: Encodable>(resp: &R, version: i16) -> Result<Bytes, Error> {
    forward::encode_body(resp, version).ok_or(Error::Internal("cannot encode response"))
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn new_member_id(prefix: &str) -> String {
    let prefix: String = prefix.chars().take(64).collect();
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}
