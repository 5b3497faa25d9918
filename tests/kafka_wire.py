"""Minimal hand-rolled Kafka wire protocol helpers for tests that need exact bytes.

Only what the tests need is implemented: request framing, ApiVersions, Metadata v1,
Produce v3..v8 (non-flexible) and a v2 RecordBatch encoder with CRC-32C.
Field layouts follow apache/kafka clients/src/main/resources/common/message/*.json.
"""

import socket
import struct
import time

# API keys
PRODUCE = 0
FETCH = 1
METADATA = 3
API_VERSIONS = 18

# Error codes
NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35


class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection."""


# --------------------------------------------------------------------------- encoding

def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def u32(v):
    return struct.pack(">I", v)


def string(s):
    """STRING / NULLABLE_STRING (int16 length)."""
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    """BYTES / NULLABLE_BYTES / RECORDS (int32 length)."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    """ARRAY of already-encoded items; None encodes a null array."""
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(items)


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(n):
    """Zig-zag signed varint/varlong."""
    return uvarint((n << 1) ^ (n >> 63))


def compact_string(s):
    if s is None:
        return uvarint(0)
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


def varbytes(b):
    """Record-level nullable bytes: varint length (-1 = null) + data."""
    if b is None:
        return varint(-1)
    return varint(len(b)) + b


# --------------------------------------------------------------------------- decoding

class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} bytes at {self.pos}, have {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def i8(self):
        return struct.unpack(">b", self._take(1))[0]

    def i16(self):
        return struct.unpack(">h", self._take(2))[0]

    def i32(self):
        return struct.unpack(">i", self._take(4))[0]

    def i64(self):
        return struct.unpack(">q", self._take(8))[0]

    def boolean(self):
        return self.i8() != 0

    def string(self):
        n = self.i16()
        return None if n < 0 else self._take(n).decode()

    def bytes(self):
        n = self.i32()
        return None if n < 0 else self._take(n)

    def array(self, item):
        n = self.i32()
        return None if n < 0 else [item(self) for _ in range(n)]

    def remaining(self):
        return len(self.data) - self.pos

    def uvarint(self):
        shift = n = 0
        while True:
            b = self._take(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self._take(n).decode()

    def compact_array(self, item):
        n = self.uvarint() - 1
        return None if n < 0 else [item(self) for _ in range(n)]

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self._take(self.uvarint())


# --------------------------------------------------------------------------- CRC-32C

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- record batch v2

def encode_record(offset_delta, timestamp_delta, key, value, headers=()):
    body = (i8(0) + varint(timestamp_delta) + varint(offset_delta) + varbytes(key) + varbytes(value)
            + varint(len(headers)))
    for hk, hv in headers:
        hk = hk.encode() if isinstance(hk, str) else hk
        body += varint(len(hk)) + hk + varbytes(hv)
    return varint(len(body)) + body


def record_batch(records, base_offset=0, producer=(-1, -1, -1)):
    """Build an uncompressed magic-2 RecordBatch.

    records: iterable of (key, value, headers, timestamp_ms) tuples.
    producer: (producer id, epoch, base sequence) of an idempotent producer, or -1s.
    """
    records = list(records)
    assert records, "a record batch needs at least one record"
    base_ts = records[0][3]
    max_ts = max(r[3] for r in records)
    body = b"".join(encode_record(i, ts - base_ts, k, v, h) for i, (k, v, h, ts) in enumerate(records))
    after_crc = (i16(0)                    # attributes: no compression, CreateTime
                 + i32(len(records) - 1)   # lastOffsetDelta
                 + i64(base_ts) + i64(max_ts)
                 + i64(producer[0]) + i16(producer[1]) + i32(producer[2])  # producerId, epoch, baseSequence
                 + i32(len(records)) + body)
    after_length = i32(0) + i8(2) + u32(crc32c(after_crc)) + after_crc  # leaderEpoch, magic, crc
    return i64(base_offset) + i32(len(after_length)) + after_length


def corrupt_last_byte(batch):
    """Flip the last byte of a batch (inside the CRC-covered record data)."""
    return batch[:-1] + bytes([batch[-1] ^ 0xFF])


# --------------------------------------------------------------------------- connection

class KafkaConnection:
    """One raw TCP connection speaking Kafka framing."""

    def __init__(self, bootstrap, timeout=15.0, client_id="sluice-e2e"):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.client_id = client_id
        self.next_correlation_id = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise ConnectionClosed(str(e)) from e
            if not chunk:
                raise ConnectionClosed(f"peer closed after {len(buf)}/{n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        (size,) = struct.unpack(">i", self._recv_exact(4))
        return self._recv_exact(size)

    def header(self, api_key, api_version, correlation_id, flexible=False):
        h = i16(api_key) + i16(api_version) + i32(correlation_id) + string(self.client_id)
        if flexible:
            h += uvarint(0)  # empty tagged fields (request header v2)
        return h

    def send_request(self, api_key, api_version, body, flexible=False):
        corr = self.next_correlation_id
        self.next_correlation_id += 1
        msg = self.header(api_key, api_version, corr, flexible) + body
        self.send_raw(i32(len(msg)) + msg)
        return corr

    def request(self, api_key, api_version, body, flexible=False):
        """Send a request and return a Reader positioned after the correlation id.

        Only response header v0 is handled (non-flexible responses, and ApiVersions).
        """
        corr = self.send_request(api_key, api_version, body, flexible)
        frame = self.recv_frame()
        r = Reader(frame)
        got = r.i32()
        assert got == corr, f"correlation id mismatch: sent {corr}, got {got}"
        return r

    def wait_closed(self, timeout):
        """True if the peer closes the connection within timeout, False if it stays open.

        Any bytes the peer sends meanwhile are discarded.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True


