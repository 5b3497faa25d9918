//! The load: producer threads (each a librdkafka `BaseProducer`, polled on its own thread) and
//! consumer threads (`BaseConsumer`s assigned partitions directly: no group coordinator needed).
//!
//! Every record's value starts with [`HEADER_BYTES`] bytes: the intended send time (nanoseconds
//! on this process's monotonic clock) and the producer's sequence number. Produce latency is
//! acknowledgement time minus intended send time; end-to-end latency is consumer receipt time
//! minus intended send time. Only records whose intended send time falls in the measured window
//! (after the warm-up) are recorded.

use crate::Workload;
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes at the start of every value: intended send time and sequence number.
pub const HEADER_BYTES: usize = 16;
/// Latencies are recorded in microseconds, up to an hour.
const MAX_MICROS: u64 = 3_600_000_000;

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid bounds")
}

/// What a run measured.
pub struct RunResult {
    /// Produce latency, microseconds (measured window only).
    pub produce: Histogram<u64>,
    /// End-to-end latency, microseconds (measured window only).
    pub e2e: Histogram<u64>,
    /// Records acknowledged / failed, whole run.
    pub acked: u64,
    pub failed: u64,
    /// Records consumed, whole run.
    pub consumed: u64,
    /// Acknowledged records no consumer received before the drain timeout.
    pub missing: u64,
    /// Records and bytes acknowledged in the measured window, and its length.
    pub measured_records: u64,
    pub measured_bytes: u64,
    pub measured_secs: f64,
    /// Consumer side of the measured window (fetch-only: the backlog read).
    pub consumed_measured_records: u64,
    pub consume_secs: f64,
}

/// The measured window, in [`now_nanos`] time.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
}

struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
    acked_measured: AtomicU64,
    sent: AtomicU64,
    consumed: AtomicU64,
    consumed_measured: AtomicU64,
    /// Acknowledged records per partition, to check consumers got them all.
    acked_per_partition: Vec<AtomicU64>,
}

struct ProduceCtx {
    window: Window,
    hist: Mutex<Histogram<u64>>,
    counters: Arc<Counters>,
}

impl ClientContext for ProduceCtx {}

impl ProducerContext for ProduceCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, intended: usize) {
        let c = &self.counters;
        match result {
            Ok(m) => {
                c.acked.fetch_add(1, Relaxed);
                if let Some(slot) = usize::try_from(m.partition()).ok().and_then(|p| c.acked_per_partition.get(p)) {
                    slot.fetch_add(1, Relaxed);
                }
                let intended = intended as u64;
                if self.window.contains(intended) {
                    c.acked_measured.fetch_add(1, Relaxed);
                    let micros = (now_nanos().saturating_sub(intended) / 1000).clamp(1, MAX_MICROS);
                    let _ = self.hist.lock().expect("poisoned").record(micros);
                }
            }
            Err(_) => {
                c.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

fn base_config(w: &Workload) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &w.bootstrap).set("client.id", format!("sluice-bench,label={}", w.label));
    for (k, v) in &w.client_config {
        c.set(k, v);
    }
    c
}

fn create_topic(w: &Workload) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(w).create().context("admin client")?;
    let topic = NewTopic::new(&w.topic, w.partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_lite_block_on(admin.create_topics([&topic], &opts)).context("create topic")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(anyhow!("cannot create topic {t}: {e}")),
        }
    }
    Ok(())
}

/// Runs a future to completion on this thread (admin calls only; the load runs on threads).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Runs the workload and returns what it measured.
pub fn run(w: &Workload) -> Result<RunResult> {
    create_topic(w)?;
    let counters = Arc::new(Counters {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        acked_measured: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        consumed_measured: AtomicU64::new(0),
        acked_per_partition: (0..w.partitions).map(|_| AtomicU64::new(0)).collect(),
    });
    if w.fetch_only {
        run_fetch_only(w, counters)
    } else {
        run_live(w, counters)
    }
}

