"""End-to-end tests with kafka-python (a pure-Python client with its own protocol code)."""

import time

import kafka.errors as Errors
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from cluster import wait_until
from helpers import (CODECS, Got, assert_dense_delivery, assert_offsets_dense, assert_same_records,
                     make_records, per_partition, unique)

N_RECORDS = 10_000
PARTITIONS = 3


def kp_admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)


def kp_create_topic(client, name, partitions, configs=None):
    client.create_topics({name: {"num_partitions": partitions, "replication_factor": 1,
                                 "configs": configs or {}}}, wait_for_metadata=True)


def kp_produce(bootstrap, topic, records, **conf):
    """Send records with explicit partition/timestamp; return [(partition, offset)] in order."""
    conf = {"acks": "all", "linger_ms": 5, "enable_idempotence": False, **conf}
    p = KafkaProducer(bootstrap_servers=bootstrap, **conf)
    try:
        futures = [p.send(topic, value=r.value, key=r.key, partition=r.partition,
                          timestamp_ms=r.timestamp, headers=list(r.headers))
                   for r in records]
        p.flush(timeout=120)
        out = []
        for f in futures:
            md = f.get(timeout=60)
            out.append((md.partition, md.offset))
        return out
    finally:
        p.close(timeout=10)


def kp_consumer(bootstrap, **conf):
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="none", **conf)


def kp_consume(bootstrap, topic, end_offsets, timeout=120):
    """Consume [0, end) of each partition by assignment; returns {partition: [Got]}."""
    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in end_offsets]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        out = {p: [] for p in end_offsets}
        deadline = time.monotonic() + timeout
        while any(len(out[p]) < end for p, end in end_offsets.items()):
            assert time.monotonic() < deadline, \
                f"consume timed out: got { {p: len(v) for p, v in out.items()} }, wanted {end_offsets}"
            for tp, msgs in c.poll(timeout_ms=500, max_records=5000).items():
                for m in msgs:
                    if m.offset < end_offsets[tp.partition]:
                        out[tp.partition].append(Got(tp.partition, m.offset, m.key, m.value,
                                                     [(k, v) for k, v in m.headers or []], m.timestamp))
        return out
    finally:
        c.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip(sluice, codec):
    client = kp_admin(sluice.bootstrap)
    topic = unique(f"kp-{codec}")
    kp_create_topic(client, topic, PARTITIONS)
    records = make_records(N_RECORDS, PARTITIONS, tag=f"kp-{codec}", null_header_values=False)
    deliveries = kp_produce(sluice.bootstrap, topic, records,
                            compression_type=None if codec == "none" else codec)
    assert_dense_delivery(records, deliveries)

    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    got = kp_consume(sluice.bootstrap, topic, counts)
    assert_offsets_dense(got)
    assert_same_records(records, got)

    c = kp_consumer(sluice.bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert c.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}
        parts = per_partition(records)
        probe = {TopicPartition(topic, p): parts[p][17].timestamp for p in range(PARTITIONS)}
        found = c.offsets_for_times(probe)
        assert {tp.partition: (o.offset, o.timestamp) for tp, o in found.items()} == \
            {p: (17, parts[p][17].timestamp) for p in range(PARTITIONS)}
    finally:
        c.close()


def test_default_producer_config(sluice):
    """kafka-python's defaults (idempotent producer, acks=all) must work against the broker."""
    client = kp_admin(sluice.bootstrap)
    topic = unique("kp-default")
    kp_create_topic(client, topic, 1)
    records = make_records(200, 1, tag="kp-default", null_header_values=False)
    p = KafkaProducer(bootstrap_servers=sluice.bootstrap)
    try:
        metas = [p.send(topic, value=r.value, key=r.key, headers=list(r.headers),
                        timestamp_ms=r.timestamp, partition=0) for r in records]
        p.flush(timeout=60)
        assert [f.get(timeout=30).offset for f in metas] == list(range(len(records)))
    finally:
        p.close(timeout=10)
    assert_same_records(records, kp_consume(sluice.bootstrap, topic, {0: len(records)}))


def test_admin_topics_partitions_configs_cluster(sluice):
    client = kp_admin(sluice.bootstrap)
    name = unique("kpadm")
    kp_create_topic(client, name, 2, configs={"retention.ms": "7200000"})
    assert name in client.list_topics()

    with pytest.raises(Errors.TopicAlreadyExistsError):
        kp_create_topic(client, name, 2)
    with pytest.raises(Errors.InvalidTopicError):
        client.create_topics({"bad name!": {"num_partitions": 1, "replication_factor": 1}})
    with pytest.raises(Errors.InvalidConfigurationError):
        client.create_topics({unique("kpbad"): {"num_partitions": 1, "replication_factor": 1,
                                                "configs": {"no.such.config": "x"}}})

    client.create_partitions({name: 4})
    wait_until(lambda: len(client.describe_topics([name])[0]["partitions"]) == 4, 30, interval=0.2,
               what="topic to have 4 partitions")
    with pytest.raises(Errors.InvalidPartitionsError):
        client.create_partitions({name: 3})

    configs = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)],
                                      config_filter="all")
    topic_cfg = configs["topic"][name]
    assert topic_cfg["retention.ms"]["value"] == "7200000"
    assert topic_cfg["cleanup.policy"]["value"] == "delete"
    broker_cfg = client.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")],
                                         config_filter="all")
    assert broker_cfg["broker"]["1"], "broker 1 describes no configs"

    cluster = client.describe_cluster()
    assert cluster["cluster_id"]
    assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == \
        [(1, "127.0.0.1", sluice.kafka_port)]

    client.delete_topics([name])
    wait_until(lambda: name not in client.list_topics(), 30, interval=0.2, what="topic deletion")
    with pytest.raises(Errors.UnknownTopicOrPartitionError):
        client.delete_topics([name])
