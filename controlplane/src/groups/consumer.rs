//! The KIP-848 consumer protocol: ConsumerGroupHeartbeat and ConsumerGroupDescribe.
//!
//! The coordinator owns the assignment. A change of membership, of a subscription, or of the
//! subscribed topics' partitions bumps the group epoch; the target assignment is then computed
//! by the server-side assignor (`uniform`, sticky, or `range`) for that epoch. Each member is
//! reconciled towards its target on its own heartbeats: first it is asked to revoke what it
//! must give up (keeping its epoch), then it moves to the new epoch and gets the partitions no
//! other member still owns; a partition is given to its new owner only after the old owner has
//! reported it revoked. Members not involved in a change keep their partitions throughout.

use super::{new_member_id, sb, Client, Coordinator, GroupConfig, Kind};
use crate::meta::MetaStore;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_group_describe_request::ConsumerGroupDescribeRequest;
use kafka_protocol::messages::consumer_group_describe_response as describe;
use kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, ConsumerGroupHeartbeatResponse, TopicPartitions};
use kafka_protocol::messages::TopicName;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Partitions by topic id.
pub type Parts = BTreeMap<[u8; 16], BTreeSet<i32>>;

/// Server-side assignors.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

/// Reconciliation state of a member.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum MemberState {
    #[default]
    Stable,
    /// Asked to revoke partitions; keeps its epoch until it reports them gone.
    Unrevoked,
    /// At the new epoch, waiting for partitions other members still own.
    Unreleased,
}

/// A member of a consumer group.
#[derive(Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub subscribed: Vec<String>,
    pub regex: Option<String>,
    /// `regex`, compiled (full match).
    compiled: Option<regex::Regex>,
    pub assignor: Option<String>,
    pub rebalance_timeout: Duration,
    /// Partitions the member may consume now.
    pub assigned: Parts,
    /// Partitions it was asked to revoke and has not yet reported revoked.
    pub revoking: Parts,
    pub deadline: Instant,
    pub revoke_deadline: Option<Instant>,
    /// The assignment last sent, so an unchanged one is not sent again.
    sent: Option<Parts>,
    /// A static member that left with epoch -2: it keeps its partitions for a session timeout,
    /// for its instance id to come back to.
    away: bool,
}

impl Member {
    fn new(id: String, deadline: Instant) -> Self {
        Self {
            id,
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            subscribed: Vec::new(),
            regex: None,
            compiled: None,
            assignor: None,
            rebalance_timeout: Duration::from_secs(300),
            assigned: Parts::new(),
            revoking: Parts::new(),
            deadline,
            revoke_deadline: None,
            sent: None,
            away: false,
        }
    }

    fn matches(&self, topic: &str) -> bool {
        self.subscribed.iter().any(|t| t == topic) || self.compiled.as_ref().is_some_and(|r| r.is_match(topic))
    }

    fn set_regex(&mut self, re: Option<String>) {
        self.compiled = re.as_deref().and_then(compile);
        self.regex = re;
    }
}

/// Full-match regex (Kafka matches the whole topic name).
fn compile(re: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{re})$")).ok()
}

/// A consumer group's state.
#[derive(Default)]
pub struct Consumer {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub target: BTreeMap<String, Parts>,
    /// Subscribed topics with their ids and partition counts, as of the group epoch.
    topics_seen: BTreeMap<String, ([u8; 16], i32)>,
    pub dirty: bool,
}

/// A consumer group as stored.
#[derive(Clone, PartialEq, Message)]
pub struct ConsumerRecord {
    #[prost(int32, tag = "1")]
    pub group_epoch: i32,
    #[prost(int32, tag = "2")]
    pub assignment_epoch: i32,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<MemberRecord>,
}

