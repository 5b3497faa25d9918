"""Every topic is an Iceberg table: compaction turns WAL chunks into Parquet files of the topic's
table (read here by pyiceberg through the same catalog: the SQLite file, or a real Iceberg REST
catalog, and queried with DuckDB), swaps the index to them, and the data plane serves fetches of
compacted ranges from Parquet. Runs on both back ends."""

import os
import shutil
import threading

import duckdb
import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog

from cluster import free_port, wait_until
from helpers import (Rec, assert_no_duplicates, assert_offsets_dense, assert_same_records, consume_range, consumer,
                     create_topic, make_records, now_ms, produce_records, producer, unique, watermarks)
from test_bench import scrape
from test_retention import delete_records, incremental

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# The catalogs the tables can be in: the SQLite file in the control plane's data directory (the
# default), or an Iceberg REST catalog server.
CATALOGS = ["sqlite", "rest"]


def lake_cluster(sluice_factory, grace_ms=0, cp_args=(), catalog_kind="sqlite", **extra):
    """A cluster that compacts whatever waits every 200 ms into small row groups, and collects
    released WAL objects after grace_ms; /metrics on the control plane."""
    port = free_port()
    args = ["--compaction-interval-ms", "200", "--compaction-min-bytes", "1", "--compaction-row-group-bytes", "65536",
            "--gc-interval-ms", "200", "--gc-grace-ms", str(grace_ms), "--metrics-listen", f"127.0.0.1:{port}", *cp_args]
    sluice = sluice_factory(controlplane_args=args, start=False, **extra)
    if catalog_kind == "rest":
        sluice.use_rest_catalog()
    sluice.start()
    return sluice, (lambda: scrape(port))


def catalog(sluice):
    """pyiceberg's catalog of the cluster's tables: its SQL catalog on the control plane's
    SQLite file, or its REST catalog talking to the cluster's REST catalog server."""
    props = {}
    if sluice.s3 is not None:
        props.update({"s3.endpoint": sluice.s3.endpoint, "s3.access-key-id": sluice.s3.ACCESS_KEY,
                      "s3.secret-access-key": sluice.s3.SECRET_KEY, "s3.region": "us-east-1"})
    if sluice.rest_catalog is not None:
        return RestCatalog("sluice", uri=sluice.rest_catalog.uri, token=sluice.rest_catalog.TOKEN, **props)
    return SqlCatalog("sluice", uri=f"sqlite:///{sluice.cp_dir / 'catalog.db'}", **props)


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


@pytest.mark.parametrize("catalog_kind", CATALOGS)
@pytest.mark.each_backend
def test_every_codec_lands_in_the_table_and_reads_back_from_parquet(sluice_factory, catalog_kind):
    sluice, cp = lake_cluster(sluice_factory, catalog_kind=catalog_kind)
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


@pytest.mark.parametrize("catalog_kind", CATALOGS)
@pytest.mark.each_backend
def test_restarts_in_the_middle_of_compaction_leave_the_table_and_the_index_agreeing(sluice_factory, catalog_kind):
    sluice, cp = lake_cluster(sluice_factory, catalog_kind=catalog_kind)
    topic = unique("lake-kill")
    create_topic(sluice.bootstrap, topic, 2)
    records = make_records(4000, 2, "kill")
    deliveries = produce_records(sluice.bootstrap, topic, records[:2000], **{"linger.ms": 20})
    # kill -9 of the control plane while it compacts (each restart resumes what was under way),
    # then of every process (the REST catalog server's included).
    for _ in range(3):
        wait_until(lambda: cp().get("sluice_compaction_passes_total", 0) >= 1, 30, what="a compaction pass")
        sluice.kill_controlplane()
        sluice.start_controlplane()
    deliveries += produce_records(sluice.bootstrap, topic, records[2000:], **{"linger.ms": 20})
    if sluice.rest_catalog is not None:
        sluice.rest_catalog.restart()
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


@pytest.mark.parametrize("catalog_kind", CATALOGS)
@pytest.mark.each_backend
def test_rows_past_retention_leave_the_table_and_their_files_go(sluice_factory, catalog_kind):
    sluice, cp = lake_cluster(sluice_factory, catalog_kind=catalog_kind)
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

    # A second removal: the manifests that only recorded the first one's deletions leave the
    # table's manifest list (only the current snapshot's own deletions are listed).
    produce_records(sluice.bootstrap, follow, make_records(500, 1, f"{follow}-3"))
    wait_for_table(sluice, follow, 1000)
    assert delete_records(client, follow, {0: 1500})[0].low_watermark == 1500
    wait_until(lambda: min(table_rows(sluice, follow).column("offset").to_pylist()) == 1500, 60, interval=0.3,
               what="rows below 1500 gone from the table")
    table = catalog(sluice).load_table(("sluice", follow))
    current = table.current_snapshot()
    deletions_only = [m for m in current.manifests(table.io) if m.added_files_count == 0 and m.existing_files_count == 0]
    assert deletions_only and all(m.added_snapshot_id == current.snapshot_id for m in deletions_only), \
        [(m.manifest_path, m.added_snapshot_id) for m in deletions_only]


