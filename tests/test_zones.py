"""Many data planes in many zones: each registers once with its own node id; clients naming a
zone in client.id are shown only that zone's data planes, with partition leaders spread by
cores; any data plane serves any partition; joining and leaving move only the data plane's own
share; SIGTERM drains a data plane with no error reaching an application; bytes per client zone
are counted."""

import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from confluent_kafka import KafkaError, TopicPartition
from kafka import KafkaConsumer

import kafka_wire
from cluster import free_port, wait_until
from helpers import admin, consume_all, consumer, create_topic, producer, unique, watermarks

ZONE_A, ZONE_B = "use1-az1", "use1-az2"


def metrics_args():
    return ["--metrics-listen", f"127.0.0.1:{free_port()}"]


def metrics_addr(args):
    return args[args.index("--metrics-listen") + 1]


def scrape(addr):
    return urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()


def counter(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}_total\{{{re.escape(want)}\}} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def leaders(bootstrap, topic, client_id):
    """(broker ids, {partition: leader}) as a fresh confluent-kafka client tagged client_id
    sees them."""
    md = admin(bootstrap, **{"client.id": client_id}).list_topics(topic=topic, timeout=10)
    parts = md.topics[topic].partitions
    return set(md.brokers), {p: parts[p].leader for p in parts}


def start_two_zones(sluice_factory):
    """2 zones x 2 data planes: in each zone one with 1 core and one with 2, every one with its
    /metrics endpoint. Returns (cluster, {zone: [(node bootstrap, cores, metrics address)]})."""
    first = metrics_args()
    sluice = sluice_factory(cores=1, dataplane_args=["--zone", ZONE_A, *first])
    planes = {ZONE_A: [(sluice.bootstrap, 1, metrics_addr(first))], ZONE_B: []}
    for zone, cores in ((ZONE_A, 2), (ZONE_B, 1), (ZONE_B, 2)):
        args = metrics_args()
        dp = sluice.add_dataplane(zone=zone, cores=cores, args=args)
        planes[zone].append((dp.bootstrap, cores, metrics_addr(args)))
    return sluice, planes


def node_ids_by_bootstrap(bootstrap, bootstraps):
    md = admin(bootstrap).list_topics(timeout=10)
    by_addr = {f"{b.host}:{b.port}": b.id for b in md.brokers.values()}
    return [by_addr[b] for b in bootstraps]