/// A consumer group member as stored.
#[derive(Clone, PartialEq, Message)]
pub struct MemberRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, optional, tag = "2")]
    pub instance_id: Option<String>,
    #[prost(string, tag = "3")]
    pub client_id: String,
    #[prost(string, tag = "4")]
    pub client_host: String,
    #[prost(int32, tag = "5")]
    pub epoch: i32,
    #[prost(string, repeated, tag = "6")]
    pub subscribed: Vec<String>,
    #[prost(string, optional, tag = "7")]
    pub regex: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub assignor: Option<String>,
    #[prost(uint64, tag = "9")]
    pub rebalance_timeout_ms: u64,
    #[prost(message, repeated, tag = "10")]
    pub assigned: Vec<PartsRecord>,
    #[prost(message, repeated, tag = "11")]
    pub revoking: Vec<PartsRecord>,
    #[prost(message, repeated, tag = "12")]
    pub target: Vec<PartsRecord>,
    #[prost(string, optional, tag = "13")]
    pub rack_id: Option<String>,
    #[prost(int32, tag = "14")]
    pub previous_epoch: i32,
}

/// Partitions of one topic, as stored.
#[derive(Clone, PartialEq, Message)]
pub struct PartsRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(int32, repeated, tag = "2")]
    pub partitions: Vec<i32>,
}

fn to_records(p: &Parts) -> Vec<PartsRecord> {
    p.iter().map(|(t, ps)| PartsRecord { topic_id: t.to_vec(), partitions: ps.iter().copied().collect() }).collect()
}

fn from_records(r: Vec<PartsRecord>) -> Parts {
    r.into_iter()
        .filter_map(|p| {
            let id: [u8; 16] = p.topic_id.as_slice().try_into().ok()?;
            Some((id, p.partitions.into_iter().collect()))
        })
        .collect()
}

fn overlap(a: &Parts, b: &Parts) -> bool {
    a.iter().any(|(t, ps)| b.get(t).is_some_and(|o| !ps.is_disjoint(o)))
}

