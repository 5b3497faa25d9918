//! InitProducerId for idempotent producers (the default of kafka-python 2.x and the Java client):
//! a fresh producer id from the control plane, epoch 0. Transactions are not supported: a
//! transactional id is refused.

use crate::error::{Error, RpcError};
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::ProducerId;
use sluice_rpc::{body::Body, AllocateProducerId};
use std::rc::Rc;

/// Kafka's TRANSACTIONAL_ID_AUTHORIZATION_FAILED: the closest code for "no transactions here".
const TRANSACTIONS_UNSUPPORTED: ResponseError = ResponseError::TransactionalIdAuthorizationFailed;

pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest, _version: i16) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        return resp.with_error_code(TRANSACTIONS_UNSUPPORTED.code());
    }
    match shard.rpc.call(Body::AllocateProducerId(AllocateProducerId {}), RPC_TIMEOUT).await {
        Ok(Body::ProducerIdAllocated(p)) => resp.with_producer_id(ProducerId(p.producer_id)).with_producer_epoch(0),
        Ok(_) => resp.with_error_code(Error::from(RpcError::Unavailable).code()),
        Err(e) => resp.with_error_code(Error::from(e).code()),
    }
}
