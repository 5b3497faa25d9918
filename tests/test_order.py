"""A connection's requests take effect in the order the client sent them.

Kafka runs one connection's requests one after another and clients rely on it: a later commit
wins over an earlier one, a SyncGroup finds the JoinGroup sent before it, a Heartbeat after a
LeaveGroup finds the member gone. These tests pipeline requests (send many, then read the
answers) through real clients and through raw sockets, and check the outcome is what sending
them one by one gives.
"""

import select
import time

import pytest
from confluent_kafka import TopicPartition

from helpers import consumer, create_topic, make_records, produce_records, unique
from kafka_wire import NONE, UNKNOWN_MEMBER_ID, KafkaConnection, Reader, array, i16, i32, i64, nbytes, string

JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
OFFSET_COMMIT, OFFSET_FETCH = 8, 9
MEMBER_ID_REQUIRED = 79

FAST_GROUPS = {"controlplane_args": ["--group-initial-rebalance-delay-ms", "0"]}


# --------------------------------------------------------------------------- raw requests
# Each is (api key, version, body, parser); `pipeline` sends them all, then reads every answer.

def offset_commit_v2(group, topic, partition, offset, generation=-1, member=""):
    body = (string(group) + i32(generation) + string(member) + i64(-1)
            + array([string(topic) + array([i32(partition) + i64(offset) + string(None)])]))

    def parse(r):
        topics = r.array(lambda t: (t.string(), t.array(lambda p: (p.i32(), p.i16()))))
        return [e for _, parts in topics for _, e in parts][0]
    return OFFSET_COMMIT, 2, body, parse


def offset_fetch_v1(group, topic, partition):
    body = string(group) + array([string(topic) + array([i32(partition)])])

    def parse(r):
        topics = r.array(lambda t: (t.string(), t.array(lambda p: (p.i32(), p.i64(), p.string(), p.i16()))))
        _, offset, _, error = topics[0][1][0]
        assert error == NONE, f"OffsetFetch error {error}"
        return offset
    return OFFSET_FETCH, 1, body, parse


def subscription(*topics):
    """ConsumerProtocolSubscription v0."""
    return i16(0) + array([string(t) for t in topics]) + nbytes(b"")


def join_group_v5(group, member="", protocols=(("range", subscription("t-seq")),)):
    body = (string(group) + i32(10000) + i32(10000) + string(member) + string(None) + string("consumer")
            + array([string(n) + nbytes(m) for n, m in protocols]))

    def parse(r):
        r.i32()
        error, generation = r.i16(), r.i32()
        _protocol, leader, member_id = r.string(), r.string(), r.string()
        r.array(lambda m: (m.string(), m.string(), m.bytes()))
        return error, generation, leader == member_id, member_id
    return JOIN_GROUP, 5, body, parse


def sync_group_v3(group, generation, member, assignment=b""):
    assignments = [string(member) + nbytes(assignment)] if assignment else []
    body = string(group) + i32(generation) + string(member) + string(None) + array(assignments)

    def parse(r):
        r.i32()
        return r.i16(), r.bytes()
    return SYNC_GROUP, 3, body, parse


def heartbeat_v3(group, generation, member):
    body = string(group) + i32(generation) + string(member) + string(None)

    def parse(r):
        r.i32()
        return r.i16()
    return HEARTBEAT, 3, body, parse


def leave_group_v3(group, member):
    body = string(group) + array([string(member) + string(None)])

    def parse(r):
        r.i32()
        error = r.i16()
        members = r.array(lambda m: (m.string(), m.string(), m.i16()))
        return error, [e for _, _, e in members]
    return LEAVE_GROUP, 3, body, parse


def pipeline(conn, requests):
    """Sends every request before reading any answer; returns the parsed answers in order."""
    sent = [(conn.send_request(key, version, body), parse) for key, version, body, parse in requests]
    out = []
    for corr, parse in sent:
        r = Reader(conn.recv_frame())
        assert r.i32() == corr, "answers out of request order"
        out.append(parse(r))
    return out


