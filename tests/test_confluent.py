"""End-to-end tests with confluent-kafka (librdkafka 2.x)."""

import json
import signal
import threading
import time

import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import (ConfigResource, ConfigSource, NewPartitions, NewTopic, OffsetSpec,
                                   ResourceType)

from cluster import wait_until
from helpers import (CODECS, admin, admin_error, assert_dense_delivery, assert_offsets_dense,
                     assert_same_records, consume_range, consumer, create_topic, make_records,
                     per_partition, produce_records, producer, topic_names, unique, wait_for_topic,
                     watermarks)

N_RECORDS = 10_000
PARTITIONS = 3


# ---------------------------------------------------------------------- produce / consume

def check_list_offsets(bootstrap, topic, records):
    """earliest / latest / by-timestamp lookups, via both AdminClient and Consumer APIs."""
    parts = per_partition(records)
    client = admin(bootstrap)
    specs = {TopicPartition(topic, p, 0): OffsetSpec.earliest() for p in range(PARTITIONS)}
    result = {tp.partition: f.result(timeout=30) for tp, f in client.list_offsets(specs).items()}
    assert {p: r.offset for p, r in result.items()} == {p: 0 for p in range(PARTITIONS)}

    specs = {TopicPartition(topic, p, 0): OffsetSpec.latest() for p in range(PARTITIONS)}
    result = {tp.partition: f.result(timeout=30) for tp, f in client.list_offsets(specs).items()}
    assert {p: r.offset for p, r in result.items()} == {p: len(parts[p]) for p in range(PARTITIONS)}

    # Timestamp lookup: the first offset whose timestamp is >= T. Timestamps increase within each
    # partition, so looking up record k's timestamp must return record k's offset.
    probes = {p: len(parts[p]) // 3 for p in range(PARTITIONS)}
    specs = {TopicPartition(topic, p, 0): OffsetSpec.for_timestamp(parts[p][k].timestamp)
             for p, k in probes.items()}
    result = {tp.partition: f.result(timeout=30) for tp, f in client.list_offsets(specs).items()}
    for p, k in probes.items():
        assert result[p].offset == k, f"partition {p}: timestamp lookup gave {result[p].offset}, want {k}"
        assert result[p].timestamp == parts[p][k].timestamp

    # A timestamp after every record: no such offset (-1, per ListOffsets semantics).
    after = max(r.timestamp for r in records) + 1
    specs = {TopicPartition(topic, 0, 0): OffsetSpec.for_timestamp(after)}
    (res,) = [f.result(timeout=30) for f in client.list_offsets(specs).values()]
    assert res.offset == -1, f"timestamp past the end resolved to offset {res.offset}"

    c = consumer(bootstrap)
    try:
        for p in range(PARTITIONS):
            assert c.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False) \
                == (0, len(parts[p]))
        found = c.offsets_for_times([TopicPartition(topic, p, parts[p][k].timestamp)
                                     for p, k in probes.items()], timeout=15)
        assert {tp.partition: tp.offset for tp in found} == probes
    finally:
        c.close()


def roundtrip(bootstrap, codec):
    topic = unique(f"rt-{codec}")
    create_topic(bootstrap, topic, PARTITIONS)
    records = make_records(N_RECORDS, PARTITIONS, tag=codec)
    deliveries = produce_records(bootstrap, topic, records, **{"compression.type": codec})
    assert_dense_delivery(records, deliveries)

    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    got = consume_range(bootstrap, topic, counts)
    assert_offsets_dense(got)
    assert_same_records(records, got)
    check_list_offsets(bootstrap, topic, records)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.each_backend
def test_roundtrip_all_codecs(sluice, codec):
    roundtrip(sluice.bootstrap, codec)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.sluice(cores=2)
def test_roundtrip_two_cores(sluice, codec):
    roundtrip(sluice.bootstrap, codec)


