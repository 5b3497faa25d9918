//! Metadata: brokers and topics, creating topics on first mention when
//! `auto.create.topics.enable` is on and the client allows it.
//!
//! The brokers a client is shown are the data planes of the zone its `client.id` names (all of
//! them when it names none, or none are there), and each partition's leader is the one of them
//! that rendezvous hashing weighted by cores picks ([`sluice_rpc::routing`]); any data plane
//! serves any partition, so the leader only spreads clients by capacity.

use super::sb;
use crate::error::Error;
use crate::meta::TopicMeta;
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use sluice_rpc::{body::Body, routing, Broker, NewTopic};
use std::rc::Rc;

use sluice_rpc::acl;

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16, zone: Option<&str>) -> MetadataResponse {
    let serving = shard.serving(zone);
    let leaders =
        Leaders { brokers: serving.iter().collect(), epoch: if version >= 7 { shard.meta.borrow().generation.max(0) } else { -1 } };
    // v8+ may ask for authorized operations (the cluster's only up to v10).
    let topic_ops = acl::if_asked(version >= 8 && req.include_topic_authorized_operations, acl::TOPIC_OPS);
    let cluster_ops = acl::if_asked((8..=10).contains(&version) && req.include_cluster_authorized_operations, acl::CLUSTER_OPS);
    let brokers = serving
        .iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(sb(&b.host))
                .with_port(b.port)
                .with_rack((!b.zone.is_empty()).then(|| sb(&b.zone)))
        })
        .collect();
    // v0 has no null topics: an empty list means all topics there.
    let wanted: Option<Vec<Option<String>>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .map(|t| match t.name {
                    Some(n) => Some(n.0.to_string()),
                    None => shard.topic_by_id(&t.topic_id).map(|m| m.name.clone()),
                })
                .collect(),
        ),
    };
    let allow_create = shard.cfg.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let topics = match wanted {
        None => {
            let mut all: Vec<Rc<TopicMeta>> = shard.meta.borrow().topics.values().cloned().collect();
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all.iter().map(|t| describe(t, &leaders, version, topic_ops)).collect()
        }
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let Some(name) = name else {
                    out.push(
                        MetadataResponseTopic::default()
                            .with_error_code(Error::UnknownTopicOrPartition.code())
                            .with_topic_authorized_operations(acl::NOT_REQUESTED),
                    );
                    continue;
                };
                out.push(match resolve(shard, &name, allow_create).await {
                    Ok(t) => describe(&t, &leaders, version, topic_ops),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(sb(&name))))
                        .with_error_code(e.code())
                        .with_topic_authorized_operations(acl::NOT_REQUESTED),
                });
            }
            out
        }
    };
    // Fields a version lacks must keep their defaults, or the encoder refuses the response.
    let controller = serving.first().map_or(shard.node_id(), |b| b.node_id);
    let mut resp = MetadataResponse::default().with_brokers(brokers).with_topics(topics);
    if version >= 1 {
        resp.controller_id = BrokerId(controller);
    }
    if version >= 2 {
        resp.cluster_id = Some(sb(&shard.meta.borrow().cluster_id));
    }
    if (8..=10).contains(&version) {
        resp.cluster_authorized_operations = cluster_ops;
    }
    resp
}

/// Finds a topic: in the shard's cache, else at the control plane (the cache may lag), else by
/// creating it when allowed.
pub async fn resolve(shard: &Rc<Shard>, name: &str, allow_create: bool) -> Result<Rc<TopicMeta>, Error> {
    if let Some(t) = shard.topic(name) {
        return Ok(t);
    }
    if sluice_rpc::configs::validate_topic_name(name).is_err() {
        return Err(Error::InvalidTopic);
    }
    match shard.rpc.call(Body::GetTopics(sluice_rpc::GetTopics { names: vec![name.to_string()] }), RPC_TIMEOUT).await {
        Ok(Body::Topics(t)) => {
            for t in t.topics {
                shard.learn_topic(t);
            }
        }
        _ => return Err(Error::TopicNotAvailable),
    }
    if let Some(t) = shard.topic(name) {
        return Ok(t);
    }
    if !allow_create {
        return Err(Error::UnknownTopicOrPartition);
    }
    let create = sluice_rpc::CreateTopics {
        topics: vec![NewTopic { name: name.to_string(), partitions: shard.cfg.num_partitions, configs: Default::default() }],
        validate_only: false,
    };
    match shard.rpc.call(Body::CreateTopics(create), RPC_TIMEOUT).await {
        Ok(Body::AdminReply(r)) => {
            for res in r.results {
                if let Some(t) = res.topic {
                    shard.learn_topic(t);
                } else if Error::remote(res.error).is_some_and(|e| e.response() == ResponseError::TopicAlreadyExists) {
                    // Created meanwhile by someone else: fetch it.
                    return Box::pin(resolve(shard, name, false)).await;
                } else {
                    return Err(Error::remote(res.error).unwrap_or(Error::TopicNotAvailable));
                }
            }
            shard.topic(name).ok_or(Error::TopicNotAvailable)
        }
        _ => Err(Error::TopicNotAvailable),
    }
}

/// Finds a topic by id (Fetch and Produce v13+): in the shard's cache, else in the control
/// plane's topic list (a topic created through another data plane may not have reached this
/// shard yet).
pub async fn resolve_id(shard: &Rc<Shard>, id: &uuid::Uuid) -> Result<Rc<TopicMeta>, Error> {
    if let Some(t) = shard.topic_by_id(id) {
        return Ok(t);
    }
    if id.is_nil() {
        return Err(Error::UnknownTopicId);
    }
    match shard.rpc.call(Body::GetTopics(sluice_rpc::GetTopics { names: Vec::new() }), RPC_TIMEOUT).await {
        Ok(Body::Topics(t)) => {
            for t in t.topics.into_iter().filter(|t| t.topic_id == id.as_bytes()) {
                shard.learn_topic(t);
            }
            shard.topic_by_id(id).ok_or(Error::UnknownTopicId)
        }
        _ => Err(Error::TopicNotAvailable),
    }
}

/// The data planes a client is shown and the leader epoch it is told.
struct Leaders<'a> {
    brokers: Vec<&'a Broker>,
    epoch: i32,
}

fn describe(t: &TopicMeta, leaders: &Leaders, version: i16, ops: i32) -> MetadataResponseTopic {
    let partitions = (0..t.streams.len() as i32)
        .map(|p| {
            let node = routing::pick(&leaders.brokers, routing::partition_key(t.topic_id.as_u128(), p)).map_or(-1, |b| b.node_id);
            MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(node))
                .with_leader_epoch(leaders.epoch)
                .with_replica_nodes(vec![BrokerId(node)])
                .with_isr_nodes(vec![BrokerId(node)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(sb(&t.name))))
        .with_topic_id(if version >= 10 { t.topic_id } else { uuid::Uuid::nil() })
        .with_partitions(partitions)
        .with_topic_authorized_operations(ops)
}
