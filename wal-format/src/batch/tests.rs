//! Tests for the record batch v2 helpers.
//!
//! Batches are built here from records by an encoder written independently of `batch.rs`
//! (zig-zag varints, CRC32C over bytes 21..end), and the encoder itself is pinned against a
//! batch captured from a real Kafka broker, so a test that passes is not just the code agreeing
//! with itself.

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

// ---------------------------------------------------------------------------------------------
// Batch builder
// ---------------------------------------------------------------------------------------------

/// One record of a batch under construction.
#[derive(Debug, Clone)]
struct Rec {
    ts_delta: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Rec {
    fn value(ts_delta: i64, value: &[u8]) -> Self {
        Self { ts_delta, key: None, value: Some(value.to_vec()), headers: Vec::new() }
    }
}

/// Everything the builder puts in a batch header, plus the records.
#[derive(Debug, Clone)]
struct Spec {
    base_offset: i64,
    partition_leader_epoch: i32,
    attributes: i16,
    base_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<Rec>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            base_timestamp: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
        }
    }
}

impl Spec {
    fn with_values(base_offset: i64, values: &[&[u8]]) -> Self {
        let records = values.iter().enumerate().map(|(i, v)| Rec::value(10 * i as i64, v)).collect();
        Self { base_offset, records, ..Self::default() }
    }

    fn max_timestamp(&self) -> i64 {
        let max_delta = self.records.iter().map(|r| r.ts_delta).max().unwrap_or(0);
        self.base_timestamp.wrapping_add(max_delta)
    }

    fn last_offset_delta(&self) -> i32 {
        // Kafka never sends an empty batch; an empty one here still needs a delta that
        // parse_header accepts.
        self.records.len().saturating_sub(1) as i32
    }
}

/// Kafka's zig-zag varint/varlong.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A varint length followed by the bytes; length -1 for null.
fn put_nullable(out: &mut Vec<u8>, b: &Option<Vec<u8>>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// One record: `length varint | attributes i8 | timestamp_delta varlong | offset_delta varint |
/// key | value | header_count varint | headers`.
fn put_record(out: &mut Vec<u8>, offset_delta: i32, r: &Rec) {
    let mut body = vec![0u8]; // record attributes, unused by Kafka
    put_varint(&mut body, r.ts_delta);
    put_varint(&mut body, offset_delta.into());
    put_nullable(&mut body, &r.key);
    put_nullable(&mut body, &r.value);
    put_varint(&mut body, r.headers.len() as i64);
    for (k, v) in &r.headers {
        put_varint(&mut body, k.len() as i64);
        body.extend_from_slice(k);
        put_nullable(&mut body, v);
    }
    put_varint(out, body.len() as i64);
    out.extend_from_slice(&body);
}

/// Builds a whole, valid, uncompressed-layout batch (the attributes are written as given, so a
/// "compressed" batch holds plain records but a valid CRC).
fn build(spec: &Spec) -> Vec<u8> {
    let mut records = Vec::new();
    for (i, r) in spec.records.iter().enumerate() {
        put_record(&mut records, i as i32, r);
    }
    let mut b = Vec::with_capacity(HEADER_LEN + records.len());
    b.extend_from_slice(&spec.base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&spec.partition_leader_epoch.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]); // crc, below
    b.extend_from_slice(&spec.attributes.to_be_bytes());
    b.extend_from_slice(&spec.last_offset_delta().to_be_bytes());
    b.extend_from_slice(&spec.base_timestamp.to_be_bytes());
    b.extend_from_slice(&spec.max_timestamp().to_be_bytes());
    b.extend_from_slice(&spec.producer_id.to_be_bytes());
    b.extend_from_slice(&spec.producer_epoch.to_be_bytes());
    b.extend_from_slice(&spec.base_sequence.to_be_bytes());
    b.extend_from_slice(&(spec.records.len() as i32).to_be_bytes());
    assert_eq!(b.len(), HEADER_LEN);
    b.extend_from_slice(&records);
    reseal(&mut b);
    b
}

