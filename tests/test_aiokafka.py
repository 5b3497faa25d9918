"""End-to-end tests with aiokafka (an asyncio client with its own protocol code)."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from helpers import (CODECS, Got, assert_dense_delivery, assert_offsets_dense, assert_same_records,
                     make_records, per_partition, unique)

N_RECORDS = 5_000
PARTITIONS = 3


async def create_topic(bootstrap, topic, partitions):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, partitions, 1)])
        assert [(t, code) for t, code, *_ in resp.topic_errors] == [(topic, 0)]
        [described] = await admin.describe_topics([topic])
        assert described["error_code"] == 0
        assert sorted(p["partition"] for p in described["partitions"]) == list(range(partitions))
    finally:
        await admin.close()


async def produce(bootstrap, topic, records, **conf):
    """Sends records with explicit partition, timestamp and headers; returns [(partition, offset)]
    in send order."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **{"acks": "all", "linger_ms": 5, **conf})
    await p.start()
    try:
        futures = [await p.send(topic, value=r.value, key=r.key, partition=r.partition,
                                timestamp_ms=r.timestamp, headers=list(r.headers))
                   for r in records]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await p.stop()


def got(m):
    return Got(m.partition, m.offset, m.key, m.value, [(k, v) for k, v in m.headers or []], m.timestamp)


async def consume(bootstrap, topic, counts, timeout=120):
    """Reads [0, count) of each partition by assignment; returns {partition: [Got]}."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="none")
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in counts]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        out = {p: [] for p in counts}
        deadline = asyncio.get_running_loop().time() + timeout
        while any(len(out[p]) < n for p, n in counts.items()):
            assert asyncio.get_running_loop().time() < deadline, \
                f"consume timed out: got { {p: len(v) for p, v in out.items()} }, wanted {counts}"
            for tp, msgs in (await c.getmany(timeout_ms=500, max_records=5000)).items():
                out[tp.partition].extend(got(m) for m in msgs if m.offset < counts[tp.partition])
        return out
    finally:
        await c.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_idempotent(sluice, codec):
    async def run():
        topic = unique(f"aio-{codec}")
        await create_topic(sluice.bootstrap, topic, PARTITIONS)
        records = make_records(N_RECORDS, PARTITIONS, tag=f"aio-{codec}", null_header_values=False)
        deliveries = await produce(sluice.bootstrap, topic, records, enable_idempotence=True,
                                   compression_type=None if codec == "none" else codec)
        assert_dense_delivery(records, deliveries)

        counts = {p: len(rs) for p, rs in per_partition(records).items()}
        by_partition = await consume(sluice.bootstrap, topic, counts)
        assert_offsets_dense(by_partition)
        assert_same_records(records, by_partition)

        c = AIOKafkaConsumer(bootstrap_servers=sluice.bootstrap)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            assert await c.beginning_offsets(tps) == {tp: 0 for tp in tps}
            assert await c.end_offsets(tps) == {tp: counts[tp.partition] for tp in tps}
            parts = per_partition(records)
            probe = {TopicPartition(topic, p): parts[p][17].timestamp for p in range(PARTITIONS)}
            found = await c.offsets_for_times(probe)
            assert {tp.partition: (o.offset, o.timestamp) for tp, o in found.items()} == \
                {p: (17, parts[p][17].timestamp) for p in range(PARTITIONS)}
        finally:
            await c.stop()

    asyncio.run(run())


@pytest.mark.timeout(180)
def test_group_member_resumes_from_committed_offsets(sluice):
    """A member of a group reads everything and commits; a new member of the same group then reads
    exactly what was produced after that commit."""
    async def member(topic, group, want, timeout=60):
        c = AIOKafkaConsumer(topic, bootstrap_servers=sluice.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
        await c.start()
        try:
            seen = []
            deadline = asyncio.get_running_loop().time() + timeout
            while len(seen) < want:
                assert asyncio.get_running_loop().time() < deadline, f"read {len(seen)} of {want}"
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    seen.extend(m.value for m in msgs)
            await c.commit()
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            return seen, {tp.partition: await c.committed(tp) for tp in tps}
        finally:
            await c.stop()

    async def run():
        topic, group = unique("aio-grp"), unique("g")
        await create_topic(sluice.bootstrap, topic, PARTITIONS)
        first = make_records(600, PARTITIONS, tag="first", null_header_values=False)
        await produce(sluice.bootstrap, topic, first)
        seen, committed = await member(topic, group, len(first))
        assert sorted(seen) == sorted(r.value for r in first)
        assert committed == {p: len(rs) for p, rs in per_partition(first).items()}

        second = make_records(90, PARTITIONS, tag="second", null_header_values=False)
        await produce(sluice.bootstrap, topic, second)
        seen, committed = await member(topic, group, len(second))
        assert sorted(seen) == sorted(r.value for r in second), "the new member starts at the committed offsets"
        assert committed == {p: len(per_partition(first)[p]) + len(per_partition(second)[p])
                             for p in range(PARTITIONS)}

    asyncio.run(run())