@pytest.mark.each_backend
def test_data_survives_clean_restart(sluice):
    topic = unique("restart")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    records = make_records(3000, PARTITIONS, tag="restart")
    produce_records(sluice.bootstrap, topic, records, **{"compression.type": "lz4"})
    sluice.restart_all(sig=signal.SIGTERM)

    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    assert_same_records(records, consume_range(sluice.bootstrap, topic, counts))

    # Appends after the restart continue the offset sequence, no offset is reused.
    more = make_records(300, PARTITIONS, tag="restart2")
    assert_dense_delivery(more, produce_records(sluice.bootstrap, topic, more), start=counts)
    total = {p: len(rs) for p, rs in per_partition(records + more).items()}
    got = consume_range(sluice.bootstrap, topic, total)
    assert_offsets_dense(got)
    assert_same_records(records + more, got)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.each_backend
def test_cold_reads_from_objects(sluice_factory, cores):
    """With a cache far smaller than the data, a fresh process serves fetches from the WAL
    objects (ranged reads through the index), not from memory."""
    sluice = sluice_factory(cores=cores, dataplane_args=["--cache-bytes", "65536"])
    topic = unique("cold")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    records = make_records(6000, PARTITIONS, tag="cold-" + "v" * 400)
    assert_dense_delivery(records, produce_records(sluice.bootstrap, topic, records))
    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    got = consume_range(sluice.bootstrap, topic, counts)
    assert_offsets_dense(got)
    assert_same_records(records, got)


# ---------------------------------------------------------------------- long poll

def fetch_requests_sent(stats):
    return sum(b.get("req", {}).get("Fetch", 0) for b in stats.get("brokers", {}).values())


@pytest.mark.timeout(120)
@pytest.mark.each_backend
def test_long_poll_wakes_on_new_data(sluice):
    """A fetch waiting on an empty partition is parked by the broker (not answered empty in a
    tight loop) and is answered as soon as a record arrives, long before fetch.wait.max.ms."""
    topic = unique("longpoll")
    create_topic(sluice.bootstrap, topic, 1)
    latest_stats = {}

    def on_stats(raw):
        latest_stats.clear()
        latest_stats.update(json.loads(raw))

    c = consumer(sluice.bootstrap, **{"fetch.wait.max.ms": 10_000, "socket.timeout.ms": 30_000,
                                      "statistics.interval.ms": 200, "stats_cb": on_stats})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        # Idle phase: nothing to read, the consumer must not receive anything.
        idle_until = time.monotonic() + 3
        while time.monotonic() < idle_until:
            msg = c.poll(0.2)
            assert msg is None or msg.error() is not None, "received a record from an empty topic"
        wait_until(lambda: latest_stats, 5, what="librdkafka statistics")
        fetches_idle = fetch_requests_sent(latest_stats)
        assert fetches_idle <= 10, (f"{fetches_idle} Fetch requests during 3 s idle with "
                                    f"fetch.wait.max.ms=10000: broker does not hold empty fetches")

        acked_at = {}

        def on_delivery(err, msg):
            if err is None:
                acked_at["t"] = time.monotonic()

        def produce_later():
            p = producer(sluice.bootstrap)
            p.produce(topic, value=b"wake-up", partition=0, on_delivery=on_delivery)
            p.flush(30)

        t = threading.Thread(target=produce_later)
        t.start()
        got = None
        deadline = time.monotonic() + 8
        while got is None and time.monotonic() < deadline:
            msg = c.poll(0.1)
            if msg is not None and msg.error() is None:
                got = (msg, time.monotonic())
        t.join(30)
        assert "t" in acked_at, "the wake-up record was not acknowledged"
        assert got is not None, "record produced during a parked fetch was not received within 8 s"
        assert got[0].value() == b"wake-up" and got[0].offset() == 0
        latency = got[1] - acked_at["t"]
        assert latency < 3.0, f"record received {latency:.2f}s after its ack: parked fetch not woken"
    finally:
        c.close()


# ---------------------------------------------------------------------- offset out of range

def partition_stats(stats, topic, partition):
    return stats.get("topics", {}).get(topic, {}).get("partitions", {}).get(str(partition), {})


