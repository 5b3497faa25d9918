//! Fetch: read each partition on its owner shard, and long-poll (`max_wait_ms`, `min_bytes`) on
//! this shard's watermark notifications, never by sleeping in a loop. Fetch sessions (KIP-227)
//! are answered with session id 0: every fetch is a full fetch. From v13 topics are named by id;
//! the replica fields of newer versions (v15's replica state, v17's directory id, v18's high
//! watermark) concern followers, which Sluice does not have.

use super::metadata::{resolve, resolve_id};
use crate::error::Error;
use crate::partition::{Marks, Piece, ReadReq};
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{FetchResponse, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::BrokerId;
use std::rc::Rc;
use std::time::{Duration, Instant};

struct Want {
    topic: usize,
    partition: i32,
    /// The stream and its owner shard, or why there is none.
    target: Result<(u64, usize), Error>,
    offset: i64,
    max_bytes: usize,
}

pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 { usize::MAX } else { req.max_bytes as usize };
    let mut wants = Vec::new();
    let mut names = Vec::with_capacity(req.topics.len());
    for (ti, t) in req.topics.iter().enumerate() {
        // From v13 topics are named by id (and the answer carries the id, not the name).
        names.push((t.topic.clone(), t.topic_id));
        let topic = if shard.sends_clients_away() {
            Err(Error::Draining)
        } else if version >= 13 {
            resolve_id(shard, &t.topic_id).await
        } else {
            resolve(shard, &t.topic.0, false).await.map_err(|_| Error::UnknownTopicOrPartition)
        };
        for p in &t.partitions {
            let target = topic.as_ref().map_err(Error::clone).and_then(|topic| {
                let stream = usize::try_from(p.partition).ok().and_then(|i| topic.streams.get(i)).ok_or(Error::UnknownTopicOrPartition)?;
                Ok((*stream, shard.owner(&topic.topic_id, p.partition)))
            });
            wants.push(Want {
                topic: ti,
                partition: p.partition,
                target,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let results = loop {
        let results = read_all(shard, &wants, max_bytes).await;
        let total: usize = results.iter().map(|r| r.1.len()).sum();
        let errored = results.iter().any(|r| r.0 != 0);
        let now = Instant::now();
        if total >= min_bytes || errored || now >= deadline {
            break results;
        }
        // Long poll: until a partition read moves past what this read saw (including moves
        // between the read and now), or the deadline.
        let seen: Vec<(u64, i64)> =
            wants.iter().zip(&results).filter_map(|(w, r)| w.target.as_ref().ok().map(|(s, _)| (*s, r.2.hwm.max(w.offset)))).collect();
        if !shard.parts.marks.wait_past(&seen, glommio::timer::sleep(deadline - now)).await {
            // Timed out: one last read so the answer carries current watermarks.
            break read_all(shard, &wants, max_bytes).await;
        }
    };
    shard.metrics.add(crate::metrics::M::FetchBytes, results.iter().map(|r| r.1.len() as u64).sum());
    let mut topics: Vec<FetchableTopicResponse> =
        names.into_iter().map(|(name, id)| FetchableTopicResponse::default().with_topic(name).with_topic_id(id)).collect();
    for (w, (error, records, marks)) in wants.iter().zip(results) {
        let unknown = [Error::UnknownTopicOrPartition.code(), Error::UnknownTopicId.code()].contains(&error);
        let data = PartitionData::default()
            .with_partition_index(w.partition)
            .with_error_code(error)
            .with_high_watermark(if unknown { -1 } else { marks.hwm })
            .with_last_stable_offset(marks.hwm)
            .with_log_start_offset(if version >= 5 { marks.log_start } else { -1 })
            .with_aborted_transactions(Some(Vec::new()))
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(records));
        topics[w.topic].partitions.push(data);
    }
    FetchResponse::default().with_session_id(0).with_responses(topics)
}

/// Reads every wanted partition (concurrently, on their owners) and trims the answers to the
/// request's `max_bytes`, keeping at least the first non-empty partition whole.
async fn read_all(shard: &Rc<Shard>, wants: &[Want], max_bytes: usize) -> Vec<(i16, Bytes, Marks)> {
    let reads = futures::future::join_all(wants.iter().map(|w| {
        let s = shard.clone();
        let target = w.target.clone();
        let (offset, max) = (w.offset, w.max_bytes);
        async move {
            let (stream, owner) = match target {
                Ok(t) => t,
                Err(e) => return (e.code(), Vec::new(), Marks::default()),
            };
            let r = s.read(owner, ReadReq { stream, offset, max_bytes: max.max(1) }).await;
            (r.error.as_ref().map_or(0, Error::code), r.batches, r.marks)
        }
    }))
    .await;
    let mut used = 0usize;
    reads
        .into_iter()
        .map(|(error, batches, marks)| {
            // Batches that follow each other in one buffer (as a producer's batches do in a
            // WAL object) become one slice of it without a copy; only pieces of different
            // buffers are copied into one, sized once.
            let mut runs: Vec<Piece> = Vec::new();
            for b in batches {
                if used > 0 && used + b.len() > max_bytes {
                    break;
                }
                used += b.len();
                if !runs.last_mut().is_some_and(|run| run.join(&b)) {
                    runs.push(b);
                }
            }
            let data = match runs.as_slice() {
                [] => Bytes::new(),
                [one] => one.bytes(),
                several => {
                    let mut buf = BytesMut::with_capacity(several.iter().map(Piece::len).sum());
                    for run in several {
                        buf.extend_from_slice(&run.buf[run.range.clone()]);
                    }
                    buf.freeze()
                }
            };
            (error, data, marks)
        })
        .collect()
}
