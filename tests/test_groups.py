"""Consumer groups with real clients: the classic protocol (confluent-kafka, kafka-python) and
KIP-848 (confluent-kafka with group.protocol=consumer).

Group members run as separate processes (group_worker.py) so a test can SIGKILL one. Each logs
what it was assigned, what it consumed and what it committed, with wall-clock times; the tests
judge the group from those logs and from the committed offsets the coordinator returns.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState, KafkaError, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions

from cluster import free_port, wait_until
from helpers import admin, consumer, create_topic, producer, unique, watermarks

WORKER = str(Path(__file__).with_name("group_worker.py"))
# KIP-848 session and heartbeat are the coordinator's settings: a 6 s session, as the classic
# members ask for, so both protocols fail over on the same clock.
# SLUICE_TEST_GROUP_DEFAULT_TIMEOUTS=1 keeps every default instead (45 s sessions), to measure
# rebalance times with them: `scripts/test.sh -k take_over -s`.
DEFAULT_TIMEOUTS = os.environ.get("SLUICE_TEST_GROUP_DEFAULT_TIMEOUTS") == "1"
SESSION = "default (45 s)" if DEFAULT_TIMEOUTS else "6 s"
GROUP_ARGS = [] if DEFAULT_TIMEOUTS else ["--group-consumer-session-timeout-ms", "6000",
                                          "--group-consumer-heartbeat-interval-ms", "1000"]
PARTITIONS = 6


class Worker:
    def __init__(self, tmp_path, name, client, protocol, bootstrap, group, topic=None, regex=None, extra=()):
        self.name = name
        self.log = tmp_path / f"{name}.log"
        self.log.touch()
        target = ["--regex", regex] if regex else [topic]
        cmd = [sys.executable, WORKER, client, protocol, bootstrap, group, str(self.log), *target, *extra]
        self.stderr = open(tmp_path / f"{name}.stderr", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.stderr, stderr=subprocess.STDOUT)

    def events(self):
        out = []
        for line in self.log.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) < 3:
                continue  # a line still being written
            kind, t, rest = parts[0], float(parts[1]), parts[2]
            out.append((kind, t, rest))
        return out

    def owned(self):
        """The member's current assignment: its last `A` line, less what it revoked since."""
        owned = set()
        for kind, _, rest in self.events():
            tps = set() if rest == "-" else set(rest.split(","))
            if kind == "A":
                owned = tps
            elif kind == "V":
                owned -= tps
        return owned

    def records(self):
        """[(time, topic, partition, offset, value)]"""
        out = []
        for kind, t, rest in self.events():
            if kind == "R":
                topic, p, o, v = rest.split(" ")
                out.append((t, topic, int(p), int(o), v))
        return out

    def commits(self):
        out = []
        for kind, t, rest in self.events():
            if kind == "C":
                topic, p, o = rest.split(" ")
                out.append((t, topic, int(p), int(o)))
        return out

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} did not stop on SIGTERM; its output: {self.output()}")

    def output(self):
        self.stderr.flush()
        return (self.log.parent / f"{self.name}.stderr").read_text(errors="replace")[-3000:]


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def produce_values(bootstrap, topic, start, n, partitions=PARTITIONS):
    p = producer(bootstrap)
    for i in range(start, start + n):
        while True:
            try:
                p.produce(topic, value=str(i).encode(), partition=i % partitions)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def all_partitions(topic, n=PARTITIONS):
    return {f"{topic}:{p}" for p in range(n)}


def wait_for_split(members, topic, n=PARTITIONS, timeout=90):
    """Waits until every member owns at least one partition and together they own each once."""
    def split():
        owned = [m.owned() for m in members]
        union = set().union(*owned)
        return all(owned) and union == all_partitions(topic, n) and sum(map(len, owned)) == n
    wait_until(split, timeout, interval=0.2, what="every member owning partitions, each partition once")


