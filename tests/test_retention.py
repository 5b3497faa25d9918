"""Topic configs changed at runtime (IncrementalAlterConfigs, AlterConfigs), DeleteRecords and
retention (`retention.ms`, `retention.bytes`): the log start offset moves forward, ListOffsets
earliest follows it, a consumer below it gets OFFSET_OUT_OF_RANGE, and it survives a restart.
Every scenario runs on both back ends with confluent-kafka (librdkafka) and kafka-python."""

import time

import pytest
from confluent_kafka import KafkaError, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   OffsetSpec, ResourceType)

from cluster import free_port, wait_until
from helpers import (admin, admin_error, assert_offsets_dense, consume_range, consumer, create_topic,
                     make_records, produce_records, unique)
from test_bench import scrape



def fast_retention(sluice_factory):
    """A cluster whose control plane runs retention every 200 ms (default: five minutes) and
    serves /metrics; returns (cluster, a function reading its retention pass count)."""
    port = free_port()
    sluice = sluice_factory(controlplane_args=["--retention-check-interval-ms", "200", "--metrics-listen", f"127.0.0.1:{port}"])
    return sluice, lambda: scrape(port).get("sluice_retention_passes_total", 0)


def describe(client, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return client.describe_configs([res])[res].result(timeout=30)


def incremental(client, topic, *entries, validate_only=False):
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
    return client.incremental_alter_configs([res], validate_only=validate_only)[res]


def earliest(client, topic, partitions):
    specs = {TopicPartition(topic, p): OffsetSpec.earliest() for p in range(partitions)}
    got = client.list_offsets(specs, request_timeout=30)
    return {tp.partition: f.result(timeout=30).offset for tp, f in got.items()}


def delete_records(client, topic, offsets):
    """{partition: offset} -> {partition: DeleteRecordsResult or KafkaError}."""
    futures = client.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()], request_timeout=30)
    out = {}
    for tp, f in futures.items():
        try:
            out[tp.partition] = f.result(timeout=30)
        except Exception as e:  # the future raises KafkaException wrapping the error
            out[tp.partition] = e.args[0]
    return out


def produce_in_steps(bootstrap, topic, steps, per_step, partitions=1, base_ts=None):
    """Produce `steps` acknowledged rounds of `per_step` records per partition, one after the
    other, so that every round is its own WAL object (and index entry)."""
    for i in range(steps):
        produce_records(bootstrap, topic, make_records(per_step * partitions, partitions, f"{topic}-{i}", base_ts=base_ts))


@pytest.mark.each_backend
def test_incremental_and_full_alter_configs_change_what_describe_shows(sluice):
    client = admin(sluice.bootstrap)
    topic = unique("alter")
    create_topic(sluice.bootstrap, topic, 2)

    incremental(client, topic,
                ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)).result(30)
    entries = describe(client, topic)
    assert entries["retention.ms"].value == "3600000"
    assert ConfigSource(entries["retention.ms"].source) == ConfigSource.DYNAMIC_TOPIC_CONFIG
    assert entries["cleanup.policy"].value == "delete,compact"

    incremental(client, topic, ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SUBTRACT),
                ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)).result(30)
    entries = describe(client, topic)
    assert entries["cleanup.policy"].value == "delete"
    assert entries["retention.ms"].value == "604800000"
    assert ConfigSource(entries["retention.ms"].source) == ConfigSource.DEFAULT_CONFIG

    # validate_only checks and changes nothing.
    incremental(client, topic, ConfigEntry("retention.bytes", "1000", incremental_operation=AlterConfigOpType.SET),
                validate_only=True).result(30)
    assert describe(client, topic)["retention.bytes"].value == "-1"

    # Bad values, unknown names, append to a non-list config: INVALID_CONFIG, nothing changed.
    for entry in (ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET),
                  ConfigEntry("retention.speed", "1", incremental_operation=AlterConfigOpType.SET),
                  ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND),
                  ConfigEntry("cleanup.policy", "shred", incremental_operation=AlterConfigOpType.APPEND)):
        err = admin_error(incremental(client, topic, entry))
        assert err.code() == KafkaError.INVALID_CONFIG, (entry, err)
    err = admin_error(incremental(client, unique("missing"),
                                  ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)))
    assert err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err

    # AlterConfigs replaces the whole set: what it does not name returns to its default.
    incremental(client, topic, ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)).result(30)
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "1048576"})
    with pytest.warns(DeprecationWarning):  # deprecated by the client, still what older tools send
        client.alter_configs([res])[res].result(timeout=30)
    entries = describe(client, topic)
    assert entries["retention.bytes"].value == "1048576"
    assert entries["retention.ms"].value == "604800000"

    # A client connected afresh (another connection, maybe another shard) sees the same.
    assert describe(admin(sluice.bootstrap), topic)["retention.bytes"].value == "1048576"

    # kafka-python changes it too: incrementally by default, as a whole on request.
    from kafka.admin import ConfigResource as KpResource, ConfigResourceType, KafkaAdminClient
    kp = KafkaAdminClient(bootstrap_servers=sluice.bootstrap, request_timeout_ms=30000)
    try:
        kp.alter_configs([KpResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "60000"})])
        entries = describe(client, topic)
        assert entries["retention.ms"].value == "60000" and entries["retention.bytes"].value == "1048576"
        # Its AlterConfigs sends back every dynamic config it did not name (so nothing resets
        # by accident): the whole set arrives, and is kept.
        kp.alter_configs([KpResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "120000"})], incremental=False)
        entries = describe(client, topic)
        assert entries["retention.ms"].value == "120000" and entries["retention.bytes"].value == "1048576"
    finally:
        kp.close()

    # Broker configs are the data plane's flags.
    res = ConfigResource(ResourceType.BROKER, "1", set_config={"log.retention.hours": "1"})
    with pytest.warns(DeprecationWarning):
        assert admin_error(client.alter_configs([res])[res]).code() == KafkaError.INVALID_REQUEST


