"""Kafka 4.1's API versions and the admin answers clients ask for.

Clients negotiate the newest versions Sluice serves (Kafka 4.1's), the admin client gets the
authorized operations a broker without an authorizer reports, the KIP-848 group configs and the
max-timestamp offset, and a transactional producer fails at once with an error saying
transactions are not supported.
"""

import logging
import re
import struct
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AclOperation, ConfigResource, ConfigSource, OffsetSpec, ResourceType

from helpers import admin, consumer, create_topic, make_records, produce_records, unique
from kafka_wire import (PRODUCE, UNSUPPORTED_VERSION, KafkaConnection, Reader, _compact_array, _read_uvarint,
                        _skip_tags, api_versions, compact_string, i8, i16, i32, i64, record_batch, uvarint)

LIST_OFFSETS = 2
UNKNOWN_TOPIC_ID = 100

# Kafka 4.1's ranges for every API Sluice serves (OffsetCommit/OffsetFetch v10 and
# InitProducerId v6 are unstable in 4.1 and not advertised there either).
KAFKA_41 = {
    0: (3, 13), 1: (4, 18), 2: (1, 10), 3: (0, 13), 8: (2, 9), 9: (1, 9), 10: (0, 6), 11: (0, 9),
    12: (0, 4), 13: (0, 5), 14: (0, 5), 15: (0, 6), 16: (0, 5), 18: (0, 4), 19: (2, 7), 20: (1, 6), 21: (0, 2),
    22: (0, 5), 32: (1, 4), 33: (0, 2), 37: (0, 3), 42: (0, 2), 44: (0, 1), 47: (0, 0), 60: (0, 2), 68: (0, 1),
    69: (0, 1),
}


def test_api_versions_are_kafka_41s(sluice):
    with KafkaConnection(sluice.bootstrap) as conn:
        error, ranges = api_versions(conn)
    assert error == 0
    assert ranges == KAFKA_41


def test_librdkafka_uses_the_newest_versions(sluice):
    """librdkafka negotiates Fetch with topic ids (v13+) and Metadata v13, and a produce /
    consume / commit round trip works on them."""
    lines = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    log = logging.getLogger(unique("rdkafka-protocol"))
    log.addHandler(Capture())
    log.setLevel(logging.DEBUG)
    topic = unique("t-versions")
    create_topic(sluice.bootstrap, topic, partitions=1)
    records = make_records(10, 1, "versions")
    produce_records(sluice.bootstrap, topic, records, debug="protocol", logger=log)
    c = consumer(sluice.bootstrap, **{"debug": "protocol", "logger": log, "group.id": unique("g-versions")})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            msg = c.poll(1)
            if msg is not None and not msg.error():
                got.append(msg.value())
        assert got == [r.value for r in records]
        c.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
    finally:
        c.close()
    sent = {}
    for api, version in re.findall(r"Sent (\w+)Request \(v(\d+)", "\n".join(lines)):
        sent[api] = max(sent.get(api, 0), int(version))
    assert sent.get("Fetch", 0) >= 13, sent
    assert sent.get("Metadata") == 13, sent
    assert sent.get("Produce", 0) >= 9, sent