fn run_live(w: &Workload, counters: Arc<Counters>) -> Result<RunResult> {
    // Consumers are positioned at the current end before anything is produced, so they see
    // every record of the run.
    let start_offsets = end_offsets(w)?;
    let t0 = now_nanos();
    let window = Window { start: t0 + w.warmup.as_nanos() as u64, end: t0 + (w.warmup + w.duration).as_nanos() as u64 };
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let e2e = Arc::new(Mutex::new(histogram()));
    let consumers = spawn_consumers(w, &counters, &stop_consumers, &e2e, window, Some(start_offsets))?;
    let progress = spawn_progress(w, &counters);
    let produce = produce(w, &counters, window, t0, u64::MAX)?;
    let measured_secs = w.duration.as_secs_f64();
    let missing = drain(w, &counters, &stop_consumers, consumers);
    progress.stop();
    let acked_measured = counters.acked_measured.load(Relaxed);
    Ok(RunResult {
        produce,
        e2e: Arc::try_unwrap(e2e).map(|m| m.into_inner().expect("poisoned")).unwrap_or_else(|_| histogram()),
        acked: counters.acked.load(Relaxed),
        failed: counters.failed.load(Relaxed),
        consumed: counters.consumed.load(Relaxed),
        missing,
        measured_records: acked_measured,
        measured_bytes: acked_measured * w.record_size as u64,
        measured_secs,
        consumed_measured_records: counters.consumed_measured.load(Relaxed),
        consume_secs: measured_secs,
    })
}

fn run_fetch_only(w: &Workload, counters: Arc<Counters>) -> Result<RunResult> {
    // Phase 1: the backlog, as fast as the broker takes it (not measured).
    let t0 = now_nanos();
    let none = Window { start: u64::MAX, end: u64::MAX };
    let progress = spawn_progress(w, &counters);
    produce(w, &counters, none, t0, w.backlog)?;
    if let Some(cmd) = &w.before_consume {
        let status = std::process::Command::new("sh").arg("-c").arg(cmd).status().context("--before-consume")?;
        if !status.success() {
            anyhow::bail!("--before-consume command failed: {status}");
        }
    }
    // Phase 2: consumers read it from the beginning; the window covers the whole read.
    let beginning = vec![Offset::Beginning; w.partitions as usize];
    let _ = beginning;
    let start = Instant::now();
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let e2e = Arc::new(Mutex::new(histogram()));
    let all = Window { start: 0, end: u64::MAX };
    let consumers = spawn_consumers(w, &counters, &stop_consumers, &e2e, all, None)?;
    let missing = drain(w, &counters, &stop_consumers, consumers);
    let consume_secs = start.elapsed().as_secs_f64();
    progress.stop();
    let consumed = counters.consumed.load(Relaxed);
    Ok(RunResult {
        produce: histogram(),
        e2e: histogram(),
        acked: counters.acked.load(Relaxed),
        failed: counters.failed.load(Relaxed),
        consumed,
        missing,
        measured_records: 0,
        measured_bytes: consumed * w.record_size as u64,
        measured_secs: consume_secs,
        consumed_measured_records: consumed,
        consume_secs,
    })
}

/// High watermark of every partition.
fn end_offsets(w: &Workload) -> Result<Vec<i64>> {
    let c: BaseConsumer = base_config(w).set("group.id", "sluice-bench").create().context("consumer")?;
    (0..w.partitions)
        .map(|p| c.fetch_watermarks(&w.topic, p, Duration::from_secs(30)).map(|(_, high)| high).context("fetch watermarks"))
        .collect()
}

