"""Bad input to the group coordinator, on raw sockets: each gets Kafka's error code, the
connection stays usable, and no group is left stuck for other members."""

import pytest
from confluent_kafka import TopicPartition

import kafka_wire as kw
from cluster import wait_until
from helpers import consumer, create_topic, unique

GROUP_ARGS = ["--group-consumer-session-timeout-ms", "6000", "--group-consumer-heartbeat-interval-ms", "1000",
              "--group-initial-rebalance-delay-ms", "0"]


def subscription(*topics):
    """ConsumerProtocolSubscription v0."""
    return kw.i16(0) + kw.array([kw.string(t) for t in topics]) + kw.nbytes(b"")


def join(conn, group, topic, **kw_args):
    """Joins a classic group as a new member: MEMBER_ID_REQUIRED, then the real join."""
    err, _, _, _, member, _ = kw.join_group_v5(conn, group, protocols=[("range", subscription(topic))], **kw_args)
    assert err == kw.MEMBER_ID_REQUIRED
    return kw.join_group_v5(conn, group, member_id=member, protocols=[("range", subscription(topic))], **kw_args)


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_classic_errors(sluice):
    bs = sluice.bootstrap
    topic, group = unique("bad"), unique("g")
    create_topic(bs, topic, 2)
    with kw.KafkaConnection(bs) as conn:
        # Garbage protocol metadata for the consumer protocol type.
        err, *_ = kw.join_group_v5(conn, group, protocols=[("range", b"\xff\x01garbage")])
        assert err == kw.INCONSISTENT_GROUP_PROTOCOL
        err, *_ = kw.join_group_v5(conn, group, protocols=[("range", subscription(topic))], session_ms=10)
        assert err == kw.INVALID_SESSION_TIMEOUT
        assert kw.heartbeat_v3(conn, unique("nogroup"), 1, "nobody") == kw.UNKNOWN_MEMBER_ID

        err, generation, protocol, leader, member, members = join(conn, group, topic)
        assert (err, protocol, leader) == (0, "range", member)
        assert [m for m, _ in members] == [member]
        assert kw.sync_group_v3(conn, group, generation + 1, member)[0] == kw.ILLEGAL_GENERATION
        assert kw.sync_group_v3(conn, group, generation, "stranger")[0] == kw.UNKNOWN_MEMBER_ID
        assert kw.heartbeat_v3(conn, group, generation - 1, member) == kw.ILLEGAL_GENERATION
        # A 2 MiB assignment blob is refused; the group goes back to rebalancing.
        err, _ = kw.sync_group_v3(conn, group, generation, member, [(member, b"\0" * (2 << 20))])
        assert err == kw.INVALID_REQUEST
        assert kw.heartbeat_v3(conn, group, generation, member) == kw.REBALANCE_IN_PROGRESS

    # The raw member is gone (its connection closed, its session expires); a real consumer
    # still gets the group and every partition.
    c = consumer(bs, **{"group.id": group, "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    try:
        c.subscribe([topic])
        wait_until(lambda: (c.poll(0.2), len(c.assignment()) == 2)[1], 60, what="the real consumer's assignment")
        c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()


@pytest.mark.sluice(controlplane_args=GROUP_ARGS)
def test_kip848_errors(sluice):
    bs = sluice.bootstrap
    topic, group = unique("bad"), unique("g")
    create_topic(bs, topic, 2)
    with kw.KafkaConnection(bs) as conn:
        err, member, epoch = kw.consumer_group_heartbeat_v0(conn, group, "", 0, topics=[topic])
        assert err == 0 and member and epoch >= 1
        # A stale or future epoch is fenced; an unknown member is unknown.
        assert kw.consumer_group_heartbeat_v0(conn, group, member, epoch + 5)[0] == kw.FENCED_MEMBER_EPOCH
        assert kw.consumer_group_heartbeat_v0(conn, group, "stranger", epoch)[0] == kw.UNKNOWN_MEMBER_ID
        # A first heartbeat without a subscription is invalid.
        assert kw.consumer_group_heartbeat_v0(conn, group, "", 0)[0] == kw.INVALID_REQUEST
        # A classic join to a consumer-protocol group with members is refused.
        err, *_ = kw.join_group_v5(conn, group, protocols=[("range", subscription(topic))])
        assert err == kw.INCONSISTENT_GROUP_PROTOCOL
        # Still a member in good standing.
        err, _, same = kw.consumer_group_heartbeat_v0(conn, group, member, epoch)
        assert err == 0 and same >= epoch