/// Rewrites the stored CRC after a test edited CRC-covered bytes on purpose.
fn reseal(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Rewrites `batch_length` to match the buffer.
fn fix_length(b: &mut [u8]) {
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
}

fn expected_positions(spec: &Spec) -> Vec<RecordPos> {
    spec.records
        .iter()
        .enumerate()
        .map(|(i, r)| RecordPos { offset_delta: i as i32, timestamp: spec.base_timestamp + r.ts_delta })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden batches
// ---------------------------------------------------------------------------------------------

// Two batches written by a Kafka 0.11 broker, as published in kafka-python's record tests
// (test/record/test_records.py). Real CRCs, so they pin the CRC region and the polynomial.

/// Offset 0, leader epoch 1, one record with null key and value "123".
const KAFKA_BATCH_1: [u8; 71] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3b, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x18, 0xa2, 0x70, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x5d, 0xff, 0x7b, 0x06, 0x3c, 0x00, 0x00, 0x01, 0x5d, 0xff, 0x7b, 0x06, 0x3c, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x00, 0x00, 0x01,
    0x06, 0x31, 0x32, 0x33, 0x00,
];

/// Offset 1, leader epoch 2, two records with null key and empty value, the second 168 ms later.
const KAFKA_BATCH_2: [u8; 76] = [
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x02, 0x02, 0xc8, 0x5c, 0xbd, 0x23, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x5d, 0xff, 0x7c, 0xdd, 0x6c, 0x00, 0x00, 0x01, 0x5d, 0xff, 0x7c, 0xde, 0x14, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x02, 0x0c, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x0e, 0x00, 0xd0, 0x02, 0x02, 0x01, 0x00, 0x00,
];

fn kafka_batch_2_spec() -> Spec {
    let empty = |ts_delta| Rec { ts_delta, key: None, value: Some(Vec::new()), headers: Vec::new() };
    Spec {
        base_offset: 1,
        partition_leader_epoch: 2,
        base_timestamp: 0x015d_ff7c_dd6c,
        records: vec![empty(0), empty(168)],
        ..Spec::default()
    }
}

#[test]
fn varint_matches_kafka() {
    for (v, bytes) in [
        (0i64, &[0x00][..]),
        (-1, &[0x01]),
        (1, &[0x02]),
        (63, &[0x7e]),
        (-64, &[0x7f]),
        (64, &[0x80, 0x01]),
        (168, &[0xd0, 0x02]),
        (300, &[0xd8, 0x04]),
        (i64::MIN, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out, bytes, "{v}");
        assert_eq!(varint(&out, 0), Ok((v, bytes.len())), "{v}");
    }
}

#[test]
fn builder_reproduces_a_kafka_batch() {
    assert_eq!(build(&kafka_batch_2_spec()), KAFKA_BATCH_2);
}

#[test]
fn kafka_batches_verify() {
    let h = verify(&KAFKA_BATCH_1).unwrap();
    assert_eq!(h.base_offset, 0);
    assert_eq!(h.batch_length, 59);
    assert_eq!(h.partition_leader_epoch, 1);
    assert_eq!(h.crc, 0x0318_a270);
    assert_eq!(h.record_count, 1);
    assert_eq!(h.size(), KAFKA_BATCH_1.len());
    assert_eq!(compute_crc(&KAFKA_BATCH_1), Ok(0x0318_a270));

    let h = verify(&KAFKA_BATCH_2).unwrap();
    assert_eq!(h.base_offset, 1);
    assert_eq!(h.last_offset_delta, 1);
    assert_eq!(h.last_offset(), 2);
    assert_eq!(h.base_timestamp, 0x015d_ff7c_dd6c);
    assert_eq!(h.max_timestamp, 0x015d_ff7c_de14);
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (-1, -1, -1));
    assert_eq!(
        record_positions(&KAFKA_BATCH_2).unwrap(),
        [RecordPos { offset_delta: 0, timestamp: 0x015d_ff7c_dd6c }, RecordPos { offset_delta: 1, timestamp: 0x015d_ff7c_de14 },]
    );
}

