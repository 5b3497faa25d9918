//! The classic group protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, with Kafka's state
//! machine (Empty, PreparingRebalance, CompletingRebalance, Stable). The coordinator picks the
//! protocol (assignor) every member supports, hands the leader the members' metadata, and
//! relays the leader's assignments untouched: range, roundrobin and cooperative-sticky all run
//! in the clients, as with Kafka.

use super::{new_member_id, sb, Client, Coordinator, Group, Kind, MAX_ASSIGNMENT_BYTES};
use crate::error::Error;
use crate::meta::MetaStore;
use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::protocol::Decodable;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Classic group states.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum State {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A member of a classic group.
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    /// Supported protocols (assignors) in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// Session expiry.
    pub deadline: Instant,
    join: Option<oneshot::Sender<JoinGroupResponse>>,
    sync: Option<oneshot::Sender<(i16, Bytes)>>,
}

impl Member {
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        self.protocols.iter().find(|(n, _)| Some(n.as_str()) == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// Topics in the member's subscription (the consumer protocol's metadata).
    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, meta) in &self.protocols {
            if let Some(s) = parse_subscription(meta) {
                out.extend(s.topics.iter().map(|t| t.to_string()));
            }
        }
        out
    }
}

fn parse_subscription(meta: &Bytes) -> Option<ConsumerProtocolSubscription> {
    let mut b = meta.clone();
    if b.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([b[0], b[1]]);
    let _ = bytes::Buf::get_i16(&mut b);
    ConsumerProtocolSubscription::decode(&mut b, version.clamp(0, 3)).ok()
}

/// A classic group's membership and rebalance state.
#[derive(Default)]
pub struct Classic {
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined: their expiry.
    pub pending: HashMap<String, Instant>,
    /// Static members: group.instance.id to member id.
    pub static_ids: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    join_not_before: Option<Instant>,
    initial_cap: Option<Instant>,
    sync_deadline: Option<Instant>,
    /// The membership changed since it was last written.
    dirty: bool,
    /// The group as of its last completed rebalance (or last time empty): what is stored, as
    /// Kafka stores a group only when its leader's assignment arrives. A record written in the
    /// middle of a rebalance would, after a restart, bring the group back "stable" at a
    /// generation whose assignments were never handed out.
    settled: Option<ClassicRecord>,
}

/// A classic group as stored.
#[derive(Clone, PartialEq, Message)]
pub struct ClassicRecord {
    #[prost(int32, tag = "1")]
    pub generation: i32,
    #[prost(string, optional, tag = "2")]
    pub protocol_type: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub protocol: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub leader: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub members: Vec<MemberRecord>,
}

/// A classic member as stored.
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
    #[prost(uint64, tag = "5")]
    pub session_timeout_ms: u64,
    #[prost(uint64, tag = "6")]
    pub rebalance_timeout_ms: u64,
    #[prost(string, tag = "7")]
    pub protocol_type: String,
    #[prost(string, repeated, tag = "8")]
    pub protocol_names: Vec<String>,
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub protocol_metadata: Vec<Bytes>,
    #[prost(bytes = "bytes", tag = "10")]
    pub assignment: Bytes,
}

impl Classic {
    /// What to store: the group now if it is settled (stable or empty), else as it last was.
    /// It becomes the settled record once written ([`Classic::written`]).
    pub fn record(&self) -> Option<ClassicRecord> {
        if matches!(self.state, State::Stable | State::Empty) {
            self.snapshot()
        } else {
            self.settled.clone()
        }
    }

    /// Notes that `record` is what the store now holds.
    pub fn written(&mut self, record: Option<ClassicRecord>) {
        self.settled = record;
    }

