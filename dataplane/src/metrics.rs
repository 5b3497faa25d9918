//! Counters and histograms of one shard, and their exposition by prometheus-client (the
//! `/metrics` endpoint that serves it is in [`crate::server`]).
//!
//! Counters are plain `Cell`s on their shard: no atomics on the hot path.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Every metric: name, Prometheus type, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("sluice_produce_requests_total", "counter", "Produce requests answered or, with acks=0, accepted."),
    ("sluice_produce_bytes_total", "counter", "Record batch bytes appended on this shard (as owner)."),
    ("sluice_produce_records_total", "counter", "Offsets appended on this shard (as owner)."),
    ("sluice_fetch_requests_total", "counter", "Fetch requests answered."),
    ("sluice_fetch_bytes_total", "counter", "Record bytes returned by fetches."),
    ("sluice_wal_objects_total", "counter", "WAL objects written to the object store (PUTs)."),
    ("sluice_wal_object_bytes_total", "counter", "Bytes of WAL objects written."),
    ("sluice_wal_commit_failures_total", "counter", "WAL objects whose commit failed (their produces got errors)."),
    ("sluice_object_reads_total", "counter", "Ranged reads from the object store (cache misses)."),
    ("sluice_object_read_bytes_total", "counter", "Bytes read from the object store."),
    ("sluice_connections", "gauge", "Open Kafka client connections."),
    ("sluice_requests_in_flight", "gauge", "Kafka requests read and not yet answered."),
    ("sluice_s3_hedged_puts_total", "counter", "S3 PUTs slower than the hedging percentile that sent a second copy."),
    ("sluice_gc_objects_deleted_total", "counter", "Garbage WAL objects (no index entry refers to them) deleted from the object store."),
];

/// Index into [`METRICS`].
#[derive(Clone, Copy)]
pub enum M {
    ProduceRequests,
    ProduceBytes,
    ProduceRecords,
    FetchRequests,
    FetchBytes,
    WalObjects,
    WalObjectBytes,
    WalCommitFailures,
    ObjectReads,
    ObjectReadBytes,
    Connections,
    InFlight,
    HedgedPuts,
    GcObjectsDeleted,
}

/// Latency histograms: name, help. Buckets are [`BUCKETS`] (seconds).
pub const HISTOGRAMS: &[(&str, &str)] = &[
    ("sluice_wal_buffer_seconds", "Time a produced batch waited in the open WAL buffer until its object was cut."),
    ("sluice_wal_put_seconds", "Time to write a WAL object durably (into a segment: write and fdatasync)."),
    ("sluice_wal_commit_seconds", "Time from a WAL object being durable to the control plane answering its commit."),
    ("sluice_produce_append_seconds", "Time from a batch reaching its owner shard to its append being answered."),
    ("sluice_produce_request_seconds", "Time from a produce request (acks 1 or all) being decoded to its answer being ready."),
];

/// Upper bounds of the histogram buckets, in seconds (then +Inf): fine between 1 and 16 ms,
/// where produce latency lives.
pub const BUCKETS: [f64; 20] = [
    0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.010, 0.012, 0.016, 0.024, 0.032, 0.064, 0.128,
    0.256, 1.024,
];

/// Index into [`HISTOGRAMS`].
#[derive(Clone, Copy)]
pub enum H {
    Buffer,
    Put,
    Commit,
    Append,
    ProduceRequest,
}

/// One histogram of one shard: a count per bucket (the last is +Inf) and the sum in
/// microseconds.
#[derive(Default)]
struct Hist {
    counts: [Cell<u64>; BUCKETS.len() + 1],
    sum_us: Cell<u64>,
}

/// Values a histogram adds to a snapshot.
const HIST_VALUES: usize = BUCKETS.len() + 2;

/// A shard's counters and histograms.
#[derive(Default)]
pub struct ShardMetrics {
    values: [Cell<u64>; METRICS.len()],
    hists: [Hist; HISTOGRAMS.len()],
}

impl ShardMetrics {
    /// Adds to a counter.
    pub fn add(&self, m: M, n: u64) {
        let c = &self.values[m as usize];
        c.set(c.get().wrapping_add(n));
    }

    /// A counter's or gauge's value.
    pub fn get(&self, m: M) -> u64 {
        self.values[m as usize].get()
    }

    /// Lowers a gauge.
    pub fn sub(&self, m: M, n: u64) {
        let c = &self.values[m as usize];
        c.set(c.get().saturating_sub(n));
    }