@pytest.mark.each_backend
def test_clients_see_only_their_zone(sluice_factory):
    sluice, planes = start_two_zones(sluice_factory)
    every = [bs for zone in planes.values() for bs, _, _ in zone]
    wait_until(lambda: len(admin(sluice.bootstrap).list_topics(timeout=10).brokers) == 4, 30,
               what="all four data planes registered")
    ids = dict(zip(every, node_ids_by_bootstrap(sluice.bootstrap, every)))
    assert len(set(ids.values())) == 4, f"node ids are not unique: {ids}"
    zone_ids = {z: {ids[bs] for bs, _, _ in planes[z]} for z in planes}
    cores = {ids[bs]: c for z in planes.values() for bs, c, _ in z}

    topic = unique("zones")
    partitions = 120
    create_topic(sluice.bootstrap, topic, partitions)

    # confluent-kafka (librdkafka), one client per zone, asking a data plane of the other zone.
    for zone, other in ((ZONE_A, ZONE_B), (ZONE_B, ZONE_A)):
        brokers, lead = leaders(planes[other][0][0], topic, f"zone_id={zone},app=test")
        assert brokers == zone_ids[zone], f"a client in {zone} was shown {brokers}"
        assert set(lead.values()) <= zone_ids[zone]
        big = max(zone_ids[zone], key=lambda n: cores[n])
        share = sum(1 for n in lead.values() if n == big) / partitions
        print(f"zone {zone}: the 2-core data plane leads {share:.2f} of {partitions} partitions (expected 0.67)")
        assert 0.5 <= share <= 0.83, f"leaders are not spread by cores: {share}"

    # The forms other diskless systems use, and a client naming no zone or a malformed one.
    for client_id, want in ((f"ws_az={ZONE_B}", zone_ids[ZONE_B]), (f"diskless_az={ZONE_A}", zone_ids[ZONE_A]),
                            (f"zone={ZONE_B}", zone_ids[ZONE_B]), ("plain-client", set(ids.values())),
                            ("zone_id=a b,=", set(ids.values())), ("zone_id=nowhere", set(ids.values()))):
        brokers, _ = leaders(sluice.bootstrap, topic, client_id)
        assert brokers == want, f"client.id {client_id!r} was shown {brokers}"

    # kafka-python, an independent client, tagged with each zone and asking the other zone.
    for zone, other in ((ZONE_A, ZONE_B), (ZONE_B, ZONE_A)):
        kp = KafkaConsumer(bootstrap_servers=planes[other][0][0], client_id=f"zone_id={zone}")
        try:
            assert kp.partitions_for_topic(topic) == set(range(partitions))
            wait_until(lambda: kp._client.cluster.brokers() and {b.node_id for b in kp._client.cluster.brokers()} == zone_ids[zone],
                       20, what=f"kafka-python's view of the brokers of {zone}")
            kp_leaders = {kp._client.cluster.leader_for_partition(TopicPartitionKP(topic, p)) for p in range(partitions)}
            assert kp_leaders <= zone_ids[zone], kp_leaders
        finally:
            kp.close()

    # DescribeCluster lists every data plane with its zone as rack, whatever the client's zone
    # (librdkafka's describe_cluster reads Metadata, so its tagged clients see their zone).
    with kafka_wire.KafkaConnection(planes[ZONE_B][0][0], client_id=f"zone_id={ZONE_B}") as conn:
        racks = {b[0]: b[3] for b in kafka_wire.describe_cluster_v0(conn)["brokers"]}
    assert racks == {n: z for z in zone_ids for n in zone_ids[z]}, racks
    client = admin(sluice.bootstrap)  # must outlive the future
    nodes = client.describe_cluster(request_timeout=10).result(timeout=15).nodes
    assert {n.id: n.rack for n in nodes} == racks
    del client  # an untagged client: its next metadata refresh would count as crossing

    # Produce through zone a, consume through zone b: read-your-writes across data planes; no
    # byte of these tagged clients crosses a zone.
    before = {m: scrape(m) for z in planes.values() for _, _, m in z}
    p = producer(planes[ZONE_A][0][0], **{"client.id": f"zone_id={ZONE_A}"})
    values = [f"v{i}".encode() for i in range(600)]
    delivered = []
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions, on_delivery=lambda e, m: delivered.append(e))
    assert p.flush(60) == 0 and delivered == [None] * len(values)
    c = consumer(planes[ZONE_B][0][0], **{"client.id": f"zone_id={ZONE_B}", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, part, 0) for part in range(partitions)])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < len(values) and time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            assert m.error() is None, m.error()
            got.append(m.value())
    c.close()
    assert sorted(got) == sorted(values)
    after = {m: scrape(m) for m in before}
    for m in before:
        for direction in ("received", "sent"):
            delta = counter(after[m], "sluice_cross_zone_bytes", direction=direction) - \
                counter(before[m], "sluice_cross_zone_bytes", direction=direction)
            assert delta == 0, f"{delta} bytes {direction} across zones at {m}"
    tagged = {z: sum(counter(after[m], "sluice_client_received_bytes", client_zone=z) for _, _, m in planes[z]) for z in planes}
    assert tagged[ZONE_A] > 600 and tagged[ZONE_B] > 0, tagged

    # An untagged client's bytes are counted as crossing.
    m = planes[ZONE_B][1][2]
    crossed = counter(scrape(m), "sluice_cross_zone_bytes", direction="received")
    leaders(planes[ZONE_B][1][0], topic, "untagged")
    assert counter(scrape(m), "sluice_cross_zone_bytes", direction="received") > crossed


