//! The operator's status page, served on `--metrics-listen` beside `/metrics`: `GET /` and
//! `/status` answer [`PAGE`] (static HTML, CSS and JS, no external resources), which fetches
//! `GET /status.json` ([`render`]) every 2 s and draws it.
//!
//! The JSON is built from what the control plane already holds: the registered data planes and
//! their last traffic reports ([`crate::cluster::DataPlanes`]), the partitions each one leads
//! for the clients of its own zone (computed with [`sluice_rpc::routing`], as the data planes
//! compute what they tell clients), the topics' watermarks, and the groups' committed offsets.
//! Only a partition's size is not held anywhere: [`Sizes`] measures it from the index, at a
//! bounded cost, and keeps it.

use crate::controller::gc::now_ms;
use crate::controller::{Controller, StreamState};
use crate::groups::Coordinator;
use crate::meta::{MetaError, MetaStore};
use serde_json::{json, Map, Value};
use sluice_rpc::{routing, Broker};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The page: it renders whatever `/status.json` answers.
pub const PAGE: &str = include_str!("status.html");

/// Sizes are measured again at most this often, however often the page polls.
const MEASURE_EVERY: Duration = Duration::from_secs(10);
/// A partition whose watermarks did not move is read again this often anyway: compaction
/// replaces WAL chunks by Parquet row groups of other lengths without moving them.
const REMEASURE: Duration = Duration::from_secs(60);
/// Most index entries one measuring pass reads; partitions it does not reach keep their last
/// size (or none yet) until a later pass.
const PASS_ENTRIES: usize = 100_000;
/// Index entries read per look-up.
const PAGE_ENTRIES: usize = 1000;

/// The bytes each partition holds from its log start on (the lengths of its index entries, as
/// `retention.bytes` counts them), measured by reading the index and kept between passes: a
/// partition whose high watermark grew is measured by reading only its new entries, one whose
/// log start moved (or that is new, or due for [`REMEASURE`]) by reading all of them.
#[derive(Default)]
pub struct Sizes {
    state: Mutex<SizeState>,
}

#[derive(Default)]
struct SizeState {
    /// By stream id.
    streams: HashMap<u64, Size>,
    /// When the last pass ended (ms since the epoch, for the page), and whether one runs.
    last_pass: Option<(Instant, i64)>,
    running: bool,
}

#[derive(Clone, Copy, Debug)]
struct Size {
    bytes: u64,
    /// The watermarks the measure is of.
    log_start: i64,
    hwm: i64,
    /// When every entry was last read (an incremental measure keeps it).
    full_at: Instant,
}

/// What to measure of a stream, cheapest first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Only the entries past the high watermark last measured.
    Grown,
    /// Every entry: never measured, or its log start moved.
    Unknown,
    /// Every entry: unchanged, but last read in full before [`REMEASURE`].
    Stale,
}

/// Sets [`SizeState::running`] back when a pass ends, even one that panicked.
struct Running<'a>(&'a Sizes);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().expect("poisoned");
        st.running = false;
        st.last_pass = Some((Instant::now(), now_ms()));
    }
}

impl Sizes {
    /// Measures again when the last pass is older than [`MEASURE_EVERY`] and none is running,
    /// and waits for it; otherwise returns at once (the page shows the sizes it has).
    pub async fn refresh<M: MetaStore + Clone>(self: &Arc<Self>, ctl: &Controller<M>) {
        {
            let mut st = self.state.lock().expect("poisoned");
            if st.running || st.last_pass.is_some_and(|(at, _)| at.elapsed() < MEASURE_EVERY) {
                return;
            }
            st.running = true;
        }
        // Its own task: a page request dropped halfway does not cut the pass short.
        let (sizes, ctl) = (self.clone(), ctl.clone());
        let _ = tokio::spawn(async move {
            let _running = Running(&sizes);
            if let Err(e) = sizes.pass(&ctl, PASS_ENTRIES).await {
                tracing::debug!(error = %e, "status page: cannot measure partition sizes");
            }
        })
        .await;
    }