#[test]
fn kafka_batches_split() {
    let buf = [&KAFKA_BATCH_1[..], &KAFKA_BATCH_2[..]].concat();
    let batches = split(&buf).unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0], (0, parse_header(&KAFKA_BATCH_1).unwrap()));
    assert_eq!(batches[1], (71, parse_header(&KAFKA_BATCH_2).unwrap()));
}

// ---------------------------------------------------------------------------------------------
// parse_header
// ---------------------------------------------------------------------------------------------

#[test]
fn parse_header_reads_every_field() {
    let spec = Spec {
        base_offset: 0x0102_0304_0506_0708,
        partition_leader_epoch: 0x1112_1314,
        attributes: 0x0038 | 3,
        base_timestamp: 0x2122_2324_2526_2728,
        producer_id: 0x3132_3334_3536_3738,
        producer_epoch: 0x4142,
        base_sequence: 0x5152_5354,
        records: vec![Rec::value(5, b"a"), Rec::value(9, b"b"), Rec::value(7, b"c")],
    };
    let b = build(&spec);
    let h = parse_header(&b).unwrap();
    assert_eq!(
        h,
        BatchHeader {
            base_offset: spec.base_offset,
            batch_length: (b.len() - LOG_OVERHEAD) as i32,
            partition_leader_epoch: spec.partition_leader_epoch,
            magic: 2,
            crc: crc32c::crc32c(&b[21..]),
            attributes: spec.attributes,
            last_offset_delta: 2,
            base_timestamp: spec.base_timestamp,
            max_timestamp: spec.base_timestamp + 9,
            producer_id: spec.producer_id,
            producer_epoch: spec.producer_epoch,
            base_sequence: spec.base_sequence,
            record_count: 3,
        }
    );
    assert_eq!(h.compression(), Some(Compression::Lz4));
    assert!(h.is_log_append_time() && h.is_transactional() && h.is_control());
    assert_eq!(h.offset_count(), 3);
    assert_eq!(h.last_offset(), spec.base_offset + 2);
    assert_eq!(h.size(), b.len());
}

#[test]
fn parse_header_does_not_need_the_records() {
    let b = build(&Spec::with_values(0, &[b"payload"]));
    assert_eq!(parse_header(&b[..HEADER_LEN]), parse_header(&b));
}

#[test]
fn attribute_bits() {
    let mut h = parse_header(&build(&Spec::default())).unwrap();
    let codecs = [
        Some(Compression::None),
        Some(Compression::Gzip),
        Some(Compression::Snappy),
        Some(Compression::Lz4),
        Some(Compression::Zstd),
        None,
        None,
        None,
    ];
    for (bits, codec) in codecs.into_iter().enumerate() {
        h.attributes = bits as i16 | 0x38;
        assert_eq!(h.compression(), codec, "codec bits {bits}");
    }
    h.attributes = 0;
    assert!(!h.is_log_append_time() && !h.is_transactional() && !h.is_control());
    h.attributes = 0x08;
    assert!(h.is_log_append_time() && !h.is_transactional() && !h.is_control());
    h.attributes = 0x10;
    assert!(!h.is_log_append_time() && h.is_transactional() && !h.is_control());
    h.attributes = 0x20;
    assert!(!h.is_log_append_time() && !h.is_transactional() && h.is_control());
}

#[test]
fn parse_header_rejects_short_input() {
    let b = build(&Spec::default());
    for len in 0..HEADER_LEN {
        assert_eq!(parse_header(&b[..len]), Err(Error::Truncated { at: 0, needed: HEADER_LEN, have: len }), "length {len}");
    }
}

#[test]
fn parse_header_rejects_other_magic() {
    for magic in [0u8, 1, 3, 0xff] {
        let mut b = build(&Spec::with_values(0, &[b"x"]));
        b[16] = magic;
        assert_eq!(parse_header(&b), Err(Error::Unsupported { what: "record batch magic", value: i64::from(magic as i8) }));
    }
}

