"""Every topic is an Iceberg table: compaction turns WAL chunks into Parquet files of the topic's
table (read here by pyiceberg through the same SQLite catalog, and queried with DuckDB), swaps
the index to them, and the data plane serves fetches of compacted ranges from Parquet. Runs on
both back ends."""

import os
import shutil
import threading

import duckdb
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from pyiceberg.catalog.sql import SqlCatalog

from cluster import free_port, wait_until
from helpers import (assert_no_duplicates, assert_offsets_dense, assert_same_records, consume_range, consumer,
                     create_topic, make_records, produce_records, producer, unique)
from test_bench import scrape
from test_retention import delete_records

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def lake_cluster(sluice_factory, grace_ms=0, **extra):
    """A cluster that compacts whatever waits every 200 ms into small row groups, and collects
    released WAL objects after grace_ms; /metrics on the control plane."""
    port = free_port()
    args = ["--compaction-interval-ms", "200", "--compaction-min-bytes", "1", "--compaction-row-group-bytes", "65536",
            "--gc-interval-ms", "200", "--gc-grace-ms", str(grace_ms), "--metrics-listen", f"127.0.0.1:{port}"]
    sluice = sluice_factory(controlplane_args=args, **extra)
    return sluice, (lambda: scrape(port))


def catalog(sluice):
    """pyiceberg's SQL catalog on the control plane's SQLite file."""
    props = {"uri": f"sqlite:///{sluice.cp_dir / 'catalog.db'}"}
    if sluice.s3 is not None:
        props.update({"s3.endpoint": sluice.s3.endpoint, "s3.access-key-id": sluice.s3.ACCESS_KEY,
                      "s3.secret-access-key": sluice.s3.SECRET_KEY, "s3.region": "us-east-1"})
    return SqlCatalog("sluice", **props)


def table_rows(sluice, topic):
    """The topic's table as a pyarrow table (empty when it has no snapshot yet)."""
    cat = catalog(sluice)
    if not cat.table_exists(("sluice", topic)):
        return None
    return cat.load_table(("sluice", topic)).scan().to_arrow()


def wait_for_table(sluice, topic, count, timeout=90):
    def full():
        t = table_rows(sluice, topic)
        return t is not None and t.num_rows >= count
    wait_until(full, timeout, interval=0.3, what=f"{count} rows in the table of {topic}")
    return table_rows(sluice, topic)


def wait_all_wal_collected(cp):
    """Every committed WAL object released and deleted: reads can only come from Parquet."""
    def done():
        m = cp()
        return m.get("sluice_wal_commits_total", 0) > 0 and \
            m.get("sluice_wal_objects_deleted_total", 0) >= m["sluice_wal_commits_total"]
    wait_until(done, 90, interval=0.3, what="every WAL object deleted")


def assert_table_holds(table, records, deliveries):
    """The table's rows are the produced records, at their delivered partitions and offsets."""
    rows = sorted(table.to_pylist(), key=lambda r: (r["partition"], r["offset"]))
    want = sorted(((p, o), r) for r, (p, o) in zip(records, deliveries))
    assert len(rows) == len(want), f"table has {len(rows)} rows, {len(want)} records were produced"
    for row, ((p, o), r) in zip(rows, want):
        got = (row["partition"], row["offset"], row["key"], row["value"],
               [(h["key"], h["value"]) for h in row["headers"] or []],
               round(row["timestamp"].timestamp() * 1000), row["timestamp_type"])
        assert got == (p, o, r.key, r.value, list(r.headers), r.timestamp, 0), f"row {p}/{o}:\n {got!r:.300}\n {r!r:.300}"


