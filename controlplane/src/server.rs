//! The internal-protocol server: one persistent connection per data plane shard, length-prefixed
//! [`sluice_rpc::Envelope`] frames, pipelined requests answered as they complete (the request id
//! pairs them), and pushed notifications (watermarks, topic changes) interleaved.

use crate::controller::Controller;
use crate::error::Error;
use crate::groups::Coordinator;
use crate::meta::{keys, Cond, MetaStore, Op, SessionId};
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError as E;
use sluice_rpc::body::Body;
use sluice_rpc::*;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Answers data planes while this control plane stands by: every request gets NOT_CONTROLLER
/// and the leader's address, then the connection closes (the data plane goes to the leader).
pub async fn serve_standby(listener: Arc<TcpListener>, leader: tokio::sync::watch::Receiver<String>) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let leader = leader.borrow().clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(4096);
            let env = loop {
                match decode_frame(&buf, MAX_FRAME) {
                    Ok(Some((env, _))) => break env,
                    Ok(None) => match tokio::io::AsyncReadExt::read_buf(&mut sock, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    Err(_) => return,
                }
            };
            let e = Error::Standby(leader.clone());
            let reply = Body::Failed(Failed { error: e.rpc_code(), message: e.to_string(), leader });
            let _ = sock.write_all(&encode_frame(&Envelope { request_id: env.request_id, body: Some(reply) })).await;
        });
    }
}

/// Accepts data plane connections until the listener fails.
pub async fn serve<M: MetaStore + Clone>(
    listener: Arc<TcpListener>,
    ctl: Controller<M>,
    groups: Arc<Coordinator<M>>,
) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (ctl, groups) = (ctl.clone(), groups.clone());
        tokio::spawn(async move {
            match connection(sock, ctl, groups).await {
                Ok(()) => tracing::debug!(%peer, "data plane disconnected"),
                Err(e) => tracing::warn!(%peer, error = %e, "data plane connection closed"),
            }
        });
    }
}