fn minus(a: &Parts, b: &Parts) -> Parts {
    let mut out = Parts::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = ps.iter().filter(|p| !b.get(t).is_some_and(|o| o.contains(p))).copied().collect();
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Parts, b: &Parts) -> Parts {
    let mut out = Parts::new();
    for (t, ps) in a {
        if let Some(o) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(o).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn is_subset(a: &Parts, b: &Parts) -> bool {
    minus(a, b).is_empty()
}

impl Consumer {
    pub fn record(&self) -> Option<ConsumerRecord> {
        if self.group_epoch == 0 {
            return None;
        }
        let members = self
            .members
            .values()
            .map(|m| MemberRecord {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                epoch: m.epoch,
                subscribed: m.subscribed.clone(),
                regex: m.regex.clone(),
                assignor: m.assignor.clone(),
                rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                assigned: to_records(&m.assigned),
                revoking: to_records(&m.revoking),
                target: self.target.get(&m.id).map(to_records).unwrap_or_default(),
                rack_id: m.rack_id.clone(),
                previous_epoch: m.previous_epoch,
            })
            .collect();
        Some(ConsumerRecord { group_epoch: self.group_epoch, assignment_epoch: self.assignment_epoch, members })
    }

    /// Rebuilds the group after a restart; members get a fresh session to come back in.
    pub fn restore(&mut self, r: Option<ConsumerRecord>, now: Instant, cfg: &GroupConfig) {
        let Some(r) = r else { return };
        self.group_epoch = r.group_epoch;
        self.assignment_epoch = r.assignment_epoch;
        for m in r.members {
            let revoking = from_records(m.revoking);
            let still_revoking = !revoking.is_empty();
            self.target.insert(m.id.clone(), from_records(m.target));
            let member = Member {
                id: m.id.clone(),
                instance_id: m.instance_id,
                rack_id: m.rack_id,
                client_id: m.client_id,
                client_host: m.client_host,
                epoch: m.epoch,
                previous_epoch: m.previous_epoch,
                state: if revoking.is_empty() { MemberState::Stable } else { MemberState::Unrevoked },
                subscribed: m.subscribed,
                compiled: m.regex.as_deref().and_then(compile),
                regex: m.regex,
                assignor: m.assignor,
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                assigned: from_records(m.assigned),
                revoking,
                deadline: now + cfg.consumer_session_timeout,
                // A member still revoking gets its rebalance timeout again to finish.
                revoke_deadline: still_revoking.then(|| now + Duration::from_millis(m.rebalance_timeout_ms)),
                sent: None,
                away: false,
            };
            self.members.insert(m.id, member);
        }
    }

    /// Recomputes the subscribed topics after a restart without bumping the group epoch: the
    /// target assignment stored with the group was computed from them.
    pub fn resync_topics(&mut self, topics: &BTreeMap<String, ([u8; 16], i32)>) {
        self.topics_seen =
            topics.iter().filter(|(name, _)| self.members.values().any(|m| m.matches(name))).map(|(n, v)| (n.clone(), *v)).collect();
    }

    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self.members.values().any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn assignor_name(&self) -> &str {
        self.members.values().find_map(|m| m.assignor.as_deref()).unwrap_or(ASSIGNORS[0])
    }

    /// Topic names the members subscribe to (regexes resolved against `topics`).
    pub fn subscribed_names(&self) -> Vec<String> {
        self.topics_seen.keys().cloned().collect()
    }

    /// Whether a member may commit offsets (or 0). OffsetCommit v9+ carries the member epoch.
    pub fn validate_commit(&self, member_id: &str, epoch: i32, version: i16) -> i16 {
        if member_id.is_empty() && epoch < 0 {
            return if self.members.is_empty() { 0 } else { E::UnknownMemberId.code() };
        }
        let Some(m) = self.members.get(member_id) else { return E::UnknownMemberId.code() };
        if version >= 9 && epoch != m.epoch {
            return E::StaleMemberEpoch.code();
        }
        0
    }

    /// Whether a member may fetch offsets (or 0).
    pub fn validate_fetch(&self, member_id: &str, epoch: i32) -> i16 {
        if member_id.is_empty() {
            return 0;
        }
        match self.members.get(member_id) {
            None => E::UnknownMemberId.code(),
            Some(m) if epoch >= 0 && epoch != m.epoch => E::StaleMemberEpoch.code(),
            Some(_) => 0,
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        self.target.remove(id);
        self.members.remove(id).is_some()
    }

    /// Bumps the group epoch if membership, subscriptions or the subscribed topics changed, and
    /// computes the target assignment for it.
    fn refresh(&mut self, topics: &BTreeMap<String, ([u8; 16], i32)>, membership_changed: bool) {
        let seen: BTreeMap<String, ([u8; 16], i32)> =
            topics.iter().filter(|(name, _)| self.members.values().any(|m| m.matches(name))).map(|(n, v)| (n.clone(), *v)).collect();
        if membership_changed || seen != self.topics_seen {
            self.topics_seen = seen;
            self.group_epoch += 1;
            self.dirty = true;
        }
        if self.assignment_epoch < self.group_epoch {
            self.target = assign(self.assignor_name(), &self.members, &self.topics_seen, &self.target);
            self.assignment_epoch = self.group_epoch;
            self.dirty = true;
        }
    }

    /// Partitions members other than `id` still own (assigned or not yet revoked).
    fn owned_by_others(&self, id: &str) -> Parts {
        let mut out = Parts::new();
        for m in self.members.values().filter(|m| m.id != id) {
            for (t, ps) in m.assigned.iter().chain(m.revoking.iter()) {
                out.entry(*t).or_default().extend(ps.iter().copied());
            }
        }
        out
    }

    /// Moves a member towards its target assignment.
    fn reconcile(&mut self, id: &str, now: Instant) {
        let others = self.owned_by_others(id);
        let target = self.target.get(id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else { return };
        if !m.revoking.is_empty() {
            return;
        }
        let revoke = minus(&m.assigned, &target);
        if !revoke.is_empty() {
            m.assigned = intersect(&m.assigned, &target);
            m.revoking = revoke;
            m.state = MemberState::Unrevoked;
            m.revoke_deadline = Some(now + m.rebalance_timeout);
            self.dirty = true;
            return;
        }
        m.revoke_deadline = None;
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
            self.dirty = true;
        }
        let missing = minus(&target, &m.assigned);
        let free = minus(&missing, &others);
        if !free.is_empty() {
            for (t, ps) in free {
                m.assigned.entry(t).or_default().extend(ps);
            }
            self.dirty = true;
        }
        let state = if minus(&target, &m.assigned).is_empty() { MemberState::Stable } else { MemberState::Unreleased };
        if state != m.state {
            m.state = state;
            self.dirty = true;
        }
    }
}

/// The target assignment: `range` (contiguous ranges per topic) or `uniform` (balanced over all
/// subscribed partitions, keeping each partition with its current owner where balance allows).
fn assign(
    assignor: &str,
    members: &BTreeMap<String, Member>,
    topics: &BTreeMap<String, ([u8; 16], i32)>,
    previous: &BTreeMap<String, Parts>,
) -> BTreeMap<String, Parts> {
    let mut out: BTreeMap<String, Parts> = members.keys().map(|id| (id.clone(), Parts::new())).collect();
    if members.is_empty() {
        return out;
    }
    if assignor == "range" {
        for (name, (tid, count)) in topics {
            let subs: Vec<&String> = members.values().filter(|m| m.matches(name)).map(|m| &m.id).collect();
            if subs.is_empty() {
                continue;
            }
            let (per, extra) = (*count as usize / subs.len(), *count as usize % subs.len());
            let mut next = 0i32;
            for (i, id) in subs.iter().enumerate() {
                let n = per + usize::from(i < extra);
                let ps: BTreeSet<i32> = (next..next + n as i32).collect();
                next += n as i32;
                if !ps.is_empty() {
                    out.get_mut(*id).expect("member").insert(*tid, ps);
                }
            }
        }
        return out;
    }
    // uniform
    let partitions: Vec<(&String, [u8; 16], i32)> =
        topics.iter().flat_map(|(name, (tid, count))| (0..*count).map(move |p| (name, *tid, p))).collect();
    let mut previous_owner: BTreeMap<([u8; 16], i32), &String> = BTreeMap::new();
    for (id, parts) in previous {
        for (t, ps) in parts {
            for p in ps {
                previous_owner.insert((*t, *p), id);
            }
        }
    }
    let total = partitions.iter().filter(|(name, _, _)| members.values().any(|m| m.matches(name))).count();
    let floor = total / members.len();
    let mut extras = total % members.len();
    let mut count: BTreeMap<&String, usize> = members.keys().map(|k| (k, 0)).collect();
    let mut left = Vec::new();
    // Keep partitions with their owners up to an even share, then up to one more while the
    // remainder lasts.
    for pass in 0..2 {
        let todo = if pass == 0 { partitions.clone() } else { std::mem::take(&mut left) };
        for (name, tid, p) in todo {
            let keep = previous_owner.get(&(tid, p)).filter(|id| members.get(**id).is_some_and(|m| m.matches(name)));
            let kept = match keep {
                Some(id) if count[*id] < floor => true,
                Some(id) if pass == 1 && extras > 0 && count[*id] == floor => {
                    extras -= 1;
                    true
                }
                _ => false,
            };
            if kept {
                let id = keep.expect("kept");
                *count.get_mut(*id).expect("member") += 1;
                out.get_mut(*id).expect("member").entry(tid).or_default().insert(p);
            } else {
                left.push((name, tid, p));
            }
        }
    }
    for (name, tid, p) in left {
        let best = members.values().filter(|m| m.matches(name)).min_by_key(|m| (count[&m.id], &m.id)).map(|m| &m.id);
        if let Some(id) = best {
            *count.get_mut(id).expect("member") += 1;
            out.get_mut(id).expect("member").entry(tid).or_default().insert(p);
        }
    }
    out
}

fn to_wire(p: &Parts) -> Assignment {
    Assignment::default().with_topic_partitions(
        p.iter()
            .map(|(t, ps)| TopicPartitions::default().with_topic_id(Uuid::from_bytes(*t)).with_partitions(ps.iter().copied().collect()))
            .collect(),
    )
}

impl<M: MetaStore + Clone> Coordinator<M> {
    pub(super) async fn consumer_heartbeat(
        &self,
        req: ConsumerGroupHeartbeatRequest,
        _version: i16,
        client: &Client,
    ) -> ConsumerGroupHeartbeatResponse {
        let interval = self.cfg.consumer_heartbeat_interval.as_millis() as i32;
        let fail = |code: i16, msg: &str| {
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(code)
                .with_error_message(Some(sb(msg)))
                .with_heartbeat_interval_ms(interval)
        };
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return fail(E::InvalidRequest.code(), "GroupId can't be empty.");
        }
        let epoch = req.member_epoch;
        if epoch == 0 && req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
            return fail(E::InvalidRequest.code(), "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.");
        }
        if let Some(a) = req.server_assignor.as_deref() {
            if !ASSIGNORS.contains(&a) {
                return fail(
                    E::UnsupportedAssignor.code(),
                    &format!("ServerAssignor {a} is not supported. Supported assignors: uniform, range."),
                );
            }
        }
        if let Some(re) = req.subscribed_topic_regex.as_deref() {
            if !re.is_empty() && compile(re).is_none() {
                return fail(
                    E::InvalidRegularExpression.code(),
                    &format!("SubscribedTopicRegex `{re}` is not a valid regular expression."),
                );
            }
        }
        let now = Instant::now();
        let topics = self.topics();
        let g = self.group(&group_id);
        let mut g = g.lock().await;
        if g.kind() == Some(Kind::Classic) {
            return fail(E::GroupIdNotFound.code(), &format!("Group {group_id} is not a consumer group."));
        }
        if g.is_empty() && g.classic.generation > 0 {
            // An empty classic group becomes a consumer group; its offsets stay.
            g.classic = Default::default();
            g.consumer.dirty = true;
        }
        let session = self.cfg.consumer_session_timeout;
        let c = &mut g.consumer;
        let mut membership_changed = false;
        let member_id = if epoch == -1 || epoch == -2 {
            // Leaving (-2: a static member leaving for now; it rejoins under its instance id).
            let id = req.member_id.to_string();
            match c.members.get_mut(&id) {
                Some(m) if epoch == -2 && m.instance_id.is_some() => {
                    m.away = true;
                    m.deadline = now + session;
                    c.dirty = true;
                }
                Some(_) => membership_changed = c.remove(&id),
                None => {}
            }
            c.refresh(&topics, membership_changed);
            let resp = ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(sb(&id)))
                .with_member_epoch(epoch)
                .with_heartbeat_interval_ms(interval);
            self.save_consumer(&mut g).await;
            return resp;
        } else if epoch == 0 {
            let returning = req.instance_id.as_deref().is_some_and(|i| c.members.values().any(|o| o.instance_id.as_deref() == Some(i)));
            if c.members.len() >= self.cfg.max_size && !c.members.contains_key(req.member_id.as_str()) && !returning {
                return fail(81, "The consumer group has reached its maximum size.");
            }
            let id = if req.member_id.is_empty() { new_member_id(&client.id) } else { req.member_id.to_string() };
            // Rejoining with epoch 0 means it lost its partitions: they are free again.
            c.remove(&id);
            let mut m = Member::new(id.clone(), now + session);
            let mut took_over = false;
            if let Some(inst) = req.instance_id.as_deref() {
                // A static member coming back takes over its predecessor's partitions.
                if let Some(old) = c.members.values().find(|o| o.instance_id.as_deref() == Some(inst) && o.id != id) {
                    if !old.away {
                        return fail(
                            E::UnreleasedInstanceId.code(),
                            &format!("Static member with instance id {inst} is still in the group."),
                        );
                    }
                    let old = old.id.clone();
                    let prev = c.members.remove(&old).expect("found");
                    let target = c.target.remove(&old).unwrap_or_default();
                    c.target.insert(id.clone(), target);
                    m.assigned = prev.assigned;
                    m.revoking = prev.revoking;
                    m.epoch = prev.epoch;
                    m.previous_epoch = prev.epoch;
                    m.subscribed = prev.subscribed;
                    m.set_regex(prev.regex);
                    m.assignor = prev.assignor;
                    took_over = true;
                }
            }
            c.members.insert(id.clone(), m);
            // A static member taking over its old identity changes nothing for the others.
            membership_changed = !took_over;
            id
        } else {
            let id = req.member_id.to_string();
            let Some(m) = c.members.get(&id) else {
                return fail(E::UnknownMemberId.code(), &format!("Member {id} is not a member of group {group_id}."));
            };
            if let Some(inst) = req.instance_id.as_deref() {
                // An instance id names one member: another process using it is fenced.
                if c.members.values().any(|o| o.id != id && o.instance_id.as_deref() == Some(inst))
                    || m.instance_id.as_deref().is_some_and(|mine| mine != inst)
                {
                    return fail(E::FencedInstanceId.code(), &format!("Instance id {inst} belongs to another member."));
                }
            }
            if epoch != m.epoch {
                let owned: Parts = req
                    .topic_partitions
                    .as_ref()
                    .map(|tps| tps.iter().map(|tp| (*tp.topic_id.as_bytes(), tp.partitions.iter().copied().collect())).collect())
                    .unwrap_or_default();
                let tolerated = epoch == m.previous_epoch && req.topic_partitions.is_some() && is_subset(&owned, &m.assigned);
                if !tolerated {
                    return fail(
                        E::FencedMemberEpoch.code(),
                        &format!("The member epoch {epoch} is fenced; the current epoch is {}.", m.epoch),
                    );
                }
            }
            id
        };
        let m = c.members.get_mut(&member_id).expect("member present");
        m.deadline = now + session;
        m.away = false;
        m.client_id = client.id.clone();
        m.client_host = client.host.clone();
        if let Some(i) = &req.instance_id {
            m.instance_id = Some(i.to_string());
        }
        if let Some(r) = &req.rack_id {
            m.rack_id = Some(r.to_string());
        }
        if req.rebalance_timeout_ms > 0 {
            m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
        }
        if let Some(names) = &req.subscribed_topic_names {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            if names != m.subscribed {
                m.subscribed = names;
                membership_changed = true;
            }
        }
        if let Some(re) = &req.subscribed_topic_regex {
            let re = (!re.is_empty()).then(|| re.to_string());
            if re != m.regex {
                m.set_regex(re);
                membership_changed = true;
            }
        }
        if let Some(a) = &req.server_assignor {
            let a = Some(a.to_string());
            if a != m.assignor {
                m.assignor = a;
                membership_changed = true;
            }
        }
        // What the member reports owning: partitions it was revoking and no longer owns are
        // released.
        if let Some(tps) = &req.topic_partitions {
            let owned: Parts = tps.iter().map(|tp| (*tp.topic_id.as_bytes(), tp.partitions.iter().copied().collect())).collect();
            if !m.revoking.is_empty() && !overlap(&m.revoking, &owned) {
                m.revoking.clear();
                m.state = MemberState::Stable;
                c.dirty = true;
            }
            if epoch == 0 || m.sent.as_ref() != Some(&owned) {
                // A full request, or one that disagrees with what we sent: send it again.
                m.sent = None;
            }
        }
        c.refresh(&topics, membership_changed);
        c.reconcile(&member_id, now);
        let m = c.members.get_mut(&member_id).expect("member present");
        let assignment = if m.sent.as_ref() != Some(&m.assigned) {
            m.sent = Some(m.assigned.clone());
            Some(to_wire(&m.assigned))
        } else {
            None
        };
        let resp = ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(sb(&member_id)))
            .with_member_epoch(m.epoch)
            .with_heartbeat_interval_ms(interval)
            .with_assignment(assignment);
        self.save_consumer(&mut g).await;
        resp
    }

    async fn save_consumer(&self, g: &mut super::Group) {
        if !g.consumer.dirty {
            return;
        }
        g.consumer.dirty = false;
        if let Err(e) = self.persist(g).await {
            tracing::warn!(group = %g.id, error = %e, "cannot persist group");
        }
    }

    /// Expires sessions and members that do not revoke in time; true when something changed.
    pub(super) fn consumer_tick(&self, g: &mut super::Group, now: Instant) -> bool {
        let c = &mut g.consumer;
        if c.members.is_empty() {
            return false;
        }
        let gone: Vec<String> =
            c.members.values().filter(|m| m.deadline <= now || m.revoke_deadline.is_some_and(|t| t <= now)).map(|m| m.id.clone()).collect();
        if gone.is_empty() {
            return false;
        }
        for id in &gone {
            tracing::info!(group = %g.id, member = %id, "consumer group member fenced (session or rebalance timeout)");
            c.remove(id);
        }
        let topics = self.topics();
        c.refresh(&topics, true);
        c.dirty = false;
        true
    }

    pub(super) async fn consumer_describe(
        &self,
        req: ConsumerGroupDescribeRequest,
        _version: i16,
        _client: &Client,
    ) -> describe::ConsumerGroupDescribeResponse {
        let ops = sluice_rpc::acl::if_asked(req.include_authorized_operations, sluice_rpc::acl::GROUP_OPS);
        let topics = self.topics();
        let names: BTreeMap<[u8; 16], String> = topics.iter().map(|(n, (id, _))| (*id, n.clone())).collect();
        let wire = |p: &Parts| {
            describe::Assignment::default().with_topic_partitions(
                p.iter()
                    .map(|(t, ps)| {
                        describe::TopicPartitions::default()
                            .with_topic_id(Uuid::from_bytes(*t))
                            .with_topic_name(TopicName(sb(names.get(t).map(String::as_str).unwrap_or(""))))
                            .with_partitions(ps.iter().copied().collect())
                    })
                    .collect(),
            )
        };
        let mut out = Vec::new();
        for id in req.group_ids {
            let d = describe::DescribedGroup::default().with_group_id(id.clone()).with_authorized_operations(ops);
            let g = match self.existing(&id) {
                Some(g) => g,
                None => {
                    let d = d.with_authorized_operations(sluice_rpc::acl::NOT_REQUESTED);
                    out.push(
                        d.with_error_code(E::GroupIdNotFound.code())
                            .with_error_message(Some(sb(&format!("Group {} not found.", id.as_str())))),
                    );
                    continue;
                }
            };
            let g = g.lock().await;
            let is_consumer = g.kind() == Some(Kind::Consumer) || (g.is_empty() && g.group_type() == "consumer");
            if !is_consumer {
                let d = d.with_authorized_operations(sluice_rpc::acl::NOT_REQUESTED);
                out.push(
                    d.with_error_code(E::GroupIdNotFound.code())
                        .with_error_message(Some(sb(&format!("Group {} is not a consumer group.", id.as_str())))),
                );
                continue;
            }
            let c = &g.consumer;
            let members = c
                .members
                .values()
                .map(|m| {
                    describe::Member::default()
                        .with_member_id(sb(&m.id))
                        .with_instance_id(m.instance_id.as_deref().map(sb))
                        .with_rack_id(m.rack_id.as_deref().map(sb))
                        .with_member_epoch(m.epoch)
                        .with_client_id(sb(&m.client_id))
                        .with_client_host(sb(&m.client_host))
                        .with_subscribed_topic_names(m.subscribed.iter().map(|s| TopicName(sb(s))).collect())
                        .with_subscribed_topic_regex(m.regex.as_deref().map(sb))
                        .with_assignment(wire(&m.assigned))
                        .with_target_assignment(wire(c.target.get(&m.id).unwrap_or(&Parts::new())))
                })
                .collect();
            out.push(
                d.with_group_state(sb(c.state_name()))
                    .with_group_epoch(c.group_epoch)
                    .with_assignment_epoch(c.assignment_epoch)
                    .with_assignor_name(sb(c.assignor_name()))
                    .with_members(members),
            );
        }
        describe::ConsumerGroupDescribeResponse::default().with_groups(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member { subscribed: topics.iter().map(|s| s.to_string()).collect(), ..Member::new(id.into(), Instant::now()) }
    }

    fn topics(spec: &[(&str, i32)]) -> BTreeMap<String, ([u8; 16], i32)> {
        spec.iter().enumerate().map(|(i, (n, c))| (n.to_string(), ([i as u8 + 1; 16], *c))).collect()
    }

    fn count(p: &Parts) -> usize {
        p.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn uniform_is_balanced_and_moves_only_what_the_new_member_needs() {
        let t = topics(&[("a", 6)]);
        let mut ms: BTreeMap<String, Member> = ["m1", "m2", "m3"].iter().map(|id| (id.to_string(), member(id, &["a"]))).collect();
        let before = assign("uniform", &ms, &t, &BTreeMap::new());
        assert!(before.values().all(|p| count(p) == 2));
        ms.insert("m4".into(), member("m4", &["a"]));
        let after = assign("uniform", &ms, &t, &before);
        let counts: Vec<usize> = after.values().map(count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 6);
        assert!(counts.iter().all(|c| (1..=2).contains(c)), "{counts:?}");
        // Only one partition moves: the new member's.
        let moved: usize = ["m1", "m2", "m3"].iter().map(|id| count(&minus(&before[*id], &after[*id]))).sum();
        assert_eq!(moved, 1);
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let t = topics(&[("a", 5), ("b", 2)]);
        let ms: BTreeMap<String, Member> = ["m1", "m2"].iter().map(|id| (id.to_string(), member(id, &["a", "b"]))).collect();
        let a = assign("range", &ms, &t, &BTreeMap::new());
        assert_eq!(a["m1"][&[1; 16]], [0, 1, 2].into());
        assert_eq!(a["m2"][&[1; 16]], [3, 4].into());
        assert_eq!(a["m1"][&[2; 16]], [0].into());
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let t = topics(&[("a", 2)]);
        let now = Instant::now();
        let mut c = Consumer::default();
        c.members.insert("m1".into(), member("m1", &["a"]));
        c.refresh(&t, true);
        c.reconcile("m1", now);
        assert_eq!(count(&c.members["m1"].assigned), 2);
        c.members.insert("m2".into(), member("m2", &["a"]));
        c.refresh(&t, true);
        c.reconcile("m2", now);
        // m1 still owns both: m2 is at the new epoch but gets nothing yet.
        assert_eq!(c.members["m2"].epoch, c.assignment_epoch);
        assert_eq!(count(&c.members["m2"].assigned), 0);
        assert_eq!(c.members["m2"].state, MemberState::Unreleased);
        c.reconcile("m1", now);
        assert_eq!(count(&c.members["m1"].assigned), 1);
        assert_eq!(count(&c.members["m1"].revoking), 1);
        // m1 reports the revocation; m2 then gets the partition.
        c.members.get_mut("m1").unwrap().revoking.clear();
        c.reconcile("m1", now);
        c.reconcile("m2", now);
        assert_eq!(count(&c.members["m2"].assigned), 1);
        assert!(!overlap(&c.members["m1"].assigned, &c.members["m2"].assigned));
    }
}
