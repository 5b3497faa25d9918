"""End-to-end tests with kcat (Debian's kcat 1.7 with an older librdkafka, 2.0.x)."""

import json
import shutil
import subprocess
from collections import defaultdict

import pytest

from helpers import (CODECS, assert_offsets_dense, assert_same_records, consume_all, create_topic,
                     make_records, produce_records, unique)

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def kcat(bootstrap, *args, stdin=None, timeout=60):
    if KCAT is None:
        pytest.fail("kcat not installed (scripts/test.sh installs it with apt-get)", pytrace=False)
    proc = subprocess.run([KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, \
        f"kcat {' '.join(args)} exited {proc.returncode}\nstderr:\n{proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode()


def kcat_consume(bootstrap, topic):
    """All messages of a topic via `kcat -C -o beginning -e -J`, grouped by partition."""
    out = kcat(bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q")
    by_partition = defaultdict(list)
    for line in out.splitlines():
        if line.strip():
            m = json.loads(line)
            by_partition[m["partition"]].append(m)
    return by_partition


def kcat_headers(m):
    h = m.get("headers") or []
    if isinstance(h, dict):
        return list(h.items())
    return list(zip(h[0::2], h[1::2]))


def test_metadata_listing(sluice):
    topic = unique("kc-md")
    create_topic(sluice.bootstrap, topic, 3)
    md = json.loads(kcat(sluice.bootstrap, "-L", "-J"))
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, f"127.0.0.1:{sluice.kafka_port}")]
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics, f"{topic} missing from kcat -L: {sorted(topics)}"
    parts = topics[topic]["partitions"]
    assert sorted(p["partition"] for p in parts) == [0, 1, 2]
    assert all(p["leader"] == 1 for p in parts), parts

    one = json.loads(kcat(sluice.bootstrap, "-L", "-J", "-t", topic))
    assert [t["topic"] for t in one["topics"]] == [topic]


@pytest.mark.parametrize("codec", CODECS)
def test_produce_and_consume(sluice, codec):
    topic = unique(f"kc-{codec}")
    create_topic(sluice.bootstrap, topic, 3)
    n = 1000
    lines = [f"key-{i}:value-{i}-{'z' * (i % 50)}" for i in range(n)]
    kcat(sluice.bootstrap, "-P", "-t", topic, "-K:", "-H", "source=kcat", "-X", f"compression.codec={codec}",
         "-X", "acks=all", stdin=("\n".join(lines) + "\n").encode())

    got = kcat_consume(sluice.bootstrap, topic)
    produced_order = {line.split(":", 1)[0]: i for i, line in enumerate(lines)}
    seen = []
    for p, msgs in got.items():
        assert [m["offset"] for m in msgs] == list(range(len(msgs))), f"partition {p} offsets not dense"
        # kcat sends in stdin order: within a partition the order must be preserved.
        order = [produced_order[m["key"]] for m in msgs]
        assert order == sorted(order), f"partition {p} out of order"
        for m in msgs:
            assert kcat_headers(m) == [("source", "kcat")], m
            assert m["tstype"] == "create"
            seen.append(f"{m['key']}:{m['payload']}")
    assert sorted(seen) == sorted(lines)

    # The same data read by a different client version agrees with kcat's view.
    other = consume_all(sluice.bootstrap, topic, 3)
    assert {p: [(m.offset, m.key.decode(), m.value.decode()) for m in msgs] for p, msgs in other.items()
            if msgs} == \
        {p: [(m["offset"], m["key"], m["payload"]) for m in msgs] for p, msgs in got.items()}


def test_consume_records_written_by_new_client(sluice):
    """Records written by librdkafka 2.x with lz4 are readable by kcat's older librdkafka."""
    topic = unique("kc-cross")
    create_topic(sluice.bootstrap, topic, 2)
    records = [r._replace(key=f"k{i}".encode(), value=f"v{i}".encode(),
                          headers=[("idx", str(i).encode())])
               for i, r in enumerate(make_records(500, 2, tag="cross"))]
    produce_records(sluice.bootstrap, topic, records, **{"compression.type": "lz4"})
    got = kcat_consume(sluice.bootstrap, topic)
    for p in (0, 1):
        want = [r for r in records if r.partition == p]
        assert [(m["offset"], m["key"], m["payload"], m["ts"], kcat_headers(m)) for m in got[p]] == \
            [(i, r.key.decode(), r.value.decode(), r.timestamp, [("idx", r.headers[0][1].decode())])
             for i, r in enumerate(want)]
    assert_offsets_dense(consume_all(sluice.bootstrap, topic, 2))
    assert_same_records(records, consume_all(sluice.bootstrap, topic, 2))