def one_by_one(conn, requests):
    return [pipeline(conn, [req])[0] for req in requests]


# --------------------------------------------------------------------------- tests

def test_pipelined_offset_commits_last_one_wins(sluice):
    """Bursts of 50 OffsetCommits pipelined on one connection, each followed on the same
    connection by an OffsetFetch: the fetch sees the burst's last offset, and so does a fetch
    on another connection once every answer is in."""
    group, topic = unique("g-pipe"), unique("t-pipe")
    create_topic(sluice.bootstrap, topic, partitions=1)
    with KafkaConnection(sluice.bootstrap) as conn, KafkaConnection(sluice.bootstrap) as other:
        for burst in range(20):
            offsets = [burst * 1000 + i for i in range(1, 51)]
            answers = pipeline(conn, [offset_commit_v2(group, topic, 0, o) for o in offsets]
                               + [offset_fetch_v1(group, topic, 0)])
            assert answers[:-1] == [NONE] * len(offsets)
            assert answers[-1] == offsets[-1], f"burst {burst}: fetched {answers[-1]} after committing up to {offsets[-1]}"
            assert one_by_one(other, [offset_fetch_v1(group, topic, 0)]) == [offsets[-1]]


def group_sequence(group, member, generation):
    """A member already in a stable one-member group: rejoins (a new generation), syncs,
    heartbeats, commits, leaves, and heartbeats once more after leaving."""
    topic_partition = ("t-seq", 0)
    return [
        join_group_v5(group, member),
        sync_group_v3(group, generation + 1, member, b"assignment-2"),
        heartbeat_v3(group, generation + 1, member),
        offset_commit_v2(group, *topic_partition, 42, generation + 1, member),
        leave_group_v3(group, member),
        heartbeat_v3(group, generation + 1, member),
        offset_fetch_v1(group, *topic_partition),
    ]


def join_stable_group(conn, group):
    """Joins an empty group as its only member and syncs; returns (member id, generation)."""
    error, _, _, member = one_by_one(conn, [join_group_v5(group)])[0]
    assert error == MEMBER_ID_REQUIRED
    error, generation, leader, member = one_by_one(conn, [join_group_v5(group, member)])[0]
    assert (error, leader) == (NONE, True)
    assert one_by_one(conn, [sync_group_v3(group, generation, member, b"assignment-1")])[0] == (NONE, b"assignment-1")
    return member, generation


@pytest.mark.sluice(**FAST_GROUPS)
def test_pipelined_group_sequence_behaves_as_sent_one_by_one(sluice):
    create_topic(sluice.bootstrap, "t-seq", partitions=1)
    results = {}
    for mode, send in (("one by one", one_by_one), ("pipelined", pipeline)):
        group = unique("g-seq")
        with KafkaConnection(sluice.bootstrap) as conn:
            member, generation = join_stable_group(conn, group)
            results[mode] = send(conn, group_sequence(group, member, generation))
            join = results[mode][0]
            assert join[:3] == (NONE, generation + 1, True), f"{mode}: rejoin answered {join}"
    expected = [(NONE, generation + 1, True, member),
                (NONE, b"assignment-2"), NONE, NONE, (NONE, [NONE]), UNKNOWN_MEMBER_ID, 42]
    # Member ids differ between the two groups; everything else must match exactly.
    got = {mode: [r[:3] if i == 0 else r for i, r in enumerate(rs)] for mode, rs in results.items()}
    want = [expected[0][:3]] + expected[1:]
    assert got["one by one"] == want
    assert got["pipelined"] == got["one by one"]


