//! Changing topic configs at runtime (AlterConfigs, IncrementalAlterConfigs).
//!
//! A topic's record is rewritten with its new configs in one fenced transaction conditioned on
//! the version it was read at, then published to the data planes like a new topic. Retention
//! reads the configs from the same shared table, so a shorter `retention.ms` applies at its next
//! pass.

use super::{failure, publish_topic, storage_failure, Shared};
use crate::meta::{keys, Cond, MetaStore, Op};
use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use prost::Message;
use sluice_rpc::configs::{topic_config, validate_topic_config, ConfigType};
use sluice_rpc::{TopicConfigChange, TopicResult, CONFIG_APPEND, CONFIG_DELETE, CONFIG_SET, CONFIG_SUBTRACT};
use std::collections::HashMap;

/// Applies one topic's changes (or only checks them).
pub(super) async fn alter<M: MetaStore>(shared: &Shared<M>, change: TopicConfigChange, validate_only: bool) -> TopicResult {
    let name = change.name.clone();
    let Some(mut topic) = shared.topics.read().expect("poisoned").get(&name).cloned() else {
        return failure(name.clone(), E::UnknownTopicOrPartition, format!("Topic {name} does not exist"));
    };
    let configs = match changed(&topic.configs, &change) {
        Ok(c) => c,
        Err(m) => return failure(name, E::InvalidConfig, m),
    };
    if validate_only {
        return TopicResult { name, error: crate::error::NONE, message: None, topic: None };
    }
    topic.configs = configs;
    let conds = match topic.revision {
        0 => Vec::new(),
        v => vec![Cond::Version(keys::topic(&name), v)],
    };
    match shared.store.write(conds, vec![Op::Put(keys::topic(&name), Bytes::from(topic.encode_to_vec()))]).await {
        Ok(rev) => {
            topic.revision = rev;
            publish_topic(shared, topic.clone());
            tracing::info!(topic = %name, configs = ?topic.configs, "topic configs changed");
            TopicResult { name, error: crate::error::NONE, message: None, topic: Some(topic) }
        }
        Err(e) => storage_failure(name, e),
    }
}

/// A topic's configs after `change`, every resulting value checked; the error is the message
/// for the client (INVALID_CONFIG).
fn changed(current: &HashMap<String, String>, change: &TopicConfigChange) -> Result<HashMap<String, String>, String> {
    let mut configs = if change.replace { HashMap::new() } else { current.clone() };
    for op in &change.ops {
        let name = op.name.as_str();
        let Some(cfg) = topic_config(name) else {
            return Err(format!("Unknown topic config name: {name}"));
        };
        match op.op {
            CONFIG_SET => {
                let Some(value) = &op.value else {
                    return Err(format!("Null value not supported for topic configs: {name}"));
                };
                validate_topic_config(name, value)?;
                configs.insert(name.to_string(), value.clone());
            }
            CONFIG_DELETE => {
                configs.remove(name);
            }
            CONFIG_APPEND | CONFIG_SUBTRACT => {
                if !matches!(cfg.kind, ConfigType::List(_)) {
                    let verb = if op.op == CONFIG_APPEND { "append" } else { "subtract" };
                    return Err(format!("Config value {verb} is not allowed for config key: {name}"));
                }
                let current = configs.get(name).map(String::as_str).unwrap_or(cfg.default);
                let mut items: Vec<&str> = current.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
                let given: Vec<&str> = op.value.as_deref().unwrap_or("").split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
                if op.op == CONFIG_APPEND {
                    for v in given {
                        if !items.contains(&v) {
                            items.push(v);
                        }
                    }
                } else {
                    items.retain(|v| !given.contains(v));
                }
                let value = items.join(",");
                validate_topic_config(name, &value)?;
                configs.insert(name.to_string(), value);
            }
            other => return Err(format!("Unknown config operation {other} for {name}")),
        }
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_rpc::ConfigOp;

    fn op(name: &str, op: i32, value: Option<&str>) -> ConfigOp {
        ConfigOp { name: name.into(), op, value: value.map(Into::into) }
    }

    fn change(replace: bool, ops: Vec<ConfigOp>) -> TopicConfigChange {
        TopicConfigChange { name: "t".into(), replace, ops }
    }

    #[test]
    fn operations_apply_in_order_and_every_value_is_checked() {
        let current: HashMap<String, String> = [("retention.ms".to_string(), "1000".to_string())].into();
        let c = changed(&current, &change(false, vec![op("retention.bytes", CONFIG_SET, Some("42"))])).unwrap();
        assert_eq!(c.len(), 2, "incremental keeps what it does not name");
        let c = changed(&current, &change(true, vec![op("retention.bytes", CONFIG_SET, Some("42"))])).unwrap();
        assert_eq!(c.keys().collect::<Vec<_>>(), vec!["retention.bytes"], "a full alter replaces everything");
        let c = changed(&current, &change(false, vec![op("retention.ms", CONFIG_DELETE, None)])).unwrap();
        assert!(c.is_empty());
        let c = changed(&current, &change(false, vec![op("cleanup.policy", CONFIG_APPEND, Some("compact"))])).unwrap();
        assert_eq!(c["cleanup.policy"], "delete,compact", "append starts from the default");
        let c = changed(&c, &change(false, vec![op("cleanup.policy", CONFIG_SUBTRACT, Some("delete"))])).unwrap();
        assert_eq!(c["cleanup.policy"], "compact");

        for bad in [
            op("retention.ms", CONFIG_SET, Some("soon")),
            op("retention.ms", CONFIG_SET, None),
            op("no.such.config", CONFIG_SET, Some("1")),
            op("retention.ms", CONFIG_APPEND, Some("1")),
            op("cleanup.policy", CONFIG_APPEND, Some("shred")),
            op("retention.ms", 9, Some("1")),
        ] {
            assert!(changed(&current, &change(false, vec![bad.clone()])).is_err(), "{bad:?} accepted");
        }
    }
}