    /// Records one duration.
    pub fn observe(&self, h: H, d: std::time::Duration) {
        let h = &self.hists[h as usize];
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        h.counts[i].set(h.counts[i].get() + 1);
        h.sum_us.set(h.sum_us.get().wrapping_add(d.as_micros() as u64));
    }

    /// The current values: counters in [`METRICS`] order, then per histogram its bucket counts
    /// and its sum in microseconds.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self.values.iter().map(Cell::get).collect();
        for h in &self.hists {
            out.extend(h.counts.iter().map(Cell::get));
            out.push(h.sum_us.get());
        }
        out
    }
}

/// Bytes exchanged with the clients of one zone, on one shard.
#[derive(Default)]
pub struct ZoneCounter {
    pub received: Cell<u64>,
    pub sent: Cell<u64>,
}

impl ZoneCounter {
    pub fn add_received(&self, n: usize) {
        self.received.set(self.received.get().wrapping_add(n as u64));
    }

    pub fn add_sent(&self, n: usize) {
        self.sent.set(self.sent.get().wrapping_add(n as u64));
    }
}

/// Most client zones counted apart on a shard; clients naming further zones are counted under
/// [`OTHER_ZONES`] (zones come from clients, so their number is theirs to choose).
const MAX_ZONES: usize = 256;
/// Where the zones past [`MAX_ZONES`] are counted.
pub const OTHER_ZONES: &str = "(other)";

/// A shard's bytes per client zone ("" for clients naming none).
#[derive(Default)]
pub struct ZoneTraffic(RefCell<HashMap<Rc<str>, Rc<ZoneCounter>>>);

impl ZoneTraffic {
    /// The counter of a client zone.
    pub fn counter(&self, zone: Option<&str>) -> Rc<ZoneCounter> {
        let zone = zone.unwrap_or("");
        let mut map = self.0.borrow_mut();
        if let Some(c) = map.get(zone) {
            return c.clone();
        }
        let key = if map.len() >= MAX_ZONES { OTHER_ZONES } else { zone };
        map.entry(Rc::from(key)).or_default().clone()
    }

    /// (zone, received, sent) of every zone seen.
    pub fn snapshot(&self) -> Vec<sluice_rpc::ZoneBytes> {
        self.0
            .borrow()
            .iter()
            .map(|(z, c)| sluice_rpc::ZoneBytes { zone: z.to_string(), received: c.received.get(), sent: c.sent.get() })
            .collect()
    }
}

/// Sums shards' [`ZoneTraffic::snapshot`]s per zone, in zone order.
pub fn sum_zones(shards: impl IntoIterator<Item = Vec<sluice_rpc::ZoneBytes>>) -> Vec<sluice_rpc::ZoneBytes> {
    let mut by_zone: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for z in shards.into_iter().flatten() {
        let e = by_zone.entry(z.zone).or_default();
        e.0 += z.received;
        e.1 += z.sent;
    }
    by_zone.into_iter().map(|(zone, (received, sent))| sluice_rpc::ZoneBytes { zone, received, sent }).collect()
}

/// Bytes per client zone, and those that crossed a zone, as metrics.
#[derive(Debug)]
struct Zones {
    mine: String,
    zones: Vec<sluice_rpc::ZoneBytes>,
}