/// Produces until the window ends (or `limit` records are sent); returns the produce latency
/// histogram of the measured window.
fn produce(w: &Workload, counters: &Arc<Counters>, window: Window, t0: u64, limit: u64) -> Result<Histogram<u64>> {
    let end = if limit == u64::MAX { window.end } else { u64::MAX };
    let per_producer_limit = limit.div_ceil(w.producers as u64);
    let per_producer_rate = w.rate as f64 / w.producers as f64;
    let mut handles = Vec::new();
    for id in 0..w.producers {
        let ctx = ProduceCtx { window, hist: Mutex::new(histogram()), counters: counters.clone() };
        let producer: BaseProducer<ProduceCtx> = base_config(w)
            .set("acks", &w.acks)
            .set("linger.ms", w.linger_ms.to_string())
            .set("batch.size", w.batch_size.to_string())
            .set("compression.type", &w.compression)
            .set("queue.buffering.max.messages", w.queue_messages.to_string())
            .set("queue.buffering.max.kbytes", "1048576")
            .set("enable.idempotence", "false")
            .create_with_context(ctx)
            .context("producer")?;
        let (w, counters) = (w.clone(), counters.clone());
        handles.push(std::thread::spawn(move || {
            let mut value = vec![0u8; w.record_size];
            for (i, b) in value.iter_mut().enumerate().skip(HEADER_BYTES) {
                *b = (i % 251) as u8;
            }
            let text = (w.payload == crate::Payload::Text).then(|| text_payload(1 << 20, id as u64));
            let mut seq: u64 = 0;
            loop {
                let intended = if per_producer_rate > 0.0 {
                    let at = t0 + (seq as f64 * 1e9 / per_producer_rate) as u64;
                    // Sleep, never spin, until the record is due: the load generator usually
                    // shares the machine with the broker, and a spinning pacer takes a core
                    // from it. A late wake-up only sends the due records in a burst, and their
                    // latency still counts from the intended time.
                    if now_nanos() < at {
                        producer.poll(Duration::ZERO);
                    }
                    loop {
                        let now = now_nanos();
                        if now >= at {
                            break;
                        }
                        let wait = at - now;
                        if wait >= 2_000_000 {
                            // librdkafka's poll timeout has millisecond resolution.
                            producer.poll(Duration::from_millis(wait / 1_000_000 - 1));
                        } else {
                            std::thread::sleep(Duration::from_nanos(wait));
                        }
                    }
                    at
                } else {
                    now_nanos()
                };
                if intended >= end || seq >= per_producer_limit {
                    break;
                }
                if let Some(text) = &text {
                    let body = w.record_size - HEADER_BYTES;
                    let at = (seq as usize).wrapping_mul(7919) % (text.len() - body);
                    value[HEADER_BYTES..].copy_from_slice(&text[at..at + body]);
                }
                value[0..8].copy_from_slice(&intended.to_be_bytes());
                value[8..16].copy_from_slice(&(((id as u64) << 40) | seq).to_be_bytes());
                let partition = ((seq + id as u64) % w.partitions as u64) as i32;
                let mut record =
                    BaseRecord::<(), [u8], usize>::with_opaque_to(&w.topic, intended as usize).payload(&value).partition(partition);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            producer.poll(Duration::from_millis(1));
                        }
                        Err((e, _)) => {
                            eprintln!("produce failed: {e}");
                            counters.failed.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                }
                counters.sent.fetch_add(1, Relaxed);
                seq += 1;
                if seq.is_multiple_of(256) {
                    producer.poll(Duration::ZERO);
                }
            }
            let _ = producer.flush(Duration::from_secs(60));
            producer.context().hist.lock().expect("poisoned").clone()
        }));
    }
    let mut hist = histogram();
    for h in handles {
        let part = h.join().map_err(|_| anyhow!("producer thread panicked"))?;
        hist.add(part).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
    }
    Ok(hist)
}