class TopicPartitionKP:
    """kafka-python's TopicPartition shape (a namedtuple there) without importing its internals."""

    def __new__(cls, topic, partition):
        from kafka.structs import TopicPartition as KTP
        return KTP(topic, partition)


def test_join_and_leave_move_only_their_share(sluice_factory):
    sluice = sluice_factory(cores=1)
    planes = [sluice.add_dataplane(cores=1) for _ in range(2)]
    topic = unique("share")
    partitions = 300
    create_topic(sluice.bootstrap, topic, partitions)
    wait_until(lambda: len(leaders(sluice.bootstrap, topic, "x")[0]) == 3, 30, what="three data planes")
    _, before = leaders(sluice.bootstrap, topic, "x")

    # A client running from before the join starts using the new data plane at its next metadata
    # refresh.
    running = producer(sluice.bootstrap, **{"topic.metadata.refresh.interval.ms": 1000})
    args = metrics_args()
    joining = sluice.add_dataplane(cores=1, args=args)
    wait_until(lambda: len(leaders(sluice.bootstrap, topic, "x")[0]) == 4, 30, what="the fourth data plane")
    _, after = leaders(sluice.bootstrap, topic, "x")
    new = next(iter(node_ids_by_bootstrap(sluice.bootstrap, [joining.bootstrap])))

    def produced_through_new():
        for p in range(partitions):
            running.produce(topic, value=b"x", partition=p)
        assert running.flush(30) == 0
        return counter(scrape(metrics_addr(args)), "sluice_produce_requests", shard="0") > 0
    wait_until(produced_through_new, 30, interval=0.5, what="the running producer to use the new data plane")
    moved = [p for p in before if before[p] != after[p]]
    print(f"join: {len(moved)} of {partitions} partitions changed leader (the joining data plane's share: "
          f"{partitions // 4})")
    assert all(after[p] == new for p in moved), "a partition moved between data planes that stayed"
    assert 0.15 * partitions <= len(moved) <= 0.35 * partitions

    assert joining.kill(signal.SIGTERM) == 0
    wait_until(lambda: len(leaders(sluice.bootstrap, topic, "x")[0]) == 3, 30, what="the leave")
    _, left = leaders(sluice.bootstrap, topic, "x")
    back = [p for p in after if after[p] != left[p]]
    print(f"leave: {len(back)} of {partitions} partitions changed leader")
    assert sorted(back) == sorted(moved) and left == before
    assert all(dp.proc.poll() is None for dp in planes)


def test_a_silent_data_plane_leaves_and_comes_back(sluice):
    """A data plane that stops answering without closing its connections (a hung or cut-off host:
    SIGSTOP) leaves the cluster once the control plane has not heard from it for 10 s; resumed,
    it registers again under the node id it was assigned, even when a lower one is free by then."""
    second, third = sluice.add_dataplane(), sluice.add_dataplane()
    ids = lambda: set(admin(sluice.bootstrap).list_topics(timeout=10).brokers)  # noqa: E731
    wait_until(lambda: len(ids()) == 3, 30, what="three data planes")
    first, second_id, third_id = node_ids_by_bootstrap(sluice.bootstrap, [sluice.bootstrap, second.bootstrap, third.bootstrap])
    assert (first, second_id, third_id) == (1, 2, 3)
    third.proc.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        wait_until(lambda: ids() == {1, 2}, 40, interval=0.2, what="the silent data plane to leave")
        print(f"a silent data plane left the cluster {time.monotonic() - stopped:.1f} s after it stopped")
        second.kill()
        wait_until(lambda: ids() == {1}, 30, interval=0.2, what="the killed data plane to leave")
    finally:
        third.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: ids() == {1, 3}, 40, interval=0.2, what="the data plane to come back under its node id 3")