#[test]
fn parse_header_rejects_bad_lengths_and_counts() {
    let good = build(&Spec::with_values(0, &[b"x"]));

    for batch_length in [i32::MIN, -1, 0, 48] {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&batch_length.to_be_bytes());
        assert_eq!(parse_header(&b), Err(Error::Invalid { what: "batch_length", value: batch_length.into() }));
    }
    // 49 is exactly a header with no records: accepted by parse_header.
    let mut b = good.clone();
    b[8..12].copy_from_slice(&49i32.to_be_bytes());
    assert_eq!(parse_header(&b).unwrap().size(), HEADER_LEN);

    let mut b = good.clone();
    b[23..27].copy_from_slice(&(-1i32).to_be_bytes());
    assert_eq!(parse_header(&b), Err(Error::Invalid { what: "last_offset_delta", value: -1 }));

    let mut b = good;
    b[57..61].copy_from_slice(&(-5i32).to_be_bytes());
    assert_eq!(parse_header(&b), Err(Error::Invalid { what: "record_count", value: -5 }));
}

// ---------------------------------------------------------------------------------------------
// verify, compute_crc, set_base_offset
// ---------------------------------------------------------------------------------------------

#[test]
fn compute_crc_covers_bytes_21_to_end() {
    let b = build(&Spec::with_values(3, &[b"one", b"two"]));
    assert_eq!(compute_crc(&b), Ok(crc32c::crc32c(&b[21..])));
    assert_eq!(compute_crc(&b), Ok(u32::from_be_bytes(b[17..21].try_into().unwrap())));
    assert!(matches!(compute_crc(&b[..HEADER_LEN - 1]), Err(Error::Truncated { .. })));
}

#[test]
fn verify_accepts_a_built_batch() {
    let spec = Spec::with_values(0, &[b"one", b"two", b"three"]);
    let b = build(&spec);
    let h = verify(&b).unwrap();
    assert_eq!(h.record_count, 3);
    assert_eq!(h.size(), b.len());
}

#[test]
fn verify_rejects_a_wrong_crc() {
    let mut b = build(&Spec::with_values(0, &[b"value"]));
    let stored = u32::from_be_bytes(b[17..21].try_into().unwrap());
    *b.last_mut().unwrap() ^= 0x40;
    let actual = crc32c::crc32c(&b[21..]);
    assert_eq!(verify(&b), Err(Error::Crc { at: 0, expected: stored, actual }));
}

#[test]
fn verify_rejects_trailing_bytes() {
    let mut b = build(&Spec::with_values(0, &[b"value"]));
    let len = b.len();
    b.push(0);
    assert_eq!(verify(&b), Err(Error::Invalid { what: "batch size", value: len as i64 + 1 }));
}

#[test]
fn verify_rejects_a_short_batch() {
    let b = build(&Spec::with_values(0, &[b"value"]));
    let len = b.len();
    assert_eq!(verify(&b[..len - 1]), Err(Error::Truncated { at: 0, needed: len, have: len - 1 }));
}

#[test]
fn set_base_offset_keeps_the_crc_valid() {
    let mut b = build(&Spec::with_values(0, &[b"a", b"b", b"c"]));
    let before = verify(&b).unwrap();
    for offset in [1, 1_000_000, i64::MAX - 2, -1] {
        set_base_offset(&mut b, offset);
        let h = verify(&b).unwrap();
        assert_eq!(h.base_offset, offset);
        assert_eq!(h.crc, before.crc);
        assert_eq!(b[0..8], offset.to_be_bytes());
        assert_eq!(BatchHeader { base_offset: 0, ..h }, before);
    }
    set_base_offset(&mut b, 100);
    let h = parse_header(&b).unwrap();
    assert_eq!((h.base_offset, h.last_offset(), h.offset_count()), (100, 102, 3));
}

// ---------------------------------------------------------------------------------------------
// split
// ---------------------------------------------------------------------------------------------