fn spawn_consumers(
    w: &Workload,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    e2e: &Arc<Mutex<Histogram<u64>>>,
    window: Window,
    start_offsets: Option<Vec<i64>>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for id in 0..w.consumers {
        let consumer: BaseConsumer = base_config(w)
            .set("group.id", "sluice-bench")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", "100")
            // Offsets are assigned explicitly; a reset would skip records silently (librdkafka's
            // default is the end), so it is an error the run reports instead.
            .set("auto.offset.reset", "error")
            .create()
            .context("consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in (0..w.partitions).filter(|p| *p as usize % w.consumers == id) {
            let offset = match &start_offsets {
                Some(o) => Offset::Offset(o[p as usize]),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(&w.topic, p, offset).context("assignment")?;
        }
        consumer.assign(&tpl).context("assign")?;
        let (counters, stop, e2e) = (counters.clone(), stop.clone(), e2e.clone());
        handles.push(std::thread::spawn(move || {
            let mut local = histogram();
            while !stop.load(Relaxed) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let now = now_nanos();
                        counters.consumed.fetch_add(1, Relaxed);
                        if let Some(v) = m.payload().filter(|v| v.len() >= HEADER_BYTES) {
                            let intended = u64::from_be_bytes(v[0..8].try_into().expect("8 bytes"));
                            if window.contains(intended) {
                                counters.consumed_measured.fetch_add(1, Relaxed);
                                let _ = local.record((now.saturating_sub(intended) / 1000).clamp(1, MAX_MICROS));
                            }
                        }
                    }
                    Some(Err(e)) => eprintln!("consume error: {e}"),
                    None => {}
                }
            }
            let _ = e2e.lock().expect("poisoned").add(&local);
        }));
    }
    Ok(handles)
}

/// Waits until consumers have every acknowledged record (or the drain timeout), stops them,
/// and returns how many acknowledged records they never received.
fn drain(w: &Workload, counters: &Counters, stop: &AtomicBool, consumers: Vec<std::thread::JoinHandle<()>>) -> u64 {
    let deadline = Instant::now() + w.drain_timeout;
    let expected = || counters.acked.load(Relaxed);
    if w.consumers > 0 {
        while counters.consumed.load(Relaxed) < expected() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stop.store(true, Relaxed);
    for c in consumers {
        let _ = c.join();
    }
    if w.consumers == 0 {
        return 0;
    }
    expected().saturating_sub(counters.consumed.load(Relaxed))
}

/// Prints a progress line a second until stopped.
struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn spawn_progress(w: &Workload, counters: &Arc<Counters>) -> Progress {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, c, size, label) = (stop.clone(), counters.clone(), w.record_size as f64, w.label.clone());
    let handle = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut last_acked, mut last_consumed) = (0u64, 0u64);
        let mut next = Duration::from_secs(1);
        while !s.load(Relaxed) {
            if start.elapsed() < next {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            next += Duration::from_secs(1);
            let (acked, consumed) = (c.acked.load(Relaxed), c.consumed.load(Relaxed));
            let (pa, pc) = (acked - last_acked, consumed.saturating_sub(last_consumed));
            (last_acked, last_consumed) = (acked, consumed);
            let inflight = c.sent.load(Relaxed).saturating_sub(acked + c.failed.load(Relaxed));
            eprintln!(
                "[{label}] {:>4.0}s  produced {:>9} rec/s {:>8.1} MB/s  consumed {:>9} rec/s  in flight {:>8}  failed {}",
                start.elapsed().as_secs_f64(),
                pa,
                pa as f64 * size / 1e6,
                pc,
                inflight,
                c.failed.load(Relaxed)
            );
        }
    });
    Progress { stop, handle: Some(handle) }
}

/// `len` bytes of JSON-like log lines from a small vocabulary with varying numbers (what text
/// payloads compress like), the same for the same `seed`.
fn text_payload(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "checkout",
        "payment",
        "user",
        "session",
        "cart",
        "search",
        "login",
        "error",
        "timeout",
        "retry",
        "warehouse",
        "shipping",
        "invoice",
        "refund",
        "catalog",
        "review",
    ];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let line = format!(
            "{{\"ts\":{},\"level\":\"{}\",\"service\":\"{}\",\"user\":{},\"event\":\"{} {}\",\"amount\":{}.{:02}}}\n",
            1_700_000_000_000u64 + next() % 1_000_000_000,
            if next() % 10 == 0 { "warn" } else { "info" },
            WORDS[(next() % 16) as usize],
            next() % 100_000,
            WORDS[(next() % 16) as usize],
            WORDS[(next() % 16) as usize],
            next() % 10_000,
            next() % 100,
        );
        out.extend_from_slice(line.as_bytes());
    }
    out
}
