"""Client-side helpers shared by the end-to-end tests (confluent-kafka based unless noted)."""

import logging
import time
import uuid
from collections import Counter, defaultdict, namedtuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import wait_until

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


class _RepeatFilter(logging.Filter):
    """Drops a log line after it was seen `limit` times (librdkafka repeats connect failures
    every second while a broker is down)."""

    def __init__(self, limit=3):
        super().__init__()
        self.limit = limit
        self.seen = Counter()

    def filter(self, record):
        msg = record.getMessage()
        self.seen[msg] += 1
        if self.seen[msg] == self.limit + 1:
            record.msg, record.args = f"{msg} [repeated; further repeats suppressed]", ()
        return self.seen[msg] <= self.limit + 1


# librdkafka's own log lines go through logging, so pytest shows them only for failing tests.
RDKAFKA_LOG = logging.getLogger("rdkafka")
RDKAFKA_LOG.addFilter(_RepeatFilter())

# A record to produce / a record as consumed.
Rec = namedtuple("Rec", "partition key value headers timestamp")
Got = namedtuple("Got", "partition offset key value headers timestamp")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def now_ms():
    return int(time.time() * 1000)


def make_records(n, partitions, tag, base_ts=None, null_header_values=True):
    """n varied records round-robin over partitions, with keys, headers and increasing timestamps.

    Includes edge cases the broker must preserve bit-exactly: null keys, null and empty values,
    no headers, null header values (unless disabled, for clients that can't send them) and
    repeated header keys.
    """
    base_ts = now_ms() - 60_000 if base_ts is None else base_ts
    out = []
    for i in range(n):
        key = None if i % 1000 == 999 else f"{tag}-k{i}".encode()
        if i % 2500 == 1234:
            value = None
        elif i % 2500 == 1235:
            value = b""
        else:
            value = f"{tag}-v{i}-".encode() + bytes((i * 7 + j) % 251 for j in range(i % 97)) + b"x" * (i % 300)
        if i % 7 == 3:
            headers = []
        else:
            headers = [("idx", str(i).encode()), ("tag", tag.encode())]
            if i % 11 == 0:
                headers.append(("nullval", None if null_header_values else b""))
            if i % 13 == 0:
                headers += [("dup", b"1"), ("dup", b"2")]
        out.append(Rec(i % partitions, key, value, headers, base_ts + i))
    return out


def per_partition(records):
    parts = defaultdict(list)
    for r in records:
        parts[r.partition].append(r)
    return parts


# ---------------------------------------------------------------------- admin

def admin(bootstrap, **conf):
    return AdminClient({"bootstrap.servers": bootstrap, "logger": RDKAFKA_LOG, **conf})


def create_topic(bootstrap, name, partitions=1, config=None, timeout=30):
    """Create a topic and wait until its metadata shows all partitions with a leader."""
    client = admin(bootstrap)  # must outlive the future, or the request is aborted
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_for_topic(bootstrap, name, partitions, timeout=timeout)


def wait_for_topic(bootstrap, name, partitions, timeout=30):
    client = admin(bootstrap)

    def ready():
        md = client.list_topics(topic=name, timeout=5).topics.get(name)
        return (md is not None and md.error is None and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values()))

    wait_until(ready, timeout, interval=0.2, what=f"topic {name} with {partitions} partitions")


def topic_names(bootstrap):
    return set(admin(bootstrap).list_topics(timeout=10).topics)


def admin_error(future, timeout=30):
    """Return the KafkaError a failed admin future raised (fails the test if it succeeded)."""
    try:
        future.result(timeout=timeout)
    except KafkaException as e:
        return e.args[0]
    raise AssertionError("admin operation unexpectedly succeeded")


# ---------------------------------------------------------------------- produce

def producer(bootstrap, **conf):
    base = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "logger": RDKAFKA_LOG}
    base.update(conf)
    return Producer(base)


def produce_records(bootstrap, topic, records, timeout=120, **conf):
    """Produce records (explicit partitions) with acks=all; return [(partition, offset)] in order.

    Fails if any delivery fails.
    """
    p = producer(bootstrap, **conf)
    results = [None] * len(records)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                results[i] = (msg.partition(), msg.offset())
        return cb

    for i, r in enumerate(records):
        kwargs = dict(value=r.value, key=r.key, partition=r.partition, timestamp=r.timestamp,
                      on_delivery=on_delivery(i))
        if r.headers:
            kwargs["headers"] = r.headers
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[:5]}"
    assert all(res is not None for res in results)
    return results


def assert_dense_delivery(records, deliveries, start=None):
    """Delivery reports carry the requested partition and consecutive offsets in produce order,
    beginning at start[partition] (default 0)."""
    next_offset = defaultdict(int, start or {})
    for i, (r, (part, off)) in enumerate(zip(records, deliveries)):
        assert part == r.partition, f"record {i} delivered to partition {part}, wanted {r.partition}"
        assert off == next_offset[part], \
            f"record {i} got offset {off} in partition {part}, expected {next_offset[part]}"
        next_offset[part] += 1


# ---------------------------------------------------------------------- consume