@pytest.mark.parametrize("reset,expected_first", [("earliest", 0), ("latest", 10)])
def test_fetch_beyond_high_watermark_resets(sluice, reset, expected_first):
    """Fetching at offset 1000 of a 10-record partition gets OFFSET_OUT_OF_RANGE from the broker,
    and the client's auto.offset.reset policy moves it to the log start or end."""
    topic = unique("oor")
    create_topic(sluice.bootstrap, topic, 1)
    records = make_records(10, 1, tag="oor")
    produce_records(sluice.bootstrap, topic, records)
    latest_stats = {}

    def on_stats(raw):
        latest_stats.clear()
        latest_stats.update(json.loads(raw))

    c = consumer(sluice.bootstrap, **{"auto.offset.reset": reset, "statistics.interval.ms": 100,
                                      "stats_cb": on_stats})
    try:
        c.assign([TopicPartition(topic, 0, 1000)])
        if reset == "latest":
            def moved_to_end():
                msg = c.poll(0.1)
                assert msg is None or msg.error() is not None, f"got old record at {msg.offset()}"
                st = partition_stats(latest_stats, topic, 0)
                return st.get("fetch_state") == "active" and st.get("next_offset") == 10

            wait_until(moved_to_end, 30, interval=0, what="consumer reset to the high watermark (10)")
            produce_records(sluice.bootstrap, topic, make_records(1, 1, tag="late"))
        first = wait_until(lambda: _first_record(c), 30, interval=0, what="a record after the reset")
        assert first.offset() == expected_first
        if reset == "earliest":
            assert first.value() == records[0].value
    finally:
        c.close()


def _first_record(c):
    msg = c.poll(0.2)
    if msg is None:
        return None
    assert msg.error() is None, f"consumer error: {msg.error()}"
    return msg


# ---------------------------------------------------------------------- admin API

def test_create_topics_and_errors(sluice):
    client = admin(sluice.bootstrap)
    name = unique("adm")
    futures = client.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])
    futures[name].result(timeout=30)
    wait_for_topic(sluice.bootstrap, name, 4)

    # validate_only: succeeds, creates nothing.
    dry = unique("dry")
    client.create_topics([NewTopic(dry, num_partitions=2, replication_factor=1)],
                         validate_only=True)[dry].result(timeout=30)
    assert dry not in topic_names(sluice.bootstrap)

    def create_error(topic, partitions=1, config=None, validate_only=False):
        new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})
        return admin_error(client.create_topics([new], validate_only=validate_only)[topic]).code()

    assert create_error(name) == KafkaError.TOPIC_ALREADY_EXISTS
    assert create_error(name, validate_only=True) == KafkaError.TOPIC_ALREADY_EXISTS

    for bad_name in ["has space", "a" * 250, "..", "slash/in/name"]:
        assert create_error(bad_name) == KafkaError.TOPIC_EXCEPTION, bad_name
    assert not {"has space", "..", "slash/in/name"} & topic_names(sluice.bootstrap)

    for config in [{"no.such.config": "1"}, {"retention.ms": "not-a-number"}, {"cleanup.policy": "bogus"}]:
        t = unique("badcfg")
        assert create_error(t, config=config) == KafkaError.INVALID_CONFIG, config
        assert create_error(t, config=config, validate_only=True) == KafkaError.INVALID_CONFIG, config
        assert t not in topic_names(sluice.bootstrap)

    assert create_error(unique("zero"), partitions=0) == KafkaError.INVALID_PARTITIONS