    fn snapshot(&self) -> Option<ClassicRecord> {
        if self.generation == 0 && self.members.is_empty() {
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
                session_timeout_ms: m.session_timeout.as_millis() as u64,
                rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                protocol_type: m.protocol_type.clone(),
                protocol_names: m.protocols.iter().map(|(n, _)| n.clone()).collect(),
                protocol_metadata: m.protocols.iter().map(|(_, d)| d.clone()).collect(),
                assignment: m.assignment.clone(),
            })
            .collect();
        Some(ClassicRecord {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members,
        })
    }

    /// Rebuilds the group from its record after a restart: the last completed rebalance, every
    /// member given a fresh session to come back in.
    pub fn restore(&mut self, r: Option<ClassicRecord>, now: Instant) {
        let Some(r) = r else { return };
        self.generation = r.generation;
        self.protocol_type = r.protocol_type;
        self.protocol = r.protocol;
        self.leader = r.leader;
        for m in r.members {
            let session_timeout = Duration::from_millis(m.session_timeout_ms);
            if let Some(i) = &m.instance_id {
                self.static_ids.insert(i.clone(), m.id.clone());
            }
            let protocols = m.protocol_names.into_iter().zip(m.protocol_metadata).collect();
            self.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout,
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                    protocol_type: m.protocol_type,
                    protocols,
                    assignment: m.assignment,
                    deadline: now + session_timeout,
                    join: None,
                    sync: None,
                },
            );
        }
        self.state = if self.members.is_empty() { State::Empty } else { State::Stable };
        self.settled = self.snapshot();
    }

    /// Whether a member may commit offsets (or 0).
    pub fn validate_commit(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            // A commit from outside the group (an admin tool, or manual assignment).
            return if self.members.is_empty() { 0 } else { E::UnknownMemberId.code() };
        }
        if let Some(code) = self.check_member(member_id, instance_id) {
            return code;
        }
        if generation != self.generation {
            return E::IllegalGeneration.code();
        }
        if self.state == State::CompletingRebalance {
            return E::RebalanceInProgress.code();
        }
        0
    }

    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
        if let Some(i) = instance_id {
            match self.static_ids.get(i) {
                Some(id) if id != member_id => return Some(E::FencedInstanceId.code()),
                None if !self.members.contains_key(member_id) => return Some(E::UnknownMemberId.code()),
                _ => {}
            }
        }
        (!self.members.contains_key(member_id)).then_some(E::UnknownMemberId.code())
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::from_secs(60))
    }

    /// Protocols every member supports, in the order of the first member's preference.
    fn candidates(&self) -> Vec<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else { return Vec::new() };
        first
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| self.members.values().all(|m| m.protocols.iter().any(|(p, _)| p == n)))
            .collect()
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.members.values().next().is_some_and(|m| m.protocol_type == protocol_type) && {
            let c = self.candidates();
            protocols.iter().any(|(n, _)| c.contains(n))
        }
    }

    fn remove_member(&mut self, id: &str, code: i16) -> bool {
        let Some(mut m) = self.members.remove(id) else { return self.pending.remove(id).is_some() };
        if let Some(i) = &m.instance_id {
            if self.static_ids.get(i).map(String::as_str) == Some(id) {
                self.static_ids.remove(i);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        if let Some(j) = m.join.take() {
            let _ = j.send(JoinGroupResponse::default().with_error_code(code).with_generation_id(-1).with_member_id(sb(id)));
        }
        if let Some(s) = m.sync.take() {
            let _ = s.send((code, Bytes::new()));
        }
        self.dirty = true;
        true
    }

    /// Starts a rebalance (members must rejoin).
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(s) = m.sync.take() {
                    let _ = s.send((E::RebalanceInProgress.code(), Bytes::new()));
                }
            }
        }
        let timeout = self.max_rebalance_timeout();
        if self.state == State::Empty {
            self.join_not_before = Some(now + initial_delay);
            self.initial_cap = Some(now + timeout);
        }
        if self.state != State::PreparingRebalance {
            self.rebalance_deadline = Some(now + timeout);
        }
        self.sync_deadline = None;
        self.state = State::PreparingRebalance;
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.join.is_some())
    }

    /// Completes the join phase when every member has rejoined (or `force`, at the rebalance
    /// timeout: members that did not rejoin are dropped).
    fn maybe_complete_join(&mut self, now: Instant, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if !force && (!self.all_joined() || self.join_not_before.is_some_and(|t| now < t)) {
            return;
        }
        let gone: Vec<String> = self.members.values().filter(|m| m.join.is_none()).map(|m| m.id.clone()).collect();
        for id in gone {
            self.remove_member(&id, E::UnknownMemberId.code());
        }
        self.pending.clear();
        self.generation += 1;
        self.rebalance_deadline = None;
        self.join_not_before = None;
        self.initial_cap = None;
        self.dirty = true;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        let candidates = self.candidates();
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for m in self.members.values() {
            if let Some(i) = m.protocols.iter().find_map(|(n, _)| candidates.iter().position(|c| c == n)) {
                votes[i] += 1;
            }
        }
        let best = votes.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map(|(i, _)| i);
        self.protocol = best.and_then(|i| candidates.get(i).cloned());
        self.protocol_type = self.members.values().next().map(|m| m.protocol_type.clone());
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        self.sync_deadline = Some(now + self.max_rebalance_timeout());
        let all = self.member_list();
        let (generation, protocol, protocol_type, leader) =
            (self.generation, self.protocol.clone(), self.protocol_type.clone(), self.leader.clone());
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            m.deadline = now + m.session_timeout;
            if let Some(j) = m.join.take() {
                let is_leader = leader.as_deref() == Some(m.id.as_str());
                let _ = j.send(
                    JoinGroupResponse::default()
                        .with_generation_id(generation)
                        .with_protocol_type(protocol_type.as_deref().map(sb))
                        .with_protocol_name(protocol.as_deref().map(sb))
                        .with_leader(sb(leader.as_deref().unwrap_or("")))
                        .with_member_id(sb(&m.id))
                        .with_members(if is_leader { all.clone() } else { Vec::new() }),
                );
            }
        }
    }

    /// What the leader gets in its JoinGroup answer: every member with its metadata for the
    /// chosen protocol.
    fn member_list(&self) -> Vec<JoinGroupResponseMember> {
        self.members
            .values()
            .map(|m| {
                JoinGroupResponseMember::default()
                    .with_member_id(sb(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(sb))
                    .with_metadata(m.metadata(self.protocol.as_deref()))
            })
            .collect()
    }

    /// The answer to a member that rejoins a group whose generation need not change.
    fn current(&self, member_id: &str) -> JoinGroupResponse {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader { self.member_list() } else { Vec::new() };
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.as_deref().map(sb))
            .with_protocol_name(self.protocol.as_deref().map(sb))
            .with_leader(sb(self.leader.as_deref().unwrap_or("")))
            .with_member_id(sb(member_id))
            .with_members(members)
    }

    /// Whether the member's protocols are those it had (so its rejoin changes nothing).
    fn unchanged(&self, id: &str, protocols: &[(String, Bytes)]) -> bool {
        self.members.get(id).is_some_and(|m| m.protocols == protocols)
    }
}