@pytest.mark.each_backend
def test_every_codec_lands_in_the_table_and_reads_back_from_parquet(sluice_factory):
    sluice, cp = lake_cluster(sluice_factory)
    topics = {}
    for codec in CODECS:
        topic = unique(f"lake-{codec}")
        create_topic(sluice.bootstrap, topic, 2)
        records = make_records(1500, 2, codec)
        deliveries = produce_records(sluice.bootstrap, topic, records, **{"compression.type": codec, "linger.ms": 20})
        topics[topic] = (records, deliveries)
    for topic, (records, deliveries) in topics.items():
        assert_table_holds(wait_for_table(sluice, topic, len(records)), records, deliveries)

    # DuckDB answers a query over a table (through pyarrow).
    topic = next(iter(topics))
    arrow_table = table_rows(sluice, topic)
    per_partition = duckdb.sql("select partition, count(*), min(\"offset\"), max(\"offset\") "
                               "from arrow_table group by partition order by partition").fetchall()
    assert per_partition == [(0, 750, 0, 749), (1, 750, 0, 749)]

    # With every WAL object gone, a consumer reads everything from Parquet, cold.
    wait_all_wal_collected(cp)
    sluice.kill_dataplane()
    sluice.start_dataplane()
    m = cp()
    print(f"compaction: {m['sluice_compaction_files_total']:.0f} files, {m['sluice_compaction_rows_total']:.0f} rows, "
          f"WAL {m['sluice_compaction_wal_bytes_total'] / 1e6:.2f} MB -> Parquet {m['sluice_compaction_parquet_bytes_total'] / 1e6:.2f} MB")
    for topic, (records, _) in topics.items():
        got = consume_range(sluice.bootstrap, topic, {0: 750, 1: 750})
        assert_offsets_dense(got)
        assert_same_records(records, got)

    # ListOffsets by timestamp finds records inside compacted ranges.
    records, deliveries = topics[topic]
    c = consumer(sluice.bootstrap)
    try:
        i = next(i for i, (p, o) in enumerate(deliveries) if p == 1 and o == 600)
        found = c.offsets_for_times([TopicPartition(topic, 1, records[i].timestamp)], timeout=15)
        assert found[0].offset == 600
    finally:
        c.close()


@pytest.mark.each_backend
def test_a_consumer_reading_during_compaction_sees_every_offset_once(sluice_factory):
    # A WAL object stays a while after its entries were swapped (the grace period), so a fetch
    # that looked them up just before still reads it.
    sluice, cp = lake_cluster(sluice_factory, grace_ms=3000)
    topic = unique("lake-live")
    create_topic(sluice.bootstrap, topic, 1)
    total = 6000
    stop = threading.Event()
    produced = []

    def produce():
        p = producer(sluice.bootstrap, **{"linger.ms": 5})
        for i in range(total):
            p.produce(topic, value=f"live-{i}-".encode() + b"x" * 300, partition=0)
            if i % 200 == 199:
                p.flush(30)
                # Spread the records over many compaction passes: the next round waits for one.
                passes = cp()["sluice_compaction_passes_total"]
                wait_until(lambda: cp()["sluice_compaction_passes_total"] > passes, 30, what="a compaction pass")
        assert p.flush(60) == 0
        produced.append(total)

    t = threading.Thread(target=produce)
    t.start()
    # A consumer follows the producer while compaction swaps what it reads under it.
    got = consume_range(sluice.bootstrap, topic, {0: total}, timeout=180)[0]
    t.join()
    assert produced == [total]
    assert_offsets_dense({0: got})
    assert [m.value.split(b"-")[1] for m in got] == [str(i).encode() for i in range(total)]
    assert cp()["sluice_compaction_files_total"] >= 2, "compaction ran while the consumer read"

    # Afterwards, everything reads back once from Parquet, and the table holds each offset once.
    table = wait_for_table(sluice, topic, total)
    offsets = table.column("offset").to_pylist()
    assert_no_duplicates(offsets, "offset")
    assert sorted(offsets) == list(range(total))
    wait_all_wal_collected(cp)
    again = consume_range(sluice.bootstrap, topic, {0: total})[0]
    assert [m.value for m in again] == [m.value for m in got]