def committed_offsets(bootstrap, group, topic, n=PARTITIONS):
    c = consumer(bootstrap, **{"group.id": group})
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(n)], timeout=15)}
    finally:
        c.close()


def commit(bootstrap, group, offsets):
    """Commits offsets for a group from outside it, as an admin tool does."""
    c = consumer(bootstrap, **{"group.id": group})
    try:
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


def assert_no_redelivery_after_commit(members):
    """No record is consumed after a commit that covered it returned (at-least-once, with
    duplicates only for records not yet committed)."""
    commits = defaultdict(list)  # (topic, partition) -> [(time, offset)]
    for m in members:
        for t, topic, p, o in m.commits():
            commits[(topic, p)].append((t, o))
    for cs in commits.values():
        cs.sort()
    for m in members:
        for t, topic, p, o, _ in m.records():
            done = [c for (ct, c) in commits[(topic, p)] if ct < t]
            assert not done or max(done) <= o, \
                f"{m.name} consumed {topic}:{p}@{o} at {t:.3f}, after offset {max(done)} was committed"


GROUP_CASES = [
    pytest.param("confluent", "classic", id="confluent-classic"),
    pytest.param("confluent", "consumer", id="confluent-kip848"),
    pytest.param("kafka-python", "classic", id="kafka-python-classic"),
    pytest.param("aiokafka", "classic", id="aiokafka-classic"),
]


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
@pytest.mark.parametrize("client,protocol", GROUP_CASES)
@pytest.mark.each_backend
def test_members_take_over_from_a_killed_member(sluice, tmp_path, workers, client, protocol):
    bs = sluice.bootstrap
    topic, group = unique("grp"), unique("g")
    create_topic(bs, topic, PARTITIONS)
    members = [Worker(tmp_path, f"m{i}", client, protocol, bs, group, topic) for i in range(3)]
    workers.extend(members)
    wait_for_split(members, topic)

    produce_values(bs, topic, 0, 15_000)

    def consumed():
        return {r[4] for m in members for r in m.records()}
    wait_until(lambda: len(consumed()) >= 15_000, 120, interval=0.2, what="the first 15,000 records consumed")

    victim, survivors = members[0], members[1:]
    lost = victim.owned()
    victim.kill()
    killed_at = time.time()
    produce_values(bs, topic, 15_000, 15_000)
    wait_until(lambda: len(consumed()) == 30_000, 180, interval=0.2, what="all 30,000 records consumed")

    # Rebalance time: from the kill to the first record of each lost partition read elsewhere.
    first = {}
    for m in survivors:
        for t, tp, p, _, _ in m.records():
            key = f"{tp}:{p}"
            if key in lost and t > killed_at:
                first[key] = min(first.get(key, t), t)
    assert set(first) == lost, f"partitions {lost - set(first)} of the killed member were never consumed again"
    print(f"\n[{client}/{protocol}] rebalance after SIGKILL: {max(first.values()) - killed_at:.2f} s "
          f"(session timeout {SESSION}) for {sorted(lost)}")

    for m in survivors:
        m.stop()
    assert consumed() == {str(i) for i in range(30_000)}
    assert_no_redelivery_after_commit(members)
    marks = watermarks(bs, topic, PARTITIONS)
    hwm = {p: marks[p][1] for p in range(PARTITIONS)}
    assert committed_offsets(bs, group, topic) == hwm


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
@pytest.mark.parametrize("protocol,extra", [
    pytest.param("classic", ["partition.assignment.strategy=cooperative-sticky"], id="classic-cooperative-sticky"),
    pytest.param("consumer", [], id="kip848-uniform"),
])
def test_a_new_member_takes_only_what_it_needs(sluice, tmp_path, workers, protocol, extra):
    bs = sluice.bootstrap
    topic, group = unique("coop"), unique("g")
    create_topic(bs, topic, PARTITIONS)
    members = [Worker(tmp_path, f"m{i}", "confluent", protocol, bs, group, topic, extra=extra) for i in range(3)]
    workers.extend(members)
    wait_for_split(members, topic)
    before = {m.name: m.owned() for m in members}
    marks = {m.name: len(m.events()) for m in members}

    newcomer = Worker(tmp_path, "m3", "confluent", protocol, bs, group, topic, extra=extra)
    workers.append(newcomer)
    everyone = members + [newcomer]
    wait_for_split(everyone, topic)

    gained = newcomer.owned()
    moved = set()
    for m in members:
        after = m.owned()
        assert after <= before[m.name], f"{m.name} gained {after - before[m.name]}"
        revoked = set()
        for kind, _, rest in m.events()[marks[m.name]:]:
            if kind == "V":
                revoked |= set(rest.split(","))
        # Nothing it keeps was ever revoked (no stop-the-world), and what it gave up went to
        # the newcomer.
        assert revoked == before[m.name] - after, f"{m.name} revoked {revoked}, keeps {after}"
        moved |= revoked
    assert moved == gained
    assert len(gained) in (1, 2)


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_kip848_regex_subscription_picks_up_a_new_topic(sluice, tmp_path, workers):
    bs = sluice.bootstrap
    prefix = unique("rx").replace("-", "_")
    create_topic(bs, f"{prefix}-a", 2)
    w = Worker(tmp_path, "m0", "confluent", "consumer", bs, unique("g"), regex=f"{prefix}-.*")
    workers.append(w)
    wait_until(lambda: w.owned() == {f"{prefix}-a:0", f"{prefix}-a:1"}, 60, interval=0.2, what="regex assignment")
    create_topic(bs, f"{prefix}-b", 1)
    wait_until(lambda: f"{prefix}-b:0" in w.owned(), 60, interval=0.2, what="the later topic assigned")
    produce_values(bs, f"{prefix}-b", 0, 10, partitions=1)
    wait_until(lambda: len([r for r in w.records() if r[1] == f"{prefix}-b"]) == 10, 60, interval=0.2,
               what="records of the later topic consumed")


