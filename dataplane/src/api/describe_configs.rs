//! DescribeConfigs for topics (every topic config, set or Kafka's default), for this broker, and
//! for groups (Kafka 4.1's group configs with the coordinator's defaults).

use super::metadata::resolve;
use super::sb;
use crate::shard::Shard;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult, DescribeConfigsSynonym,
};
use sluice_rpc::configs::{ConfigType, GROUP_CONFIGS, TOPIC_CONFIGS};
use std::rc::Rc;

// Kafka's ConfigResource types.
pub(super) const TOPIC: i8 = 2;
pub(super) const BROKER: i8 = 4;
pub(super) const GROUP: i8 = 32;
// Kafka's ConfigSource codes.
const TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

struct Entry {
    name: String,
    value: String,
    source: i8,
    kind: ConfigType,
    doc: &'static str,
    /// The default under a topic-level override, for synonyms.
    default: Option<(String, i8)>,
}

pub async fn handle(shard: &Rc<Shard>, req: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let name = r.resource_name.to_string();
        let mut out = DescribeConfigsResult::default().with_resource_type(r.resource_type).with_resource_name(r.resource_name.clone());
        let entries = match r.resource_type {
            TOPIC => match resolve(shard, &name, false).await {
                Ok(t) => Ok(topic_entries(shard, &t.configs)),
                Err(e) => Err((e.code(), format!("Topic {name} does not exist"))),
            },
            BROKER if name.is_empty() || name == shard.node_id().to_string() => Ok(broker_entries(shard)),
            BROKER => Err((
                ResponseError::InvalidRequest.code(),
                format!("Unexpected broker id, expected {} but received {name}", shard.node_id()),
            )),
            // Groups have no per-group overrides here (IncrementalAlterConfigs refuses them):
            // every group, existing or not, has the defaults, as in Kafka.
            GROUP if !name.is_empty() => Ok(group_entries(shard)),
            GROUP => Err((ResponseError::InvalidRequest.code(), "Group name must not be empty".to_string())),
            other => Err((ResponseError::InvalidRequest.code(), format!("Unsupported resource type {other}"))),
        };
        match entries {
            Ok(entries) => {
                let keys: Option<Vec<String>> = r.configuration_keys.map(|k| k.iter().map(|s| s.to_string()).collect());
                out.configs = entries
                    .into_iter()
                    .filter(|e| keys.as_ref().is_none_or(|k| k.contains(&e.name)))
                    .map(|e| render(e, req.include_synonyms, req.include_documentation, version))
                    .collect();
            }
            Err((e, m)) => {
                out.error_code = e;
                out.error_message = Some(sb(&m));
            }
        }
        results.push(out);
    }
    DescribeConfigsResponse::default().with_results(results)
}

fn render(e: Entry, synonyms: bool, docs: bool, version: i16) -> DescribeConfigsResourceResult {
    let mut r = DescribeConfigsResourceResult::default()
        .with_name(sb(&e.name))
        .with_value(Some(sb(&e.value)))
        .with_config_source(e.source)
        .with_read_only(e.source == STATIC_BROKER_CONFIG)
        .with_is_sensitive(false);
    if version >= 3 {
        r.config_type = e.kind.kafka_code();
        if docs {
            r.documentation = Some(sb(e.doc));
        }
    }
    if synonyms {
        r.synonyms.push(DescribeConfigsSynonym::default().with_name(sb(&e.name)).with_value(Some(sb(&e.value))).with_source(e.source));
        if let Some((v, s)) = e.default {
            r.synonyms.push(DescribeConfigsSynonym::default().with_name(sb(&e.name)).with_value(Some(sb(&v))).with_source(s));
        }
    }
    r
}

fn topic_entries(shard: &Shard, set: &std::collections::HashMap<String, String>) -> Vec<Entry> {
    TOPIC_CONFIGS
        .iter()
        .map(|c| {
            let default = if c.name == "max.message.bytes" { shard.cfg.max_message_bytes.to_string() } else { c.default.to_string() };
            match set.get(c.name) {
                Some(v) => Entry {
                    name: c.name.into(),
                    value: v.clone(),
                    source: TOPIC_CONFIG,
                    kind: c.kind,
                    doc: c.doc,
                    default: Some((default, DEFAULT_CONFIG)),
                },
                None => Entry { name: c.name.into(), value: default, source: DEFAULT_CONFIG, kind: c.kind, doc: c.doc, default: None },
            }
        })
        .collect()
}

fn broker_entries(shard: &Shard) -> Vec<Entry> {
    let c = &shard.cfg;
    let e = |name: &str, value: String, kind: ConfigType, doc: &'static str| Entry {
        name: name.into(),
        value,
        source: STATIC_BROKER_CONFIG,
        kind,
        doc,
        default: None,
    };
    let long = ConfigType::Long(i64::MIN);
    let int = ConfigType::Int(i32::MIN);
    vec![
        e("auto.create.topics.enable", c.auto_create_topics.to_string(), ConfigType::Boolean, "Create topics named in Metadata requests."),
        e("broker.id", shard.node_id().to_string(), int, "Broker (node) id."),
        e("broker.rack", c.zone.clone(), ConfigType::String(&[]), "Availability zone of this data plane."),
        e("compression.type", "producer".into(), ConfigType::String(&[]), "Batches are kept as producers compressed them."),
        e("default.replication.factor", "1".into(), int, "Object storage provides durability; there are no replicas."),
        e("log.cleanup.policy", "delete".into(), ConfigType::List(&[]), "Default cleanup policy."),
        e("log.retention.bytes", "-1".into(), long, "Default retention.bytes."),
        e("log.retention.hours", "168".into(), int, "Default retention in hours."),
        e("message.max.bytes", c.max_message_bytes.to_string(), int, "Largest record batch accepted."),
        e("min.insync.replicas", "1".into(), int, "Accepted for compatibility."),
        e("node.id", shard.node_id().to_string(), int, "Broker (node) id."),
        e("num.partitions", c.num_partitions.to_string(), int, "Partitions of auto-created topics."),
        e("sluice.cache.bytes", c.cache_bytes.to_string(), long, "Byte limit of the committed-batch cache."),
        e("sluice.wal.flush.bytes", c.wal_flush_bytes.to_string(), long, "WAL object size that triggers a flush."),
        e(
            "sluice.wal.flush.interval.ms",
            c.wal_flush_interval.as_millis().to_string(),
            long,
            "Longest a batch waits before its WAL object is cut.",
        ),
        e("socket.request.max.bytes", c.socket_request_max_bytes.to_string(), int, "Largest request frame."),
    ]
}

fn group_entries(shard: &Shard) -> Vec<Entry> {
    let meta = shard.meta.borrow();
    GROUP_CONFIGS
        .iter()
        .map(|c| Entry {
            name: c.name.into(),
            value: meta.group_defaults.get(c.name).cloned().unwrap_or_else(|| c.default.to_string()),
            source: DEFAULT_CONFIG,
            kind: c.kind,
            doc: c.doc,
            default: None,
        })
        .collect()
}