#[test]
fn split_finds_every_batch() {
    let batches: Vec<Vec<u8>> = vec![
        build(&Spec::with_values(0, &[b"a"])),
        build(&Spec::with_values(0, &[b"bb", b"cc", b"dd"])),
        build(&Spec::default()),
        build(&Spec::with_values(7, &[&[0u8; 300][..]])),
    ];
    let buf = batches.concat();
    let found = split(&buf).unwrap();
    assert_eq!(found.len(), batches.len());
    let mut at = 0;
    for ((start, h), b) in found.iter().zip(&batches) {
        assert_eq!(*start, at);
        assert_eq!(*h, parse_header(b).unwrap());
        assert_eq!(verify(&buf[*start..*start + h.size()]), Ok(*h));
        at += b.len();
    }
}

#[test]
fn split_of_nothing_is_no_batches() {
    assert_eq!(split(&[]), Ok(Vec::new()));
}

#[test]
fn split_rejects_a_trailing_partial_batch() {
    let first = build(&Spec::with_values(0, &[b"a"]));
    let second = build(&Spec::with_values(0, &[b"bbbb"]));
    let buf = [&first[..], &second[..]].concat();

    // Partial header: reported at the start of the second batch.
    let cut = first.len() + 10;
    assert_eq!(split(&buf[..cut]), Err(Error::Truncated { at: first.len(), needed: HEADER_LEN, have: 10 }));

    // Whole header, partial records.
    let cut = buf.len() - 1;
    assert_eq!(split(&buf[..cut]), Err(Error::Truncated { at: first.len(), needed: second.len(), have: second.len() - 1 }));
}

#[test]
fn split_reports_a_bad_header_after_good_batches() {
    let first = build(&Spec::with_values(0, &[b"a"]));
    let mut second = build(&Spec::with_values(0, &[b"b"]));
    second[16] = 1;
    let buf = [&first[..], &second[..]].concat();
    assert_eq!(split(&buf), Err(Error::Unsupported { what: "record batch magic", value: 1 }));
}

// ---------------------------------------------------------------------------------------------
// record_positions
// ---------------------------------------------------------------------------------------------

#[test]
fn record_positions_reads_offsets_and_timestamps() {
    let spec = Spec {
        base_timestamp: 1_000,
        records: vec![
            Rec { ts_delta: 0, key: Some(b"k1".to_vec()), value: None, headers: Vec::new() },
            Rec {
                ts_delta: 300,
                key: None,
                value: Some(vec![7; 200]),
                headers: vec![(b"h".to_vec(), Some(b"v".to_vec())), (b"n".to_vec(), None)],
            },
            Rec { ts_delta: 5, key: Some(Vec::new()), value: Some(Vec::new()), headers: Vec::new() },
            Rec { ts_delta: 1 << 40, key: None, value: None, headers: Vec::new() },
        ],
        ..Spec::default()
    };
    let b = build(&spec);
    assert_eq!(
        record_positions(&b).unwrap(),
        [
            RecordPos { offset_delta: 0, timestamp: 1_000 },
            RecordPos { offset_delta: 1, timestamp: 1_300 },
            RecordPos { offset_delta: 2, timestamp: 1_005 },
            RecordPos { offset_delta: 3, timestamp: 1_000 + (1 << 40) },
        ]
    );
}

#[test]
fn record_positions_of_an_empty_batch() {
    assert_eq!(record_positions(&build(&Spec::default())), Ok(Vec::new()));
}

#[test]
fn record_positions_ignores_bytes_after_the_batch() {
    let mut b = build(&Spec::with_values(0, &[b"a", b"b"]));
    let expected = record_positions(&b).unwrap();
    b.extend_from_slice(&[0xff; 9]);
    assert_eq!(record_positions(&b), Ok(expected));
}

#[test]
fn record_positions_refuses_compressed_batches() {
    for (codec, bits) in [(Some(Compression::Gzip), 1i16), (Some(Compression::Zstd), 4), (None, 5), (None, 7)] {
        let spec = Spec { attributes: bits | 0x08, ..Spec::with_values(0, &[b"x"]) };
        let b = build(&spec);
        // A valid batch: verify only checks the frame, not the codec.
        assert_eq!(verify(&b).unwrap().compression(), codec);
        assert_eq!(record_positions(&b), Err(Error::Unsupported { what: "compressed batch scan", value: bits.into() }));
    }
}

