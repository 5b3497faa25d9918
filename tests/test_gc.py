"""Garbage collection of WAL objects: an object leaves the object store once no index entry
refers to it (records below the log start, a deleted topic), and never while one does. Runs on
both back ends, reading the object store from outside Sluice (the S3 server's directory, the
data directory's files)."""

import pytest

from cluster import free_port, wait_until
from helpers import (admin, assert_offsets_dense, consume_range, create_topic, producer, unique)
from test_bench import scrape
from test_retention import delete_records

# Objects written into a segment that is still being filled keep their file (only their blocks
# go), so on the local store the test measures allocated bytes, not files.
SEGMENT_BYTES = 64 << 20


def gc_cluster(sluice_factory):
    """A one-core cluster whose trimmer runs every 200 ms with no grace period, with /metrics on
    both planes."""
    cp, dp = free_port(), free_port()
    sluice = sluice_factory(
        controlplane_args=["--gc-interval-ms", "200", "--gc-grace-ms", "0", "--metrics-listen", f"127.0.0.1:{cp}"],
        dataplane_args=["--metrics-listen", f"127.0.0.1:{dp}"])
    return sluice, (lambda: scrape(cp)), (lambda: scrape(dp))


def stored(sluice):
    """(keys of stored objects, bytes they take) of the cluster's object store."""
    if sluice.s3 is not None:
        base = sluice.s3.root / sluice.s3.BUCKET
        keys = sluice.s3.objects(sluice.s3_prefix)
        return keys, sum((base / k).stat().st_size for k in keys)
    root = sluice.dp_dir / "objects"
    files = [p for d in ("wal", "seg") for p in (root / d).iterdir()]
    return sorted(str(p.relative_to(root)) for p in files), sum(p.stat().st_blocks * 512 for p in files)


def produce_to_both(bootstrap, topics, rounds, per_round):
    """Rounds of records for every topic in one flush each, so WAL objects hold chunks of all."""
    p = producer(bootstrap, **{"linger.ms": 20})
    for r in range(rounds):
        for i in range(per_round):
            for t in topics:
                p.produce(t, value=f"{t}-{r}-{i}-".encode() + b"v" * 2000, partition=0)
        assert p.flush(60) == 0


def two_topics(sluice, rounds, per_round):
    """Topics `keep` and `drop` whose records share WAL objects; returns (admin, keep, drop)."""
    client = admin(sluice.bootstrap)
    keep, drop = unique("keep"), unique("drop")
    create_topic(sluice.bootstrap, keep, 1)
    create_topic(sluice.bootstrap, drop, 1)
    produce_to_both(sluice.bootstrap, [keep, drop], rounds, per_round)
    return client, keep, drop


def assert_reads_back_cold(sluice, topic, rounds, per_round):
    """Every record of `topic`, in order, read from the object store (the data plane restarts
    first, so its cache holds nothing)."""
    sluice.kill_dataplane()
    sluice.start_dataplane()
    got = consume_range(sluice.bootstrap, topic, {0: rounds * per_round})[0]
    assert_offsets_dense({0: got})
    for j, m in enumerate(got):
        assert m.value.startswith(f"{topic}-{j // per_round}-{j % per_round}-".encode()), (j, m.value[:40])


@pytest.mark.each_backend
def test_objects_go_once_no_entry_refers_to_them(sluice_factory):
    sluice, cp, dp = gc_cluster(sluice_factory)
    rounds, per_round = 8, 400
    client, keep, drop = two_topics(sluice, rounds, per_round)
    written = dp()["sluice_wal_object_bytes_total"]
    _, before = stored(sluice)  # before anything is collected
    total = rounds * per_round

    # drop's records go: objects that also hold keep's stay, and keep reads back whole from the
    # object store (the data plane restarts first, so its cache holds nothing).
    assert delete_records(client, drop, {0: -1})[0].low_watermark == total
    def collected():
        m = cp()
        return m.get("sluice_index_entries_trimmed_total", 0) > 0 and \
            m.get("sluice_wal_objects_deleted_total", 0) >= m.get("sluice_wal_objects_released_total", 0)

    wait_until(collected, 30, interval=0.2, what="drop's entries to be trimmed and its own objects deleted")
    assert_reads_back_cold(sluice, keep, rounds, per_round)

    # keep is deleted: every object it held goes.
    client.delete_topics([keep])[keep].result(30)

    def gone():
        keys, size = stored(sluice)
        if sluice.s3 is not None:
            return not keys
        # Files of their own go; objects in segments give their blocks back.
        return not [k for k in keys if k.startswith("wal/")] and before - size >= 0.9 * written

    try:
        wait_until(gone, 60, interval=0.2, what="the objects to leave the store")
    except TimeoutError:
        raise AssertionError(f"left: {stored(sluice)} of {before} bytes before, {written} written; {cp()}")
    m = cp()
    assert m["sluice_wal_objects_deleted_total"] >= m["sluice_wal_objects_released_total"] > 0, m
    print(f"written {written / 1e6:.1f} MB in {m['sluice_wal_objects_released_total']:.0f} objects, "
          f"store before/after collection: {before / 1e6:.1f} / {stored(sluice)[1] / 1e6:.1f} MB")

    # Produce still works afterwards (nothing the writer uses was taken away).
    fresh = unique("fresh")
    create_topic(sluice.bootstrap, fresh, 1)
    produce_to_both(sluice.bootstrap, [fresh], 1, 10)
    assert len(consume_range(sluice.bootstrap, fresh, {0: 10})[0]) == 10


@pytest.mark.each_backend
def test_kill_9_during_collection_loses_nothing_and_collection_resumes(sluice_factory):
    """kill -9 of the control plane (three times) and of the data plane while the trimmer and
    the deletions run: the topic that stays reads back whole from the object store, and once
    the last topic goes every object is collected all the same."""
    sluice, cp, _ = gc_cluster(sluice_factory)
    rounds, per_round = 6, 300
    client, keep, drop = two_topics(sluice, rounds, per_round)
    total = rounds * per_round

    assert delete_records(client, drop, {0: -1})[0].low_watermark == total
    for _ in range(3):
        # A control plane trims as soon as it leads (then every 200 ms): killed right after the
        # log start moved, then right after each restart is ready, it dies in or around a pass.
        sluice.kill_controlplane()
        sluice.start_controlplane()
    assert_reads_back_cold(sluice, keep, rounds, per_round)

    _, before = stored(sluice)
    client.delete_topics([keep])[keep].result(30)
    sluice.kill_controlplane()
    sluice.start_controlplane()

    def gone():
        keys, size = stored(sluice)
        if sluice.s3 is not None:
            return not keys
        return not [k for k in keys if k.startswith("wal/")] and size < before

    try:
        wait_until(gone, 60, interval=0.2, what="the objects to leave the store")
    except TimeoutError:
        raise AssertionError(f"left: {stored(sluice)} of {before} bytes before; {cp()}")