def test_offsets_and_groups_survive_restarting_every_process(sluice):
    bs = sluice.bootstrap
    topic, group = unique("off"), unique("g")
    create_topic(bs, topic, 3)
    produce_values(bs, topic, 0, 30, partitions=3)
    commit(bs, group, [TopicPartition(topic, 0, 4, metadata="meta-0"), TopicPartition(topic, 1, 7, metadata="")])

    sluice.restart_all()

    got = consumer(bs, **{"group.id": group})
    tps = got.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
    got.close()
    assert [(tp.partition, tp.offset) for tp in tps] == [(0, 4), (1, 7), (2, -1001)]
    assert tps[0].metadata == "meta-0"

    a = admin(bs)
    listed = a.list_consumer_groups(request_timeout=15).result()
    assert group in {g.group_id for g in listed.valid}
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    assert {(tp.partition, tp.offset) for tp in res.topic_partitions} == {(0, 4), (1, 7)}
    # Lag = high watermark - committed, as kafka-consumer-groups computes it.
    hwm = watermarks(bs, topic, 3)
    assert {tp.partition: hwm[tp.partition][1] - tp.offset for tp in res.topic_partitions} == {0: 6, 1: 3}


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_admin_list_describe_delete(sluice, tmp_path, workers):
    bs = sluice.bootstrap
    topic = unique("adm")
    create_topic(bs, topic, 2)
    live, idle, kip848 = unique("live"), unique("idle"), unique("kip848")
    w = Worker(tmp_path, "m0", "confluent", "classic", bs, live, topic)
    k = Worker(tmp_path, "k0", "confluent", "consumer", bs, kip848, topic)
    workers.extend([w, k])
    for m in (w, k):
        wait_until(lambda: m.owned() == all_partitions(topic, 2), 60, interval=0.2, what=f"{m.name}'s assignment")
    commit(bs, idle, [TopicPartition(topic, 0, 1)])

    a = admin(bs)
    stable = a.list_consumer_groups(states={ConsumerGroupState.STABLE}, request_timeout=15).result()
    assert {g.group_id for g in stable.valid} >= {live}
    assert idle not in {g.group_id for g in stable.valid}
    empty = a.list_consumer_groups(states={ConsumerGroupState.EMPTY}, request_timeout=15).result()
    assert idle in {g.group_id for g in empty.valid}

    d = a.describe_consumer_groups([live, idle])
    desc = d[live].result()
    assert desc.state == ConsumerGroupState.STABLE
    assert len(desc.members) == 1
    assert {tp.partition for tp in desc.members[0].assignment.topic_partitions} == {0, 1}
    assert d[idle].result().state == ConsumerGroupState.EMPTY
    # A KIP-848 group, described through ConsumerGroupDescribe.
    desc = a.describe_consumer_groups([kip848])[kip848].result()
    assert desc.state == ConsumerGroupState.STABLE
    assert [{tp.partition for tp in m.assignment.topic_partitions} for m in desc.members] == [{0, 1}]

    nobody = unique("nobody")
    f = a.delete_consumer_groups([live, idle, nobody], request_timeout=15)
    assert f[idle].result() is None
    errors = {}
    for g in (live, nobody):
        try:
            f[g].result()
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            errors[g] = e.args[0].code()
    assert errors == {live: KafkaError.NON_EMPTY_GROUP, nobody: KafkaError.GROUP_ID_NOT_FOUND}
    assert idle not in {g.group_id for g in a.list_consumer_groups(request_timeout=15).result().valid}


