"""Idempotent producers: a batch sent again with the same producer id, epoch and sequence (a
client's retry) gets the offset of the first copy and is not stored twice, whether the first
copy is still being committed or already was."""

import pytest
import kafka_wire as kw
from helpers import create_topic, now_ms, unique, watermarks


def batch(pid, seq, n, tag):
    ts = now_ms()
    return kw.record_batch([(None, f"{tag}-{i}".encode(), [], ts) for i in range(n)], producer=(pid, 0, seq))


@pytest.mark.each_backend
def test_retried_idempotent_batches_are_stored_once(sluice):
    topic = unique("idem")
    create_topic(sluice.bootstrap, topic, 1)
    with kw.KafkaConnection(sluice.bootstrap) as conn:
        version = kw.pick_produce_version(conn)
        first = batch(4242, 0, 5, "a")
        # The same batch twice, pipelined: the second arrives while the first is in flight.
        c1 = conn.send_request(kw.PRODUCE, version, kw.produce_body(topic, 0, first))
        c2 = conn.send_request(kw.PRODUCE, version, kw.produce_body(topic, 0, first))
        answers = []
        for corr in (c1, c2):
            r = kw.Reader(conn.recv_frame())
            assert r.i32() == corr
            answers.append(kw.parse_produce_response(r, version, topic, 0))
        assert [(a["error_code"], a["base_offset"]) for a in answers] == [(0, 0), (0, 0)]

        # Sent again after it was committed: still the first offset.
        again = kw.produce(conn, version, topic, 0, first)
        assert (again["error_code"], again["base_offset"]) == (0, 0)

        # The next sequence is new data; another producer's sequence 0 is new data too.
        nxt = kw.produce(conn, version, topic, 0, batch(4242, 5, 3, "b"))
        other = kw.produce(conn, version, topic, 0, batch(777, 0, 2, "c"))
        assert (nxt["error_code"], nxt["base_offset"]) == (0, 5)
        assert (other["error_code"], other["base_offset"]) == (0, 8)
    assert watermarks(sluice.bootstrap, topic, 1) == {0: (0, 10)}
