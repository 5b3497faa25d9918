"""Two control planes on one etcd: one leads, the other stands by. kill -9 of the leader under
acks=all load with a consumer group reading: the standby takes over by itself, the data plane
finds it (it lists both), producing and consuming go on; the old leader comes back as a standby,
and killing that standby changes nothing; every acknowledged record is there exactly once. The takeover time (kill to the first acknowledged produce sent after it) is
printed, not asserted: it is a figure for BENCHMARKS.md, bounded by the etcd lease TTL."""

import signal
import subprocess
import threading
import time

import pytest

from cluster import free_port, tail, wait_until
from helpers import consumer, create_topic, unique
from test_crash import PARTITIONS, ContinuousProducer, assert_acknowledged_exactly_once


class GroupReader(threading.Thread):
    """A consumer-group member that reads and commits until stopped; remembers what it saw."""

    def __init__(self, bootstrap, topic, group):
        super().__init__(daemon=True)
        self.c = consumer(bootstrap, **{"group.id": group, "enable.auto.commit": True,
                                        "auto.commit.interval.ms": 500, "auto.offset.reset": "earliest"})
        self.c.subscribe([topic])
        self.lock = threading.Lock()
        self.values = set()
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            msg = self.c.poll(0.2)
            if msg is not None and msg.error() is None:
                with self.lock:
                    self.values.add(msg.value())
        self.c.close()

    def saw(self, value):
        with self.lock:
            return value in self.values


def start_standby(sluice, port):
    cmd = sluice.controlplane_cmd()
    cmd[cmd.index("--rpc-listen") + 1] = f"127.0.0.1:{port}"
    data = sluice.base_dir / "controlplane2-data"
    data.mkdir(exist_ok=True)
    cmd[cmd.index("--data-dir") + 1] = str(data)
    log_path = sluice.log_dir / "controlplane2.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=sluice.env(), start_new_session=True)

    def standing_by():
        assert proc.poll() is None, f"standby exited with {proc.returncode}: {tail(log_path)}"
        return "standing by" in log_path.read_text(errors="replace")

    wait_until(standing_by, 30, what="the second control plane to stand by")
    return proc, log_path


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["s3+etcd"], indirect=True)
def test_standby_takes_over_when_the_leader_dies(sluice_factory):
    sluice = sluice_factory(start=False)
    sluice.start_controlplane()
    # The port is picked once the leader is up: a port picked earlier can be taken meanwhile by
    # one of the leader's own outbound connections (etcd, S3), which draw from the same range.
    standby_port = free_port()
    sluice.standby_rpc = [f"127.0.0.1:{standby_port}"]
    standby, standby_log = start_standby(sluice, standby_port)
    try:
        sluice.start_dataplane()
        topic = unique("takeover")
        create_topic(sluice.bootstrap, topic, PARTITIONS)
        prod = ContinuousProducer(sluice.bootstrap, topic, prefix="takeover")
        reader = GroupReader(sluice.bootstrap, topic, unique("g"))
        prod.start()
        reader.start()
        try:
            prod.wait_acked(3000, 60, "before the kill")
            sent_before = prod.attempted()
            killed_at = time.monotonic()
            sluice.kill_controlplane(signal.SIGKILL)

            def acked_after_kill():
                with prod.lock:
                    return any(int(v.rsplit(b"-", 1)[1]) >= sent_before for v in prod.acked)

            wait_until(acked_after_kill, 90, interval=0.05, what="a produce sent after the kill to be acknowledged")
            takeover = time.monotonic() - killed_at
            assert "control plane ready (leading)" in standby_log.read_text(errors="replace")
            before = prod.acked_count()
            prod.wait_acked(before + 3000, 120, "after the takeover")
            # The killed leader comes back as a standby; killing a standby changes nothing.
            sluice.start_controlplane()
            wait_until(lambda: "standing by" in sluice.cp_log.read_text(errors="replace").rsplit("===== start", 1)[-1],
                       30, what="the old leader to come back as a standby")
            sluice.kill_controlplane(signal.SIGKILL)
            prod.wait_acked(prod.acked_count() + 3000, 60, "after the standby was killed")
            with prod.lock:
                last = max(prod.acked)
            wait_until(lambda: reader.saw(last), 120, what="the group to read records produced after the takeover")
        finally:
            prod.finish()
            reader.stop_flag.set()
            reader.join(30)
        print(f"takeover: {takeover:.2f} s from kill -9 of the leader to the first acknowledged produce sent after it")
        assert_acknowledged_exactly_once(sluice.bootstrap, topic, prod, "takeover")
    finally:
        standby.terminate()
        standby.wait(timeout=10)
