"""The data plane on a real S3-compatible server (s3s-fs, SigV4 checked): WAL objects go to the
bucket and nowhere else, a data plane whose disk is wiped serves everything back from S3, and a
bad object-store configuration is one clear line. (The scenarios every back end must pass are
marked `each_backend` in the other modules.)"""

import shutil
import signal

import pytest

from cluster import free_port
from helpers import (assert_dense_delivery, assert_offsets_dense, assert_same_records, consume_range,
                     create_topic, make_records, per_partition, produce_records, unique)
from test_startup import assert_one_line_error, role_command, run_expecting_failure
from test_startup import controlplane_addr  # noqa: F401 - a fixture role_command asks for

PARTITIONS = 3


@pytest.mark.parametrize("backend", ["s3+redb"], indirect=True)
def test_objects_live_in_the_bucket_and_nowhere_else(sluice_factory, s3_server):
    sluice = sluice_factory(cores=2)
    topic = unique("s3")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    records = make_records(4000, PARTITIONS, tag="s3", base_ts=None)
    assert_dense_delivery(records, produce_records(sluice.bootstrap, topic, records, **{"compression.type": "zstd"}))

    objects = s3_server.objects(sluice.s3_prefix + "/")
    assert objects and all(o.endswith(".wal") for o in objects), objects
    local = [p for p in sluice.dp_dir.rglob("*") if p.is_file()]
    assert local == [], f"the data plane wrote to its disk on S3: {local}"

    # A data plane that lost its disk serves every record back from the bucket.
    sluice.kill_dataplane(signal.SIGKILL)
    shutil.rmtree(sluice.dp_dir)
    sluice.dp_dir.mkdir()
    sluice.start_dataplane()
    counts = {p: len(rs) for p, rs in per_partition(records).items()}
    got = consume_range(sluice.bootstrap, topic, counts)
    assert_offsets_dense(got)
    assert_same_records(records, got)


def s3_args(endpoint, bucket, extra=()):
    return ["--object-store", f"s3://{bucket}/startup", "--s3-endpoint", endpoint, *extra]


@pytest.mark.parametrize("case", ["scheme", "no-endpoint", "unreachable", "credentials", "bucket", "https"])
def test_bad_object_store_is_one_line(request, tmp_path, s3_server, monkeypatch, case):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.SECRET_KEY)
    extra, mentions = {
        "scheme": (["--object-store", "gcs://bucket"], ["unknown scheme"]),
        "no-endpoint": (["--object-store", "s3://bucket"], ["--s3-endpoint"]),
        "unreachable": (s3_args(f"http://127.0.0.1:{free_port()}", s3_server.BUCKET, ["--s3-max-attempts", "2"]),
                        ["refused"]),
        "credentials": (s3_args(s3_server.endpoint, s3_server.BUCKET), ["403"]),
        "bucket": (s3_args(s3_server.endpoint, "no-such-bucket"), ["404", "NoSuchBucket"]),
        "https": (s3_args("https://127.0.0.1:1", s3_server.BUCKET), ["https"]),
    }[case]
    if case == "credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    cmd = role_command("dataplane", request, tmp_path, f"127.0.0.1:{free_port()}", extra)
    line = assert_one_line_error(run_expecting_failure(cmd), *mentions)
    assert "not-the-secret" not in line and s3_server.SECRET_KEY not in line, "the secret leaked into the log"