# --------------------------------------------------------------------------- APIs

def api_versions(conn, version=0):
    """ApiVersions v0..v2; returns (error_code, {api_key: (min, max)})."""
    r = conn.request(API_VERSIONS, version, b"")
    return parse_api_versions_v0(r)


def parse_api_versions_v0(r):
    error = r.i16()
    keys = r.array(lambda rr: (rr.i16(), rr.i16(), rr.i16()))
    return error, {k: (lo, hi) for k, lo, hi in keys or []}


def metadata_v1(conn, topics=()):
    """Metadata v1. topics=None asks for all topics. Returns a dict."""
    body = array(None if topics is None else [string(t) for t in topics])
    r = conn.request(METADATA, 1, body)
    brokers = r.array(lambda rr: {"node_id": rr.i32(), "host": rr.string(), "port": rr.i32(),
                                  "rack": rr.string()})
    controller_id = r.i32()

    def partition(rr):
        return {"error_code": rr.i16(), "partition": rr.i32(), "leader": rr.i32(),
                "replicas": rr.array(Reader.i32), "isr": rr.array(Reader.i32)}

    def topic(rr):
        return {"error_code": rr.i16(), "name": rr.string(), "is_internal": rr.boolean(),
                "partitions": rr.array(partition)}

    topics_out = r.array(topic)
    return {"brokers": brokers, "controller_id": controller_id,
            "topics": {t["name"]: t for t in topics_out}}


def pick_produce_version(conn):
    """Lowest non-flexible Produce version (3..8) the broker advertises."""
    err, versions = api_versions(conn)
    assert err == NONE, f"ApiVersions v0 failed with error {err}"
    assert PRODUCE in versions, f"broker does not advertise Produce: {versions}"
    lo, hi = versions[PRODUCE]
    for v in range(3, 9):
        if lo <= v <= hi:
            return v
    raise AssertionError(f"broker Produce versions {lo}..{hi} include no non-flexible v3..v8")


def produce_body(topic, partition, batch, acks=-1, timeout_ms=15000):
    """The body of a non-flexible Produce request (v3..v8) with one batch for one partition."""
    return (string(None) + i16(acks) + i32(timeout_ms)
            + array([string(topic) + array([i32(partition) + nbytes(batch)])]))


def produce(conn, version, topic, partition, batch, acks=-1, timeout_ms=15000):
    """Produce one batch to one partition; returns the partition response dict."""
    assert 3 <= version <= 8
    r = conn.request(PRODUCE, version, produce_body(topic, partition, batch, acks, timeout_ms))
    return parse_produce_response(r, version, topic, partition)


