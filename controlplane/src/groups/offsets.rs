//! OffsetCommit, OffsetFetch (one group, or several at once from v8), OffsetDelete. Offsets are
//! written to the metadata store before the commit is answered, one transaction per request.

use super::{now_ms, sb, Client, Coordinator, Group, Kind, OffsetRecord, OFFSET_METADATA_MAX};
use crate::error::Error;
use crate::meta::{keys, MetaStore, Op};
use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::*;
use kafka_protocol::messages::TopicName;
use prost::Message;
use std::collections::BTreeMap;

/// Topics and partitions asked for (`None`: every partition the group has offsets for).
type Wanted = Option<Vec<(String, Vec<i32>)>>;

impl<M: MetaStore + Clone> Coordinator<M> {
    pub(super) async fn offset_commit(&self, req: OffsetCommitRequest, version: i16, _client: &Client) -> OffsetCommitResponse {
        let group_id = req.group_id.0.to_string();
        let answer = |code_of: &dyn Fn(&str, i32) -> i16| {
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code_of(&t.name, p.partition_index))
                        })
                        .collect();
                    OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
                })
                .collect();
            OffsetCommitResponse::default().with_topics(topics)
        };
        if group_id.is_empty() {
            return answer(&|_, _| E::InvalidGroupId.code());
        }
        let generation = req.generation_id_or_member_epoch;
        let g = if generation < 0 && req.member_id.is_empty() {
            self.group(&group_id)
        } else {
            match self.existing(&group_id) {
                Some(g) => g,
                // Kafka answers GROUP_ID_NOT_FOUND from v9 on, ILLEGAL_GENERATION before.
                None => return answer(&|_, _| if version >= 9 { E::GroupIdNotFound.code() } else { E::IllegalGeneration.code() }),
            }
        };
        let mut g = g.lock().await;
        let code = match g.kind() {
            Some(Kind::Consumer) => g.consumer.validate_commit(&req.member_id, generation, version),
            _ => g.classic.validate_commit(&req.member_id, req.group_instance_id.as_deref(), generation),
        };
        if code != 0 {
            return answer(&|_, _| code);
        }
        // Partition counts of the topics named, not a copy of every topic: commits are frequent.
        let counts: BTreeMap<&str, i32> = {
            let topics = self.shared.topics.read().expect("poisoned");
            req.topics.iter().filter_map(|t| topics.get(t.name.as_str()).map(|m| (t.name.as_str(), m.streams.len() as i32))).collect()
        };
        let mut codes: BTreeMap<(String, i32), i16> = BTreeMap::new();
        let mut ops = Vec::new();
        let mut accepted = Vec::new();
        let ts = now_ms();
        for t in &req.topics {
            for p in &t.partitions {
                let known = counts.get(t.name.as_str()).is_some_and(|n| (0..*n).contains(&p.partition_index));
                let code = if !known {
                    E::UnknownTopicOrPartition.code()
                } else if p.committed_metadata.as_ref().is_some_and(|m| m.len() > OFFSET_METADATA_MAX) {
                    E::OffsetMetadataTooLarge.code()
                } else {
                    let rec = OffsetRecord {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_timestamp: ts,
                    };
                    ops.push(Op::Put(keys::group_offset(&group_id, &t.name, p.partition_index), Bytes::from(rec.encode_to_vec())));
                    accepted.push((t.name.to_string(), p.partition_index, rec));
                    0
                };
                codes.insert((t.name.to_string(), p.partition_index), code);
            }
        }
        if !ops.is_empty() {
            if let Err(e) = self.shared.store.write(vec![], ops).await {
                tracing::warn!(group = %group_id, error = %e, "cannot store offsets");
                let code = Error::Coordinator(e).response().code();
                return answer(&|_, _| code);
            }
            g.exists = true;
            for (topic, p, rec) in accepted {
                g.offsets.entry(topic).or_default().insert(p, rec);
            }
        }
        answer(&|t, p| codes.get(&(t.to_string(), p)).copied().unwrap_or(0))
    }

    pub(super) async fn offset_fetch(&self, req: OffsetFetchRequest, version: i16, _client: &Client) -> OffsetFetchResponse {
        if version >= 8 {
            let mut groups = Vec::new();
            for rg in &req.groups {
                let wanted: Wanted =
                    rg.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.to_string(), t.partition_indexes.clone())).collect());
                let member = rg.member_id.as_ref().map(|m| (m.to_string(), rg.member_epoch));
                let (code, found) = self.fetch_group(&rg.group_id, wanted, member).await;
                let topics = found
                    .into_iter()
                    .map(|(name, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, o)| {
                                let (offset, epoch, metadata) = committed(&o);
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(metadata))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default().with_name(TopicName(sb(&name))).with_partitions(partitions)
                    })
                    .collect();
                groups
                    .push(OffsetFetchResponseGroup::default().with_group_id(rg.group_id.clone()).with_error_code(code).with_topics(topics));
            }
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let wanted: Wanted = req.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.to_string(), t.partition_indexes.clone())).collect());
        let (code, found) = self.fetch_group(&req.group_id, wanted, None).await;
        let topics = found
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|(p, o)| {
                        let (offset, epoch, metadata) = committed(&o);
                        let r = OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_metadata(Some(metadata));
                        let r = if version >= 5 { r.with_committed_leader_epoch(epoch) } else { r };
                        if version < 2 {
                            r.with_error_code(code)
                        } else {
                            r
                        }
                    })
                    .collect();
                OffsetFetchResponseTopic::default().with_name(TopicName(sb(&name))).with_partitions(partitions)
            })
            .collect();
        let resp = OffsetFetchResponse::default().with_topics(topics);
        if version >= 2 {
            resp.with_error_code(code)
        } else {
            resp
        }
    }

    /// A group's committed offsets for what was asked (or all), and an error code for the group.
    async fn fetch_group(
        &self,
        group_id: &str,
        wanted: Wanted,
        member: Option<(String, i32)>,
    ) -> (i16, Vec<(String, Vec<(i32, Option<OffsetRecord>)>)>) {
        let g = self.existing(group_id);
        let g = match &g {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        if let (Some(g), Some((member_id, epoch))) = (&g, &member) {
            // KIP-848 members fetch with their epoch; a stale one must not see offsets.
            if g.kind() == Some(Kind::Consumer) {
                let code = g.consumer.validate_fetch(member_id, *epoch);
                if code != 0 {
                    return (code, Vec::new());
                }
            }
        }
        let empty = BTreeMap::new();
        let offsets = g.as_ref().map(|g| &g.offsets).unwrap_or(&empty);
        let found = match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let have = offsets.get(&t);
                    let parts = parts.into_iter().map(|p| (p, have.and_then(|h| h.get(&p)).cloned())).collect();
                    (t, parts)
                })
                .collect(),
            None => offsets.iter().map(|(t, parts)| (t.clone(), parts.iter().map(|(p, o)| (*p, Some(o.clone()))).collect())).collect(),
        };
        (0, found)
    }

    pub(super) async fn offset_delete(&self, req: OffsetDeleteRequest, _version: i16, _client: &Client) -> OffsetDeleteResponse {
        let Some(g) = self.existing(&req.group_id.0) else {
            return OffsetDeleteResponse::default().with_error_code(E::GroupIdNotFound.code());
        };
        let mut g = g.lock().await;
        if !g.exists && g.is_empty() {
            return OffsetDeleteResponse::default().with_error_code(E::GroupIdNotFound.code());
        }
        let subscribed = subscribed_topics(&g);
        let mut ops = Vec::new();
        let mut topics = Vec::new();
        let mut gone = Vec::new();
        for t in &req.topics {
            let busy = subscribed.iter().any(|s| s == t.name.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if busy { E::GroupSubscribedToTopic.code() } else { 0 };
                    if code == 0 {
                        ops.push(Op::Delete(keys::group_offset(&req.group_id, &t.name, p.partition_index)));
                        gone.push((t.name.to_string(), p.partition_index));
                    }
                    OffsetDeleteResponsePartition::default().with_partition_index(p.partition_index).with_error_code(code)
                })
                .collect();
            topics.push(OffsetDeleteResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions));
        }
        if !ops.is_empty() {
            if let Err(e) = self.shared.store.write(vec![], ops).await {
                tracing::warn!(group = %g.id, error = %e, "cannot delete offsets");
                return OffsetDeleteResponse::default().with_error_code(Error::Coordinator(e).response().code());
            }
            for (t, p) in gone {
                if let Some(parts) = g.offsets.get_mut(&t) {
                    parts.remove(&p);
                    if parts.is_empty() {
                        g.offsets.remove(&t);
                    }
                }
            }
        }
        OffsetDeleteResponse::default().with_topics(topics)
    }
}

/// Offset, leader epoch and metadata of a committed offset, or Kafka's "none" (-1, -1, "").
fn committed(o: &Option<OffsetRecord>) -> (i64, i32, kafka_protocol::protocol::StrBytes) {
    match o {
        Some(o) => (o.offset, o.leader_epoch, sb(o.metadata.as_deref().unwrap_or(""))),
        None => (-1, -1, sb("")),
    }
}

/// Topics the group's members subscribe to (OffsetDelete refuses those).
fn subscribed_topics(g: &Group) -> Vec<String> {
    match g.kind() {
        Some(Kind::Classic) => g.classic.members.values().flat_map(|m| m.subscribed_topics()).collect(),
        Some(Kind::Consumer) => g.consumer.subscribed_names(),
        None => Vec::new(),
    }
}