@pytest.mark.each_backend
def test_delete_records_moves_the_log_start(sluice):
    client = admin(sluice.bootstrap)
    topic = unique("delrec")
    create_topic(sluice.bootstrap, topic, 2)
    produce_in_steps(sluice.bootstrap, topic, steps=4, per_step=25, partitions=2)
    assert earliest(client, topic, 2) == {0: 0, 1: 0}

    got = delete_records(client, topic, {0: 40, 1: -1})
    assert got[0].low_watermark == 40 and got[1].low_watermark == 100, got
    assert earliest(client, topic, 2) == {0: 40, 1: 100}

    # Below the log start changes nothing; past the high watermark is refused.
    assert delete_records(client, topic, {0: 10})[0].low_watermark == 40
    err = delete_records(client, topic, {0: 101})[0]
    assert err.code() == KafkaError.OFFSET_OUT_OF_RANGE, err

    # A consumer from the beginning starts at the log start; one positioned below it is told
    # OFFSET_OUT_OF_RANGE (auto.offset.reset=error makes librdkafka report it).
    records = consume_range(sluice.bootstrap, topic, {0: 100}, start_offsets={0: 40})[0]
    assert [r.offset for r in records] == list(range(40, 100))
    c = consumer(sluice.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 10)])
        deadline = time.monotonic() + 30
        error = None
        while error is None and time.monotonic() < deadline:
            for msg in c.consume(num_messages=100, timeout=0.5):
                assert msg.error() is not None, f"read offset {msg.offset()} below the log start"
                error = msg.error()
        assert error is not None and "out of range" in error.str().lower(), error
    finally:
        c.close()
    c = consumer(sluice.bootstrap, **{"auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msg = None
        while msg is None or msg.error() is not None:
            msg = c.poll(30)
            assert msg is not None, "nothing consumed from the beginning"
        assert msg.offset() == 40
    finally:
        c.close()

    # Unknown topics and compacted topics are refused per partition (librdkafka does not send
    # a DeleteRecords for a topic it cannot find, kafka-python does when told the broker).
    from kafka import KafkaAdminClient, TopicPartition as KpPartition
    from kafka.errors import UnknownTopicOrPartitionError
    kp = KafkaAdminClient(bootstrap_servers=sluice.bootstrap, request_timeout_ms=30000)
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            kp.delete_records({KpPartition(unique("missing"), 0): 1}, partition_leader_id=1)
    finally:
        kp.close()
    compacted = unique("compacted")
    create_topic(sluice.bootstrap, compacted, 1, config={"cleanup.policy": "compact"})
    err = delete_records(client, compacted, {0: 0})[0]
    assert err.code() == KafkaError.POLICY_VIOLATION, err

    # The log start is durable: kill -9 of every process changes nothing.
    sluice.restart_all()
    assert earliest(admin(sluice.bootstrap), topic, 2) == {0: 40, 1: 100}
    produce_in_steps(sluice.bootstrap, topic, steps=1, per_step=5, partitions=2)
    records = consume_range(sluice.bootstrap, topic, {0: 105, 1: 105}, start_offsets={0: 40, 1: 100})
    assert_offsets_dense({0: records[0]}, start=40)
    assert_offsets_dense({1: records[1]}, start=100)


@pytest.mark.each_backend
def test_retention_ms_drops_what_is_older(sluice_factory):
    sluice, passes = fast_retention(sluice_factory)
    client = admin(sluice.bootstrap)
    topic = unique("ret-ms")
    create_topic(sluice.bootstrap, topic, 1)
    two_hours_ago = int(time.time() * 1000) - 2 * 3600 * 1000
    produce_in_steps(sluice.bootstrap, topic, steps=3, per_step=10, base_ts=two_hours_ago)
    produce_in_steps(sluice.bootstrap, topic, steps=2, per_step=10)
    # The default (seven days) keeps everything, however many passes run.
    start = passes()
    wait_until(lambda: passes() >= start + 3, 30, what="retention passes")
    assert earliest(client, topic, 1) == {0: 0}

    incremental(client, topic, ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)).result(30)
    wait_until(lambda: earliest(client, topic, 1) == {0: 30}, 30, interval=0.2, what="retention to drop the old records")
    records = consume_range(sluice.bootstrap, topic, {0: 50}, start_offsets={0: 30})[0]
    assert [r.offset for r in records] == list(range(30, 50))
    # Nothing newer than an hour goes, however many passes run.
    start = passes()
    wait_until(lambda: passes() >= start + 3, 30, what="more retention passes")
    assert earliest(client, topic, 1) == {0: 30}


@pytest.mark.each_backend
def test_retention_bytes_keeps_the_newest_entries(sluice_factory):
    sluice, _ = fast_retention(sluice_factory)
    client = admin(sluice.bootstrap)
    topic = unique("ret-bytes")
    create_topic(sluice.bootstrap, topic, 1, config={"retention.bytes": "1"})
    produce_in_steps(sluice.bootstrap, topic, steps=5, per_step=10)
    # Like Kafka's segments: whole index entries go while what stays still holds retention.bytes,
    # so with one byte only the newest entry (the last ten records) stays.
    wait_until(lambda: earliest(client, topic, 1) == {0: 40}, 30, interval=0.2, what="retention.bytes to apply")
    records = consume_range(sluice.bootstrap, topic, {0: 50}, start_offsets={0: 40})[0]
    assert [r.offset for r in records] == list(range(40, 50))
