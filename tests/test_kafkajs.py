"""End-to-end test with kafkajs (a pure JavaScript client with its own protocol code), run by
Node.js from tests/kafkajs/client.js. scripts/test.sh installs Node.js and kafkajs."""

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from helpers import unique

CLIENT = Path(__file__).parent / "kafkajs" / "client.js"
NODE_MODULES = os.environ.get("SLUICE_NODE_MODULES", str(Path.home() / ".cache/sluice-node/node_modules"))
COUNT = 3000
PARTITIONS = 3


@pytest.mark.timeout(180)
def test_kafkajs_idempotent_produce_group_consume_and_commit(sluice):
    topic = unique("kjs")
    proc = subprocess.run(["node", str(CLIENT), sluice.bootstrap, topic, str(COUNT)], capture_output=True,
                          timeout=150, env={**os.environ, "NODE_PATH": NODE_MODULES})
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["created"] is True

    # Every send was acknowledged without error, and each partition's batches got consecutive
    # offsets from 0: client.js sends records 0..COUNT/2 and then the rest, 500 at a time.
    assert all(s["errorCode"] == 0 for s in out["sent"]), out["sent"][:5]
    per_partition = {p: COUNT // PARTITIONS + (1 if p < COUNT % PARTITIONS else 0) for p in range(PARTITIONS)}
    sends = [range(a, min(b, a + 500)) for lo, b in ((0, COUNT // 2), (COUNT // 2, COUNT)) for a in range(lo, b, 500)]
    for p in range(PARTITIONS):
        sizes = [sum(1 for i in send if i % PARTITIONS == p) for send in sends]
        expected = [sum(sizes[:k]) for k in range(len(sizes)) if sizes[k]]
        assert sorted(s["baseOffset"] for s in out["sent"] if s["partition"] == p) == expected, f"partition {p}"

    # The group read back exactly what was sent, partition by partition, with dense offsets.
    got = defaultdict(list)
    for r in out["received"]:
        got[r["partition"]].append(r)
    assert {p: len(rs) for p, rs in got.items()} == per_partition
    for p, rs in got.items():
        rs.sort(key=lambda r: r["offset"])
        assert [r["offset"] for r in rs] == list(range(per_partition[p])), f"partition {p}"
        sent_order = [i for i in range(COUNT) if i % PARTITIONS == p]
        assert [int(r["idx"]) for r in rs] == sent_order, f"partition {p}: records out of order"
        for r in rs:
            i = int(r["idx"])
            assert (r["key"], r["value"]) == (f"k{i}", f"v{i}-" + "x" * (i % 200))

    # The commits are the group's offsets, and the topic's offsets span what was written.
    assert {c["partition"]: c["offset"] for c in out["committed"]} == per_partition
    assert {o["partition"]: (o["low"], o["high"]) for o in out["offsets"]} == \
        {p: (0, n) for p, n in per_partition.items()}