#[test]
fn record_positions_rejects_a_record_count_beyond_the_records() {
    let mut b = build(&Spec::with_values(0, &[b"a", b"b"]));
    b[57..61].copy_from_slice(&3i32.to_be_bytes());
    reseal(&mut b);
    assert!(matches!(record_positions(&b), Err(Error::Truncated { .. })));
}

#[test]
fn record_positions_rejects_a_record_longer_than_the_batch() {
    let mut b = build(&Spec::with_values(0, &[b"abc"]));
    b[HEADER_LEN] = 0x7e; // record length 63, far past the end
    reseal(&mut b);
    assert!(matches!(record_positions(&b), Err(Error::Truncated { .. })));
}

#[test]
fn record_positions_rejects_a_negative_record_length() {
    let mut b = build(&Spec::with_values(0, &[b"abc"]));
    b[HEADER_LEN] = 0x01; // zig-zag -1
    assert_eq!(record_positions(&b), Err(Error::Invalid { what: "record length", value: -1 }));
}

#[test]
fn record_positions_rejects_an_overlong_varint() {
    let mut b = build(&Spec::default());
    b.extend_from_slice(&[0xff; 11]);
    b[57..61].copy_from_slice(&1i32.to_be_bytes());
    fix_length(&mut b);
    assert!(matches!(record_positions(&b), Err(Error::Invalid { what: "varint", .. })));
}

#[test]
fn record_positions_rejects_a_record_too_short_for_its_fields() {
    // Length 0: no room for attributes, timestamp delta or offset delta.
    let mut b = build(&Spec::default());
    b.push(0x00);
    b[57..61].copy_from_slice(&1i32.to_be_bytes());
    fix_length(&mut b);
    assert!(matches!(record_positions(&b), Err(Error::Truncated { .. })));
}

#[test]
fn record_positions_survives_a_huge_record_count() {
    // The count comes from the wire; it must not size an allocation on its own.
    let mut b = build(&Spec::with_values(0, &[b"a"]));
    b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(record_positions(&b), Err(Error::Truncated { .. })));
}

