"""S3 faults through the fault-injecting proxy (sluice-s3-proxy, in front of the real s3s-fs):
5% of requests answered 503 SlowDown, 1% of connections reset, then a 10 s outage, all under
acks=all load on two shards. Produce slows or fails with retriable errors and recovers by
itself; every acknowledged record is there exactly once; no shard wedges (every partition keeps
taking records after the outage)."""

import subprocess
import urllib.request

import pytest
from confluent_kafka import KafkaError

from cluster import binary, free_port, wait_until
from test_crash import PARTITIONS, ContinuousProducer, assert_acknowledged_exactly_once
from helpers import create_topic, unique
from test_bench import scrape


class ProxiedS3:
    """The session's S3 server seen through a sluice-s3-proxy."""

    def __init__(self, s3, log_path, *proxy_args):
        self.s3 = s3
        self.port = free_port()
        self.BUCKET, self.ACCESS_KEY, self.SECRET_KEY = s3.BUCKET, s3.ACCESS_KEY, s3.SECRET_KEY
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [binary("sluice-s3-proxy"), "--listen", f"127.0.0.1:{self.port}", "--upstream", f"127.0.0.1:{s3.port}",
             *proxy_args], stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.stats() is not None, 30, what="the S3 proxy")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        return self.s3.env()

    def control(self, what, method="GET"):
        req = urllib.request.Request(f"{self.endpoint}/__proxy/{what}", method=method)
        return urllib.request.urlopen(req, timeout=5).read().decode()

    def stats(self):
        text = self.control("stats")
        return {k: int(v) for k, v in (line.split() for line in text.splitlines())}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.mark.timeout(480)
@pytest.mark.parametrize("backend", ["s3+etcd"], indirect=True)
def test_s3_faults_slow_produce_down_but_lose_nothing(sluice_factory, s3_server, tmp_path):
    proxy = ProxiedS3(s3_server, tmp_path / "s3-proxy.log", "--error-rate", "0.05", "--reset-rate", "0.01")
    try:
        sluice = sluice_factory(cores=2, s3=proxy, dataplane_args=["--s3-request-timeout-ms", "2000"])
        topic = unique("faults")
        create_topic(sluice.bootstrap, topic, PARTITIONS)
        prod = ContinuousProducer(sluice.bootstrap, topic, prefix="faults")
        prod.start()
        try:
            prod.wait_acked(3000, 90, "with 5% SlowDown and 1% resets")
            # Faults are drawn per request, and 8 MiB objects make few requests: keep producing
            # until both kinds have struck at least once, so the run always exercises them.
            faults = lambda: (lambda s: s["slowdowns"] > 0 and s["resets"] > 0)(proxy.stats())
            wait_until(faults, 120, what="both a SlowDown and a reset to strike")
            prod.wait_acked(prod.acked_count() + 1000, 90, "after the first faults")
            proxy.control("outage?seconds=10", method="POST")
            prod.wait_attempted(2000, 60)
            wait_until(lambda: proxy.stats()["outage_resets"] > 0, 30, what="requests to hit the outage")
            before = prod.acked_count()
            prod.wait_acked(before + 6000, 120, "after the outage")
            with prod.lock:
                after = [pos for v, pos in prod.acked.items() if int(v.rsplit(b"-", 1)[1]) >= prod.sent - 3000]
            assert {p for p, _ in after} == set(range(PARTITIONS)), "a partition stopped taking records"
        finally:
            prod.finish()
        # The producer runs with retries=0 to see every failure; each must be one Kafka calls
        # retriable (a client with retries would have sent the record again).
        retriable = {KafkaError.KAFKA_STORAGE_ERROR, KafkaError.REQUEST_TIMED_OUT, KafkaError._MSG_TIMED_OUT,
                     KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
        fatal = {str(e) for e in prod.failed.values() if e.code() not in retriable}
        assert not fatal, f"produce failed with errors a client does not retry: {sorted(fatal)[:5]}"
        stats = proxy.stats()
        assert stats["slowdowns"] > 0 and stats["resets"] > 0, stats
        print(f"proxy: {stats}; produce failures seen by the client: {len(prod.failed)}")
        assert_acknowledged_exactly_once(sluice.bootstrap, topic, prod, "faults")
    finally:
        proxy.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["s3+etcd"], indirect=True)
def test_hedged_puts_keep_one_copy_of_each_object(sluice_factory, s3_server, tmp_path):
    """With S3 Express latency, the slowest PUTs (past the 80th percentile of recent ones) send a
    second copy; whichever lands first is the object, the other copy is deleted, and every
    record reads back once."""
    proxy = ProxiedS3(s3_server, tmp_path / "s3-proxy.log", "--profile", "s3-express", "--seed", "7")
    metrics_port = free_port()
    try:
        sluice = sluice_factory(s3=proxy, dataplane_args=["--s3-hedge-percentile", "80",
                                                          "--metrics-listen", f"127.0.0.1:{metrics_port}"])
        topic = unique("hedge")
        create_topic(sluice.bootstrap, topic, PARTITIONS)
        prod = ContinuousProducer(sluice.bootstrap, topic, prefix="hedge")
        prod.start()
        try:
            prod.wait_acked(20000, 120, "under S3 Express latency")
        finally:
            prod.finish()
        metrics = scrape(metrics_port)
        assert metrics["sluice_s3_hedged_puts_total"] > 0, "no PUT was slow enough to hedge"
        objects = metrics["sluice_wal_objects_total"]
        prefix = sluice.s3_prefix + "/"
        wait_until(lambda: len(s3_server.objects(prefix)) == objects, 30,
                   what=f"one stored copy per WAL object ({objects}; have {len(s3_server.objects(prefix))})")
        print(f"objects={objects:.0f} hedged={metrics['sluice_s3_hedged_puts_total']:.0f}")
        assert_acknowledged_exactly_once(sluice.bootstrap, topic, prod, "hedge")
    finally:
        proxy.stop()