def test_a_second_data_plane_with_a_taken_node_id_is_refused(sluice):
    taken = node_ids_by_bootstrap(sluice.bootstrap, [sluice.bootstrap])[0]
    cmd = sluice.dataplane_cmd()
    cmd[cmd.index("--listen") + 1] = f"127.0.0.1:{free_port()}"
    out = subprocess.run([*cmd, "--node-id", str(taken)], capture_output=True, text=True, timeout=60, env=sluice.env())
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.startswith("sluice-dataplane:")]
    assert lines == [f"sluice-dataplane: error: node id {taken} is held by another running data plane "
                     f"({sluice.bootstrap}, zone \"\"); give each data plane its own --node-id, or none to have one "
                     f"assigned"], out.stderr


class Traffic:
    """A confluent-kafka producer (acks=all, idempotent) and a consumer group member running in
    threads, recording every error an application would see, produce latencies, and what was
    acknowledged and consumed."""

    def __init__(self, bootstrap, topic, partitions, client_id="zone_id=" + ZONE_A):
        self.topic, self.partitions = topic, partitions
        refresh = {"client.id": client_id, "topic.metadata.refresh.interval.ms": 1000}
        self.p = producer(bootstrap, **refresh, **{"enable.idempotence": True, "linger.ms": 2,
                                                   "message.timeout.ms": 120000})
        self.c = consumer(bootstrap, **refresh, **{"group.id": unique("zones-g"), "auto.offset.reset": "earliest",
                                                   "enable.auto.commit": True, "enable.auto.offset.store": True})
        self.c.subscribe([topic])
        self.acked, self.acked_at, self.latencies, self.errors, self.consumed = [], [], [], [], []
        self.stop, self.produced = threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]
        for t in self.threads:
            t.start()

    def _produce(self):
        i = 0
        while not self.stop.is_set():
            sent = time.monotonic()
            value = f"r{i}".encode()

            def done(err, msg, sent=sent, value=value):
                if err is not None:
                    self.errors.append(("produce", str(err)))
                else:
                    self.acked.append(value)
                    self.acked_at.append((time.monotonic(), msg.partition()))
                    self.latencies.append((sent, time.monotonic() - sent))
            self.p.produce(self.topic, value=value, partition=i % self.partitions, on_delivery=done)
            self.p.poll(0.005)
            i += 1
        self.unflushed = self.p.flush(120)

    def _consume(self):
        # Until the producer is done and everything it had acknowledged is consumed.
        while not self.produced.is_set() or not set(self.acked) <= set(self.consumed):
            for m in self.c.consume(500, timeout=0.2):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(("consume", str(m.error())))
                    continue
                self.consumed.append(m.value())
            if self.produced.is_set() and time.monotonic() > self.produced_at + 60:
                break

    def finish(self):
        self.stop.set()
        self.threads[0].join(timeout=150)
        self.produced_at = time.monotonic()
        self.produced.set()
        self.threads[1].join(timeout=90)
        try:
            assignment = self.c.assignment()
            self.positions = {tp.partition: tp.offset for tp in self.c.position(assignment)}
        except Exception as e:  # noqa: BLE001 - diagnostics only
            self.positions = repr(e)
        self.c.close()

    def partitions_acked_since(self, t):
        return {p for at, p in self.acked_at if at > t}

    def p99_ms(self, since, until):
        xs = sorted(lat for at, lat in self.latencies if since <= at < until)
        return xs[int(0.99 * (len(xs) - 1))] * 1000 if xs else None