@pytest.mark.each_backend
def test_compaction_io_is_paced_to_its_limit(sluice_factory):
    """--compaction-io-bytes-per-sec: compaction's reads and writes wait their turn (the waits are
    counted), and everything still reaches the table."""
    rate = 200_000
    sluice, cp = lake_cluster(sluice_factory, cp_args=["--compaction-io-bytes-per-sec", str(rate)])
    topic = unique("lake-paced")
    create_topic(sluice.bootstrap, topic, 1)
    records = make_records(3000, 1, "paced")
    deliveries = produce_records(sluice.bootstrap, topic, records)
    assert_table_holds(wait_for_table(sluice, topic, len(records), timeout=120), records, deliveries)
    m = cp()
    moved = m["sluice_compaction_wal_bytes_total"] + m["sluice_compaction_parquet_bytes_total"]
    # Everything was produced before compaction had read a quarter of it: at least half of the
    # schedule the limit sets was spent waiting.
    print(f"compaction moved {moved / 1e6:.2f} MB at {rate / 1e6} MB/s, waited {m['sluice_compaction_throttled_ms_total']:.0f} ms")
    assert m["sluice_compaction_throttled_ms_total"] >= 0.5 * 1000 * moved / rate, m


def latest_by_key(records, deliveries):
    """{key: (offset, value)} of the last record of each key."""
    out = {}
    for r, (_, o) in zip(records, deliveries):
        out[r.key] = (o, r.value)
    return out


def read_all(sluice, topic):
    """Every record of partition 0 from offset 0 to the high watermark, as a consumer reads it."""
    _, high = watermarks(sluice.bootstrap, topic, 1)[0]
    return consume_range(sluice.bootstrap, topic, {0: high})[0]


def assert_compacted_view(got, want):
    """What Kafka promises a consumer of a compacted topic: offsets in order, every latest record
    (want: (key, offset, value)), and each key's last record the latest (a data plane may still
    serve superseded records it had cached)."""
    offsets = [m.offset for m in got]
    assert offsets == sorted(set(offsets)), "offsets in order, each once"
    seen = {(m.key, m.offset, m.value) for m in got}
    assert set(want) <= seen, f"missing latest records: {sorted(set(want) - seen)[:5]}"
    last = {m.key: (m.key, m.offset, m.value) for m in got}
    assert {k: w for k, w in last.items() if w[2] is not None} == {w[0]: w for w in want if w[2] is not None}


@pytest.mark.parametrize("catalog_kind", CATALOGS)
@pytest.mark.each_backend
def test_key_compaction_keeps_the_latest_record_of_each_key_and_tombstones_go(sluice_factory, catalog_kind):
    sluice, cp = lake_cluster(sluice_factory, catalog_kind=catalog_kind)
    topic = unique("lake-keys")
    create_topic(sluice.bootstrap, topic, 1, config={"cleanup.policy": "compact", "delete.retention.ms": "3600000"})
    ts = now_ms()

    def rec(k, v):
        return Rec(0, f"key-{k}".encode(), None if v is None else f"key-{k}-v{v}".encode(), [], ts)
    # 50 keys, four versions each, then tombstones for the first ten (offsets 0..209).
    records = [rec(k, v) for v in range(4) for k in range(50)] + [rec(k, None) for k in range(10)]
    deliveries = produce_records(sluice.bootstrap, topic, records, **{"linger.ms": 20})
    latest = latest_by_key(records, deliveries)

    def table_is(want):
        rows = table_rows(sluice, topic)
        return rows is not None and sorted((r["key"], r["offset"], r["value"]) for r in rows.to_pylist()) == want
    want = sorted((k, o, v) for k, (o, v) in latest.items())
    wait_until(lambda: table_is(want), 90, interval=0.3, what="only the latest record of each key in the table")
    assert_compacted_view(read_all(sluice, topic), want)
    files_before = table_files(sluice, topic)
    assert len(files_before) == 1, f"a rewrite replaces the partition's files: {files_before}"

    # Tombstones go once delete.retention.ms has passed (checked when the partition is next
    # compacted); newer versions of ten keys supersede older ones.
    client = AdminClient({"bootstrap.servers": sluice.bootstrap})
    incremental(client, topic, ConfigEntry("delete.retention.ms", "0", incremental_operation=AlterConfigOpType.SET)).result(30)
    more = [rec(k, 5) for k in range(10, 20)]
    more_deliveries = produce_records(sluice.bootstrap, topic, more)
    for r, (_, o) in zip(more, more_deliveries):
        latest[r.key] = (o, r.value)
    want = sorted((k, o, v) for k, (o, v) in latest.items() if v is not None)
    wait_until(lambda: table_is(want), 90, interval=0.3, what="tombstones gone from the table")
    assert_compacted_view(read_all(sluice, topic), want)
    # The replaced files leave the object store; the table's file stays.
    wait_until(lambda: not any(file_exists(sluice, f) for f in files_before), 60, interval=0.3,
               what="replaced files deleted from the object store")
    assert all(file_exists(sluice, f) for f in table_files(sluice, topic))
    # A consumer started afterwards, with nothing cached, reads exactly the compacted records,
    # across the gaps, from Parquet.
    wait_all_wal_collected(cp)
    sluice.kill_dataplane()
    sluice.start_dataplane()
    got = read_all(sluice, topic)
    assert [(m.key, m.offset, m.value) for m in got] == sorted(want, key=lambda w: w[1])
    assert got[-1].offset == 219


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_a_compacted_topic_refuses_records_without_a_key(sluice, codec):
    """As Kafka: a record without a key cannot go to a key-compacted topic (INVALID_RECORD, the
    whole batch refused), compressed or not; a topic made compacted at runtime refuses them from
    then on."""
    compacted, plain = unique("keys-only"), unique("keys-later")
    create_topic(sluice.bootstrap, compacted, 1, config={"cleanup.policy": "compact"})
    create_topic(sluice.bootstrap, plain, 1)
    p = producer(sluice.bootstrap, **{"compression.type": codec, "linger.ms": 0})

    def send(topic, key):
        out = []
        p.produce(topic, key=key, value=b"value", partition=0, on_delivery=lambda err, msg: out.append(err))
        assert p.flush(30) == 0
        return out[0]

    assert send(compacted, b"k") is None
    err = send(compacted, None)
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    assert send(plain, None) is None
    client = AdminClient({"bootstrap.servers": sluice.bootstrap})
    incremental(client, plain, ConfigEntry("cleanup.policy", "compact,delete",
                                           incremental_operation=AlterConfigOpType.SET)).result(30)
    err = send(plain, None)
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    assert send(plain, b"k") is None
    # Only the accepted records are there.
    assert [(m.offset, m.key) for m in read_all(sluice, compacted)] == [(0, b"k")]
    assert [(m.offset, m.key) for m in read_all(sluice, plain)] == [(0, None), (1, b"k")]