def parse_produce_response(r, version, topic, partition):
    """Reads a Produce response (positioned after the correlation id) for one partition."""

    def part(rr):
        p = {"partition": rr.i32(), "error_code": rr.i16(), "base_offset": rr.i64(),
             "log_append_time": rr.i64()}
        if version >= 5:
            p["log_start_offset"] = rr.i64()
        if version >= 8:
            p["record_errors"] = rr.array(lambda x: (x.i32(), x.string()))
            p["error_message"] = rr.string()
        return p

    topics = r.array(lambda rr: (rr.string(), rr.array(part)))
    r.i32()  # throttle_time_ms
    assert len(topics) == 1 and topics[0][0] == topic, f"unexpected produce response topics {topics}"
    parts = topics[0][1]
    assert len(parts) == 1 and parts[0]["partition"] == partition, f"unexpected partitions {parts}"
    return parts[0]


# --------------------------------------------------------------------------- group APIs

JOIN_GROUP = 11
HEARTBEAT = 12
SYNC_GROUP = 14
CONSUMER_GROUP_HEARTBEAT = 68

INCONSISTENT_GROUP_PROTOCOL = 23
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
INVALID_REQUEST = 42
MEMBER_ID_REQUIRED = 79
FENCED_MEMBER_EPOCH = 110


def join_group_v5(conn, group, member_id="", protocols=(("range", b""),), session_ms=6000, rebalance_ms=6000,
                  protocol_type="consumer"):
    """JoinGroup v5; returns (error, generation, protocol, leader, member_id, [(member_id, metadata)])."""
    body = (string(group) + i32(session_ms) + i32(rebalance_ms) + string(member_id) + string(None)
            + string(protocol_type) + array([string(n) + nbytes(m) for n, m in protocols]))
    r = conn.request(JOIN_GROUP, 5, body)
    r.i32()  # throttle
    error, generation = r.i16(), r.i32()
    protocol, leader, member = r.string(), r.string(), r.string()
    members = r.array(lambda rr: (rr.string(), rr.string(), rr.bytes()))
    return error, generation, protocol, leader, member, [(m, meta) for m, _, meta in members]


def sync_group_v3(conn, group, generation, member_id, assignments=()):
    """SyncGroup v3; returns (error, assignment)."""
    body = (string(group) + i32(generation) + string(member_id) + string(None)
            + array([string(m) + nbytes(a) for m, a in assignments]))
    r = conn.request(SYNC_GROUP, 3, body)
    r.i32()
    return r.i16(), r.bytes()


def heartbeat_v3(conn, group, generation, member_id):
    body = string(group) + i32(generation) + string(member_id) + string(None)
    r = conn.request(HEARTBEAT, 3, body)
    r.i32()
    return r.i16()


def consumer_group_heartbeat_v0(conn, group, member_id, epoch, topics=None):
    """ConsumerGroupHeartbeat v0 (flexible); returns (error, member_id, member_epoch)."""
    topic_array = uvarint(0) if topics is None else uvarint(len(topics) + 1) + b"".join(compact_string(t) for t in topics)
    owned = uvarint(0) if topics is None else uvarint(1)  # null unless joining (then empty)
    body = (compact_string(group) + compact_string(member_id) + i32(epoch) + compact_string(None)
            + compact_string(None) + i32(60000 if topics is not None else -1) + topic_array
            + compact_string(None) + owned + uvarint(0))
    corr = conn.send_request(CONSUMER_GROUP_HEARTBEAT, 0, body, flexible=True)
    r = Reader(conn.recv_frame())
    assert r.i32() == corr
    r.data, r.pos = r.data, r.pos + 1  # response header v1: empty tagged fields
    r.i32()  # throttle
    error = r.i16()

    def compact_nullable_string():
        n = _read_uvarint(r)
        return None if n == 0 else r._take(n - 1).decode()
    compact_nullable_string()  # error message
    member = compact_nullable_string()
    return error, member, r.i32()


def _read_uvarint(r):
    shift = value = 0
    while True:
        b = r.i8() & 0xFF
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7


OFFSET_FETCH = 9
OFFSET_DELETE = 47
GROUP_SUBSCRIBED_TO_TOPIC = 86
GROUP_ID_NOT_FOUND = 69


def _compact_nullable_string(r):
    n = _read_uvarint(r)
    return None if n == 0 else r._take(n - 1).decode()


def _compact_array(r, item):
    n = _read_uvarint(r)
    return None if n == 0 else [item(r) for _ in range(n - 1)]


