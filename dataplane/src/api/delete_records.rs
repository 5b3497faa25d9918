//! DeleteRecords: moves partitions' log start offsets forward (the control plane does it, in
//! one transaction per batch of partitions, and tells every data plane). Offset -1 means the
//! high watermark; past it the partition gets OFFSET_OUT_OF_RANGE; a topic whose
//! `cleanup.policy` does not include `delete` gets POLICY_VIOLATION, as in Kafka.

use super::metadata::resolve;
use crate::error::{Error, RpcError};
use crate::partition::Marks;
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult};
use sluice_rpc::{body::Body, DeleteRecords, DeleteRecordsReply, DeleteRecordsStream};
use std::rc::Rc;

pub async fn handle(shard: &Rc<Shard>, req: DeleteRecordsRequest, _version: i16) -> DeleteRecordsResponse {
    // Each partition's result, or the stream to ask about and where its answer goes.
    let mut topics: Vec<DeleteRecordsTopicResult> = Vec::with_capacity(req.topics.len());
    let mut asks: Vec<((usize, usize), DeleteRecordsStream)> = Vec::new();
    for t in req.topics {
        let topic = resolve(shard, &t.name.0, false).await;
        let mut out = DeleteRecordsTopicResult::default().with_name(t.name.clone());
        for p in t.partitions {
            let mut r = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index).with_low_watermark(-1);
            let stream = match &topic {
                Err(e) => Err(e.code()),
                Ok(tm) if tm.config("cleanup.policy").is_some_and(|c| !c.split(',').any(|p| p.trim() == "delete")) => {
                    Err(ResponseError::PolicyViolation.code())
                }
                Ok(tm) => usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| tm.streams.get(i).copied())
                    .ok_or(Error::UnknownTopicOrPartition.code()),
            };
            match stream {
                Ok(stream_id) => asks.push(((topics.len(), out.partitions.len()), DeleteRecordsStream { stream_id, offset: p.offset })),
                Err(code) => r.error_code = code,
            }
            out.partitions.push(r);
        }
        topics.push(out);
    }
    if !asks.is_empty() {
        let streams: Vec<DeleteRecordsStream> = asks.iter().map(|(_, s)| s.clone()).collect();
        let n = streams.len();
        let answer = match shard.rpc.call(Body::DeleteRecords(DeleteRecords { streams }), RPC_TIMEOUT).await {
            Ok(Body::DeleteRecordsReply(DeleteRecordsReply { results })) if results.len() == n => Ok(results),
            Ok(_) => Err(Error::from(RpcError::Unavailable)),
            Err(e) => Err(Error::from(e)),
        };
        for (i, ((t, p), s)) in asks.into_iter().enumerate() {
            let r = &mut topics[t].partitions[p];
            match &answer {
                Ok(results) => {
                    let res = &results[i];
                    r.error_code = res.error as i16;
                    r.low_watermark = res.low_watermark;
                    if res.error == 0 {
                        // This shard reads the new log start at once; the others when the
                        // control plane's notification reaches them.
                        let hwm = shard.parts.marks.get(s.stream_id).map(|m| m.hwm).unwrap_or(0);
                        shard.parts.marks.advance(s.stream_id, Marks { log_start: res.low_watermark, hwm: hwm.max(res.low_watermark) });
                    }
                }
                Err(e) => r.error_code = e.code(),
            }
        }
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
