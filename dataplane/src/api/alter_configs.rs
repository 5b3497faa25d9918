//! AlterConfigs (the whole config of a resource) and IncrementalAlterConfigs (set, delete,
//! append, subtract) for topics: checked here for what the request itself gets wrong, then
//! applied by the control plane, which validates every value (INVALID_CONFIG) and tells every
//! data plane. Brokers and groups have no configs to change at runtime here: the data plane's
//! settings are its flags.

use super::admin::admin;
use super::describe_configs::{BROKER, GROUP, TOPIC};
use super::sb;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{self, AlterConfigsResponse};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{self, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_rpc::{body::Body, AlterTopicConfigs, ConfigOp, TopicConfigChange, CONFIG_SET};
use std::collections::HashSet;
use std::rc::Rc;

use crate::shard::Shard;

/// One resource of either request, as the control plane takes it.
struct Resource {
    kind: i8,
    name: StrBytes,
    ops: Vec<ConfigOp>,
}

/// What became of one resource.
struct Outcome {
    kind: i8,
    name: StrBytes,
    error: i16,
    message: Option<StrBytes>,
}

/// Outcomes, one per resource in order.
async fn alter(shard: &Rc<Shard>, resources: Vec<Resource>, replace: bool, validate_only: bool) -> Vec<Outcome> {
    let keys: Vec<(i8, StrBytes)> = resources.iter().map(|r| (r.kind, r.name.clone())).collect();
    let mut results: Vec<(i16, Option<String>)> = vec![(0, None); resources.len()];
    let mut send: Vec<(usize, TopicConfigChange)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in resources.into_iter().enumerate() {
        let name = r.name.to_string();
        let refused = |e: ResponseError, m: String| (e.code(), Some(m));
        if !seen.insert((r.kind, name.clone())) {
            results[i] = refused(ResponseError::InvalidRequest, format!("Duplicate resource {name} in one request"));
            continue;
        }
        let mut names = HashSet::new();
        if let Some(dup) = r.ops.iter().find(|o| !names.insert(o.name.as_str())) {
            results[i] = refused(ResponseError::InvalidRequest, format!("Error due to duplicate config keys: {}", dup.name));
            continue;
        }
        results[i] = match r.kind {
            TOPIC => {
                send.push((i, TopicConfigChange { name, replace, ops: r.ops }));
                continue;
            }
            BROKER => refused(
                ResponseError::InvalidRequest,
                "Sluice data planes are configured by their flags; broker configs cannot be changed at runtime".into(),
            ),
            GROUP => refused(ResponseError::InvalidRequest, "Group configs cannot be changed in Sluice".into()),
            other => refused(ResponseError::InvalidRequest, format!("Unsupported resource type {other}")),
        };
    }
    if !send.is_empty() {
        let topics = send.iter().map(|(_, c)| c.clone()).collect();
        let replies = admin(shard, Body::AlterTopicConfigs(AlterTopicConfigs { topics, validate_only }), send.len()).await;
        for ((i, _), rep) in send.into_iter().zip(replies) {
            results[i] = (rep.error as i16, rep.message);
        }
    }
    keys.into_iter()
        .zip(results)
        .map(|((kind, name), (error, message))| Outcome { kind, name, error, message: message.map(|m| sb(&m)) })
        .collect()
}

/// The two responses are the same message under two names.
macro_rules! respond {
    ($response:ty, $entry:ty, $outcomes:expr) => {
        <$response>::default().with_responses(
            $outcomes
                .into_iter()
                .map(|o| {
                    <$entry>::default()
                        .with_resource_type(o.kind)
                        .with_resource_name(o.name)
                        .with_error_code(o.error)
                        .with_error_message(o.message)
                })
                .collect(),
        )
    };
}

pub async fn handle(shard: &Rc<Shard>, req: AlterConfigsRequest, _version: i16) -> AlterConfigsResponse {
    let resources = req.resources.into_iter().map(|r| Resource {
        kind: r.resource_type,
        name: r.resource_name,
        ops: r
            .configs
            .into_iter()
            .map(|c| ConfigOp { name: c.name.to_string(), op: CONFIG_SET, value: c.value.map(|v| v.to_string()) })
            .collect(),
    });
    let outcomes = alter(shard, resources.collect(), true, req.validate_only).await;
    respond!(AlterConfigsResponse, alter_configs_response::AlterConfigsResourceResponse, outcomes)
}

pub async fn handle_incremental(shard: &Rc<Shard>, req: IncrementalAlterConfigsRequest, _version: i16) -> IncrementalAlterConfigsResponse {
    let resources = req.resources.into_iter().map(|r| Resource {
        kind: r.resource_type,
        name: r.resource_name,
        ops: r
            .configs
            .into_iter()
            .map(|c| ConfigOp { name: c.name.to_string(), op: i32::from(c.config_operation), value: c.value.map(|v| v.to_string()) })
            .collect(),
    });
    let outcomes = alter(shard, resources.collect(), false, req.validate_only).await;
    respond!(IncrementalAlterConfigsResponse, incremental_alter_configs_response::AlterConfigsResourceResponse, outcomes)
}