impl Collector for Zones {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, sent) in [
            ("sluice_client_received_bytes", "Bytes received from clients, by the zone their client.id names (\"\": none).", false),
            ("sluice_client_sent_bytes", "Bytes sent to clients, by the zone their client.id names (\"\": none).", true),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for z in &self.zones {
                let v = if sent { z.sent } else { z.received };
                family.encode_family(&[("client_zone", z.zone.as_str())])?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        let crossed = self.zones.iter().filter(|z| sluice_rpc::routing::crosses(&self.mine, &z.zone));
        let (received, sent) = crossed.fold((0u64, 0u64), |(r, s), z| (r + z.received, s + z.sent));
        let mut family = encoder.encode_descriptor(
            "sluice_cross_zone_bytes",
            "Bytes exchanged with clients not known to be in this data plane's zone (other zones, and clients naming none).",
            None,
            MetricType::Counter,
        )?;
        for (direction, v) in [("received", received), ("sent", sent)] {
            family.encode_family(&[("direction", direction)])?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }
}

/// Every shard's values at one scrape, exposed through prometheus-client: counters and gauges
/// per shard (label `shard`), histograms summed over the shards.
#[derive(Debug)]
struct Snapshots(Vec<Vec<u64>>);

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (i, (name, kind, help)) in METRICS.iter().enumerate() {
            // prometheus-client adds the `_total` suffix of a counter itself.
            let (name, kind) = match *kind {
                "counter" => (name.trim_end_matches("_total"), MetricType::Counter),
                _ => (*name, MetricType::Gauge),
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (shard, values) in self.0.iter().enumerate() {
                let labels = [("shard", shard.to_string())];
                let mut m = family.encode_family(&labels)?;
                let v = values.get(i).copied().unwrap_or(0);
                match kind {
                    MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                    _ => m.encode_gauge(&v)?,
                }
            }
        }
        for (j, (name, help)) in HISTOGRAMS.iter().enumerate() {
            let at = METRICS.len() + j * HIST_VALUES;
            let sum = |k: usize| self.0.iter().map(|v| v.get(at + k).copied().unwrap_or(0)).sum::<u64>();
            let buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().chain([f64::INFINITY]).enumerate().map(|(k, le)| (le, sum(k))).collect();
            let count = buckets.iter().map(|b| b.1).sum();
            let secs = sum(BUCKETS.len() + 1) as f64 / 1e6;
            encoder
                .encode_descriptor(name, help, None, MetricType::Histogram)?
                .encode_histogram::<NoLabelSet>(secs, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// Renders snapshots of all shards (in shard order) and the bytes per client zone (summed over
/// the shards, [`sum_zones`]) of a data plane in `my_zone`, in the OpenMetrics text format.
pub fn render(shards: Vec<Vec<u64>>, zones: Vec<sluice_rpc::ZoneBytes>, my_zone: &str) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshots(shards)));
    registry.register_collector(Box::new(Zones { mine: my_zone.to_string(), zones }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_per_shard_and_histograms_summed() {
        let (a, b) = (ShardMetrics::default(), ShardMetrics::default());
        a.add(M::ProduceRecords, 5);
        b.add(M::ProduceRecords, 7);
        a.observe(H::Put, std::time::Duration::from_micros(900));
        b.observe(H::Put, std::time::Duration::from_millis(3));
        b.observe(H::Put, std::time::Duration::from_secs(5));
        let text = render(vec![a.snapshot(), b.snapshot()], vec![], "a");
        assert!(text.contains("# TYPE sluice_produce_records counter"), "{text}");
        assert!(text.contains("sluice_produce_records_total{shard=\"0\"} 5\n"), "{text}");
        assert!(text.contains("sluice_produce_records_total{shard=\"1\"} 7\n"), "{text}");
        assert!(text.contains("sluice_connections{shard=\"1\"} 0\n"), "{text}");
        assert!(text.contains("sluice_wal_put_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("sluice_wal_put_seconds_bucket{le=\"0.003\"} 2\n"), "{text}");
        assert!(text.contains("sluice_wal_put_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("sluice_wal_put_seconds_count 3\n"), "{text}");
        assert!(text.contains("sluice_wal_put_seconds_sum 5.0039\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn bytes_per_client_zone_and_across_zones() {
        let (a, b) = (ZoneTraffic::default(), ZoneTraffic::default());
        a.counter(Some("a")).add_received(10);
        a.counter(Some("a")).add_sent(100);
        b.counter(Some("a")).add_received(5);
        b.counter(Some("b")).add_sent(7);
        b.counter(None).add_received(3);
        let text = render(vec![], sum_zones([a.snapshot(), b.snapshot()]), "a");
        assert!(text.contains("sluice_client_received_bytes_total{client_zone=\"a\"} 15\n"), "{text}");
        assert!(text.contains("sluice_client_sent_bytes_total{client_zone=\"a\"} 100\n"), "{text}");
        assert!(text.contains("sluice_client_sent_bytes_total{client_zone=\"b\"} 7\n"), "{text}");
        assert!(text.contains("sluice_client_received_bytes_total{client_zone=\"\"} 3\n"), "{text}");
        assert!(text.contains("sluice_cross_zone_bytes_total{direction=\"received\"} 3\n"), "{text}");
        assert!(text.contains("sluice_cross_zone_bytes_total{direction=\"sent\"} 7\n"), "{text}");
    }

    #[test]
    fn zones_past_the_limit_share_one_counter() {
        let t = ZoneTraffic::default();
        for i in 0..MAX_ZONES + 10 {
            t.counter(Some(&format!("z{i}"))).add_received(1);
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), MAX_ZONES + 1);
        assert_eq!(snap.iter().find(|z| z.zone == OTHER_ZONES).map(|z| z.received), Some(10));
    }
}