@pytest.mark.sluice(cores=2, controlplane_args=GROUP_ARGS)
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_control_plane_restart_mid_rebalance(sluice, tmp_path, workers, protocol):
    """The control plane is SIGKILLed while a fourth member's join is being handled: the group
    ends stable with all four, offsets intact, and nothing committed is read again. With two
    shards, the members' requests reach the coordinator through different shard connections."""
    bs = sluice.bootstrap
    topic, group = unique("cpr"), unique("g")
    create_topic(bs, topic, PARTITIONS)
    members = [Worker(tmp_path, f"m{i}", "confluent", protocol, bs, group, topic) for i in range(3)]
    workers.extend(members)
    wait_for_split(members, topic)
    produce_values(bs, topic, 0, 3_000)

    def consumed(ms):
        return {r[4] for m in ms for r in m.records()}
    wait_until(lambda: len(consumed(members)) == 3_000, 60, interval=0.2, what="the first 3,000 records consumed")
    marks = {m.name: len(m.events()) for m in members}

    newcomer = Worker(tmp_path, "m3", "confluent", protocol, bs, group, topic)
    workers.append(newcomer)
    everyone = members + [newcomer]
    # Mid-rebalance: some member has been asked to give up partitions.
    wait_until(lambda: any(kind == "V" for m in members for kind, _, _ in m.events()[marks[m.name]:]), 60,
               interval=0.02, what="a revocation (the rebalance under way)")
    sluice.kill_controlplane()
    sluice.start_controlplane()

    wait_for_split(everyone, topic, timeout=120)
    produce_values(bs, topic, 3_000, 3_000)
    wait_until(lambda: len(consumed(everyone)) == 6_000, 120, interval=0.2, what="all 6,000 records consumed")
    for m in everyone:
        m.stop()
    assert_no_redelivery_after_commit(everyone)
    marks = watermarks(bs, topic, PARTITIONS)
    assert committed_offsets(bs, group, topic) == {p: marks[p][1] for p in range(PARTITIONS)}


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_static_member_returns_without_a_rebalance(sluice, tmp_path, workers, protocol):
    """A static member's process goes away and a new one comes back under its instance id
    (classic: SIGKILL, within its 30 s session; KIP-848: a clean close, which leaves with epoch
    -2, back within the coordinator's 6 s session): it gets its partitions back, and the other
    member is never asked to give anything up."""
    bs = sluice.bootstrap
    topic, group = unique("static"), unique("g")
    create_topic(bs, topic, 4)
    static = ["session.timeout.ms=30000"] if protocol == "classic" else []
    members = [Worker(tmp_path, f"m{i}", "confluent", protocol, bs, group, topic, extra=static + [f"group.instance.id=i{i}"])
               for i in range(2)]
    workers.extend(members)
    wait_for_split(members, topic, n=4)
    before = members[0].owned()
    mark = len(members[1].events())
    if protocol == "classic":
        members[0].kill()
    else:
        members[0].stop()
    back = Worker(tmp_path, "m0-again", "confluent", protocol, bs, group, topic, extra=static + ["group.instance.id=i0"])
    workers.append(back)
    wait_until(lambda: back.owned() == before, 60, interval=0.2, what="the restarted static member's old partitions")
    # The other member was never asked to give anything up.
    assert [e for e in members[1].events()[mark:] if e[0] in "AV"] == []


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_empty_group_converts_between_protocols(sluice, tmp_path, workers):
    bs = sluice.bootstrap
    topic, group = unique("conv"), unique("g")
    create_topic(bs, topic, 2)
    for step, protocol in enumerate(["classic", "consumer", "classic"]):
        produce_values(bs, topic, step * 100, 100, partitions=2)
        w = Worker(tmp_path, f"m{step}", "confluent", protocol, bs, group, topic)
        workers.append(w)
        want = {str(i) for i in range(step * 100, step * 100 + 100)}
        wait_until(lambda: {r[4] for r in w.records()} >= want, 60, interval=0.2, what=f"{protocol} member's records")
        w.stop()
        # It resumed from the offsets the previous protocol's member committed.
        assert {r[4] for r in w.records()} == want
    marks = watermarks(bs, topic, 2)
    assert committed_offsets(bs, group, topic, n=2) == {0: marks[0][1], 1: marks[1][1]}


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_offset_fetch_batched_and_offset_delete(sluice, tmp_path, workers):
    bs = sluice.bootstrap
    topic = unique("ofd")
    create_topic(bs, topic, 2)
    produce_values(bs, topic, 0, 10, partitions=2)
    g1, g2, live = unique("g1"), unique("g2"), unique("live")
    for g, offset in ((g1, 3), (g2, 5)):
        commit(bs, g, [TopicPartition(topic, 0, offset, metadata=f"m{offset}"), TopicPartition(topic, 1, 1)])
    import kafka_wire as kw
    with kw.KafkaConnection(bs) as conn:
        got = kw.offset_fetch_v8(conn, [g1, g2, unique("nobody")])
        # confluent-kafka sends the metadata string with its C terminator; it comes back as sent.
        got = {g: (e, {k: (o, m.rstrip("\x00")) for k, (o, m) in offs.items()}) for g, (e, offs) in got.items()}
        assert got[g1] == (0, {(topic, 0): (3, "m3"), (topic, 1): (1, "")})
        assert got[g2] == (0, {(topic, 0): (5, "m5"), (topic, 1): (1, "")})
        assert [v for k, v in got.items() if k not in (g1, g2)] == [(0, {})]

        assert kw.offset_delete_v0(conn, g1, topic, [0]) == (0, {0: 0})
        assert kw.offset_fetch_v8(conn, [g1])[g1] == (0, {(topic, 1): (1, "")})
        assert kw.offset_delete_v0(conn, unique("nobody"), topic, [0])[0] == kw.GROUP_ID_NOT_FOUND

    # A group whose members subscribe to the topic keeps its offsets.
    w = Worker(tmp_path, "m0", "confluent", "classic", bs, live, topic)
    workers.append(w)
    wait_until(lambda: len({r[4] for r in w.records()}) == 10, 60, interval=0.2, what="the live member's records")
    with kw.KafkaConnection(bs) as conn:
        assert kw.offset_delete_v0(conn, live, topic, [0]) == (0, {0: kw.GROUP_SUBSCRIBED_TO_TOPIC})


