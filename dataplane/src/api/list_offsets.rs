//! ListOffsets: earliest (-2) and latest (-1) from the control plane's authoritative watermarks;
//! by timestamp through the index (first chunk whose max timestamp reaches the target) and a scan
//! of that chunk's batches. Kafka 4.x's other special timestamps: the record with the largest
//! timestamp (-3, v7+), the earliest local offset (-4, v8+: the log start, as nothing here is
//! tiered apart from the log) and the latest tiered offset (-5, v9+: none, -1, as on a Kafka
//! broker without tiered storage).

use super::metadata::resolve;
use crate::error::{Error, RpcError};
use crate::shard::{Shard, RPC_TIMEOUT};
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse};
use sluice_rpc::{body::Body, GetWatermarks, IndexEntry, OffsetForTime, Watermark};
use std::collections::HashMap;
use std::rc::Rc;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// The first version that accepts a special timestamp.
fn min_version(timestamp: i64) -> Option<i16> {
    match timestamp {
        LATEST | EARLIEST => Some(0),
        MAX_TIMESTAMP => Some(7),
        EARLIEST_LOCAL => Some(8),
        LATEST_TIERED => Some(9),
        ts if ts >= 0 => Some(0),
        _ => None,
    }
}

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    // Resolve every partition first, then ask for all watermarks in one call.
    let mut resolved = Vec::new();
    for t in &req.topics {
        let topic = resolve(shard, &t.name.0, false).await.ok();
        let streams: Vec<Option<u64>> = t
            .partitions
            .iter()
            .map(|p| topic.as_ref().and_then(|tm| usize::try_from(p.partition_index).ok().and_then(|i| tm.streams.get(i).copied())))
            .collect();
        resolved.push(streams);
    }
    let all: Vec<u64> = resolved.iter().flatten().flatten().copied().collect();
    let marks: Option<HashMap<u64, Watermark>> = if all.is_empty() {
        Some(HashMap::new())
    } else {
        match shard.rpc.call(Body::GetWatermarks(GetWatermarks { streams: all }), RPC_TIMEOUT).await {
            Ok(Body::Watermarks(w)) => Some(w.streams.into_iter().map(|m| (m.stream_id, m)).collect()),
            _ => None,
        }
    };
    let mut topics = Vec::with_capacity(req.topics.len());
    for (t, streams) in req.topics.into_iter().zip(resolved) {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for (p, stream) in t.partitions.iter().zip(streams) {
            let mut r = ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index).with_timestamp(-1).with_offset(-1);
            let Some(stream) = stream else {
                parts.push(r.with_error_code(Error::UnknownTopicOrPartition.code()));
                continue;
            };
            let Some(m) = marks.as_ref().map(|m| m.get(&stream).cloned()) else {
                parts.push(r.with_error_code(Error::from(RpcError::Unavailable).code()));
                continue;
            };
            let Some(m) = m else {
                parts.push(r.with_error_code(Error::UnknownTopicOrPartition.code()));
                continue;
            };
            if version >= 4 {
                // The leader epoch Metadata gives (the generation of the data planes' list).
                r.leader_epoch = shard.meta.borrow().generation.max(0);
            }
            if min_version(p.timestamp).is_none_or(|min| version < min) {
                parts.push(r.with_error_code(Error::UnsupportedVersion.code()));
                continue;
            }
            match p.timestamp {
                LATEST => r.offset = m.high_watermark,
                EARLIEST | EARLIEST_LOCAL => r.offset = m.log_start,
                LATEST_TIERED => {}
                ts => match by_time(shard, stream, ts).await {
                    Ok(Some((offset, timestamp))) => {
                        r.offset = offset;
                        r.timestamp = timestamp;
                    }
                    Ok(None) => {}
                    Err(e) => r.error_code = e.code(),
                },
            }
            parts.push(r);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(parts));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// The first offset whose record timestamp is at or after `ts`, with that timestamp; for
/// [`MAX_TIMESTAMP`], the first record with the largest timestamp. Records of uncompressed
/// batches are scanned in place; compressed batches are decompressed (only here: produce and
/// fetch never decompress).
async fn by_time(shard: &Shard, stream: u64, ts: i64) -> Result<Option<(i64, i64)>, Error> {
    let entry: IndexEntry = match shard.rpc.call(Body::OffsetForTime(OffsetForTime { stream_id: stream, timestamp: ts }), RPC_TIMEOUT).await
    {
        Ok(Body::OffsetForTimeReply(r)) if r.error == 0 => match r.entry {
            Some(e) => e,
            None => return Ok(None),
        },
        Ok(Body::OffsetForTimeReply(r)) => return Err(Error::remote(r.error).unwrap_or(Error::Internal("no index entry"))),
        Ok(_) => return Err(RpcError::Unavailable.into()),
        Err(e) => return Err(e.into()),
    };
    // The chunk holding the largest timestamp is the first to reach it, and no record before
    // it in the chunk does: the first record at or after it is the one.
    let ts = if ts == MAX_TIMESTAMP { entry.max_timestamp } else { ts };
    let (data, spans) = shard.parts.reader.entry_batches(stream, &entry).await?;
    for (pos, len, base, _) in spans {
        let bytes = &data[pos..pos + len];
        let h = wal_format::batch::parse_header(bytes).map_err(|e| Error::CorruptObject(format!("{}: {e}", entry.object_key)))?;
        if h.max_timestamp >= ts {
            if let Ok(records) = wal_format::batch::record_positions(bytes) {
                if let Some(r) = records.iter().find(|r| r.timestamp >= ts) {
                    return Ok(Some((base + i64::from(r.offset_delta), r.timestamp)));
                }
            } else {
                let mut buf = bytes::Bytes::copy_from_slice(bytes);
                if let Ok(set) = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) {
                    if let Some(r) = set.records.iter().find(|r| r.timestamp >= ts) {
                        return Ok(Some((r.offset, r.timestamp)));
                    }
                }
            }
            return Ok(Some((base, h.max_timestamp)));
        }
    }
    Ok(None)
}