/// What a JoinGroup gets: an answer now, or one when the rebalance completes.
enum Joined {
    Now(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

impl<M: MetaStore + Clone> Coordinator<M> {
    pub(super) async fn join_group(&self, req: JoinGroupRequest, version: i16, client: &Client) -> JoinGroupResponse {
        let fail =
            |code: i16| JoinGroupResponse::default().with_error_code(code).with_generation_id(-1).with_member_id(req.member_id.clone());
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return fail(E::InvalidGroupId.code());
        }
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if session < self.cfg.min_session_timeout || session > self.cfg.max_session_timeout {
            return fail(E::InvalidSessionTimeout.code());
        }
        // v0 has no rebalance timeout: it is the session timeout.
        let rebalance =
            if version == 0 || req.rebalance_timeout_ms <= 0 { session } else { Duration::from_millis(req.rebalance_timeout_ms as u64) };
        let protocol_type = req.protocol_type.to_string();
        let protocols: Vec<(String, Bytes)> = req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect();
        if protocol_type.is_empty() || protocols.is_empty() {
            return fail(E::InconsistentGroupProtocol.code());
        }
        // The consumer protocol's metadata is a subscription; garbage there would only break
        // the leader's assignor, so it is refused here.
        if protocol_type == "consumer" && protocols.iter().any(|(_, m)| parse_subscription(m).is_none()) {
            return fail(E::InconsistentGroupProtocol.code());
        }
        let instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
        let member_id = req.member_id.to_string();
        let now = Instant::now();
        let g = self.group(&group_id);
        let joined = {
            let mut g = g.lock().await;
            if g.kind() == Some(Kind::Consumer) {
                return fail(E::InconsistentGroupProtocol.code());
            }
            if g.is_empty() && g.consumer.group_epoch > 0 {
                // An empty consumer-protocol group becomes a classic group.
                g.consumer = Default::default();
            }
            if !g.classic.supports(&protocol_type, &protocols) {
                return fail(E::InconsistentGroupProtocol.code());
            }
            let delay = self.cfg.initial_rebalance_delay;
            let c = &mut g.classic;
            let new_member = |id: String, tx| Member {
                id,
                instance_id: instance_id.clone(),
                client_id: client.id.clone(),
                client_host: client.host.clone(),
                session_timeout: session,
                rebalance_timeout: rebalance,
                protocol_type: protocol_type.clone(),
                protocols: protocols.clone(),
                assignment: Bytes::new(),
                deadline: now + session,
                join: Some(tx),
                sync: None,
            };
            let joined = if member_id.is_empty() {
                let returning = instance_id.as_ref().is_some_and(|i| c.static_ids.contains_key(i));
                if c.members.len() >= self.cfg.max_size && !returning {
                    return fail(E::GroupMaxSizeReached.code());
                }
                let known_static = instance_id.as_ref().and_then(|i| c.static_ids.get(i).cloned());
                if let (Some(old_id), Some(inst)) = (known_static, instance_id.as_ref()) {
                    // A static member back (after a restart of its process): it takes over its
                    // old identity under a new member id; the old one is fenced.
                    let new_id = new_member_id(inst);
                    let unchanged = c.unchanged(&old_id, &protocols);
                    let was_leader = c.leader.as_deref() == Some(old_id.as_str());
                    let old_assignment = c.members.get(&old_id).map(|m| m.assignment.clone()).unwrap_or_default();
                    c.remove_member(&old_id, E::FencedInstanceId.code());
                    let (tx, rx) = oneshot::channel();
                    let mut m = new_member(new_id.clone(), tx);
                    m.assignment = old_assignment;
                    c.static_ids.insert(inst.clone(), new_id.clone());
                    if was_leader {
                        c.leader = Some(new_id.clone());
                    }
                    if c.state == State::Stable && unchanged {
                        // No rebalance: it syncs and gets its old assignment back. As Kafka
                        // does, a returning leader is told the old leader id, so it does not
                        // run an assignment a stable group would never hand out.
                        m.join = None;
                        c.members.insert(new_id.clone(), m);
                        c.dirty = true;
                        if was_leader && version >= 9 {
                            // KIP-814: the returning leader learns it leads (and can watch
                            // metadata for the group) but must not reassign a stable group.
                            Joined::Now(c.current(&new_id).with_skip_assignment(true))
                        } else {
                            let leader_seen = if was_leader { old_id.clone() } else { c.leader.clone().unwrap_or_default() };
                            Joined::Now(c.current(&new_id).with_leader(sb(&leader_seen)).with_members(Vec::new()))
                        }
                    } else {
                        c.members.insert(new_id, m);
                        if c.state != State::PreparingRebalance {
                            c.prepare_rebalance(now, delay);
                        }
                        c.maybe_complete_join(now, false);
                        Joined::Wait(rx)
                    }
                } else if instance_id.is_none() && version >= 4 {
                    let id = new_member_id(&client.id);
                    c.pending.insert(id.clone(), now + session);
                    return JoinGroupResponse::default()
                        .with_error_code(E::MemberIdRequired.code())
                        .with_generation_id(-1)
                        .with_member_id(sb(&id));
                } else {
                    let id = new_member_id(instance_id.as_deref().unwrap_or(&client.id));
                    if let Some(i) = &instance_id {
                        c.static_ids.insert(i.clone(), id.clone());
                    }
                    let (tx, rx) = oneshot::channel();
                    c.members.insert(id.clone(), new_member(id, tx));
                    self.rebalance_for_new_member(c, now);
                    Joined::Wait(rx)
                }
            } else if c.pending.remove(&member_id).is_some() {
                if c.members.len() >= self.cfg.max_size {
                    return fail(E::GroupMaxSizeReached.code());
                }
                let (tx, rx) = oneshot::channel();
                c.members.insert(member_id.clone(), new_member(member_id.clone(), tx));
                self.rebalance_for_new_member(c, now);
                Joined::Wait(rx)
            } else if let Some(code) = c.check_member(&member_id, instance_id.as_deref()) {
                return fail(code);
            } else {
                let unchanged = c.unchanged(&member_id, &protocols);
                let is_leader = c.leader.as_deref() == Some(member_id.as_str());
                let m = c.members.get_mut(&member_id).expect("checked");
                m.protocols = protocols.clone();
                m.session_timeout = session;
                m.rebalance_timeout = rebalance;
                m.deadline = now + session;
                m.client_id = client.id.clone();
                m.client_host = client.host.clone();
                match c.state {
                    State::Stable if unchanged && !is_leader => Joined::Now(c.current(&member_id)),
                    State::CompletingRebalance if unchanged => Joined::Now(c.current(&member_id)),
                    _ => {
                        let (tx, rx) = oneshot::channel();
                        if let Some(old) = m.join.replace(tx) {
                            let _ = old.send(fail(E::RebalanceInProgress.code()));
                        }
                        if c.state != State::PreparingRebalance {
                            c.prepare_rebalance(now, delay);
                        }
                        c.maybe_complete_join(now, false);
                        Joined::Wait(rx)
                    }
                }
            };
            self.save_classic(&mut g).await;
            joined
        };
        match joined {
            Joined::Now(r) => r,
            Joined::Wait(rx) => rx.await.unwrap_or_else(|_| fail(E::UnknownMemberId.code())),
        }
    }

    fn rebalance_for_new_member(&self, c: &mut Classic, now: Instant) {
        let delay = self.cfg.initial_rebalance_delay;
        if c.state == State::PreparingRebalance {
            // Still in the initial delay: give others a little longer to arrive.
            if let (Some(_), Some(cap)) = (c.join_not_before, c.initial_cap) {
                c.join_not_before = Some((now + delay).min(cap));
            }
        } else {
            c.prepare_rebalance(now, delay);
        }
        c.maybe_complete_join(now, false);
    }

    /// Writes the classic membership if it changed.
    async fn save_classic(&self, g: &mut Group) {
        if !g.classic.dirty {
            return;
        }
        g.classic.dirty = false;
        if let Err(e) = self.persist(g).await {
            tracing::warn!(group = %g.id, error = %e, "cannot persist group");
        }
    }

    pub(super) async fn sync_group(&self, req: SyncGroupRequest, _version: i16, _client: &Client) -> SyncGroupResponse {
        let fail = |code: i16| SyncGroupResponse::default().with_error_code(code);
        let Some(g) = self.existing(&req.group_id.0) else { return fail(E::UnknownMemberId.code()) };
        let member_id = req.member_id.to_string();
        let rx = {
            let mut g = g.lock().await;
            let now = Instant::now();
            let c = &mut g.classic;
            if let Some(code) = c.check_member(&member_id, req.group_instance_id.as_deref()) {
                return fail(code);
            }
            if req.generation_id != c.generation {
                return fail(E::IllegalGeneration.code());
            }
            if req.protocol_type.as_ref().is_some_and(|t| Some(t.as_str()) != c.protocol_type.as_deref())
                || req.protocol_name.as_ref().is_some_and(|n| Some(n.as_str()) != c.protocol.as_deref())
            {
                return fail(E::InconsistentGroupProtocol.code());
            }
            let ok = |c: &Classic, a: Bytes| {
                SyncGroupResponse::default()
                    .with_protocol_type(c.protocol_type.as_deref().map(sb))
                    .with_protocol_name(c.protocol.as_deref().map(sb))
                    .with_assignment(a)
            };
            match c.state {
                State::Empty => return fail(E::UnknownMemberId.code()),
                State::PreparingRebalance => return fail(E::RebalanceInProgress.code()),
                State::Stable => {
                    let a = c.members.get(&member_id).map(|m| m.assignment.clone()).unwrap_or_default();
                    return ok(c, a);
                }
                State::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            if let Some(m) = c.members.get_mut(&member_id) {
                m.deadline = now + m.session_timeout;
                if let Some(old) = m.sync.replace(tx) {
                    let _ = old.send((E::RebalanceInProgress.code(), Bytes::new()));
                }
            }
            if c.leader.as_deref() == Some(member_id.as_str()) {
                let total: usize = req.assignments.iter().map(|a| a.assignment.len()).sum();
                if total > MAX_ASSIGNMENT_BYTES {
                    tracing::warn!(group = %g.id, bytes = total, "assignment over limit; rebalancing");
                    g.classic.prepare_rebalance(now, self.cfg.initial_rebalance_delay);
                    return fail(E::InvalidRequest.code());
                }
                for m in c.members.values_mut() {
                    m.assignment = Bytes::new();
                }
                for a in req.assignments {
                    if let Some(m) = c.members.get_mut(a.member_id.as_str()) {
                        m.assignment = a.assignment;
                    }
                }
                c.state = State::Stable;
                c.sync_deadline = None;
                if let Err(e) = self.persist(&mut g).await {
                    tracing::warn!(group = %g.id, error = %e, "cannot persist group assignment");
                    g.classic.state = State::CompletingRebalance;
                    g.classic.prepare_rebalance(now, self.cfg.initial_rebalance_delay);
                    return fail(Error::Coordinator(e).response().code());
                }
                let c = &mut g.classic;
                c.dirty = false;
                for m in c.members.values_mut() {
                    if let Some(s) = m.sync.take() {
                        let _ = s.send((0, m.assignment.clone()));
                    }
                }
            }
            rx
        };
        match rx.await {
            Ok((0, a)) => {
                let g = g.lock().await;
                SyncGroupResponse::default()
                    .with_protocol_type(g.classic.protocol_type.as_deref().map(sb))
                    .with_protocol_name(g.classic.protocol.as_deref().map(sb))
                    .with_assignment(a)
            }
            Ok((code, _)) => fail(code),
            Err(_) => fail(E::UnknownMemberId.code()),
        }
    }

    pub(super) async fn heartbeat(&self, req: HeartbeatRequest, _version: i16, _client: &Client) -> HeartbeatResponse {
        let code = match self.existing(&req.group_id.0) {
            None => E::UnknownMemberId.code(),
            Some(g) => {
                let mut g = g.lock().await;
                let c = &mut g.classic;
                let member_id = req.member_id.as_str();
                if let Some(code) = c.check_member(member_id, req.group_instance_id.as_deref()) {
                    code
                } else if req.generation_id != c.generation {
                    E::IllegalGeneration.code()
                } else {
                    let m = c.members.get_mut(member_id).expect("checked");
                    m.deadline = Instant::now() + m.session_timeout;
                    match c.state {
                        State::Empty => E::UnknownMemberId.code(),
                        State::PreparingRebalance => E::RebalanceInProgress.code(),
                        State::CompletingRebalance | State::Stable => 0,
                    }
                }
            }
        };
        HeartbeatResponse::default().with_error_code(code)
    }

    pub(super) async fn leave_group(&self, req: LeaveGroupRequest, version: i16, _client: &Client) -> LeaveGroupResponse {
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members.iter().map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string()))).collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let Some(g) = self.existing(&req.group_id.0) else {
            return LeaveGroupResponse::default().with_error_code(E::UnknownMemberId.code());
        };
        let mut g = g.lock().await;
        let now = Instant::now();
        let c = &mut g.classic;
        let mut results = Vec::new();
        let mut removed = false;
        for (member_id, instance_id) in &leaving {
            let id = match instance_id.as_ref().map(|i| c.static_ids.get(i).cloned()) {
                Some(Some(id)) if member_id.is_empty() || *member_id == id => Ok(id),
                Some(Some(_)) => Err(E::FencedInstanceId.code()),
                Some(None) => Err(E::UnknownMemberId.code()),
                None if c.members.contains_key(member_id) || c.pending.contains_key(member_id) => Ok(member_id.clone()),
                None => Err(E::UnknownMemberId.code()),
            };
            let code = match id {
                Ok(id) => {
                    // A member that never finished joining leaving changes no assignment.
                    if c.pending.remove(&id).is_none() {
                        removed |= c.remove_member(&id, E::UnknownMemberId.code());
                    }
                    0
                }
                Err(code) => code,
            };
            results.push(
                MemberResponse::default()
                    .with_member_id(sb(member_id))
                    .with_group_instance_id(instance_id.as_deref().map(sb))
                    .with_error_code(code),
            );
        }
        if removed && matches!(c.state, State::Stable | State::CompletingRebalance) {
            c.prepare_rebalance(now, Duration::ZERO);
        }
        c.maybe_complete_join(now, false);
        self.save_classic(&mut g).await;
        if version >= 3 {
            LeaveGroupResponse::default().with_members(results)
        } else {
            LeaveGroupResponse::default().with_error_code(results.first().map(|r| r.error_code).unwrap_or(0))
        }
    }

    /// Expires sessions and enforces rebalance and sync timeouts.
    pub(super) async fn classic_tick(&self, g: &mut Group, now: Instant) -> bool {
        let c = &mut g.classic;
        if c.members.is_empty() && c.pending.is_empty() && c.state == State::Empty {
            return false;
        }
        let before = c.pending.len();
        c.pending.retain(|_, deadline| *deadline > now);
        let mut changed = c.pending.len() != before;
        let expired: Vec<String> =
            c.members.values().filter(|m| m.deadline <= now && m.join.is_none() && m.sync.is_none()).map(|m| m.id.clone()).collect();
        for id in &expired {
            tracing::info!(group = %g.id, member = %id, "session expired");
            c.remove_member(id, E::UnknownMemberId.code());
        }
        if !expired.is_empty() && matches!(c.state, State::Stable | State::CompletingRebalance) {
            c.prepare_rebalance(now, Duration::ZERO);
        }
        changed |= !expired.is_empty();
        if c.state == State::CompletingRebalance && c.sync_deadline.is_some_and(|t| t <= now) {
            let unsynced: Vec<String> = c.members.values().filter(|m| m.sync.is_none()).map(|m| m.id.clone()).collect();
            for id in unsynced {
                c.remove_member(&id, E::UnknownMemberId.code());
            }
            c.prepare_rebalance(now, Duration::ZERO);
            changed = true;
        }
        let force = c.state == State::PreparingRebalance && c.rebalance_deadline.is_some_and(|t| t <= now);
        let generation = c.generation;
        c.maybe_complete_join(now, force);
        changed |= c.generation != generation;
        if changed {
            self.save_classic(g).await;
        }
        changed
    }
}
