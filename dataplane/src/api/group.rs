//! Group APIs. FindCoordinator is answered here: every data plane fronts the one coordinator in
//! the control plane, so the coordinator a client is told about is a data plane of its zone,
//! picked per group by the same weighted rendezvous hashing as partition leaders. The
//! other group APIs ([`sluice_rpc::forward::GROUP_APIS`]) travel undecoded to the control plane
//! and its answer comes back as the response body; when the control plane cannot be reached
//! the client gets COORDINATOR_NOT_AVAILABLE and looks the coordinator up again, as with Kafka.

use super::{frame_body, sb, Reply, Request};
use crate::context::ConnContext;
use crate::order::Turn;
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::{ApiKey, BrokerId};
use sluice_rpc::{body::Body, forward, routing, Broker, KafkaRequest};
use std::rc::Rc;
use std::time::{Duration, Instant};

const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const INVALID_REQUEST: i16 = 42;
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED: what FindCoordinator answers for a transactional id.
/// librdkafka, the Java client and kafka-python all treat it as fatal, so `init_transactions()`
/// fails at once (librdkafka shows the error message) instead of retrying until its timeout,
/// as they do on INVALID_REQUEST or COORDINATOR_NOT_AVAILABLE.
const TRANSACTIONS_REFUSED: i16 = 53;
/// Key types of FindCoordinator: 0 group, 1 transaction, 2 share group.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// JoinGroup and SyncGroup wait for the whole group, up to its rebalance timeout (the clients'
/// `max.poll.interval.ms`, 5 minutes by default); the coordinator enforces that timeout, this
/// only bounds a lost answer.
const LONG_CALL: Duration = Duration::from_secs(30 * 60);

pub async fn find_coordinator(shard: &Rc<Shard>, req: FindCoordinatorRequest, version: i16, zone: Option<&str>) -> FindCoordinatorResponse {
    let serving = shard.serving(zone);
    let candidates: Vec<&Broker> = serving.iter().collect();
    let me = shard.me();
    let coordinator = |key: &str| routing::pick(&candidates, routing::name_key(key.as_bytes())).unwrap_or(&me);
    let (error, message) = match req.key_type {
        KEY_TYPE_GROUP => (0, None),
        KEY_TYPE_TRANSACTION => (TRANSACTIONS_REFUSED, Some(sb("Transactions are not supported by Sluice"))),
        other => (INVALID_REQUEST, Some(sb(&format!("Coordinator key type {other} is not supported by Sluice")))),
    };
    if version < 4 {
        let resp = FindCoordinatorResponse::default().with_error_code(error);
        if error == 0 {
            let c = coordinator(&req.key);
            return resp.with_node_id(BrokerId(c.node_id)).with_host(sb(&c.host)).with_port(c.port);
        }
        let resp = resp.with_node_id(BrokerId(-1));
        return if version >= 1 { resp.with_error_message(message) } else { resp };
    }
    let coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            if error == 0 {
                let b = coordinator(&key);
                Coordinator::default()
                    .with_error_code(0)
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(sb(&b.host))
                    .with_port(b.port)
                    .with_key(key)
            } else {
                let c = Coordinator::default().with_key(key).with_error_code(error);
                c.with_node_id(BrokerId(-1)).with_error_message(message.clone())
            }
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

/// Sends a group request to the coordinator when its turn comes and frames its answer. The
/// turn passes on once the request has its place in the control plane connection's order; the
/// coordinator then runs the connection's requests in that order.
pub async fn forward(shard: &Rc<Shard>, req: &Request, conn: &ConnContext, mut turn: Turn) -> Reply {
    turn.wait().await;
    let timeout = if matches!(req.api, ApiKey::JoinGroup | ApiKey::SyncGroup) { LONG_CALL } else { RPC_TIMEOUT };
    // Queued behind the connection's earlier requests, its wait starts when theirs ends.
    let deadline = Instant::now().max(conn.forward_deadline.get()) + timeout;
    conn.forward_deadline.set(deadline);
    let call = KafkaRequest {
        api_key: req.api as i32,
        api_version: i32::from(req.version),
        body: req.body.clone(),
        client_id: req.header.client_id.as_deref().unwrap_or("").to_string(),
        client_host: format!("/{}", conn.peer_ip),
        conn_id: conn.id,
    };
    // A control plane restart drops requests in flight; the RPC client sends them again, in
    // order, once the connection is back (group requests are safe to repeat), so a restart
    // costs members time, not errors (some clients give up on a partition whose committed
    // offset they could not fetch).
    let sent = shard.rpc.start_resending(Body::KafkaRequest(call), deadline).await;
    turn.pass();
    let reply = match sent {
        Ok((id, rx)) => shard.rpc.finish(id, rx, deadline.saturating_duration_since(Instant::now())).await,
        Err(e) => Err(e),
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
