//! Topic administration (CreateTopics, DeleteTopics, CreatePartitions): checked here for what
//! the request itself gets wrong, then carried out by the control plane.

use super::sb;
use crate::error::Error;
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{CreatePartitionsResponse, CreatePartitionsTopicResult};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::TopicName;
use sluice_rpc::{body::Body, configs::TOPIC_CONFIGS, AdminReply, NewTopic, PartitionIncrease, TopicResult};
use std::collections::HashMap;
use std::rc::Rc;

/// Sends an admin request and learns the topics it returns.
pub(super) async fn admin(shard: &Rc<Shard>, body: Body, count: usize) -> Vec<TopicResult> {
    match shard.rpc.call(body, RPC_TIMEOUT).await {
        Ok(Body::AdminReply(AdminReply { results })) if results.len() == count => {
            for r in &results {
                if let Some(t) = &r.topic {
                    if r.error == 0 {
                        shard.learn_topic(t.clone());
                    }
                }
            }
            results
        }
        _ => (0..count)
            .map(|_| TopicResult {
                error: i32::from(Error::from(crate::error::RpcError::Unavailable).code()),
                message: Some("control plane unavailable".into()),
                ..Default::default()
            })
            .collect(),
    }
}

pub async fn create_topics(shard: &Rc<Shard>, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut results: Vec<CreatableTopicResult> = Vec::with_capacity(req.topics.len());
    let mut send = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.0.to_string()).or_default() += 1;
    }
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default().with_name(t.name.clone()).with_num_partitions(-1).with_replication_factor(-1);
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i32
        } else if t.num_partitions == -1 {
            shard.cfg.num_partitions
        } else {
            t.num_partitions
        };
        let error = if seen[&name] > 1 {
            Some((ResponseError::InvalidRequest.code(), format!("Create topics request from client contains duplicate topic {name}.")))
        } else if t.replication_factor == 0 || t.replication_factor < -1 {
            Some((
                ResponseError::InvalidReplicationFactor.code(),
                "Replication factor must be larger than 0, or -1 to use the default value.".to_string(),
            ))
        } else if partitions <= 0 {
            Some((
                ResponseError::InvalidPartitions.code(),
                "Number of partitions must be larger than 0, or -1 to use the default value.".to_string(),
            ))
        } else {
            t.configs
                .iter()
                .find(|c| c.value.is_none())
                .map(|c| (ResponseError::InvalidConfig.code(), format!("Null value not supported for topic configs: {}", c.name.as_str())))
        };
        if let Some((e, m)) = error {
            r.error_code = e;
            r.error_message = Some(sb(&m));
            results.push(r);
            continue;
        }
        let configs = t.configs.into_iter().map(|c| (c.name.to_string(), c.value.map(|v| v.to_string()).unwrap_or_default())).collect();
        send.push((results.len(), NewTopic { name, partitions, configs }));
        results.push(r);
    }
    if !send.is_empty() {
        let topics: Vec<NewTopic> = send.iter().map(|(_, t)| t.clone()).collect();
        let body = Body::CreateTopics(sluice_rpc::CreateTopics { topics, validate_only: req.validate_only });
        let replies = admin(shard, body, send.len()).await;
        for ((slot, nt), rep) in send.into_iter().zip(replies) {
            let r = &mut results[slot];
            r.error_code = rep.error as i16;
            r.error_message = rep.message.map(|m| sb(&m));
            if rep.error == 0 {
                if let Some(t) = rep.topic.filter(|_| version >= 7) {
                    r.topic_id = uuid::Uuid::from_slice(&t.topic_id).unwrap_or_default();
                }
                if version >= 5 {
                    r.num_partitions = nt.partitions;
                    r.replication_factor = 1;
                    r.configs = Some(effective_configs(shard, &nt.configs));
                }
            }
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn effective_configs(shard: &Shard, set: &HashMap<String, String>) -> Vec<CreatableTopicConfigs> {
    TOPIC_CONFIGS
        .iter()
        .map(|c| {
            let (value, source) = match set.get(c.name) {
                Some(v) => (v.clone(), 1),
                None if c.name == "max.message.bytes" => (shard.cfg.max_message_bytes.to_string(), 5),
                None => (c.default.to_string(), 5),
            };
            CreatableTopicConfigs::default().with_name(sb(c.name)).with_value(Some(sb(&value))).with_config_source(source)
        })
        .collect()
}

pub async fn delete_topics(shard: &Rc<Shard>, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    // v6 names topics in `topics` (by name or id); older versions in `topic_names`.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        req.topic_names.into_iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
    };
    for (name, id) in targets.iter_mut() {
        if name.is_none() {
            *name = shard.topic_by_id(id).map(|t| t.name.clone());
        }
    }
    let mut results = Vec::with_capacity(targets.len());
    let known: Vec<String> = targets.iter().filter_map(|(n, _)| n.clone()).collect();
    let replies = if known.is_empty() {
        Vec::new()
    } else {
        admin(shard, Body::DeleteTopics(sluice_rpc::DeleteTopics { names: known.clone() }), known.len()).await
    };
    let mut replies = replies.into_iter();
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default().with_topic_id(id);
        match name {
            None => {
                r.error_code = 100; // UNKNOWN_TOPIC_ID
                if version >= 5 {
                    r.error_message = Some(sb("This server does not host this topic ID."));
                }
            }
            Some(n) => {
                let rep = replies.next().unwrap_or_default();
                r.name = Some(TopicName(sb(&n)));
                r.error_code = rep.error as i16;
                if version >= 5 {
                    r.error_message = rep.message.map(|m| sb(&m));
                }
                if rep.error == 0 {
                    shard.meta.borrow_mut().remove_topic(&n);
                }
            }
        }
        results.push(r);
    }
    DeleteTopicsResponse::default().with_responses(results)
}

pub async fn create_partitions(shard: &Rc<Shard>, req: CreatePartitionsRequest, _version: i16) -> CreatePartitionsResponse {
    let incs: Vec<PartitionIncrease> =
        req.topics.iter().map(|t| PartitionIncrease { name: t.name.0.to_string(), count: t.count }).collect();
    let n = incs.len();
    let replies = if n == 0 {
        Vec::new()
    } else {
        admin(shard, Body::CreatePartitions(sluice_rpc::CreatePartitions { topics: incs, validate_only: req.validate_only }), n).await
    };
    let results = req
        .topics
        .into_iter()
        .zip(replies)
        .map(|(t, rep)| {
            CreatePartitionsTopicResult::default()
                .with_name(t.name)
                .with_error_code(rep.error as i16)
                .with_error_message(rep.message.map(|m| sb(&m)))
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