@pytest.mark.each_backend
def test_restarts_in_the_middle_of_compaction_leave_the_table_and_the_index_agreeing(sluice_factory):
    sluice, cp = lake_cluster(sluice_factory)
    topic = unique("lake-kill")
    create_topic(sluice.bootstrap, topic, 2)
    records = make_records(4000, 2, "kill")
    deliveries = produce_records(sluice.bootstrap, topic, records[:2000], **{"linger.ms": 20})
    # kill -9 of the control plane while it compacts (each restart resumes what was under way),
    # then of every process.
    for _ in range(3):
        wait_until(lambda: cp().get("sluice_compaction_passes_total", 0) >= 1, 30, what="a compaction pass")
        sluice.kill_controlplane()
        sluice.start_controlplane()
    deliveries += produce_records(sluice.bootstrap, topic, records[2000:], **{"linger.ms": 20})
    sluice.restart_all()
    assert_table_holds(wait_for_table(sluice, topic, len(records)), records, deliveries)
    got = consume_range(sluice.bootstrap, topic, {0: 2000, 1: 2000})
    assert_offsets_dense(got)
    assert_same_records(records, got)


def table_files(sluice, topic):
    """Paths of the data files the topic's table holds now."""
    table = catalog(sluice).load_table(("sluice", topic))
    return sorted(task.file.file_path for task in table.scan().plan_files())


def file_exists(sluice, path):
    if sluice.s3 is not None:
        key = path.split(f"s3://{sluice.s3.BUCKET}/", 1)[1]
        return key in sluice.s3.objects(key)
    return os.path.exists(path.removeprefix("file://"))


@pytest.mark.each_backend
def test_rows_past_retention_leave_the_table_and_their_files_go(sluice_factory):
    sluice, cp = lake_cluster(sluice_factory)
    follow, keep = unique("lake-follow"), unique("lake-keep")
    create_topic(sluice.bootstrap, follow, 1)
    create_topic(sluice.bootstrap, keep, 1, config={"sluice.table.keep": "true"})
    # Three rounds, each compacted before the next is produced: no file holds two rounds.
    for r in range(3):
        for topic in (follow, keep):
            produce_records(sluice.bootstrap, topic, make_records(500, 1, f"{topic}-{r}"))
        for topic in (follow, keep):
            wait_for_table(sluice, topic, 500 * (r + 1))
    before = table_files(sluice, follow)
    client = AdminClient({"bootstrap.servers": sluice.bootstrap})
    for topic in (follow, keep):
        assert delete_records(client, topic, {0: 1000})[0].low_watermark == 1000

    # The files of the first two rounds leave follow's table and then the object store; keep's
    # table keeps every row.
    def only_last_round():
        rows = table_rows(sluice, follow)
        return rows.num_rows == 500 and min(rows.column("offset").to_pylist()) == 1000
    wait_until(only_last_round, 60, interval=0.3, what="rows below 1000 gone from the table")
    gone = sorted(set(before) - set(table_files(sluice, follow)))
    assert gone, "files left the table"
    wait_until(lambda: not any(file_exists(sluice, f) for f in gone), 60, interval=0.3,
               what="the removed files deleted from the object store")
    assert all(file_exists(sluice, f) for f in table_files(sluice, follow)), "files the table holds stay"
    assert table_rows(sluice, keep).num_rows == 1500
    assert all(file_exists(sluice, f) for f in table_files(sluice, keep))
    got = consume_range(sluice.bootstrap, follow, {0: 1500}, start_offsets={0: 1000})[0]
    assert [m.offset for m in got] == list(range(1000, 1500))


@pytest.mark.parametrize("backend", ["s3+etcd"], indirect=True)
def test_a_control_plane_that_lost_its_disk_continues_the_same_table(sluice_factory):
    """etcd records each table's current metadata file: a control plane starting on an empty
    data directory (a standby taking over, a replaced machine) puts the table back into its
    catalog and goes on appending to it."""
    sluice, _ = lake_cluster(sluice_factory)
    topic = unique("lake-adopt")
    create_topic(sluice.bootstrap, topic, 1)
    records = make_records(1000, 1, "adopt")
    deliveries = produce_records(sluice.bootstrap, topic, records[:500])
    wait_for_table(sluice, topic, 500)
    sluice.kill_controlplane()
    shutil.rmtree(sluice.cp_dir)
    sluice.cp_dir.mkdir()
    sluice.start_controlplane()
    wait_for_table(sluice, topic, 500)
    deliveries += produce_records(sluice.bootstrap, topic, records[500:])
    assert_table_holds(wait_for_table(sluice, topic, 1000), records, deliveries)
