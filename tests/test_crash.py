"""Crash consistency: kill -9 the data plane and/or the control plane under a continuous
acks=all produce load, restart, keep producing, then prove that

  * every acknowledged record is present exactly once, at the offset the broker acknowledged,
  * no value appears twice at all (the producer never re-sends: retries=0, no idempotence),
  * offsets are dense from 0 in every partition.
"""

import shutil
import signal
import threading

import pytest

from cluster import wait_until
from helpers import (assert_no_duplicates, assert_offsets_dense, consume_all, create_topic,
                     producer, unique)

PARTITIONS = 3
BURST = 20  # records per producer loop iteration (~2000 records/s)


class ContinuousProducer(threading.Thread):
    """Produces unique values until stopped, recording which deliveries were acknowledged."""

    def __init__(self, bootstrap, topic, prefix):
        super().__init__(daemon=True)
        self.topic = topic
        self.prefix = prefix
        self.p = producer(bootstrap, **{
            "retries": 0,                      # the client never writes a record twice itself
            "enable.idempotence": False,
            "message.timeout.ms": 20_000,
            "request.timeout.ms": 10_000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
        })
        self.lock = threading.Lock()
        self.acked = {}       # value -> (partition, offset)
        self.failed = {}      # value -> error
        self.sent = 0
        self.stop_flag = threading.Event()
        self.error = None

    def _on_delivery(self, err, msg):
        with self.lock:
            if err is None:
                self.acked[msg.value()] = (msg.partition(), msg.offset())
            else:
                self.failed[msg.value()] = err

    def run(self):
        seq = 0
        try:
            while not self.stop_flag.is_set():
                for _ in range(BURST):
                    value = f"{self.prefix}-{seq:09d}".encode()
                    while True:
                        try:
                            self.p.produce(self.topic, value=value, key=str(seq).encode(),
                                           partition=seq % PARTITIONS, on_delivery=self._on_delivery)
                            break
                        except BufferError:
                            self.p.poll(0.05)
                    seq += 1
                with self.lock:
                    self.sent = seq
                self.p.poll(0.01)
            self.p.flush(60)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def attempted(self):
        with self.lock:
            return self.sent

    def wait_acked(self, at_least, timeout, what):
        wait_until(lambda: self.acked_count() >= at_least, timeout, interval=0.05,
                   what=f"{at_least} acknowledged records {what} (have {self.acked_count()})")

    def wait_attempted(self, more, timeout):
        target = self.attempted() + more
        wait_until(lambda: self.attempted() >= target, timeout, what=f"{more} more produce attempts")

    def finish(self):
        self.stop_flag.set()
        self.join(90)
        assert not self.is_alive(), "producer thread did not finish flushing"
        assert self.error is None, f"producer thread failed: {self.error!r}"


def crash(sluice, victim):
    if victim in ("dataplane", "both"):
        sluice.kill_dataplane(signal.SIGKILL)
    if victim in ("controlplane", "both"):
        sluice.kill_controlplane(signal.SIGKILL)


def wipe(directory):
    shutil.rmtree(directory)
    directory.mkdir()


def restart(sluice, victim):
    # On S3 and etcd a process keeps nothing on its disk that matters: it restarts with its data
    # directory gone.
    if victim in ("controlplane", "both"):
        if sluice.etcd is not None:
            wipe(sluice.cp_dir)
        sluice.start_controlplane()
    if victim in ("dataplane", "both") and sluice.s3 is not None:
        wipe(sluice.dp_dir)
    if victim in ("dataplane", "both"):
        sluice.start_dataplane()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("victim,sluice", [
    ("dataplane", {"cores": 1}),
    ("controlplane", {"cores": 1}),
    ("both", {"cores": 2}),
], indirect=["sluice"])
@pytest.mark.each_backend
def test_kill9_keeps_acknowledged_records_exactly_once(sluice, victim):
    topic = unique(f"crash-{victim}")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    prod = ContinuousProducer(sluice.bootstrap, topic, prefix=victim)
    prod.start()
    try:
        prod.wait_acked(3000, 60, "before the crash")
        for round_no in range(2):
            crash(sluice, victim)
            # Let the producer run into the outage before bringing the process back.
            prod.wait_attempted(500, 30)
            restart(sluice, victim)
            before = prod.acked_count()
            prod.wait_acked(before + 3000, 120, f"after restart #{round_no + 1}")
    finally:
        prod.finish()

    assert_acknowledged_exactly_once(sluice.bootstrap, topic, prod, victim)


def assert_acknowledged_exactly_once(bootstrap, topic, prod, prefix):
    """Every record prod had acknowledged is at its acknowledged offset, once; nothing else is
    there but records prod sent (under prefix), none twice; offsets are dense."""
    got = consume_all(bootstrap, topic, PARTITIONS, timeout=180)
    assert_offsets_dense(got)
    consumed = {}
    all_values = []
    for p, msgs in got.items():
        for m in msgs:
            all_values.append(m.value)
            consumed[(p, m.offset)] = m.value
    assert_no_duplicates(all_values)

    produced_prefix = f"{prefix}-".encode()
    strangers = [v for v in all_values if not v.startswith(produced_prefix)]
    assert not strangers, f"records nobody produced: {strangers[:5]}"

    missing = [(v, pos) for v, pos in prod.acked.items() if pos not in consumed]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    moved = [(v, pos, consumed[pos]) for v, pos in prod.acked.items() if consumed[pos] != v]
    assert not moved, f"{len(moved)} acknowledged offsets hold other records, e.g. {moved[:5]}"
    print(f"acked={len(prod.acked)} failed={len(prod.failed)} consumed={len(all_values)}")