def put_object(sluice, key, data):
    """Writes an object straight into the data planes' object store (over S3 with pyarrow's own
    S3 client, or as a file of the local store's directory), as a process that dies before it
    commits leaves one."""
    if sluice.s3 is not None:
        from pyarrow import fs
        s3 = fs.S3FileSystem(access_key=sluice.s3.ACCESS_KEY, secret_key=sluice.s3.SECRET_KEY, region="us-east-1",
                             endpoint_override=sluice.s3.endpoint, scheme="http")
        with s3.open_output_stream(f"{sluice.s3.BUCKET}/{sluice.s3_prefix}/{key}") as out:
            out.write(data)
        return f"s3://{sluice.s3.BUCKET}/{sluice.s3_prefix}/{key}"
    local = "wal/" + key if key.endswith(".wal") else key
    path = sluice.dp_dir / "objects" / local
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"file://{path}"


@pytest.mark.parametrize("catalog_kind", CATALOGS)
@pytest.mark.each_backend
def test_objects_written_but_never_committed_are_swept(sluice_factory, catalog_kind):
    sluice, cp = lake_cluster(sluice_factory, cp_args=["--orphan-grace-ms", "1500"], catalog_kind=catalog_kind)
    topic = unique("lake-orphans")
    create_topic(sluice.bootstrap, topic, 1)
    records = make_records(600, 1, "orphans")
    produce_records(sluice.bootstrap, topic, records[:300])
    wait_for_table(sluice, topic, 300)
    # What a data plane killed between put and commit leaves (a WAL object), and a control plane
    # killed while compaction wrote a file (a Parquet file in the table's directory).
    files = table_files(sluice, topic)
    table_dir = files[0].split("/data/", 1)[0]
    table_key = table_dir[table_dir.index("tables/"):]
    orphans = [put_object(sluice, "00000000000000000000000000abcdef.wal", b"uncommitted" * 100),
               put_object(sluice, f"{table_key}/data/partition=0/00000-0-orphan.parquet", b"PAR1 never committed")]
    produce_records(sluice.bootstrap, topic, records[300:])
    wait_until(lambda: not any(file_exists(sluice, o) for o in orphans), 60, interval=0.3,
               what="orphans deleted from the object store")
    assert cp()["sluice_orphans_swept_total"] >= 2
    # Nothing committed went with them.
    assert all(file_exists(sluice, f) for f in table_files(sluice, topic))
    got = consume_range(sluice.bootstrap, topic, {0: 600})[0]
    assert_same_records(records, {0: got})
    assert wait_for_table(sluice, topic, 600).num_rows == 600

    # Once the topic is deleted, every file of its table goes: data files through the garbage
    # collector, the Iceberg metadata (no table reaches it) through the sweep.
    assert files_under(sluice, table_key)
    client = AdminClient({"bootstrap.servers": sluice.bootstrap})
    client.delete_topics([topic])[topic].result(30)
    wait_until(lambda: not files_under(sluice, table_key), 60, interval=0.3, what="every file of the table deleted")
    assert cp()["sluice_table_metadata_files_deleted_total"] > 0


def files_under(sluice, prefix):
    """Keys of the objects under prefix in the data planes' object store."""
    if sluice.s3 is not None:
        return sluice.s3.objects(f"{sluice.s3_prefix}/{prefix}/")
    root = sluice.dp_dir / "objects" / prefix
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


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