def test_admin_authorized_operations(sluice):
    topic, group = unique("t-ops"), unique("g-ops")
    create_topic(sluice.bootstrap, topic, partitions=1)
    a = admin(sluice.bootstrap)
    c = consumer(sluice.bootstrap, **{"group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()
    t = a.describe_topics(TopicCollection([topic]), include_authorized_operations=True)[topic].result(30)
    assert set(t.authorized_operations) == {
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE, AclOperation.ALTER,
        AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS}
    cluster = a.describe_cluster(include_authorized_operations=True).result(30)
    assert set(cluster.authorized_operations) == {
        AclOperation.CREATE, AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.CLUSTER_ACTION,
        AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE}
    g = a.describe_consumer_groups([group], include_authorized_operations=True)[group].result(30)
    assert set(g.authorized_operations) == {
        AclOperation.READ, AclOperation.DELETE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS}
    # Not asked for, not given.
    t = a.describe_topics(TopicCollection([topic]))[topic].result(30)
    assert not t.authorized_operations


@pytest.mark.sluice(controlplane_args=["--group-consumer-session-timeout-ms", "50000",
                                       "--group-consumer-heartbeat-interval-ms", "4000"])
def test_describe_group_configs(sluice):
    """The KIP-848 group configs with their defaults; those that come from the coordinator's
    flags show the flags' values."""
    group = unique("g-configs")
    res = ConfigResource(ResourceType.GROUP, group)
    a = admin(sluice.bootstrap)
    configs = a.describe_configs([res])[res].result(30)
    values = {name: entry.value for name, entry in configs.items()}
    assert values == {
        "consumer.session.timeout.ms": "50000",
        "consumer.heartbeat.interval.ms": "4000",
        "share.session.timeout.ms": "45000",
        "share.heartbeat.interval.ms": "5000",
        "share.record.lock.duration.ms": "30000",
        "share.auto.offset.reset": "latest",
        "share.isolation.level": "read_uncommitted",
        "streams.session.timeout.ms": "45000",
        "streams.heartbeat.interval.ms": "5000",
        "streams.num.standby.replicas": "0",
    }
    assert {entry.source for entry in configs.values()} == {ConfigSource.DEFAULT_CONFIG.value}


def produce_with_timestamps(bootstrap, topic, timestamps):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i, ts in enumerate(timestamps):
        p.produce(topic, b"v%d" % i, timestamp=ts)
        # One batch each, so the max timestamp is found inside the right batch.
        assert p.flush(30) == 0
    return p


def test_list_offsets_max_timestamp(sluice):
    topic = unique("t-maxts")
    create_topic(sluice.bootstrap, topic, partitions=1)
    a = admin(sluice.bootstrap)
    tp = TopicPartition(topic, 0)
    empty = a.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(30)
    assert (empty.offset, empty.timestamp) == (-1, -1)
    base = int(time.time() * 1000)
    # The largest timestamp twice: the first record holding it is the answer.
    produce_with_timestamps(sluice.bootstrap, topic, [base - 5000, base + 9000, base - 1000, base + 9000, base])
    got = a.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(30)
    assert (got.offset, got.timestamp) == (1, base + 9000)
    latest = a.list_offsets({tp: OffsetSpec.latest()})[tp].result(30)
    assert latest.offset == 5


def list_offsets_v9(conn, topic, timestamps, version=9):
    """ListOffsets v9 (flexible) of partition 0 for each timestamp; returns
    [(error, timestamp, offset)]."""
    parts = [i32(0) + i32(-1) + i64(ts) + uvarint(0) for ts in timestamps]
    body = (i32(-1) + i8(0) + uvarint(2) + compact_string(topic) + uvarint(len(parts) + 1) + b"".join(parts)
            + uvarint(0) + uvarint(0))
    corr = conn.send_request(LIST_OFFSETS, version, body, flexible=True)
    r = Reader(conn.recv_frame())
    assert r.i32() == corr
    _skip_tags(r)
    r.i32()  # throttle

    def partition(rr):
        _index, error, ts, offset, _epoch = rr.i32(), rr.i16(), rr.i64(), rr.i64(), rr.i32()
        _skip_tags(rr)
        return error, ts, offset

    def topic_(rr):
        n = _read_uvarint(rr)
        rr._take(n - 1)
        parts = _compact_array(rr, partition)
        _skip_tags(rr)
        return parts
    return _compact_array(r, topic_)[0]


def test_list_offsets_special_timestamps(sluice):
    """-3 max timestamp, -4 earliest local (the log start: nothing is tiered apart from the
    log), -5 latest tiered (none), each only from the version that defines it."""
    topic = unique("t-special")
    create_topic(sluice.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000)
    produce_with_timestamps(sluice.bootstrap, topic, [base, base + 7000, base + 1000])
    with KafkaConnection(sluice.bootstrap) as conn:
        got = list_offsets_v9(conn, topic, [-1, -2, -3, -4, -5])
        assert got == [(0, -1, 3), (0, -1, 0), (0, base + 7000, 1), (0, -1, 0), (0, -1, -1)]
        # v7 knows -3 but not -4 or -5.
        too_new = list_offsets_v9(conn, topic, [-3, -4, -5, -6], version=7)
        assert [e for e, _, _ in too_new] == [0, UNSUPPORTED_VERSION, UNSUPPORTED_VERSION, UNSUPPORTED_VERSION]


def test_transactions_fail_fast_librdkafka(sluice):
    p = Producer({"bootstrap.servers": sluice.bootstrap, "transactional.id": unique("tx")})
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        p.init_transactions(60)
    err = raised.value.args[0]
    # Fatal at once, not retried until the 60 s timeout.
    assert err.fatal()
    assert time.monotonic() - started < 30
    assert "Transactions are not supported by Sluice" in err.str()


def test_transactions_fail_fast_kafka_python(sluice):
    from kafka import KafkaProducer
    from kafka.errors import TransactionalIdAuthorizationFailedError
    started = time.monotonic()
    p = KafkaProducer(bootstrap_servers=sluice.bootstrap, transactional_id=unique("tx"))
    try:
        with pytest.raises(TransactionalIdAuthorizationFailedError):
            p.init_transactions()
        assert time.monotonic() - started < 30
    finally:
        p.close(timeout=5)


def topic_id_bytes(a, topic):
    tid = a.describe_topics(TopicCollection([topic]))[topic].result(30).topic_id
    return struct.pack(">qq", tid.get_most_significant_bits(), tid.get_least_significant_bits())


def produce_v13(topic_id, batch):
    """Produce v13 (flexible, topics by id) of one batch to partition 0, acks=all."""
    records = uvarint(len(batch) + 1) + batch
    return (compact_string(None) + i16(-1) + i32(15000)
            + uvarint(2) + topic_id + uvarint(2) + i32(0) + records + uvarint(0) + uvarint(0) + uvarint(0))


def parse_produce_v13(r):
    _skip_tags(r)

    def partition(rr):
        p = (rr.i32(), rr.i16(), rr.i64())
        rr.i64()
        rr.i64()
        _compact_array(rr, lambda x: (x.i32(), _skip_tags(x)))
        n = _read_uvarint(rr)
        rr._take(max(n - 1, 0))
        _skip_tags(rr)
        return p

    def topic_(rr):
        tid = rr._take(16)
        parts = _compact_array(rr, partition)
        _skip_tags(rr)
        return tid, parts
    return _compact_array(r, topic_)[0]


def test_produce_v13_by_topic_id_in_order(sluice):
    """Produce v13 names the topic by id; 20 requests pipelined on one connection get offsets
    in the order sent; an unknown id gets UNKNOWN_TOPIC_ID."""
    topic = unique("t-v13")
    create_topic(sluice.bootstrap, topic, partitions=1)
    a = admin(sluice.bootstrap)
    tid = topic_id_bytes(a, topic)
    now = int(time.time() * 1000)
    with KafkaConnection(sluice.bootstrap) as conn:
        sent = []
        for i in range(20):
            batch = record_batch([(None, b"v%d" % i, (), now)])
            sent.append(conn.send_request(PRODUCE, 13, produce_v13(tid, batch), flexible=True))
        for i, corr in enumerate(sent):
            r = Reader(conn.recv_frame())
            assert r.i32() == corr
            got_id, parts = parse_produce_v13(r)
            assert got_id == tid
            assert parts == [(0, 0, i)], f"request {i}: {parts}"
        corr = conn.send_request(PRODUCE, 13, produce_v13(uuid.uuid4().bytes, record_batch([(None, b"x", (), now)])),
                                 flexible=True)
        r = Reader(conn.recv_frame())
        assert r.i32() == corr
        assert parse_produce_v13(r)[1] == [(0, UNKNOWN_TOPIC_ID, -1)]
    c = consumer(sluice.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            msg = c.poll(1)
            if msg is not None and not msg.error():
                got.append((msg.offset(), msg.value()))
        assert got == [(i, b"v%d" % i) for i in range(20)]
    finally:
        c.close()
