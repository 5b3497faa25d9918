//! Group APIs. FindCoordinator is answered here: every data plane fronts the one coordinator in
//! the control plane, so the coordinator a client is told about is the data plane it asked. The
//! other group APIs ([`sluice_rpc::forward::GROUP_APIS`]) travel undecoded to the control plane
//! and its answer comes back as the response body; when the control plane cannot be reached
//! the client gets COORDINATOR_NOT_AVAILABLE and looks the coordinator up again, as with Kafka.

use super::{frame_body, sb, Reply, Request};
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::{ApiKey, BrokerId};
use sluice_rpc::{body::Body, forward, KafkaRequest};
use std::rc::Rc;
use crate::rpc_client::RpcError;
use std::time::{Duration, Instant};

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_REQUEST: i16 = 42;
/// Key types of FindCoordinator: 0 group, 1 transaction, 2 share group.
const KEY_TYPE_GROUP: i8 = 0;

/// JoinGroup and SyncGroup wait for the whole group, up to its rebalance timeout (the clients'
/// `max.poll.interval.ms`, 5 minutes by default); the coordinator enforces that timeout, this
/// only bounds a lost answer.
const LONG_CALL: Duration = Duration::from_secs(30 * 60);
/// Pause before sending a request again after the control plane connection dropped.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub async fn find_coordinator(shard: &Rc<Shard>, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let host = sb(&shard.cfg.advertised_host);
    let port = i32::from(shard.cfg.listen.port());
    let node = BrokerId(shard.cfg.node_id);
    let error = if req.key_type == KEY_TYPE_GROUP { 0 } else { INVALID_REQUEST };
    if version < 4 {
        let resp = FindCoordinatorResponse::default().with_error_code(error);
        return if error == 0 { resp.with_node_id(node).with_host(host).with_port(port) } else { resp.with_node_id(BrokerId(-1)) };
    }
    let coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let c = Coordinator::default().with_key(key).with_error_code(error);
            if error == 0 { c.with_node_id(node).with_host(host.clone()).with_port(port) } else { c.with_node_id(BrokerId(-1)) }
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

/// Sends a group request to the coordinator and frames its answer.
pub async fn forward(shard: &Rc<Shard>, req: &Request) -> Reply {
    let timeout = if matches!(req.api, ApiKey::JoinGroup | ApiKey::SyncGroup) { LONG_CALL } else { RPC_TIMEOUT };
    let call = KafkaRequest {
        api_key: req.api as i32,
        api_version: i32::from(req.version),
        body: req.body.clone(),
        client_id: req.header.client_id.as_deref().unwrap_or("").to_string(),
        client_host: format!("/{}", req.peer_ip),
    };
    // A control plane restart drops requests in flight; each is sent again once the connection
    // is back (group requests are safe to repeat), so a restart costs members time, not errors
    // (some clients give up on a partition whose committed offset they could not fetch).
    let deadline = Instant::now() + timeout;
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match shard.rpc.call(Body::KafkaRequest(call.clone()), left).await {
            Err(RpcError::Unavailable) if Instant::now() + RETRY_PAUSE < deadline => glommio::timer::sleep(RETRY_PAUSE).await,
            r => break r,
        }
    };
    let body = match reply {
        Ok(Body::KafkaResponse(r)) => Some(r.body),
        Ok(Body::Failed(f)) => forward::error_response(req.api, req.version, req.body.clone(), f.error as i16),
        _ => forward::error_response(req.api, req.version, req.body.clone(), COORDINATOR_NOT_AVAILABLE),
    };
    match body {
        Some(b) => frame_body(req, &b),
        None => {
            tracing::warn!(api = ?req.api, version = req.version, "cannot decode group request; closing connection");
            Reply::Close
        }
    }
}