def test_delete_topic_and_recreate(sluice):
    client = admin(sluice.bootstrap)
    name = unique("del")
    create_topic(sluice.bootstrap, name, 2)
    produce_records(sluice.bootstrap, name, make_records(100, 2, tag="old"))
    client.delete_topics([name])[name].result(timeout=30)
    wait_until(lambda: name not in topic_names(sluice.bootstrap), 30, interval=0.2,
               what="deleted topic to leave metadata")

    err = admin_error(client.delete_topics([name])[name])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err

    # Re-created topic starts empty: no data of the deleted incarnation leaks into it.
    create_topic(sluice.bootstrap, name, 2)
    assert watermarks(sluice.bootstrap, name, 2) == {0: (0, 0), 1: (0, 0)}
    fresh = make_records(10, 2, tag="new")
    produce_records(sluice.bootstrap, name, fresh)
    got = consume_range(sluice.bootstrap, name, {0: 5, 1: 5})
    assert_same_records(fresh, got)


def test_create_partitions(sluice):
    client = admin(sluice.bootstrap)
    name = unique("grow")
    create_topic(sluice.bootstrap, name, 3)
    before = make_records(30, 3, tag="before")
    produce_records(sluice.bootstrap, name, before)

    client.create_partitions([NewPartitions(name, 5)])[name].result(timeout=30)
    wait_for_topic(sluice.bootstrap, name, 5)

    err = admin_error(client.create_partitions([NewPartitions(name, 2)])[name])
    assert err.code() == KafkaError.INVALID_PARTITIONS, err

    after = make_records(50, 5, tag="after")
    produce_records(sluice.bootstrap, name, after)
    got = consume_range(sluice.bootstrap, name, {0: 20, 1: 20, 2: 20, 3: 10, 4: 10})
    assert_offsets_dense(got)
    assert_same_records(before + after, got)


def describe(client, resource_type, name):
    res = ConfigResource(resource_type, name)
    return client.describe_configs([res])[res].result(timeout=30)


def source(entry):
    return ConfigSource(entry.source) if isinstance(entry.source, int) else entry.source


def test_describe_configs(sluice):
    client = admin(sluice.bootstrap)
    plain = unique("cfg")
    create_topic(sluice.bootstrap, plain, 1)
    entries = describe(client, ResourceType.TOPIC, plain)
    assert entries["cleanup.policy"].value == "delete"
    assert entries["retention.ms"].value == "604800000"
    assert source(entries["retention.ms"]) == ConfigSource.DEFAULT_CONFIG

    custom = unique("cfg")
    create_topic(sluice.bootstrap, custom, 1, config={"retention.ms": "3600000"})
    entries = describe(client, ResourceType.TOPIC, custom)
    assert entries["retention.ms"].value == "3600000"
    assert source(entries["retention.ms"]) == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert entries["cleanup.policy"].value == "delete"

    broker = describe(client, ResourceType.BROKER, "1")
    assert broker, "broker 1 describes no configs"

    res = ConfigResource(ResourceType.TOPIC, unique("missing"))
    err = admin_error(client.describe_configs([res])[res])
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err


def test_describe_cluster_and_metadata(sluice):
    client = admin(sluice.bootstrap)
    desc = client.describe_cluster(request_timeout=30).result(timeout=30)
    assert desc.cluster_id, "empty cluster id"
    assert [(n.id, n.host, n.port) for n in desc.nodes] == [(1, "127.0.0.1", sluice.kafka_port)]
    assert desc.controller is not None and desc.controller.id == 1

    md = client.list_topics(timeout=10)
    assert md.cluster_id == desc.cluster_id
    assert {b.id: (b.host, b.port) for b in md.brokers.values()} == {1: ("127.0.0.1", sluice.kafka_port)}

    sluice.restart_all()
    client = admin(sluice.bootstrap)
    again = client.describe_cluster(request_timeout=30).result(timeout=30)
    assert again.cluster_id == desc.cluster_id, "cluster id changed across restart"


@pytest.mark.sluice(dataplane_args=["--auto-create-topics", "true", "--num-partitions", "2"])
def test_auto_create_on_produce(sluice):
    name = unique("auto")
    records = make_records(20, 2, tag="auto")
    produce_records(sluice.bootstrap, name, records)
    wait_for_topic(sluice.bootstrap, name, 2)
    assert_same_records(records, consume_range(sluice.bootstrap, name, {0: 10, 1: 10}))
