//! Log start offsets: DeleteRecords and retention move a stream's first offset forward.
//!
//! The actor applies a move as one fenced transaction per batch of streams: the watermark
//! record gets the new log start, conditioned on the version the sequencer holds, exactly as a
//! commit is, so the two never overwrite each other. Nothing reads below the log start from
//! then on; the index entries there are let go of by the trimmer (see [`super::gc`]), with
//! their objects' reference counts.
//!
//! Retention ([`run_retention`]) decides outside the actor, from the index, which log start each
//! topic's `retention.ms` and `retention.bytes` call for, and hands the moves to the actor.

use super::{frame, Controller, Shared, StreamState, UNKNOWN};
use crate::meta::{keys, Cond, MetaError, MetaStore, Op};
use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use prost::Message;
use sluice_rpc::configs::topic_config;
use sluice_rpc::{body::Body, DeleteRecordsResult, IndexEntry, Topic, Watermark, Watermarks};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Streams moved in one transaction (one operation and one condition each, well under etcd's
/// default of 128 operations per transaction).
const MOVES_PER_TXN: usize = 32;
/// Index entries read per page while retention looks for the new log start.
const PAGE: usize = 1000;

/// Moves the log start of each stream to its offset (-1: the high watermark). A move below the
/// current log start changes nothing and answers the current one, as Kafka does; past the high
/// watermark it is refused with OFFSET_OUT_OF_RANGE. One result per move, in order.
pub(super) async fn apply<M: MetaStore>(shared: &Shared<M>, moves: Vec<(u64, i64)>) -> Vec<DeleteRecordsResult> {
    let mut results = vec![DeleteRecordsResult::default(); moves.len()];
    let ids: Vec<u64> = moves.iter().map(|(s, _)| *s).collect();
    if let Err(e) = super::reload_streams(shared, ids).await {
        let code = i32::from(crate::error::Error::from(e).response().code());
        return results.into_iter().map(|_| DeleteRecordsResult { error: code, low_watermark: -1 }).collect();
    }
    // (stream, state, new log start), at most one per stream: the furthest move of a stream
    // in one request wins, as it would applied one after another.
    let mut writes: Vec<(u64, StreamState, i64)> = Vec::new();
    {
        let streams = shared.streams.read().expect("poisoned");
        for (i, (s, offset)) in moves.iter().enumerate() {
            let Some(st) = streams.get(s).copied() else {
                results[i] = DeleteRecordsResult { error: code(E::UnknownTopicOrPartition), low_watermark: -1 };
                continue;
            };
            let target = if *offset == -1 { st.hwm } else { *offset };
            if target < 0 || target > st.hwm {
                results[i] = DeleteRecordsResult { error: code(E::OffsetOutOfRange), low_watermark: -1 };
                continue;
            }
            let prior = writes.iter().find(|w| w.0 == *s).map(|w| w.2).unwrap_or(st.log_start);
            results[i] = DeleteRecordsResult { error: 0, low_watermark: prior.max(target) };
            if target > prior {
                writes.retain(|w| w.0 != *s);
                writes.push((*s, st, target));
            }
        }
    }
    for batch in writes.chunks(MOVES_PER_TXN) {
        let mut conds = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len() * 2);
        for (s, st, target) in batch {
            conds.push(match st.version {
                0 => Cond::Absent(keys::hwm(*s)),
                v => Cond::Version(keys::hwm(*s), v),
            });
            let w = Watermark { stream_id: *s, log_start: *target, high_watermark: st.hwm };
            ops.push(Op::Put(keys::hwm(*s), Bytes::from(w.encode_to_vec())));
        }
        match shared.store.write(conds, ops).await {
            Ok(revision) => {
                let mut streams = shared.streams.write().expect("poisoned");
                let mut marks = Vec::with_capacity(batch.len());
                for (s, st, target) in batch {
                    if let Some(slot) = streams.get_mut(s) {
                        *slot = StreamState { log_start: *target, hwm: st.hwm, version: revision };
                        marks.push(Watermark { stream_id: *s, log_start: *target, high_watermark: st.hwm });
                    }
                }
                drop(streams);
                shared.log_start_moves.fetch_add(marks.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let _ = shared.notify.send(frame(Body::Watermarks(Watermarks { streams: marks })));
            }
            Err(e) => {
                tracing::error!(error = %e, streams = batch.len(), "cannot move log start offsets");
                let error = i32::from(crate::error::Error::from(e).response().code());
                let mut streams = shared.streams.write().expect("poisoned");
                for (s, _, _) in batch {
                    if let Some(slot) = streams.get_mut(s) {
                        slot.version = UNKNOWN;
                    }
                    // Every move of the stream in this request failed with it.
                    for (i, (m, _)) in moves.iter().enumerate() {
                        if m == s && results[i].error == 0 {
                            results[i] = DeleteRecordsResult { error, low_watermark: -1 };
                        }
                    }
                }
            }
        }
    }
    results
}

fn code(e: E) -> i32 {
    i32::from(e.code())
}

/// The effective value of a numeric topic config (the topic's own, else Kafka's default).
fn config_i64(topic: &Topic, name: &str) -> i64 {
    topic
        .configs
        .get(name)
        .map(String::as_str)
        .or_else(|| topic_config(name).map(|c| c.default))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// Whether a topic's records are deleted by age and size (`cleanup.policy` includes `delete`).
fn deletes(topic: &Topic) -> bool {
    sluice_rpc::configs::cleanup_policy_includes(topic.configs.get("cleanup.policy").map(String::as_str), "delete")
}

/// Every `every`, moves each stream's log start past the records its topic's `retention.ms`
/// and `retention.bytes` no longer keep, as Kafka deletes whole segments: an index entry goes
/// once its newest record is older than `retention.ms` (and every entry before it went), or
/// while the stream without it still holds at least `retention.bytes`.
pub async fn run_retention<M: MetaStore + Clone>(ctl: Controller<M>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let topics: Vec<Topic> = ctl.shared.topics.read().expect("poisoned").values().filter(|t| deletes(t)).cloned().collect();
        let mut moves = Vec::new();
        for t in &topics {
            let (ms, bytes) = (config_i64(t, "retention.ms"), config_i64(t, "retention.bytes"));
            if ms < 0 && bytes < 0 {
                continue;
            }
            for s in &t.streams {
                match retained_from(&ctl, *s, ms, bytes).await {
                    Ok(Some(offset)) => moves.push((*s, offset)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, topic = %t.name, "retention cannot read the index"),
                }
            }
        }
        if moves.is_empty() {
            ctl.shared.retention_passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let n = moves.len();
        let results = ctl.move_log_starts(moves.clone()).await;
        for ((s, offset), r) in moves.into_iter().zip(results) {
            if r.error != 0 {
                tracing::warn!(stream = s, offset, error = r.error, "retention could not move the log start");
            }
        }
        ctl.shared.retention_passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(streams = n, "retention moved log start offsets");
    }
}

/// The log start retention calls for, if it is past the current one.
async fn retained_from<M: MetaStore + Clone>(ctl: &Controller<M>, stream: u64, ms: i64, bytes: i64) -> Result<Option<i64>, MetaError> {
    let Some(st) = ctl.watermark(stream) else { return Ok(None) };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let expired = |e: &IndexEntry| ms >= 0 && e.max_timestamp < now.saturating_sub(ms);
    let mut target = st.log_start;
    let mut from = st.log_start;
    // By age: the leading entries that expired.
    let mut sizes: Vec<(i64, i64)> = Vec::new(); // (end offset, length) of entries kept by age
    let mut aged_out = true;
    loop {
        let page = ctl.lookup(stream, from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.end_offset;
        for e in &page {
            if aged_out && expired(e) {
                target = e.end_offset;
            } else {
                aged_out = false;
                if bytes < 0 {
                    break;
                }
                sizes.push((e.end_offset, i64::from(e.length)));
            }
        }
        if (!aged_out && bytes < 0) || page.len() < PAGE {
            break;
        }
    }
    // By size: the oldest entries while what stays still holds `retention.bytes`.
    if bytes >= 0 {
        let mut total: i64 = sizes.iter().map(|(_, l)| l).sum();
        for (end, len) in sizes {
            if total - len < bytes {
                break;
            }
            total -= len;
            target = end;
        }
    }
    Ok((target > st.log_start).then_some(target))
}