/// How long a registered data plane may stay silent (it reports every 2 s) before it counts as
/// gone.
const SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection<M: MetaStore + Clone>(sock: TcpStream, ctl: Controller<M>, groups: Arc<Coordinator<M>>) -> anyhow::Result<()> {
    let (mut rd, mut wr) = sock.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Arc<Vec<u8>>>(1024);
    let mut notes = ctl.shared.notify.subscribe();
    let shared = ctl.shared.clone();
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = out_rx.recv() => match f { Some(f) => f, None => break },
                n = notes.recv() => match n {
                    Ok(f) => f,
                    // A slow data plane missed notifications; it re-reads watermarks on demand,
                    // but the list of data planes is only pushed on a change: send it again.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Arc::new(encode_frame(&Envelope { request_id: 0, body: Some(Body::Brokers(shared.dataplanes.brokers())) }))
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let mut session: Option<SessionId> = None;
    // The data plane this connection registered (its first shard's): node id and instance.
    let mut node: Option<(i32, u64)> = None;
    let mut lost = ctl.shared.store.lost_sessions();
    let mut order = ConnOrder::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut heard = tokio::time::Instant::now();
    // The data plane said it reports its traffic (data planes from before that message do not:
    // they are not held to SILENCE, so a rolling upgrade does not cut them off).
    let mut reports = false;
    let result = loop {
        let env = match decode_frame(&buf, MAX_FRAME) {
            Ok(Some((env, used))) => {
                let _ = buf.split_to(used);
                heard = tokio::time::Instant::now();
                env
            }
            Ok(None) => {
                let read = tokio::select! {
                    // What the data plane sent first: after a stall of this loop (a slow
                    // store), a frame that waits is not taken for silence.
                    biased;
                    // An error ends the loop like EOF does (not `?`, which would skip closing
                    // the session below: a data plane killed mid-connection, whose socket is
                    // reset, would stay registered).
                    n = rd.read_buf(&mut buf) => match n {
                        Ok(n) => n,
                        Err(e) => break Err(e.into()),
                    },
                    s = lost_session(&mut lost, session) => {
                        // Its registration is gone with the session: closing the connection
                        // makes the data plane connect and register again.
                        session = None;
                        break Err(anyhow::anyhow!("metadata session {s} lost; the data plane must register again"));
                    }
                    // A registered data plane reports its traffic every 2 s: one silent for
                    // longer than SILENCE is gone (a partition, a hung host) even if no reset
                    // or FIN ever arrives, and leaves the list.
                    _ = tokio::time::sleep_until(heard + SILENCE), if node.is_some() && reports => {
                        break Err(anyhow::anyhow!("no word from data plane for {SILENCE:?}"));
                    }
                };
                if read == 0 {
                    break Ok(());
                }
                heard = tokio::time::Instant::now();
                continue;
            }
            Err(e) => break Err(anyhow::anyhow!(e)),
        };
        let id = env.request_id;
        match env.body {
            Some(Body::Register(r)) => {
                reports = r.reports_every_ms > 0 && u64::from(r.reports_every_ms) * 3 < SILENCE.as_millis() as u64;
                let reply = register(&ctl, &groups, r, &mut session, &mut node).await;
                send(&out_tx, id, reply).await;
            }
            Some(Body::Deregister(_)) => {
                let reply = match node.take() {
                    Some((n, instance)) => match crate::cluster::release(&ctl.shared, n, instance).await {
                        Ok(()) => {
                            tracing::info!(node = n, "data plane left (draining)");
                            Body::Brokers(ctl.shared.dataplanes.brokers())
                        }
                        Err(e) => failed(&e),
                    },
                    None => Body::Brokers(ctl.shared.dataplanes.brokers()),
                };
                send(&out_tx, id, reply).await;
            }
            Some(Body::DataPlaneStats(stats)) => {
                if let Some((n, instance)) = node {
                    ctl.shared.dataplanes.report(n, instance, stats);
                }
                send(&out_tx, id, Body::Pong(Ping {})).await;
            }
            Some(Body::CommitWal(c)) => {
                // Queued here, in the order read, not from a spawned task: commits of one shard
                // may be pipelined and must be applied in the order it sent them.
                let answer = ctl.enqueue_commit(c).await;
                let out_tx = out_tx.clone();
                tokio::spawn(async move {
                    let reply = match answer.await {
                        Ok(Ok(r)) => Body::CommitWalReply(r),
                        Ok(Err(e)) => failed(&Error::from(e)),
                        Err(_) => failed(&Error::Stopping),
                    };
                    send(&out_tx, id, reply).await;
                });
            }
            Some(Body::KafkaRequest(r)) => {
                let (groups, out_tx) = (groups.clone(), out_tx.clone());
                let mut turn = order.next(r.conn_id);
                tokio::spawn(async move {
                    turn.wait().await;
                    let reply = match groups.handle(r).await {
                        Ok(body) => Body::KafkaResponse(KafkaResponse { body }),
                        Err(e) => failed(&e),
                    };
                    // Answered before the next request of the connection starts, so replies
                    // leave in the order the requests took effect.
                    send(&out_tx, id, reply).await;
                    drop(turn);
                });
            }
            Some(body) => {
                let (ctl, groups, out_tx) = (ctl.clone(), groups.clone(), out_tx.clone());
                tokio::spawn(async move {
                    let reply = handle(&ctl, &groups, body).await;
                    send(&out_tx, id, reply).await;
                });
            }
            // A message this control plane does not know (from a newer data plane): refused,
            // and the connection stays, so a rolling upgrade does not cut data planes off.
            None => send(&out_tx, id, failed(&Error::Malformed("unknown message (a newer data plane?)".into()))).await,
        }
    };
    if let Some(s) = session {
        let _ = ctl.shared.store.close_session(s).await;
        if let Some((n, _)) = node {
            tracing::info!(node = n, "data plane gone (connection closed)");
        }
        let _ = crate::cluster::refresh(&ctl.shared).await;
    }
    drop(out_tx);
    let _ = writer.await;
    result
}

/// Waits until `session` (once there is one) is reported lost.
async fn lost_session(lost: &mut broadcast::Receiver<SessionId>, session: Option<SessionId>) -> SessionId {
    loop {
        match lost.recv().await {
            Ok(s) if Some(s) == session => return s,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            _ => {}
        }
    }
}

/// The order of each Kafka connection's forwarded requests: every request waits for the one
/// read before it from the same Kafka connection ([`KafkaRequest::conn_id`]) to finish. The data
/// plane sends them in the order the client did, so a pipelined OffsetCommit never overtakes an
/// earlier one and a SyncGroup always finds the JoinGroup sent before it; requests of other
/// connections do not wait.
#[derive(Default)]
struct ConnOrder {
    /// Per Kafka connection: finished when the last request read from it has.
    tails: HashMap<u64, oneshot::Receiver<()>>,
    /// Size of `tails` after the last pruning.
    pruned_at: usize,
}

/// A request's place in its connection's order: [`Turn::wait`] until the previous request has
/// finished; dropping the turn (its sender) lets the next one start.
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl Turn {
    async fn wait(&mut self) {
        if let Some(rx) = &mut self.after {
            // Err: the previous request's task ended without finishing (the runtime is
            // stopping); there is nothing left to wait for either way.
            let _ = rx.await;
        }
    }
}

impl ConnOrder {
    fn next(&mut self, conn: u64) -> Turn {
        let (done, tail) = oneshot::channel();
        let after = self.tails.insert(conn, tail);
        // Connections come and go without saying so: forget those with nothing in flight once
        // the table has doubled, so it stays as large as the connections that are busy.
        if self.tails.len() > 64.max(2 * self.pruned_at) {
            self.tails.retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            self.pruned_at = self.tails.len();
        }
        Turn { after, _done: done }
    }
}

async fn send(out: &mpsc::Sender<Arc<Vec<u8>>>, request_id: u64, body: Body) {
    let _ = out.send(Arc::new(encode_frame(&Envelope { request_id, body: Some(body) }))).await;
}

fn failed(e: &Error) -> Body {
    Body::Failed(Failed { error: e.rpc_code(), message: e.to_string(), leader: String::new() })
}

async fn register<M: MetaStore + Clone>(
    ctl: &Controller<M>,
    groups: &Coordinator<M>,
    r: Register,
    session: &mut Option<SessionId>,
    node: &mut Option<(i32, u64)>,
) -> Body {
    if r.protocol_version != PROTOCOL_VERSION {
        return failed(&Error::Malformed(format!("protocol version {} unsupported", r.protocol_version)));
    }
    // A data plane registers once, on its first shard's connection; its other shards only
    // receive the cluster's state, and so does a draining data plane connecting again.
    let node_id = if r.shard == 0 && !r.leaving {
        let store = &ctl.shared.store;
        let s = match session {
            Some(s) => *s,
            None => match store.open_session().await {
                Ok(s) => *session.insert(s),
                Err(e) => return failed(&Error::from(e)),
            },
        };
        let id = match crate::cluster::claim(&ctl.shared, &r, s).await {
            Ok(id) => id,
            Err(e) => return failed(&e),
        };
        *node = Some((id, r.instance));
        if let Err(e) = crate::cluster::refresh(&ctl.shared).await {
            return failed(&Error::from(e));
        }
        tracing::info!(node = id, host = %r.host, port = r.port, zone = %r.zone, cores = r.cores, "data plane registered");
        id
    } else {
        r.node_id
    };
    let topics = ctl.shared.topics.read().expect("poisoned").values().cloned().collect();
    let marks = ctl
        .shared
        .streams
        .read()
        .expect("poisoned")
        .iter()
        .map(|(s, w)| Watermark { stream_id: *s, log_start: w.log_start, high_watermark: w.hwm })
        .collect();
    Body::Registered(Registered {
        epoch: ctl.shared.epoch,
        cluster_id: ctl.shared.cluster_id.clone(),
        topics,
        controller_id: node_id,
        marks,
        group_defaults: groups.config_defaults(),
        node_id,
        brokers: Some(ctl.shared.dataplanes.brokers()),
    })
}

async fn handle<M: MetaStore + Clone>(ctl: &Controller<M>, groups: &Coordinator<M>, body: Body) -> Body {
    match body {
        Body::Ping(_) => Body::Pong(Ping {}),
        Body::Lookup(l) => {
            let Some(w) = ctl.watermark(l.stream_id) else {
                return Body::LookupReply(LookupReply { error: i32::from(E::UnknownTopicOrPartition.code()), ..Default::default() });
            };
            match ctl.lookup(l.stream_id, l.offset, l.max_entries.clamp(1, 10_000) as usize).await {
                Ok(entries) => Body::LookupReply(LookupReply { error: 0, entries, log_start: w.log_start, high_watermark: w.hwm }),
                Err(e) => failed(&Error::from(e)),
            }
        }
        Body::GetTopics(g) => {
            let topics = ctl.shared.topics.read().expect("poisoned");
            let topics = if g.names.is_empty() {
                topics.values().cloned().collect()
            } else {
                g.names.iter().filter_map(|n| topics.get(n).cloned()).collect()
            };
            Body::Topics(Topics { topics })
        }
        Body::GetWatermarks(g) => Body::Watermarks(Watermarks {
            streams: g
                .streams
                .iter()
                .filter_map(|s| ctl.watermark(*s).map(|w| Watermark { stream_id: *s, log_start: w.log_start, high_watermark: w.hwm }))
                .collect(),
        }),
        Body::OffsetForTime(o) => match ctl.offset_for_time(o.stream_id, o.timestamp).await {
            Ok(entry) => Body::OffsetForTimeReply(OffsetForTimeReply { error: 0, entry }),
            Err(e) => failed(&Error::from(e)),
        },
        Body::CreateTopics(c) => Body::AdminReply(ctl.create_topics(c.topics, c.validate_only).await),
        Body::DeleteTopics(d) => {
            let reply = ctl.delete_topics(d.names).await;
            let deleted: Vec<String> = reply.results.iter().filter(|r| r.error == 0).map(|r| r.name.clone()).collect();
            groups.forget_topics(&deleted).await;
            Body::AdminReply(reply)
        }
        Body::CreatePartitions(c) => {
            let incs = c.topics.into_iter().map(|p| (p.name, p.count)).collect();
            Body::AdminReply(ctl.create_partitions(incs, c.validate_only).await)
        }
        Body::AlterTopicConfigs(a) => Body::AdminReply(ctl.alter_configs(a).await),
        Body::DeleteRecords(d) => {
            let moves = d.streams.into_iter().map(|s| (s.stream_id, s.offset)).collect();
            Body::DeleteRecordsReply(DeleteRecordsReply { results: ctl.move_log_starts(moves).await })
        }
        Body::TakeGarbage(t) => match ctl.take_garbage(t.deleted, t.max.min(10_000) as usize).await {
            Ok(objects) => Body::Garbage(Garbage { objects }),
            Err(e) => failed(&Error::from(e)),
        },
        Body::AllocateProducerId(_) => match allocate_producer_id(ctl).await {
            Ok(producer_id) => Body::ProducerIdAllocated(ProducerIdAllocated { producer_id }),
            Err(e) => failed(&Error::from(e)),
        },
        Body::GetBrokers(_) => Body::Brokers(ctl.shared.dataplanes.brokers()),
        other => failed(&Error::Malformed(format!("unexpected message {:?}", std::mem::discriminant(&other)))),
    }
}

/// Hands out producer ids from a counter in the metadata store (compare-and-set, so ids are
/// never reused, across restarts too).
async fn allocate_producer_id<M: MetaStore + Clone>(ctl: &Controller<M>) -> Result<i64, crate::meta::MetaError> {
    let store = &ctl.shared.store;
    loop {
        let cur = store.get(&keys::next_producer_id()).await?;
        let id = cur.as_ref().and_then(|v| v.value.as_ref().try_into().ok()).map(i64::from_be_bytes).unwrap_or(1000);
        let next = Bytes::copy_from_slice(&(id + 1).to_be_bytes());
        let cond = match cur {
            Some(v) => Cond::Version(keys::next_producer_id(), v.version),
            None => Cond::Absent(keys::next_producer_id()),
        };
        match store.write(vec![cond], vec![Op::Put(keys::next_producer_id(), next)]).await {
            Ok(_) => return Ok(id),
            Err(crate::meta::MetaError::ConditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Fencing: once a newer control plane took over the store, every kind of write of the
    //! older one is refused and leaves no trace, and the newer one's go through.

    use super::*;
    use crate::groups::GroupConfig;
    use crate::meta::{MetaError, RedbMetaStore};
    use kafka_protocol::messages::{consumer_group_heartbeat_request as cgh, offset_commit_request as oc, ApiKey, GroupId, TopicName};
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use sluice_rpc::{forward, NewTopic};

    fn request<R: kafka_protocol::protocol::Encodable>(api: ApiKey, version: i16, body: &R, conn_id: u64) -> KafkaRequest {
        KafkaRequest {
            api_key: api as i32,
            api_version: i32::from(version),
            body: forward::encode_body(body, version).expect("encodes"),
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            conn_id,
        }
    }

    fn offset_commit(group: &str) -> KafkaRequest {
        let partition = oc::OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(7);
        let topic =
            oc::OffsetCommitRequestTopic::default().with_name(TopicName(StrBytes::from_static_str("t"))).with_partitions(vec![partition]);
        let body = OffsetCommitRequestBody::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![topic]);
        request(ApiKey::OffsetCommit, 8, &body, 1)
    }

    type OffsetCommitRequestBody = kafka_protocol::messages::OffsetCommitRequest;

    fn consumer_join(group: &str) -> KafkaRequest {
        let body = cgh::ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_member_id(StrBytes::from_static_str("member-1"))
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("t"))]))
            .with_topic_partitions(Some(vec![]));
        request(ApiKey::ConsumerGroupHeartbeat, 1, &body, 2)
    }

    fn registration(node_id: i32) -> Register {
        Register {
            protocol_version: PROTOCOL_VERSION,
            node_id,
            zone: String::new(),
            host: "127.0.0.1".into(),
            port: 9092,
            shard: 0,
            cores: 1,
            instance: node_id as u64,
            assigned: false,
            started_ms: 0,
            leaving: false,
            reports_every_ms: 0,
        }
    }

    async fn exists(store: &RedbMetaStore, key: &str) -> bool {
        store.get(key).await.expect("reads").is_some()
    }

    #[tokio::test]
    async fn a_deposed_control_plane_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let old = Controller::start(store.clone()).await.unwrap();
        let created = old.create_topics(vec![NewTopic { name: "t".into(), partitions: 1, configs: Default::default() }], false).await;
        assert_eq!(created.results[0].error, 0);
        let old_groups = Coordinator::start(old.shared.clone(), GroupConfig::default()).await.unwrap();
        let new = Controller::start(store.clone()).await.unwrap();
        let new_groups = Coordinator::start(new.shared.clone(), GroupConfig::default()).await.unwrap();

        // Offset commit.
        let answer = old_groups.handle(offset_commit("g-old")).await.expect("answered");
        let resp = kafka_protocol::messages::OffsetCommitResponse::decode(&mut answer.clone(), 8).unwrap();
        assert_ne!(resp.topics[0].partitions[0].error_code, 0, "a deposed coordinator acknowledged an offset commit");
        assert!(!exists(&store, &keys::group_offset("g-old", "t", 0)).await);
        let answer = new_groups.handle(offset_commit("g-new")).await.expect("answered");
        let resp = kafka_protocol::messages::OffsetCommitResponse::decode(&mut answer.clone(), 8).unwrap();
        assert_eq!(resp.topics[0].partitions[0].error_code, 0);
        assert!(exists(&store, &keys::group_offset("g-new", "t", 0)).await);

        // Group membership.
        old_groups.handle(consumer_join("c-old")).await.expect("answered");
        assert!(!exists(&store, &keys::group_meta("c-old")).await, "a deposed coordinator wrote a group");
        new_groups.handle(consumer_join("c-new")).await.expect("answered");
        assert!(exists(&store, &keys::group_meta("c-new")).await);

        // Data plane registration.
        let (mut session, mut node) = (None, None);
        assert!(matches!(register(&old, &old_groups, registration(7), &mut session, &mut node).await, Body::Failed(_)));
        assert!(!exists(&store, &keys::broker(7)).await, "a deposed control plane registered a data plane");
        let (mut session, mut node) = (None, None);
        assert!(matches!(register(&new, &new_groups, registration(8), &mut session, &mut node).await, Body::Registered(_)));
        assert!(exists(&store, &keys::broker(8)).await);

        // Producer ids.
        assert!(matches!(allocate_producer_id(&old).await, Err(MetaError::Fenced)));
        let first = allocate_producer_id(&new).await.unwrap();
        assert_eq!(allocate_producer_id(&new).await.unwrap(), first + 1, "ids are handed out once");
    }

    /// Node ids: assigned lowest-free when not given, refused when another running data plane
    /// holds the one asked for, kept by the same process registering again, and free again once
    /// a data plane leaves.
    #[tokio::test]
    async fn node_ids_are_unique_among_running_data_planes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let ctl = Controller::start(store.clone()).await.unwrap();
        let groups = Coordinator::start(ctl.shared.clone(), GroupConfig::default()).await.unwrap();
        let join = |node_id: i32, instance: u64| {
            let mut r = registration(node_id);
            r.instance = instance;
            r
        };
        let node_of = |b: Body| match b {
            Body::Registered(r) => Ok(r.node_id),
            Body::Failed(f) => Err(f),
            other => panic!("unexpected {other:?}"),
        };
        // Per data plane connection: its session and the node it registered.
        type Conn = (Option<SessionId>, Option<(i32, u64)>);
        let mut conns: Vec<Conn> = (0..5).map(|_| (None, None)).collect();
        let (s, n) = &mut conns[0];
        assert_eq!(node_of(register(&ctl, &groups, join(2, 100), s, n).await).unwrap(), 2);
        let (s, n) = &mut conns[1];
        assert_eq!(node_of(register(&ctl, &groups, join(sluice_rpc::ASSIGN_NODE_ID, 101), s, n).await).unwrap(), 1);
        let (s, n) = &mut conns[2];
        assert_eq!(node_of(register(&ctl, &groups, join(sluice_rpc::ASSIGN_NODE_ID, 102), s, n).await).unwrap(), 3);
        let (s, n) = &mut conns[3];
        let refused = node_of(register(&ctl, &groups, join(2, 103), s, n).await).unwrap_err();
        assert_eq!(refused.error, i32::from(E::DuplicateBrokerRegistration.code()));
        assert!(refused.message.contains("node id 2 is held by another running data plane"), "{}", refused.message);
        // The same process again (a new connection after a control plane change) keeps its id.
        let (s, n) = &mut conns[4];
        assert_eq!(node_of(register(&ctl, &groups, join(2, 100), s, n).await).unwrap(), 2);
        // An assigned id held meanwhile by someone else: another is assigned.
        let mut again = join(1, 104);
        again.assigned = true;
        let (s, n) = &mut conns[3];
        assert_eq!(node_of(register(&ctl, &groups, again, s, n).await).unwrap(), 4);
        let ids: Vec<i32> = ctl.shared.dataplanes.brokers().brokers.iter().map(|b| b.node_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        // Node 1 leaves: its id is the next assigned.
        crate::cluster::release(&ctl.shared, 1, 101).await.unwrap();
        let mut fresh = (None, None);
        assert_eq!(node_of(register(&ctl, &groups, join(sluice_rpc::ASSIGN_NODE_ID, 105), &mut fresh.0, &mut fresh.1).await).unwrap(), 1);
    }
}