def consumer(bootstrap, **conf):
    base = {"bootstrap.servers": bootstrap, "group.id": unique("e2e-assign"), "logger": RDKAFKA_LOG,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "error", "enable.partition.eof": False}
    base.update(conf)
    return Consumer(base)


# Errors a client legitimately sees while a broker restarts; anything else fails the test.
TRANSIENT_ERRORS = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                    KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE}


def is_transient(err):
    return not err.fatal() and (err.retriable() or err.code() in TRANSIENT_ERRORS)


def _got(msg):
    _, ts = msg.timestamp()
    return Got(msg.partition(), msg.offset(), msg.key(), msg.value(), msg.headers() or [], ts)


def consume_range(bootstrap, topic, end_offsets, start_offsets=None, timeout=120, **conf):
    """Consume by assignment from start_offsets (default 0) up to end_offsets (exclusive).

    end_offsets: {partition: end}. Returns {partition: [Got]}; fails if the range is not
    reached within timeout or a non-retriable consumer error is reported.
    """
    start_offsets = start_offsets or {}
    c = consumer(bootstrap, **conf)
    try:
        wanted = {p: end for p, end in end_offsets.items() if end > start_offsets.get(p, 0)}
        out = {p: [] for p in end_offsets}
        if not wanted:
            return out
        c.assign([TopicPartition(topic, p, start_offsets.get(p, 0)) for p in wanted])
        done = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                progress = {p: len(out[p]) for p in wanted}
                raise AssertionError(f"consume timed out after {timeout}s: got {progress}, wanted "
                                     f"{ {p: e - start_offsets.get(p, 0) for p, e in wanted.items()} }")
            for msg in c.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if is_transient(err):
                        continue
                    raise AssertionError(f"consumer error: {err}")
                p = msg.partition()
                if p in done:
                    continue
                out[p].append(_got(msg))
                if msg.offset() >= wanted[p] - 1:
                    done.add(p)
        return out
    finally:
        c.close()


def watermarks(bootstrap, topic, partitions, timeout=15):
    c = consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in range(partitions)}
    finally:
        c.close()


def consume_all(bootstrap, topic, partitions, timeout=120):
    """Everything from offset 0 to the current high watermark of every partition."""
    wm = watermarks(bootstrap, topic, partitions)
    for p, (low, _) in wm.items():
        assert low == 0, f"partition {p} log start offset is {low}, expected 0"
    return consume_range(bootstrap, topic, {p: high for p, (_, high) in wm.items()}, timeout=timeout)


def assert_offsets_dense(got_by_partition, start=0):
    for p, msgs in got_by_partition.items():
        offsets = [m.offset for m in msgs]
        assert offsets == list(range(start, start + len(offsets))), \
            f"partition {p}: offsets not dense from {start}: first gaps " \
            f"{[(a, b) for a, b in zip(offsets, offsets[1:]) if b != a + 1][:5]}"


def assert_same_records(expected, got_by_partition, check_timestamps=True):
    """Consumed records equal the produced ones, partition by partition, in order."""
    exp = per_partition(expected)
    for p in set(exp) | {p for p, msgs in got_by_partition.items() if msgs}:
        want, got = exp.get(p, []), got_by_partition.get(p, [])
        assert len(got) == len(want), f"partition {p}: consumed {len(got)} records, produced {len(want)}"
        for i, (w, g) in enumerate(zip(want, got)):
            actual = (g.key, g.value, list(g.headers), g.timestamp if check_timestamps else None)
            wanted = (w.key, w.value, list(w.headers), w.timestamp if check_timestamps else None)
            assert actual == wanted, f"partition {p} offset {g.offset} (record #{i}) differs:\n" \
                                     f"  got      {actual!r:.300}\n  expected {wanted!r:.300}"


def values(got_by_partition):
    return [m.value for p in sorted(got_by_partition) for m in got_by_partition[p]]


def assert_no_duplicates(items, what="value"):
    dups = [v for v, n in Counter(items).items() if n > 1]
    assert not dups, f"{len(dups)} duplicated {what}s, e.g. {dups[:5]}"


# ---------------------------------------------------------------------- health check

class HealthProbe:
    """Writes a few records before an experiment and proves afterwards that a normal client
    can still produce and consume and that the earlier data is intact."""

    def __init__(self, bootstrap, topic=None, n=50):
        self.bootstrap = bootstrap
        self.topic = topic or unique("health")
        self.n = n
        self.written = []
        create_topic(bootstrap, self.topic, 1)
        self.write("before")

    def write(self, tag):
        recs = make_records(self.n, 1, unique(tag))
        produce_records(self.bootstrap, self.topic, recs, timeout=60)
        self.written += recs

    def check(self, tag="after"):
        self.write(tag)
        got = consume_range(self.bootstrap, self.topic, {0: len(self.written)}, timeout=60)
        assert_offsets_dense(got)
        assert_same_records(self.written, got)
        wm = watermarks(self.bootstrap, self.topic, 1)
        assert wm[0] == (0, len(self.written)), f"watermarks {wm[0]}, expected (0, {len(self.written)})"