@pytest.mark.sluice(**FAST_GROUPS)
def test_confluent_async_commits_last_one_wins(sluice):
    """A librdkafka consumer in a group commits asynchronously after each of 50 messages, then
    reads back its committed offset: the last commit, round after round."""
    topic = unique("t-async")
    create_topic(sluice.bootstrap, topic, partitions=1)
    produce_records(sluice.bootstrap, topic, make_records(50, 1, "async"))
    for round_ in range(10):
        c = consumer(sluice.bootstrap, **{"group.id": unique("g-async"), "auto.offset.reset": "earliest"})
        try:
            c.subscribe([topic])
            seen = 0
            deadline = time.monotonic() + 60
            while seen < 50 and time.monotonic() < deadline:
                msg = c.poll(1)
                if msg is None or msg.error():
                    continue
                seen += 1
                c.commit(message=msg, asynchronous=True)
            assert seen == 50, f"round {round_}: consumed {seen} of 50"
            committed = c.committed([TopicPartition(topic, 0)], timeout=15)
            assert committed[0].offset == 50, f"round {round_}: committed {committed[0].offset}, not 50"
        finally:
            c.close()


@pytest.mark.sluice(**FAST_GROUPS)
def test_kafka_python_async_commits_last_one_wins(sluice):
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata
    from kafka.structs import TopicPartition as KTopicPartition
    topic = unique("t-kp-async")
    create_topic(sluice.bootstrap, topic, partitions=1)
    produce_records(sluice.bootstrap, topic, make_records(50, 1, "kp-async"))
    tp = KTopicPartition(topic, 0)
    for round_ in range(10):
        # kafka-python fails an async commit that finds the connection's in-flight limit (5 by
        # default) reached; with room for all 50 they are all pipelined on one connection.
        c = KafkaConsumer(topic, bootstrap_servers=sluice.bootstrap, group_id=unique("g-kp-async"),
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          max_in_flight_requests_per_connection=64)
        try:
            commits = []
            deadline = time.monotonic() + 60
            while len(commits) < 50 and time.monotonic() < deadline:
                for msg in c.poll(timeout_ms=1000).get(tp, []):
                    commits.append(c.commit_async({tp: OffsetAndMetadata(msg.offset + 1, "", -1)}))
            assert len(commits) == 50, f"round {round_}: consumed {len(commits)} of 50"
            # kafka-python sends async commits from its I/O loop: wait until each is answered.
            while not all(f.is_done for f in commits) and time.monotonic() < deadline:
                c.poll(timeout_ms=100)
            failed = [f.exception for f in commits if not f.succeeded()]
            assert not failed, f"round {round_}: {len(failed)} commits failed: {failed[:3]}"
            assert c.committed(tp) == 50, f"round {round_}: committed {c.committed(tp)}, not 50"
        finally:
            c.close()


@pytest.mark.sluice(**FAST_GROUPS)
def test_different_connections_do_not_wait_for_each_other(sluice):
    """A JoinGroup waiting for its group's rebalance holds up only its own connection."""
    group, other = unique("g-wait"), unique("g-free")
    create_topic(sluice.bootstrap, "t-seq", partitions=1)
    with (KafkaConnection(sluice.bootstrap) as first, KafkaConnection(sluice.bootstrap) as a,
          KafkaConnection(sluice.bootstrap) as b):
        member1, generation = join_stable_group(first, group)
        error, _, _, member2 = one_by_one(a, [join_group_v5(group)])[0]
        assert error == MEMBER_ID_REQUIRED
        # A second member's join waits until the first member rejoins.
        key, version, body, parse = join_group_v5(group, member2)
        corr = a.send_request(key, version, body)
        # Meanwhile another connection commits and reads offsets at once...
        assert one_by_one(b, [offset_commit_v2(other, "t-seq", 0, 7), offset_fetch_v1(other, "t-seq", 0)]) == [NONE, 7]
        # ...while the JoinGroup still waits.
        readable, _, _ = select.select([a.sock], [], [], 0)
        assert not readable, "the second member's JoinGroup was answered before the first member rejoined"
        rejoin = one_by_one(first, [join_group_v5(group, member1)])[0]
        assert rejoin[:3] == (NONE, generation + 1, True)
        r = Reader(a.recv_frame())
        assert r.i32() == corr
        assert parse(r)[:3] == (NONE, generation + 1, False)
