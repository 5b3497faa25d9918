//! Produce: validate each partition's record batches (header, CRC32C, size) without decoding
//! their records (except on key-compacted topics, whose records must all have keys, as Kafka
//! checks), hand them to the partition's owner shard, and answer once every partition's
//! batches are durable and committed. acks=0 gets no response, as in Kafka.

use super::metadata::{resolve, resolve_id};
use crate::error::Error;
use crate::order::Turn;
use crate::partition::AppendReq;
use crate::shard::Shard;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::Either;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, ProduceResponse, TopicProduceResponse};
use std::rc::Rc;
use wal_format::batch;

/// Checks a partition's records and describes them for the owner, or gives the Kafka error.
/// `keyed`: the topic is key-compacted, so a record without a key is refused (INVALID_RECORD).
pub fn validate(stream: u64, data: Bytes, max_message_bytes: usize, keyed: bool) -> Result<AppendReq, Error> {
    if data.is_empty() {
        return Err(Error::CorruptBatch);
    }
    let headers = batch::split(&data).map_err(|e| match e {
        wal_format::Error::Unsupported { .. } => Error::UnsupportedRecordFormat,
        _ => Error::CorruptBatch,
    })?;
    let mut batches = Vec::with_capacity(headers.len());
    let mut offset_count = 0i64;
    let mut max_timestamp = i64::MIN;
    let producer = match headers.as_slice() {
        [(_, h)] if h.producer_id >= 0 => Some((h.producer_id, h.producer_epoch, h.base_sequence)),
        _ => None,
    };
    for (pos, h) in headers {
        if h.size() > max_message_bytes {
            return Err(Error::BatchTooLarge);
        }
        // `split` already read and bounded the header: only the CRC is left to check.
        if batch::compute_crc(&data[pos..pos + h.size()]) != Ok(h.crc) {
            return Err(Error::CorruptBatch);
        }
        if h.is_control() || h.is_transactional() || h.compression().is_none() || h.record_count <= 0 {
            return Err(Error::InvalidRecord);
        }
        if keyed {
            let batch = &data[pos..pos + h.size()];
            let records = batch::records(batch).map_err(|_| Error::CorruptBatch)?;
            if batch::has_null_key(&records, h.record_count).map_err(|_| Error::CorruptBatch)? {
                return Err(Error::InvalidRecord);
            }
        }
        batches.push((pos as u32, h.offset_count()));
        offset_count += h.offset_count();
        max_timestamp = max_timestamp.max(h.max_timestamp);
    }
    Ok(AppendReq { stream, data, batches, offset_count, max_timestamp, producer, admitted: None })
}

fn partition(index: i32, error: i16) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

/// Runs a produce request when its turn comes; passes the turn on once every batch holds its
/// place in its partition (so the connection's next produce lands after it) and then waits for
/// durability and the commit.
pub async fn handle(shard: &Rc<Shard>, req: ProduceRequest, version: i16, mut turn: Turn) -> Option<ProduceResponse> {
    let started = std::time::Instant::now();
    turn.wait().await;
    let acks = req.acks;
    let acks_valid = matches!(acks, -1..=1);
    let mut topics = Vec::with_capacity(req.topic_data.len());
    let mut appends = Vec::new();
    for t in req.topic_data {
        // From v13 topics are named by id (and the answer carries the id, not the name).
        let topic = match (acks_valid, version >= 13) {
            (false, _) => Err(Error::InvalidRequiredAcks),
            _ if shard.sends_clients_away() => Err(Error::Draining),
            (true, true) => resolve_id(shard, &t.topic_id).await,
            (true, false) => resolve(shard, &t.name.0, false).await.map_err(|_| Error::UnknownTopicOrPartition),
        };
        let name = topic.as_ref().map(|t| t.name.clone()).unwrap_or_else(|_| t.name.0.to_string());
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let slot = (topics.len(), parts.len());
            let topic = match topic.as_ref() {
                Ok(topic) => topic,
                Err(e) => {
                    parts.push(partition(p.index, e.code()));
                    continue;
                }
            };
            let Some(stream) = usize::try_from(p.index).ok().and_then(|i| topic.streams.get(i).copied()) else {
                parts.push(partition(p.index, Error::UnknownTopicOrPartition.code()));
                continue;
            };
            let max = topic
                .config("max.message.bytes")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(i64::from(shard.cfg.max_message_bytes))
                .max(0) as usize;
            let keyed = sluice_rpc::configs::cleanup_policy_includes(topic.config("cleanup.policy"), "compact");
            match validate(stream, p.records.unwrap_or_default(), max, keyed) {
                Ok(a) => {
                    appends.push((slot, shard.owner(&topic.topic_id, p.index), a));
                    parts.push(partition(p.index, 0));
                }
                Err(e) => {
                    tracing::debug!(topic = %name, partition = p.index, error = %e, "produce rejected");
                    parts.push(partition(p.index, e.code()));
                }
            }
        }
        topics.push(TopicProduceResponse::default().with_name(t.name).with_topic_id(t.topic_id).with_partition_responses(parts));
    }
    let mut admitted = Vec::with_capacity(appends.len());
    let work = futures::future::join_all(appends.into_iter().map(|(slot, owner, mut a)| {
        let (tx, rx) = oneshot::channel();
        a.admitted = Some(tx);
        admitted.push(rx);
        let s = shard.clone();
        async move { (slot, s.append(owner, a).await) }
    }));
    let admitted = futures::future::join_all(admitted);
    if acks == 0 {
        // Nobody waits for the answer, but the batches are still stored.
        glommio::spawn_local(work).detach();
        admitted.await;
        turn.pass();
        return None;
    }
    let mut work = std::pin::pin!(work);
    let results = match futures::future::select(work.as_mut(), admitted).await {
        Either::Left((results, _)) => results,
        Either::Right((_, _)) => {
            turn.pass();
            work.await
        }
    };
    for ((t, p), result) in results {
        let slot = &mut topics[t].partition_responses[p];
        match result {
            Ok((base, log_start)) => {
                slot.base_offset = base;
                if version >= 5 {
                    slot.log_start_offset = log_start;
                }
            }
            Err(e) => slot.error_code = e.code(),
        }
    }
    shard.metrics.observe(crate::metrics::H::ProduceRequest, started.elapsed());
    Some(ProduceResponse::default().with_responses(topics))
}
