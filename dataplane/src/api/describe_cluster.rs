//! DescribeCluster: the cluster id and every data plane registered with the control plane, each
//! with its zone as its rack (whatever zone the client is in: it describes the whole cluster).

use super::sb;
use crate::shard::Shard;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::BrokerId;
use sluice_rpc::acl;
use std::rc::Rc;

/// Data planes are never fenced: one that stops heartbeating leaves the list, so v2's
/// `include_fenced_brokers` changes nothing.
pub async fn handle(shard: &Rc<Shard>, req: DescribeClusterRequest, _version: i16) -> DescribeClusterResponse {
    let brokers = shard.serving(None);
    let controller = brokers.first().map_or(shard.node_id(), |b| b.node_id);
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
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(acl::if_asked(req.include_cluster_authorized_operations, acl::CLUSTER_OPS))
}
