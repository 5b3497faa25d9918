"""The control plane on a real etcd: its metadata lives in etcd and nowhere else (a control plane
whose disk is wiped comes back with every topic, offset and committed group offset), and a bad
metadata configuration is one clear line."""

import signal

import pytest

from cluster import EtcdServer, free_port
from helpers import (assert_dense_delivery, assert_offsets_dense, assert_same_records, consume_range,
                     create_topic, make_records, per_partition, produce_records, topic_names, unique)
from test_startup import assert_one_line_error, role_command, run_expecting_failure
from test_startup import controlplane_addr  # noqa: F401 - a fixture role_command asks for
from test_crash import PARTITIONS as CRASH_PARTITIONS
from test_crash import ContinuousProducer, assert_acknowledged_exactly_once, wipe

PARTITIONS = 2


@pytest.mark.parametrize("backend", ["local+etcd"], indirect=True)
def test_metadata_lives_in_etcd_and_nowhere_else(sluice):
    topic = unique("etcd")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    records = make_records(2000, PARTITIONS, tag="etcd")
    assert_dense_delivery(records, produce_records(sluice.bootstrap, topic, records))
    # Only the Iceberg catalog's SQLite file (for pyiceberg), which the control plane rebuilds
    # from etcd's record of each table when it is lost (below).
    local = [p for p in sluice.cp_dir.rglob("*") if p.is_file() and not p.name.startswith("catalog.db")]
    assert local == [], f"the control plane wrote to its disk on etcd: {local}"

    sluice.kill_dataplane(signal.SIGKILL)
    sluice.kill_controlplane(signal.SIGKILL)
    wipe(sluice.cp_dir)
    sluice.start()
    assert topic in topic_names(sluice.bootstrap)
    more = make_records(200, PARTITIONS, tag="etcd2")
    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    assert_dense_delivery(more, produce_records(sluice.bootstrap, topic, more), start=counts)
    total = {p: len(rs) for p, rs in per_partition(records + more).items()}
    got = consume_range(sluice.bootstrap, topic, total)
    assert_offsets_dense(got)
    assert_same_records(records + more, got)


@pytest.mark.parametrize("metadata,mentions", [
    ("zookeeper://127.0.0.1:2181", ["unknown scheme"]),
    ("etcd://", ["HOST:PORT"]),
    ("etcd://127.0.0.1:{port}", ["cannot reach etcd"]),
], ids=["scheme", "no-endpoint", "etcd-down"])
def test_bad_metadata_store_is_one_line(request, tmp_path, metadata, mentions):
    cmd = role_command("controlplane", request, tmp_path, f"127.0.0.1:{free_port()}",
                       ["--metadata", metadata.format(port=free_port())])
    assert_one_line_error(run_expecting_failure(cmd), *mentions)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["s3+etcd"], indirect=True)
def test_kill9_of_etcd_under_load_loses_nothing(sluice_factory, tmp_path):
    """etcd killed with -9 under acks=all load and restarted on its data: produce fails with
    retriable errors while it is gone and goes on by itself; no Sluice process gives up."""
    (tmp_path / "own-etcd").mkdir()
    etcd = EtcdServer(tmp_path / "own-etcd" / "data").start()
    try:
        sluice = sluice_factory(etcd=etcd)
        topic = unique("etcd-kill")
        create_topic(sluice.bootstrap, topic, CRASH_PARTITIONS)
        prod = ContinuousProducer(sluice.bootstrap, topic, prefix="etcd-kill")
        prod.start()
        try:
            for round_no in range(2):
                prod.wait_acked(prod.acked_count() + 3000, 90, f"before etcd dies (#{round_no + 1})")
                etcd.proc.kill()
                etcd.proc.wait(timeout=10)
                prod.wait_attempted(1000, 30)
                etcd.start()
            prod.wait_acked(prod.acked_count() + 3000, 120, "after etcd came back")
        finally:
            prod.finish()
        sluice.check_alive()
        assert_acknowledged_exactly_once(sluice.bootstrap, topic, prod, "etcd-kill")
    finally:
        etcd.stop()