    /// One pass: measures the streams that need it, cheapest need first, until `budget` index
    /// entries were read (the stream it is at is finished).
    async fn pass<M: MetaStore + Clone>(&self, ctl: &Controller<M>, budget: usize) -> Result<(), MetaError> {
        let ids: Vec<u64> = ctl.shared.topics.read().expect("poisoned").values().flat_map(|t| t.streams.iter().copied()).collect();
        let current: Vec<(u64, StreamState)> = {
            let streams = ctl.shared.streams.read().expect("poisoned");
            ids.iter().filter_map(|s| streams.get(s).map(|w| (*s, *w))).collect()
        };
        // (what, when last read in full, stream, its watermarks, its last measure)
        let mut work = Vec::new();
        {
            let mut st = self.state.lock().expect("poisoned");
            let live: HashSet<u64> = current.iter().map(|(s, _)| *s).collect();
            st.streams.retain(|s, _| live.contains(s));
            for (s, w) in &current {
                let known: Option<Size> = st.streams.get(s).copied();
                let need = match known {
                    None => Need::Unknown,
                    Some(k) if k.log_start != w.log_start || k.hwm > w.hwm => Need::Unknown,
                    Some(k) if k.full_at.elapsed() >= REMEASURE => Need::Stale,
                    Some(k) if k.hwm < w.hwm => Need::Grown,
                    Some(_) => continue,
                };
                work.push((need, known.map(|k| k.full_at), *s, *w, known));
            }
        }
        work.sort_by_key(|(need, full_at, s, _, _)| (*need, *full_at, *s));
        let mut read = 0;
        for (need, _, s, w, known) in work {
            if read >= budget {
                break;
            }
            let size = match (need, known) {
                (Need::Grown, Some(k)) => match measure(ctl, s, k.hwm, Some(k.hwm), &mut read).await? {
                    Some((bytes, hwm)) => Size { bytes: k.bytes + bytes, hwm: hwm.max(k.hwm), ..k },
                    // An entry reaching below the old high watermark (compaction rewrote a
                    // range across it): read it all.
                    None => full(ctl, s, w, &mut read).await?,
                },
                _ => full(ctl, s, w, &mut read).await?,
            };
            self.state.lock().expect("poisoned").streams.insert(s, size);
        }
        Ok(())
    }

    /// The bytes of a stream, if measured.
    fn bytes(&self, stream: u64) -> Option<u64> {
        self.state.lock().expect("poisoned").streams.get(&stream).map(|s| s.bytes)
    }
}

/// Reads every entry of a stream from its log start.
async fn full<M: MetaStore + Clone>(ctl: &Controller<M>, s: u64, w: StreamState, read: &mut usize) -> Result<Size, MetaError> {
    let full_at = Instant::now();
    let (bytes, hwm) = measure(ctl, s, w.log_start, None, read).await?.unwrap_or_default();
    Ok(Size { bytes, log_start: w.log_start, hwm: hwm.max(w.hwm), full_at })
}

