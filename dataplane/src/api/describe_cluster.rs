//! DescribeCluster: the cluster id and the data planes registered with the control plane.

use super::sb;
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::BrokerId;
use sluice_rpc::{acl, body::Body, Broker, GetBrokers};
use std::rc::Rc;

/// Data planes are never fenced: one that stops heartbeating leaves the list, so v2's
/// `include_fenced_brokers` changes nothing.
pub async fn handle(shard: &Rc<Shard>, req: DescribeClusterRequest, _version: i16) -> DescribeClusterResponse {
    let me = Broker {
        node_id: shard.cfg.node_id,
        host: shard.cfg.advertised_host.clone(),
        port: i32::from(shard.cfg.listen.port()),
        zone: shard.cfg.zone.clone(),
    };
    let mut brokers = match shard.rpc.call(Body::GetBrokers(GetBrokers {}), RPC_TIMEOUT).await {
        Ok(Body::Brokers(b)) => b.brokers,
        _ => Vec::new(),
    };
    if !brokers.iter().any(|b| b.node_id == me.node_id) {
        brokers.push(me);
    }
    brokers.sort_by_key(|b| b.node_id);
    let brokers = brokers
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(sb(&b.host))
                .with_port(b.port)
                .with_rack((!b.zone.is_empty()).then(|| sb(&b.zone)))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(sb(&shard.meta.borrow().cluster_id))
        .with_controller_id(BrokerId(shard.cfg.node_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(acl::if_asked(req.include_cluster_authorized_operations, acl::CLUSTER_OPS))
}