@pytest.mark.each_backend
def test_rolling_restart_with_new_cores(sluice_factory):
    drain = ["--drain-timeout-ms", "5000"]
    sluice = sluice_factory(cores=1, dataplane_args=["--zone", ZONE_A, *drain])
    other = sluice.add_dataplane(zone=ZONE_A, cores=2, args=drain)
    topic = unique("rolling")
    create_topic(sluice.bootstrap, topic, 8)
    traffic = Traffic(f"{sluice.bootstrap},{other.bootstrap}", topic, 8)
    try:
        wait_until(lambda: len(traffic.consumed) > 200, 60, what="traffic flowing")
        steady_from, n = time.monotonic(), len(traffic.acked)
        wait_until(lambda: len(traffic.acked) > n + 500, 60, what="a steady-state window to compare latency with")
        restart_from = time.monotonic()
        # The first data plane: 1 core -> 2.
        assert sluice.kill_dataplane(signal.SIGTERM) == 0
        sluice.cores = 2
        sluice.start_dataplane()
        wait_until(lambda: len(admin(other.bootstrap).list_topics(timeout=10).brokers) == 2, 30, what="rejoin")
        # The second: 2 cores -> 1.
        assert other.kill(signal.SIGTERM) == 0
        other.cores = 1
        other.start()
        wait_until(lambda: len(admin(sluice.bootstrap).list_topics(timeout=10).brokers) == 2, 30, what="rejoin")
        restart_to = time.monotonic()
        n = len(traffic.acked)
        wait_until(lambda: len(traffic.acked) > n + 200, 60, what="produce going on after the restarts")
    finally:
        traffic.finish()
    assert traffic.errors == [], traffic.errors[:10]
    assert traffic.unflushed == 0
    drains = [int(m) for log in (sluice.dp_log, other.log) for m in re.findall(r"drained; exiting elapsed_ms=(\d+)", log.read_text())]
    print(f"rolling restart: each data plane drained (its clients gone) in {drains} ms")
    # Each exited because its clients had moved, not at the end of its 5 s drain timeout.
    assert len(drains) == 2 and max(drains) < 5000, drains
    assert len(traffic.acked) == len(set(traffic.acked))
    missing = set(traffic.acked) - set(traffic.consumed)
    if missing:
        stored = {g.value for part in consume_all(sluice.bootstrap, topic, 8).values() for g in part}
        raise AssertionError(f"{len(missing)} acknowledged records never consumed by the group, "
                             f"{len(missing - stored)} of them not in the log either: {sorted(missing)[:10]}; "
                             f"the consumer's positions: {traffic.positions}; "
                             f"watermarks: {watermarks(sluice.bootstrap, topic, 8)}")
    dupes = len(traffic.consumed) - len(set(traffic.consumed))
    print(f"rolling restart: {len(traffic.acked)} acknowledged, {dupes} consumed twice; produce p99 "
          f"steady {traffic.p99_ms(steady_from, restart_from):.1f} ms, during the restarts "
          f"{traffic.p99_ms(restart_from, restart_to):.1f} ms ({restart_to - restart_from:.1f} s)")
    assert dupes == 0, f"{dupes} records consumed twice"


@pytest.mark.each_backend
def test_kill9_of_a_data_plane_under_load(sluice_factory):
    sluice = sluice_factory(cores=1, dataplane_args=["--zone", ZONE_A])
    other = sluice.add_dataplane(zone=ZONE_A, cores=1)
    topic = unique("kill9")
    create_topic(sluice.bootstrap, topic, 6)
    traffic = Traffic(f"{sluice.bootstrap},{other.bootstrap}", topic, 6)
    try:
        wait_until(lambda: len(traffic.consumed) > 200, 60, what="traffic flowing")
        other.kill(signal.SIGKILL)
        killed = time.monotonic()
        n = len(traffic.acked)
        wait_until(lambda: len(traffic.acked) > n, 60, interval=0.01, what="a produce acknowledged after the kill")
        # Every partition takes new records again (whether its leader was the dead one or not).
        wait_until(lambda: traffic.partitions_acked_since(killed) == set(range(6)), 90, interval=0.01,
                   what="produce acknowledged on every partition")
        moved = time.monotonic() - killed
        consumed = len(traffic.consumed)
        wait_until(lambda: len(traffic.consumed) > consumed + 100, 60, what="the group consuming on")
    finally:
        traffic.finish()
    assert traffic.unflushed == 0
    lost = set(traffic.acked) - set(traffic.consumed)
    assert not lost, f"{len(lost)} acknowledged records lost"
    produce_errors = [e for e in traffic.errors if e[0] == "produce"]
    print(f"kill -9: every partition took records again {moved:.1f} s after the kill; "
          f"errors seen: {traffic.errors[:5]}")
    assert not produce_errors, produce_errors[:5]