/// The summed lengths of a stream's entries holding offsets from `from` on, and the end of the
/// last; None when `above` is given and an entry starts below it.
async fn measure<M: MetaStore + Clone>(
    ctl: &Controller<M>,
    stream: u64,
    from: i64,
    above: Option<i64>,
    read: &mut usize,
) -> Result<Option<(u64, i64)>, MetaError> {
    let (mut bytes, mut end, mut at) = (0u64, from, from);
    loop {
        let page = ctl.lookup(stream, at, PAGE_ENTRIES).await?;
        *read += page.len();
        for e in &page {
            if above.is_some_and(|a| e.base_offset < a) {
                return Ok(None);
            }
            bytes += u64::from(e.length);
            end = e.end_offset;
        }
        if page.len() < PAGE_ENTRIES {
            return Ok(Some((bytes, end)));
        }
        at = end;
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn address(b: &Broker) -> String {
    if b.host.contains(':') {
        format!("[{}]:{}", b.host, b.port)
    } else {
        format!("{}:{}", b.host, b.port)
    }
}

/// Bytes a data plane exchanged with clients outside its zone: those of other zones and those
/// naming none; everything, for a data plane in no zone.
fn cross_zone_bytes(b: &Broker, stats: &sluice_rpc::DataPlaneStats) -> u64 {
    stats.zones.iter().filter(|z| sluice_rpc::routing::crosses(&b.zone, &z.zone)).map(|z| z.received + z.sent).sum()
}

/// What `GET /status.json` answers.
pub async fn render<M: MetaStore + Clone>(ctl: &Controller<M>, groups: &Coordinator<M>, sizes: &Arc<Sizes>) -> Value {
    sizes.refresh(ctl).await;
    let lag = groups.lag().await;
    let s = &ctl.shared;
    let now = now_ms();
    let list = s.dataplanes.brokers();
    let brokers = &list.brokers;

    // The data planes clients of each zone are shown ("": zone-less data planes, whose clients
    // are shown every data plane).
    let mut by_zone: BTreeMap<&str, Vec<&Broker>> = BTreeMap::new();
    for b in brokers {
        by_zone.entry(b.zone.as_str()).or_default().push(b);
    }
    let shown: Vec<(&str, Vec<&Broker>)> = by_zone.keys().map(|z| (*z, routing::serving(brokers, (!z.is_empty()).then_some(*z)))).collect();

    // Topics: partitions with watermarks, sizes and leaders; per data plane, the partitions it
    // leads for the clients of its own zone.
    let topics: Vec<(String, Vec<u8>, Vec<u64>)> =
        s.topics.read().expect("poisoned").values().map(|t| (t.name.clone(), t.topic_id.clone(), t.streams.clone())).collect();
    let marks: HashMap<u64, StreamState> = {
        let streams = s.streams.read().expect("poisoned");
        topics.iter().flat_map(|t| t.2.iter()).filter_map(|id| streams.get(id).map(|w| (*id, *w))).collect()
    };
    let mut led: HashMap<i32, u64> = HashMap::new();
    let mut topics_json = Vec::with_capacity(topics.len());
    for (name, id, streams) in &topics {
        let uuid = uuid::Uuid::from_slice(id).unwrap_or_default();
        let mut partitions = Vec::with_capacity(streams.len());
        for (p, stream) in streams.iter().enumerate() {
            let key = routing::partition_key(uuid.as_u128(), p as i32);
            let mut leaders = Map::new();
            for (zone, candidates) in &shown {
                if let Some(l) = routing::pick(candidates, key) {
                    leaders.insert((*zone).to_string(), json!(l.node_id));
                    if l.zone == *zone {
                        *led.entry(l.node_id).or_default() += 1;
                    }
                }
            }
            let w = marks.get(stream).copied().unwrap_or_default();
            partitions.push(json!({
                "partition": p,
                "log_start": w.log_start,
                "hwm": w.hwm,
                "bytes": sizes.bytes(*stream),
                "leaders": leaders,
            }));
        }
        topics_json.push(json!({ "name": name, "topic_id": uuid.to_string(), "partitions": partitions }));
    }

    let mut zones_json = Vec::with_capacity(by_zone.len());
    for (zone, members) in &by_zone {
        let (mut cores, mut produce, mut fetch, mut cross, mut conns, mut zone_led) = (0u64, 0.0, 0.0, 0u64, 0u64, 0u64);
        let mut rows = Vec::with_capacity(members.len());
        for b in members {
            let t = s.dataplanes.traffic(b.node_id);
            let n = led.get(&b.node_id).copied().unwrap_or(0);
            cores += u64::from(b.cores);
            zone_led += n;
            let mut row = json!({
                "node_id": b.node_id,
                "host": b.host,
                "port": b.port,
                "address": address(b),
                "cores": b.cores,
                "started_ms": (b.started_ms > 0).then_some(b.started_ms),
                "uptime_ms": (b.started_ms > 0).then(|| (now - b.started_ms).max(0)),
                "partitions_led": n,
                "reported": t.is_some(),
            });
            if let Some(t) = t {
                let x = cross_zone_bytes(b, &t.stats);
                (produce, fetch, cross, conns) = (produce + t.produce_rate, fetch + t.fetch_rate, cross + x, conns + t.stats.connections);
                let client_zones: Vec<Value> =
                    t.stats.zones.iter().map(|z| json!({ "zone": z.zone, "received": z.received, "sent": z.sent })).collect();
                let more = json!({
                    "produce_rate": t.produce_rate,
                    "fetch_rate": t.fetch_rate,
                    "produce_bytes": t.stats.produce_bytes,
                    "fetch_bytes": t.stats.fetch_bytes,
                    "connections": t.stats.connections,
                    "cross_zone_bytes": x,
                    "client_zones": client_zones,
                });
                if let (Value::Object(row), Value::Object(more)) = (&mut row, more) {
                    row.extend(more);
                }
            }
            rows.push(row);
        }
        zones_json.push(json!({
            "zone": zone,
            "cores": cores,
            "produce_rate": produce,
            "fetch_rate": fetch,
            "cross_zone_bytes": cross,
            "connections": conns,
            "partitions_led": zone_led,
            "dataplanes": rows,
        }));
    }

    // Groups, in the order lag() gives (by group, topic, partition).
    let mut groups_json: Vec<Value> = Vec::new();
    let mut current: Option<(String, i64, Vec<Value>)> = None;
    for (g, topic, p, committed, hwm) in lag {
        if current.as_ref().is_some_and(|c| c.0 != g) {
            let (g, total, parts) = current.take().expect("checked");
            groups_json.push(json!({ "group": g, "total_lag": total, "partitions": parts }));
        }
        let c = current.get_or_insert_with(|| (g, 0, Vec::new()));
        let lag = (hwm - committed).max(0);
        c.1 += lag;
        c.2.push(json!({ "topic": topic, "partition": p, "committed": committed, "hwm": hwm, "lag": lag }));
    }
    if let Some((g, total, parts)) = current {
        groups_json.push(json!({ "group": g, "total_lag": total, "partitions": parts }));
    }

    let sizes_at = sizes.state.lock().expect("poisoned").last_pass.map(|(_, ms)| ms);
    json!({
        "cluster_id": s.cluster_id,
        "epoch": s.epoch,
        "generation": list.generation,
        "now_ms": now,
        "sizes_at_ms": sizes_at,
        "zones": zones_json,
        "topics": topics_json,
        "groups": groups_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::GroupConfig;
    use crate::meta::RedbMetaStore;
    use sluice_rpc::{CommitChunk, CommitWal, DataPlaneStats, NewTopic, Register, ZoneBytes};

    async fn start() -> (tempfile::TempDir, Controller<RedbMetaStore>, Arc<Coordinator<RedbMetaStore>>) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbMetaStore::open(&dir.path().join("meta.redb")).unwrap();
        let ctl = Controller::start(store).await.unwrap();
        let groups = Coordinator::start(ctl.shared.clone(), GroupConfig::default()).await.unwrap();
        (dir, ctl, groups)
    }

    async fn register(ctl: &Controller<RedbMetaStore>, node_id: i32, zone: &str, cores: u32) {
        let session = ctl.shared.store.open_session().await.unwrap();
        let r = Register {
            node_id,
            zone: zone.into(),
            host: "127.0.0.1".into(),
            port: 9000 + node_id,
            cores,
            instance: 100 + node_id as u64,
            started_ms: now_ms() - 65_000,
            ..Default::default()
        };
        assert_eq!(crate::cluster::claim(&ctl.shared, &r, session).await.unwrap(), node_id);
    }

    async fn topic(ctl: &Controller<RedbMetaStore>, name: &str, partitions: i32) -> Vec<u64> {
        let r = ctl.create_topics(vec![NewTopic { name: name.into(), partitions, configs: Default::default() }], false).await;
        assert_eq!(r.results[0].error, 0, "{:?}", r.results[0].message);
        r.results[0].topic.clone().unwrap().streams
    }

    /// Commits one chunk of `length` bytes and `count` offsets to each stream.
    async fn produce(ctl: &Controller<RedbMetaStore>, key: &str, streams: &[u64], count: u64, length: u32) {
        let chunks = streams
            .iter()
            .map(|s| CommitChunk { stream_id: *s, position: 0, length, crc: 0, offset_count: count, max_timestamp: 1, batch_count: 1 })
            .collect();
        let reply = ctl.commit(CommitWal { object_key: key.into(), object_size: 1000, chunks, after: String::new() }).await.unwrap();
        assert!(reply.chunks.iter().all(|c| c.error == 0));
    }

    async fn commit_offset(groups: &Coordinator<RedbMetaStore>, group: &str, topic: &str, partition: i32, offset: i64) {
        use kafka_protocol::messages::offset_commit_request as oc;
        use kafka_protocol::messages::{GroupId, OffsetCommitRequest, TopicName};
        use kafka_protocol::protocol::StrBytes;
        let p = oc::OffsetCommitRequestPartition::default().with_partition_index(partition).with_committed_offset(offset);
        let t = oc::OffsetCommitRequestTopic::default().with_name(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![p]);
        let body = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![t]);
        let req = sluice_rpc::KafkaRequest {
            api_key: kafka_protocol::messages::ApiKey::OffsetCommit as i32,
            api_version: 8,
            body: sluice_rpc::forward::encode_body(&body, 8).unwrap(),
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            conn_id: 1,
        };
        groups.handle(req).await.expect("answered");
    }

    fn zone<'a>(v: &'a Value, name: &str) -> &'a Value {
        v["zones"].as_array().unwrap().iter().find(|z| z["zone"] == name).unwrap_or_else(|| panic!("no zone {name} in {v:#}"))
    }

    fn node(v: &Value, id: i32) -> &Value {
        v["zones"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|z| z["dataplanes"].as_array().unwrap())
            .find(|d| d["node_id"] == id)
            .unwrap_or_else(|| panic!("no node {id} in {v:#}"))
    }

    /// Data planes by zone with cores, traffic, cross-zone bytes and the partitions they lead;
    /// partitions with watermarks, sizes and a leader per zone; groups with lag.
    #[tokio::test]
    async fn the_json_describes_zones_topics_and_groups() {
        let (_dir, ctl, groups) = start().await;
        register(&ctl, 1, "a", 1).await;
        register(&ctl, 2, "a", 3).await;
        register(&ctl, 3, "b", 2).await;
        register(&ctl, 4, "", 1).await;
        crate::cluster::refresh(&ctl.shared).await.unwrap();
        let streams = topic(&ctl, "orders", 24).await;
        produce(&ctl, "o1", &streams[..2], 5, 100).await;
        produce(&ctl, "o2", &streams[..1], 3, 40).await;
        commit_offset(&groups, "billing", "orders", 0, 6).await;
        commit_offset(&groups, "billing", "orders", 1, 5).await;
        let zones = |received, sent| {
            vec![
                ZoneBytes { zone: "a".into(), received, sent },
                ZoneBytes { zone: "b".into(), received: 7, sent: 3 },
                ZoneBytes { zone: String::new(), received: 1, sent: 1 },
            ]
        };
        let stats = |produce_bytes, fetch_bytes| DataPlaneStats { produce_bytes, fetch_bytes, connections: 4, zones: zones(500, 900) };
        ctl.shared.dataplanes.report(1, 101, stats(1_000, 0));
        ctl.shared.dataplanes.report(1, 101, stats(3_000, 500));
        ctl.shared.dataplanes.report(3, 103, stats(10, 10));

        let sizes = Arc::new(Sizes::default());
        let v = render(&ctl, &groups, &sizes).await;
        assert_eq!(v["cluster_id"], json!(ctl.shared.cluster_id));
        assert!(v["sizes_at_ms"].as_i64().unwrap() > 0);
        let names: Vec<&str> = v["zones"].as_array().unwrap().iter().map(|z| z["zone"].as_str().unwrap()).collect();
        assert_eq!(names, ["", "a", "b"]);

        let a = zone(&v, "a");
        assert_eq!(a["cores"], 4);
        let ids: Vec<i64> = a["dataplanes"].as_array().unwrap().iter().map(|d| d["node_id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [1, 2]);
        let n1 = node(&v, 1);
        assert_eq!((n1["address"].as_str(), n1["cores"].as_u64(), n1["connections"].as_u64()), (Some("127.0.0.1:9001"), Some(1), Some(4)));
        assert!(n1["produce_rate"].as_f64().unwrap() > 0.0 && n1["fetch_rate"].as_f64().unwrap() > 0.0, "{n1:#}");
        assert_eq!(n1["produce_bytes"], 3_000);
        let uptime = n1["uptime_ms"].as_i64().unwrap();
        assert!((65_000..75_000).contains(&uptime), "{uptime}");
        // In zone a: zone b's bytes and the zone-less client's cross; zone a's own do not.
        assert_eq!(n1["cross_zone_bytes"], 7 + 3 + 1 + 1);
        // Zone b's data plane: zone a's and the zone-less client's.
        assert_eq!(node(&v, 3)["cross_zone_bytes"], 500 + 900 + 1 + 1);
        assert_eq!(a["produce_rate"], n1["produce_rate"], "node 2 reported nothing");
        assert_eq!(a["connections"], 4);
        assert_eq!(node(&v, 2)["reported"], false);
        assert!(node(&v, 2).get("produce_rate").is_none());

        // Leaders: one per zone and partition, within the zone; each zone leads every partition
        // for its clients; the zone-less data plane leads for zone-less clients among all.
        let parts = v["topics"][0]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 24);
        for p in parts {
            assert!([1, 2].contains(&p["leaders"]["a"].as_i64().unwrap()), "{p}");
            assert_eq!(p["leaders"]["b"], 3);
            assert!((1..=4).contains(&p["leaders"][""].as_i64().unwrap()));
        }
        assert_eq!(a["partitions_led"], 24);
        assert_eq!(zone(&v, "b")["partitions_led"], 24);
        let led = |id: i64| parts.iter().filter(|p| p["leaders"]["a"] == id).count() as u64;
        assert_eq!(node(&v, 1)["partitions_led"], led(1));
        assert_eq!(node(&v, 2)["partitions_led"], led(2));
        assert!(led(2) > led(1), "3 cores lead more than 1");
        let zoneless = parts.iter().filter(|p| p["leaders"][""] == 4).count() as u64;
        assert_eq!(node(&v, 4)["partitions_led"], zoneless);

        // Watermarks and sizes.
        assert_eq!((parts[0]["log_start"].as_i64(), parts[0]["hwm"].as_i64(), parts[0]["bytes"].as_u64()), (Some(0), Some(8), Some(140)));
        assert_eq!((parts[1]["hwm"].as_i64(), parts[1]["bytes"].as_u64()), (Some(5), Some(100)));
        assert_eq!(parts[2]["bytes"], 0);

        // Groups.
        let g = &v["groups"][0];
        assert_eq!(g["group"], "billing");
        assert_eq!(g["total_lag"], 2);
        assert_eq!(g["partitions"][0], json!({ "topic": "orders", "partition": 0, "committed": 6, "hwm": 8, "lag": 2 }));
        assert_eq!(g["partitions"][1]["lag"], 0);
    }

    /// Sizes follow produce by reading only new entries, follow a log start move by reading
    /// again, forget deleted topics, and a pass stops at its budget.
    #[tokio::test]
    async fn sizes_follow_the_index_at_a_bounded_cost() {
        let (_dir, ctl, _groups) = start().await;
        let s = topic(&ctl, "t", 3).await;
        for i in 0..4 {
            produce(&ctl, &format!("a{i}"), &s, 10, 100).await;
        }
        let sizes = Sizes::default();
        // Budget 1: the pass stops after the first stream (which it finishes).
        sizes.pass(&ctl, 1).await.unwrap();
        let known = s.iter().filter(|x| sizes.bytes(**x).is_some()).count();
        assert_eq!(known, 1);
        sizes.pass(&ctl, usize::MAX).await.unwrap();
        assert!(s.iter().all(|x| sizes.bytes(*x) == Some(400)));

        // Grown: measured from the old high watermark on (the total is the same as a full read).
        produce(&ctl, "b", &s[..1], 10, 55).await;
        let mut read = 0;
        let before = sizes.state.lock().unwrap().streams[&s[0]];
        sizes.pass(&ctl, usize::MAX).await.unwrap();
        assert_eq!(sizes.bytes(s[0]), Some(455));
        let after = sizes.state.lock().unwrap().streams[&s[0]];
        assert_eq!(after.full_at, before.full_at, "only new entries were read");
        assert_eq!(after.hwm, 50);
        assert_eq!(measure(&ctl, s[0], 0, None, &mut read).await.unwrap(), Some((455, 50)));

        // Log start moved: read again from it (the entry holding it counts whole).
        let r = ctl.move_log_starts(vec![(s[1], 25)]).await;
        assert_eq!(r[0].error, 0);
        sizes.pass(&ctl, usize::MAX).await.unwrap();
        assert_eq!(sizes.bytes(s[1]), Some(200));

        // Deleted topic: forgotten.
        let r = ctl.delete_topics(vec!["t".into()]).await;
        assert_eq!(r.results[0].error, 0);
        sizes.pass(&ctl, usize::MAX).await.unwrap();
        assert!(sizes.state.lock().unwrap().streams.is_empty());
    }

    /// Passes are spaced: a second refresh right after the first reads nothing.
    #[tokio::test]
    async fn refresh_runs_at_most_every_few_seconds() {
        let (_dir, ctl, _groups) = start().await;
        let s = topic(&ctl, "t", 1).await;
        let sizes = Arc::new(Sizes::default());
        sizes.refresh(&ctl).await;
        assert_eq!(sizes.bytes(s[0]), Some(0));
        produce(&ctl, "a", &s, 1, 10).await;
        sizes.refresh(&ctl).await;
        assert_eq!(sizes.bytes(s[0]), Some(0), "measured again within {MEASURE_EVERY:?}");
        sizes.state.lock().unwrap().last_pass = None;
        sizes.refresh(&ctl).await;
        assert_eq!(sizes.bytes(s[0]), Some(10));
    }
}
