"""Fetch size limits at batch granularity: the request-wide `max_bytes` is shared between the
partitions in request order, a partition taking whole batches while they fit (at least one for
the first partition, so a consumer always makes progress)."""

import kafka_wire as kw
from helpers import create_topic, now_ms, unique


def test_request_max_bytes_is_shared_between_partitions_batch_by_batch(sluice):
    topic = unique("fetch-limits")
    create_topic(sluice.bootstrap, topic, 2)
    value = b"v" * 10_000
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        version = kw.pick_produce_version(conn)
        for p in (0, 1):
            # Eight ~10 KB batches in one produce: they lie back to back in one WAL object.
            batches = b"".join(kw.record_batch([(None, value, [], now_ms())]) for _ in range(8))
            answer = kw.produce(conn, version, topic, p, batches)
            assert answer["error_code"] == kw.NONE
        one = len(kw.record_batch([(None, value, [], now_ms())]))

        # Room for all of partition 0 and half of partition 1.
        got = kw.fetch_v4(conn, topic, [0, 1], max_bytes=12 * one)
        sizes = {p: kw.batch_sizes(got[p][2]) for p in (0, 1)}
        assert [got[p][0] for p in (0, 1)] == [kw.NONE, kw.NONE]
        assert len(sizes[0]) == 8, sizes
        assert len(sizes[1]) == 4, f"partition 1 gets the whole batches that still fit: {sizes}"
        assert all(len(got[p][2]) == sum(sizes[p]) for p in (0, 1)), "only whole batches"

        # A budget smaller than one batch still returns the first partition's first batch.
        got = kw.fetch_v4(conn, topic, [1, 0], max_bytes=100)
        assert len(kw.batch_sizes(got[1][2])) == 1
        assert got[0][2] == b""