def test_consumer_lag_command_and_metrics(sluice_factory):
    metrics = f"127.0.0.1:{free_port()}"
    sluice = sluice_factory(controlplane_args=["--metrics-listen", metrics])
    bs = sluice.bootstrap
    topic, group = unique("lag"), unique("g")
    create_topic(bs, topic, 2)
    produce_values(bs, topic, 0, 10, partitions=2)
    commit(bs, group, [TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 1)])

    script = Path(__file__).parent.parent / "scripts" / "consumer-groups.py"
    out = subprocess.run([sys.executable, str(script), "--bootstrap", bs, group], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST STATE
    assert [(r[2], r[3], r[4], r[5]) for r in rows if r[1] == topic] == [("0", "3", "5", "2"), ("1", "1", "5", "4")], out

    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    assert f'sluice_group_lag{{group="{group}",topic="{topic}",partition="0"}} 2' in text
    assert f'sluice_group_lag{{group="{group}",topic="{topic}",partition="1"}} 4' in text


@pytest.fixture
def second_dataplane(sluice):
    """A second data plane (node 2) on its own port, same control plane and object store."""
    import kafka_wire as kw
    from cluster import free_port as port
    listen = f"127.0.0.1:{port()}"
    cmd = sluice.dataplane_cmd()
    cmd[cmd.index("--listen") + 1] = listen
    log = open(sluice.log_dir / "dataplane2.log", "ab")
    proc = subprocess.Popen([*cmd, "--node-id", "2"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=sluice.env())

    def ready():
        assert proc.poll() is None, f"second data plane exited with {proc.returncode}"
        with kw.KafkaConnection(listen, timeout=2) as conn:
            return bool(kw.metadata_v1(conn, topics=[])["brokers"])
    try:
        wait_until(ready, 60, what="the second data plane")
        yield listen
    finally:
        proc.terminate()  # it drains: up to --drain-timeout-ms while clients are still connected
        proc.wait(timeout=30)
        log.close()


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
@pytest.mark.each_backend
def test_members_on_different_data_planes(sluice, second_dataplane, tmp_path, workers, protocol):
    """Members bootstrapped to different data planes are coordinated as one group: each data
    plane names itself as the coordinator and forwards to the control plane."""
    topic, group = unique("dp2"), unique("g")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    entry = [sluice.bootstrap, sluice.bootstrap, second_dataplane]
    members = [Worker(tmp_path, f"m{i}", "confluent", protocol, bs, group, topic) for i, bs in enumerate(entry)]
    workers.extend(members)
    wait_for_split(members, topic)
    produce_values(sluice.bootstrap, topic, 0, 3_000)
    wait_until(lambda: len({r[4] for m in members for r in m.records()}) == 3_000, 60, interval=0.2,
               what="every record consumed")
    for m in members:
        m.stop()
    assert_no_redelivery_after_commit(members)
    marks = watermarks(sluice.bootstrap, topic, PARTITIONS)
    assert committed_offsets(second_dataplane, group, topic) == {p: marks[p][1] for p in range(PARTITIONS)}


def test_deleting_a_topic_forgets_its_committed_offsets(sluice):
    bs = sluice.bootstrap
    topic, group = unique("gone"), unique("g")
    create_topic(bs, topic, 2)
    produce_values(bs, topic, 0, 10, partitions=2)
    commit(bs, group, [TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 2)])
    assert committed_offsets(bs, group, topic, n=2) == {0: 4, 1: 2}

    a = admin(bs)
    a.delete_topics([topic], request_timeout=15)[topic].result()
    create_topic(bs, topic, 2)
    # A topic created again under the name starts with no committed offsets, across restarts too.
    assert committed_offsets(bs, group, topic, n=2) == {0: -1001, 1: -1001}
    sluice.restart_all()
    assert committed_offsets(bs, group, topic, n=2) == {0: -1001, 1: -1001}
