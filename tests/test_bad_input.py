"""Malformed and hostile input on raw sockets. After each case a normal client must still
produce and consume, and data written before the case must be intact."""

import pytest
from confluent_kafka import KafkaError

import kafka_wire as kw
from helpers import (HealthProbe, consume_range, create_topic, now_ms, producer, topic_names, unique,
                     watermarks)

MAX_REQUEST = 1024 * 1024
MAX_MESSAGE = 100_000

pytestmark = pytest.mark.sluice(dataplane_args=[
    "--socket-request-max-bytes", MAX_REQUEST,
    "--max-message-bytes", MAX_MESSAGE,
    "--auto-create-topics", "false",
])


def answered_or_closed(conn, timeout=10):
    """'closed' if the broker drops the connection, 'answered' if it sends a response frame,
    None if it does neither within timeout."""
    conn.sock.settimeout(timeout)
    try:
        conn.recv_frame()
        return "answered"
    except kw.ConnectionClosed:
        return "closed"
    except TimeoutError:
        return None


def test_truncated_frame(sluice):
    probe = HealthProbe(sluice.bootstrap)
    header = kw.i16(kw.METADATA) + kw.i16(1) + kw.i32(7) + kw.string("half")
    # A frame that announces 1000 bytes but stalls after a few: other clients must not be blocked
    # while it is pending (the data plane runs on a single core here).
    stalled = kw.KafkaConnection(sluice.bootstrap)
    stalled.send_raw(kw.i32(1000) + header)
    probe.check("while-stalled")
    # The same, then the client disappears mid-frame.
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        conn.send_raw(kw.i32(1000) + header)
    stalled.close()
    probe.check("after-close")


@pytest.mark.parametrize("length", [2 * MAX_REQUEST, MAX_REQUEST + 1, -5, 0x7FFFFFFF])
def test_frame_length_out_of_bounds_closes_connection(sluice, length):
    probe = HealthProbe(sluice.bootstrap)
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        conn.send_raw(kw.i32(length) + b"\x00" * 64)
        assert conn.wait_closed(10), f"connection left open after a frame length of {length}"
    probe.check()


@pytest.mark.parametrize("case", ["unknown-api-key", "garbage-body", "huge-array-count", "huge-group-array"])
def test_unparseable_request(sluice, case):
    probe = HealthProbe(sluice.bootstrap)
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        if case == "unknown-api-key":
            conn.send_request(9999, 0, b"\x00" * 16)
        elif case == "huge-array-count":
            # Metadata v1 whose topic array claims 2^31-1 entries in a 9-byte body: the decoder
            # must fail on the short body, not abort on a 50 GB allocation.
            conn.send_request(kw.METADATA, 1, kw.i32(0x7FFFFFFF) + b"\x00\x01t")
        elif case == "huge-group-array":
            # The same in a request forwarded to the group coordinator (DescribeGroups v0).
            conn.send_request(15, 0, kw.i32(0x7FFFFFFF) + b"\x00\x01g")
        else:
            # transactional_id claims 32767 bytes, then junk: no valid Produce parse exists.
            conn.send_request(kw.PRODUCE, 3, b"\x7f\xff" + bytes((i * 37 + 11) % 256 for i in range(62)))
        outcome = answered_or_closed(conn)
        assert outcome is not None, f"{case}: broker neither answered nor closed the connection"
    probe.check()


def test_api_versions_unsupported_version(sluice):
    probe = HealthProbe(sluice.bootstrap)
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        body = kw.compact_string("sluice-e2e") + kw.compact_string("1.0") + kw.uvarint(0)
        r = conn.request(kw.API_VERSIONS, 99, body, flexible=True)
        error, versions = kw.parse_api_versions_v0(r)
        assert error == kw.UNSUPPORTED_VERSION, f"ApiVersions v99 answered error {error}, want 35"
        # KIP-511: the error response names the ApiVersions versions the broker does support.
        assert kw.API_VERSIONS in versions and versions[kw.API_VERSIONS][1] >= 3, versions
        # Clients retry on the same connection with a supported version.
        error, versions = kw.api_versions(conn, 0)
        assert error == kw.NONE
        assert {kw.PRODUCE, kw.FETCH, kw.METADATA, kw.API_VERSIONS} <= set(versions), versions
    probe.check()


def one_record(value, key=b"k", ts=None):
    """(key, value, headers, timestamp) as kafka_wire.record_batch takes it."""
    return (key, value, [("h", b"v")], now_ms() if ts is None else ts)


def test_corrupt_crc_rejected(sluice):
    probe = HealthProbe(sluice.bootstrap)
    topic = unique("crc")
    create_topic(sluice.bootstrap, topic, 1)
    record = one_record(b"payload-" + bytes(range(200)), ts=now_ms())
    batch = kw.record_batch([record])
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        version = kw.pick_produce_version(conn)
        resp = kw.produce(conn, version, topic, 0, kw.corrupt_last_byte(batch))
        assert resp["error_code"] == kw.CORRUPT_MESSAGE, resp
        assert watermarks(sluice.bootstrap, topic, 1)[0] == (0, 0), "corrupt batch was appended"
        # The connection stays usable and the intact batch is accepted at offset 0.
        resp = kw.produce(conn, version, topic, 0, batch)
        assert resp["error_code"] == kw.NONE and resp["base_offset"] == 0, resp
    got = consume_range(sluice.bootstrap, topic, {0: 1})[0]
    assert [(g.key, g.value, g.headers, g.timestamp) for g in got] == [record]
    probe.check()


def test_message_too_large(sluice):
    probe = HealthProbe(sluice.bootstrap)
    topic = unique("big")
    create_topic(sluice.bootstrap, topic, 1)
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        version = kw.pick_produce_version(conn)
        resp = kw.produce(conn, version, topic, 0, kw.record_batch([one_record(b"x" * (2 * MAX_MESSAGE))]))
        assert resp["error_code"] == kw.MESSAGE_TOO_LARGE, resp
        resp = kw.produce(conn, version, topic, 0, kw.record_batch([one_record(b"y" * (MAX_MESSAGE // 2))]))
        assert resp["error_code"] == kw.NONE and resp["base_offset"] == 0, resp

    # A real client sees the same error in its delivery report.
    errors = []
    p = producer(sluice.bootstrap)
    p.produce(topic, value=b"z" * (MAX_MESSAGE + 50_000), partition=0,
              on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors
    assert watermarks(sluice.bootstrap, topic, 1)[0] == (0, 1)
    probe.check()


def test_produce_to_unknown_topic_without_auto_create(sluice):
    probe = HealthProbe(sluice.bootstrap)
    topic = unique("nope")
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        version = kw.pick_produce_version(conn)
        resp = kw.produce(conn, version, topic, 0, kw.record_batch([one_record(b"lost")]))
        assert resp["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, resp
        md = kw.metadata_v1(conn, [topic])
        assert md["topics"][topic]["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, md
    assert topic not in topic_names(sluice.bootstrap), "topic was auto-created although disabled"
    probe.check()