def _skip_tags(r):
    for _ in range(_read_uvarint(r)):
        _read_uvarint(r)
        r._take(_read_uvarint(r))


def offset_fetch_v8(conn, groups):
    """OffsetFetch v8, several groups in one request, all their offsets each.
    Returns {group: (error, {(topic, partition): (offset, metadata)})}."""
    items = [compact_string(g) + uvarint(0) + uvarint(0) for g in groups]  # topics null: all
    body = uvarint(len(items) + 1) + b"".join(items) + i8(0) + uvarint(0)
    corr = conn.send_request(OFFSET_FETCH, 8, body, flexible=True)
    r = Reader(conn.recv_frame())
    assert r.i32() == corr
    _skip_tags(r)  # response header v1
    r.i32()  # throttle

    def partition(rr):
        p, off, _epoch = rr.i32(), rr.i64(), rr.i32()
        meta, err = _compact_nullable_string(rr), rr.i16()
        _skip_tags(rr)
        return p, off, meta, err

    def topic(rr):
        name = _compact_nullable_string(rr)
        parts = _compact_array(rr, partition)
        _skip_tags(rr)
        return name, parts

    def group(rr):
        gid = _compact_nullable_string(rr)
        topics = _compact_array(rr, topic)
        err = rr.i16()
        _skip_tags(rr)
        return gid, err, {(t, p): (off, meta) for t, parts in topics for p, off, meta, _ in parts}

    return {gid: (err, offs) for gid, err, offs in _compact_array(r, group)}


def offset_delete_v0(conn, group, topic, partitions):
    """OffsetDelete v0; returns (error, {partition: error})."""
    body = string(group) + array([string(topic) + array([i32(p) for p in partitions])])
    r = conn.request(OFFSET_DELETE, 0, body)
    error = r.i16()
    r.i32()
    topics = r.array(lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16()))))
    return error, {p: e for _, parts in (topics or []) for p, e in parts}


def fetch_v4(conn, topic, partitions, max_bytes, partition_max_bytes=1 << 20, max_wait_ms=0):
    """Fetch v4 of one topic from offset 0 of each of `partitions`, in that order; returns
    {partition: (error_code, high_watermark, records bytes)}."""
    parts = [i32(p) + i64(0) + i32(partition_max_bytes) for p in partitions]
    body = (i32(-1) + i32(max_wait_ms) + i32(0) + i32(max_bytes) + i8(0)
            + array([string(topic) + array(parts)]))
    r = conn.request(FETCH, 4, body)
    r.i32()  # throttle_time_ms

    def part(rr):
        p, err, hwm = rr.i32(), rr.i16(), rr.i64()
        rr.i64()  # last_stable_offset
        rr.array(lambda a: (a.i64(), a.i64()))  # aborted transactions
        return p, (err, hwm, rr.bytes() or b"")

    out = {}
    for _, ps in r.array(lambda rr: (rr.string(), rr.array(part))):
        out.update(dict(ps))
    return out


def batch_sizes(records):
    """Sizes of the whole record batches in a Fetch response's records bytes."""
    sizes, at = [], 0
    while at + 12 <= len(records):
        (length,) = struct.unpack(">i", records[at + 8:at + 12])
        if at + 12 + length > len(records):
            break  # a partial batch at the end (a broker may send one; clients skip it)
        sizes.append(12 + length)
        at += 12 + length
    return sizes


DESCRIBE_CLUSTER = 60


def describe_cluster_v0(conn):
    """DescribeCluster v0 (flexible): {"cluster_id", "controller_id", "brokers": [(id, host,
    port, rack)]}."""
    r = conn.request(DESCRIBE_CLUSTER, 0, b"\x00" + uvarint(0), flexible=True)
    r.tagged_fields()  # response header v1
    r.i32()  # throttle time
    error = r.i16()
    assert error == 0, f"DescribeCluster error {error}: {r.compact_string()}"
    r.compact_string()  # error message
    cluster_id, controller_id = r.compact_string(), r.i32()

    def broker(b):
        out = (b.i32(), b.compact_string(), b.i32(), b.compact_string())
        b.tagged_fields()
        return out
    return {"cluster_id": cluster_id, "controller_id": controller_id, "brokers": r.compact_array(broker)}