#[test]
fn record_positions_survives_timestamp_overflow() {
    // Kafka computes base + delta in wrapping 64-bit arithmetic; garbage in, garbage out, but no
    // panic.
    let spec = Spec { base_timestamp: i64::MAX, records: vec![Rec::value(1, b"x")], ..Spec::default() };
    assert_eq!(record_positions(&build(&spec)), Ok(vec![RecordPos { offset_delta: 0, timestamp: i64::MIN }]));
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn arb_rec() -> impl Strategy<Value = Rec> {
    (
        0i64..10_000_000,
        prop::option::of(arb_bytes(16)),
        prop::option::of(arb_bytes(200)),
        prop::collection::vec((arb_bytes(8), prop::option::of(arb_bytes(8))), 0..3),
    )
        .prop_map(|(ts_delta, key, value, headers)| Rec { ts_delta, key, value, headers })
}

/// Uncompressed batches with every header field random (flag bits included).
fn arb_spec() -> impl Strategy<Value = Spec> {
    let frame = (any::<i64>(), any::<i32>(), (0i16..8).prop_map(|flags| flags << 3), 0i64..(1 << 50));
    let producer = (any::<i64>(), any::<i16>(), any::<i32>());
    (frame, producer, prop::collection::vec(arb_rec(), 0..8)).prop_map(
        |((base_offset, partition_leader_epoch, attributes, base_timestamp), (producer_id, producer_epoch, base_sequence), records)| Spec {
            base_offset,
            partition_leader_epoch,
            attributes,
            base_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            records,
        },
    )
}

proptest! {
    #[test]
    fn built_batches_round_trip(spec in arb_spec()) {
        let b = build(&spec);
        let h = verify(&b).unwrap();
        prop_assert_eq!(h.base_offset, spec.base_offset);
        prop_assert_eq!(h.partition_leader_epoch, spec.partition_leader_epoch);
        prop_assert_eq!(h.attributes, spec.attributes);
        prop_assert_eq!(h.compression(), Some(Compression::None));
        prop_assert_eq!(h.base_timestamp, spec.base_timestamp);
        prop_assert_eq!(h.max_timestamp, spec.max_timestamp());
        prop_assert_eq!(h.producer_id, spec.producer_id);
        prop_assert_eq!(h.producer_epoch, spec.producer_epoch);
        prop_assert_eq!(h.base_sequence, spec.base_sequence);
        prop_assert_eq!(h.record_count as usize, spec.records.len());
        prop_assert_eq!(h.size(), b.len());
        prop_assert_eq!(compute_crc(&b), Ok(h.crc));
        prop_assert_eq!(record_positions(&b).unwrap(), expected_positions(&spec));
        prop_assert_eq!(split(&b).unwrap(), vec![(0, h)]);
    }

    #[test]
    fn set_base_offset_never_breaks_verify(spec in arb_spec(), offset in any::<i64>()) {
        let mut b = build(&spec);
        let before = verify(&b).unwrap();
        set_base_offset(&mut b, offset);
        let after = verify(&b).unwrap();
        prop_assert_eq!(after, BatchHeader { base_offset: offset, ..before });
    }

    /// A byte flipped in the CRC region (21..end) always fails verify: CRC32C catches every
    /// error burst of 32 bits or fewer.
    #[test]
    fn a_flip_in_the_crc_region_fails_verify(spec in arb_spec(), at in any::<Index>(), mask in 1u8..=255) {
        let mut b = build(&spec);
        let i = 21 + at.index(b.len() - 21);
        b[i] ^= mask;
        prop_assert!(verify(&b).is_err(), "flip at {} went unnoticed", i);
    }

    /// Anywhere else: base_offset and partition_leader_epoch are outside the CRC (the broker
    /// rewrites them), everything else between them is checked some other way.
    #[test]
    fn a_flip_fails_verify_unless_outside_the_crc(spec in arb_spec(), at in any::<Index>(), mask in 1u8..=255) {
        let mut b = build(&spec);
        let i = at.index(b.len());
        b[i] ^= mask;
        let uncovered = (0..8).contains(&i) || (12..16).contains(&i);
        prop_assert_eq!(verify(&b).is_ok(), uncovered, "flip at {}", i);
    }

    #[test]
    fn every_truncation_fails(spec in arb_spec()) {
        let b = build(&spec);
        for len in 0..b.len() {
            prop_assert!(verify(&b[..len]).is_err(), "verify accepted {} of {} bytes", len, b.len());
            prop_assert!(record_positions(&b[..len]).is_err(), "record_positions accepted {} bytes", len);
            if len > 0 {
                prop_assert!(split(&b[..len]).is_err(), "split accepted {} of {} bytes", len, b.len());
            }
        }
    }

    /// Cutting concatenated batches anywhere but a batch boundary makes split fail; at a
    /// boundary it returns exactly the batches before it.
    #[test]
    fn split_accepts_only_whole_batches(specs in prop::collection::vec(arb_spec(), 1..4)) {
        let batches: Vec<Vec<u8>> = specs.iter().map(build).collect();
        let buf = batches.concat();
        let mut boundaries = vec![0];
        for b in &batches {
            boundaries.push(boundaries.last().unwrap() + b.len());
        }
        for len in 0..=buf.len() {
            match boundaries.iter().position(|&e| e == len) {
                Some(n) => {
                    let found = split(&buf[..len]).unwrap();
                    prop_assert_eq!(found.len(), n);
                    for ((start, h), want) in found.iter().zip(&boundaries) {
                        prop_assert_eq!(start, want);
                        prop_assert!(verify(&buf[*start..*start + h.size()]).is_ok());
                    }
                }
                None => prop_assert!(split(&buf[..len]).is_err(), "split accepted {} bytes", len),
            }
        }
    }

    #[test]
    fn parse_header_never_panics(mut bytes in arb_bytes(160), magic_two in any::<bool>()) {
        if magic_two && bytes.len() > 16 {
            bytes[16] = 2;
        }
        if let Ok(h) = parse_header(&bytes) {
            prop_assert!(h.size() >= HEADER_LEN);
            prop_assert!(h.offset_count() >= 1);
            prop_assert!(h.record_count >= 0);
        }
        let _ = verify(&bytes);
        let _ = split(&bytes);
        let _ = record_positions(&bytes);
        let _ = compute_crc(&bytes);
    }

    /// A valid frame around garbage records: record_positions may fail but never panics, and
    /// when it succeeds it returns one position per counted record.
    #[test]
    fn record_positions_never_panics(body in arb_bytes(200), count in any::<i32>(), base_timestamp in any::<i64>()) {
        let mut b = build(&Spec { base_timestamp, ..Spec::default() });
        b.extend_from_slice(&body);
        b[57..61].copy_from_slice(&count.to_be_bytes());
        fix_length(&mut b);
        reseal(&mut b);
        if let Ok(positions) = record_positions(&b) {
            prop_assert_eq!(positions.len() as i64, i64::from(count));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// has_null_key, records
// ---------------------------------------------------------------------------------------------

fn keyed(keys: &[Option<&[u8]>]) -> Spec {
    let records = keys.iter().map(|k| Rec { key: k.map(<[u8]>::to_vec), ..Rec::value(0, b"v") }).collect();
    Spec { records, ..Spec::default() }
}

fn null_key(b: &[u8]) -> Result<bool> {
    let h = parse_header(b)?;
    has_null_key(&b[HEADER_LEN..h.size()], h.record_count)
}

#[test]
fn has_null_key_finds_a_record_without_a_key() {
    assert_eq!(null_key(&build(&keyed(&[Some(b"a"), Some(b""), Some(b"c")]))), Ok(false), "an empty key is a key");
    assert_eq!(null_key(&build(&keyed(&[Some(b"a"), None, Some(b"c")]))), Ok(true));
    assert_eq!(null_key(&build(&keyed(&[None]))), Ok(true));
    assert_eq!(null_key(&build(&keyed(&[]))), Ok(false));
    // The real Kafka batches: their records have null keys.
    assert_eq!(null_key(&KAFKA_BATCH_2), Ok(true));
}

#[test]
fn has_null_key_rejects_a_record_count_beyond_the_records() {
    let mut b = build(&keyed(&[Some(b"a")]));
    b[57..61].copy_from_slice(&2i32.to_be_bytes());
    assert!(matches!(null_key(&b), Err(Error::Truncated { .. })));
}

#[cfg(feature = "codecs")]
#[test]
fn records_decompresses_every_codec() {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let plain = build(&keyed(&[Some(b"k1"), None, Some(b"k3")]));
    let body = plain[HEADER_LEN..].to_vec();
    assert_eq!(records(&plain).unwrap(), body);
    /// Compresses `b` into `out` with the codec of attribute bits `bits`.
    fn compress(bits: i16, out: &mut BytesMut, b: &[u8]) {
        let put = |w: &mut BytesMut| {
            w.put_slice(b);
            Ok(())
        };
        match bits {
            1 => Gzip::compress(out, put),
            2 => Snappy::compress(out, put),
            3 => Lz4::compress(out, put),
            _ => Zstd::compress(out, put),
        }
        .unwrap()
    }
    for bits in 1..=4i16 {
        let mut packed = BytesMut::new();
        compress(bits, &mut packed, &body);
        let mut b = plain[..HEADER_LEN].to_vec();
        b[21..23].copy_from_slice(&bits.to_be_bytes());
        b.extend_from_slice(&packed);
        fix_length(&mut b);
        reseal(&mut b);
        let got = records(&b).unwrap();
        assert_eq!(got, body, "codec {bits}");
        assert_eq!(has_null_key(&got, 3), Ok(true));
        // Bytes that are not what the codec says: an error, not a panic.
        let mut bad = b.clone();
        let n = bad.len();
        bad[HEADER_LEN..n].iter_mut().for_each(|x| *x ^= 0x5a);
        assert!(records(&bad).is_err(), "codec {bits}");
    }
}
