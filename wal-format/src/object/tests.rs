//! Tests for WAL object format v1.
//!
//! The layout test spells out an object byte by byte, independently of the encoder, so it pins
//! the format `README.md` specifies. The rejection tests hand-patch one field of a valid object
//! and reseal the footer, so each reaches the one check it is about.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

/// Stream id to chunk bytes; a `BTreeMap` keeps stream ids strictly increasing.
type Chunks = BTreeMap<u64, Vec<u8>>;

fn inputs(chunks: &Chunks) -> Vec<ChunkInput<'_>> {
    chunks.iter().map(|(&stream_id, data)| ChunkInput { stream_id, data }).collect()
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the footer so a deliberately edited object passes the footer check.
fn reseal(buf: &mut [u8]) {
    let n = buf.len() - FOOTER_LEN;
    let crc = crc32c::crc32c(&buf[..n]);
    buf[n..].copy_from_slice(&crc.to_be_bytes());
}

/// Position of chunk-index entry `i`, read from the header.
fn entry(buf: &[u8], i: usize) -> usize {
    u64::from_be_bytes(buf[36..44].try_into().unwrap()) as usize + i * INDEX_ENTRY_LEN
}

/// Encodes two two-byte chunks (streams 1 and 2, "ab" and "cd"): chunk area 44..48, index
/// entries at 48 and 72, footer at 96.
fn two_chunks() -> Vec<u8> {
    encode(5, 6, &[ChunkInput { stream_id: 1, data: b"ab" }, ChunkInput { stream_id: 2, data: b"cd" }])
}

/// Checks everything a decoded object promises about the bytes it came from.
fn check_tiling(bytes: &[u8], object: &WalObject) -> Result<(), TestCaseError> {
    let mut next = HEADER_LEN as u64;
    for (i, c) in object.chunks.iter().enumerate() {
        prop_assert_eq!(c.position, next, "chunk {} does not start where the previous ends", i);
        if i > 0 {
            prop_assert!(object.chunks[i - 1].stream_id < c.stream_id);
        }
        prop_assert!(c.verify(object.chunk_bytes(bytes, c)).is_ok());
        next += u64::from(c.length);
    }
    let index_len = (object.chunks.len() * INDEX_ENTRY_LEN) as u64;
    prop_assert_eq!(next + index_len + FOOTER_LEN as u64, bytes.len() as u64, "bytes unaccounted for");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

#[test]
fn layout_byte_by_byte() {
    let object_id = 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10_u128;
    let created_ms = 0x1122_3344_5566_7788_i64;
    let bytes = encode(
        object_id,
        created_ms,
        &[
            ChunkInput { stream_id: 7, data: b"abc" },
            ChunkInput { stream_id: 9, data: b"" },
            ChunkInput { stream_id: 0x0a0b_0c0d_0e0f_1011, data: b"de" },
        ],
    );

    let mut want = Vec::new();
    want.extend_from_slice(b"SLWL");
    want.extend_from_slice(&[0x00, 0x01]); // version
    want.extend_from_slice(&[0x00, 0x00]); // flags
    want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    want.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    want.extend_from_slice(&[0, 0, 0, 3]); // chunk_count
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 49]); // chunk_index_pos = 44 + 5
    want.extend_from_slice(b"abcde");
    let crc_abc = crc32c::crc32c(b"abc").to_be_bytes();
    let crc_de = crc32c::crc32c(b"de").to_be_bytes();
    for (stream, pos, len, crc) in [
        ([0, 0, 0, 0, 0, 0, 0, 7], 44u8, 3u8, crc_abc),
        ([0, 0, 0, 0, 0, 0, 0, 9], 47, 0, [0, 0, 0, 0]), // CRC32C of nothing is 0
        ([0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11], 47, 2, crc_de),
    ] {
        want.extend_from_slice(&stream);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, pos]);
        want.extend_from_slice(&[0, 0, 0, len]);
        want.extend_from_slice(&crc);
    }
    let footer = crc32c::crc32c(&want).to_be_bytes();
    want.extend_from_slice(&footer);

    assert_eq!(bytes.len(), 125);
    assert_eq!(bytes, want);

    let object = decode(&bytes).unwrap();
    assert_eq!(object.object_id, object_id);
    assert_eq!(object.created_ms, created_ms);
    assert_eq!(
        object.chunks,
        [
            ChunkInfo { stream_id: 7, position: 44, length: 3, crc: crc32c::crc32c(b"abc") },
            ChunkInfo { stream_id: 9, position: 47, length: 0, crc: 0 },
            ChunkInfo { stream_id: 0x0a0b_0c0d_0e0f_1011, position: 47, length: 2, crc: crc32c::crc32c(b"de") },
        ]
    );
    assert_eq!(object.chunk_bytes(&bytes, &object.chunks[0]), b"abc");
    assert_eq!(object.chunk_bytes(&bytes, &object.chunks[1]), b"");
    assert_eq!(object.chunk_bytes(&bytes, &object.chunks[2]), b"de");
}

#[test]
fn empty_object_is_header_and_footer() {
    let bytes = encode(1, -1, &[]);
    assert_eq!(bytes.len(), HEADER_LEN + FOOTER_LEN);
    assert_eq!(bytes[32..36], [0, 0, 0, 0]);
    assert_eq!(bytes[36..44], (HEADER_LEN as u64).to_be_bytes());
    assert_eq!(decode(&bytes), Ok(WalObject { object_id: 1, created_ms: -1, chunks: Vec::new() }));
}

#[test]
fn builder_returns_the_index_it_wrote() {
    let mut b = ObjectBuilder::new(3, 4, 0);
    b.begin_chunk(10);
    b.append(b"xy");
    b.append(b"z");
    b.begin_chunk(11);
    let (bytes, chunks) = b.finish();
    assert_eq!(decode(&bytes).unwrap().chunks, chunks);
    assert_eq!(chunks[0], ChunkInfo { stream_id: 10, position: 44, length: 3, crc: crc32c::crc32c(b"xyz") });
    assert_eq!(chunks[1], ChunkInfo { stream_id: 11, position: 47, length: 0, crc: 0 });
}

#[test]
#[should_panic(expected = "strictly increasing")]
fn builder_panics_on_a_repeated_stream() {
    let mut b = ObjectBuilder::new(0, 0, 0);
    b.begin_chunk(5);
    b.begin_chunk(5);
}

#[test]
#[should_panic(expected = "strictly increasing")]
fn builder_panics_on_a_decreasing_stream() {
    let mut b = ObjectBuilder::new(0, 0, 0);
    b.begin_chunk(5);
    b.begin_chunk(4);
}

#[test]
#[should_panic(expected = "append before begin_chunk")]
fn builder_panics_on_append_without_a_chunk() {
    ObjectBuilder::new(0, 0, 0).append(b"x");
}

// ---------------------------------------------------------------------------------------------
// What decode rejects, one rule at a time
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_rejects_less_than_header_and_footer() {
    let bytes = encode(1, 2, &[]);
    for len in 0..HEADER_LEN + FOOTER_LEN {
        assert_eq!(decode(&bytes[..len]), Err(Error::Truncated { at: 0, needed: HEADER_LEN + FOOTER_LEN, have: len }), "length {len}");
    }
}

#[test]
fn decode_rejects_a_wrong_magic() {
    let mut bytes = two_chunks();
    bytes[0..4].copy_from_slice(b"SLWX");
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(Error::Unsupported { what: "WAL object magic", value: i64::from(u32::from_be_bytes(*b"SLWX")) }));
}

#[test]
fn decode_rejects_a_wrong_footer() {
    let mut bytes = two_chunks();
    let at = bytes.len() - FOOTER_LEN;
    let actual = crc32c::crc32c(&bytes[..at]);
    bytes[at] ^= 1;
    let expected = u32::from_be_bytes(bytes[at..].try_into().unwrap());
    assert_eq!(decode(&bytes), Err(Error::Crc { at, expected, actual }));
}

#[test]
fn decode_rejects_another_version() {
    for version in [0u16, 2, 0xffff] {
        let mut bytes = two_chunks();
        bytes[4..6].copy_from_slice(&version.to_be_bytes());
        reseal(&mut bytes);
        assert_eq!(decode(&bytes), Err(Error::Unsupported { what: "WAL object version", value: version.into() }));
    }
}

#[test]
fn decode_does_not_check_flags() {
    let mut bytes = two_chunks();
    bytes[6..8].copy_from_slice(&0x8001u16.to_be_bytes());
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), decode(&two_chunks()));
}

#[test]
fn decode_rejects_an_index_inside_the_header() {
    // Three empty chunks: body is 44 + 3 * 24 = 116 bytes. Claiming four entries at 20 also
    // ends the index at 116, so only the "index starts after the header" rule catches it.
    let mut bytes = encode(0, 0, &[1, 2, 3].map(|s| ChunkInput { stream_id: s, data: b"" }));
    put_u32(&mut bytes, 32, 4);
    put_u64(&mut bytes, 36, 20);
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(Error::Invalid { what: "chunk index position", value: 20 }));
}

#[test]
fn decode_rejects_an_index_that_does_not_end_at_the_footer() {
    for (count, index_pos) in [(3, 48), (1, 48), (2, 47), (2, 49), (u32::MAX, 48), (2, u64::MAX)] {
        let mut bytes = two_chunks();
        put_u32(&mut bytes, 32, count);
        put_u64(&mut bytes, 36, index_pos);
        reseal(&mut bytes);
        assert_eq!(
            decode(&bytes),
            Err(Error::Invalid { what: "chunk index position", value: index_pos as i64 }),
            "count {count}, index at {index_pos}"
        );
    }
}

#[test]
fn decode_rejects_a_chunk_that_does_not_start_where_the_last_ended() {
    for (i, position) in [(0, 45u64), (0, 0), (1, 45), (1, 47), (1, u64::MAX)] {
        let mut bytes = two_chunks();
        let at = entry(&bytes, i) + 8;
        put_u64(&mut bytes, at, position);
        reseal(&mut bytes);
        assert_eq!(decode(&bytes), Err(Error::Invalid { what: "chunk position", value: position as i64 }));
    }
}

#[test]
fn decode_rejects_streams_out_of_order() {
    for stream in [1u64, 0] {
        let mut bytes = two_chunks();
        let at = entry(&bytes, 1);
        put_u64(&mut bytes, at, stream);
        reseal(&mut bytes);
        assert_eq!(decode(&bytes), Err(Error::Invalid { what: "chunk stream order", value: stream as i64 }));
    }
}

#[test]
fn decode_rejects_a_chunk_running_into_the_index() {
    for length in [3u32, 5, u32::MAX] {
        let mut bytes = two_chunks();
        let at = entry(&bytes, 1) + 16;
        put_u32(&mut bytes, at, length);
        reseal(&mut bytes);
        assert_eq!(decode(&bytes), Err(Error::Invalid { what: "chunk length", value: length.into() }));
    }
}

#[test]
fn decode_rejects_bytes_between_the_last_chunk_and_the_index() {
    let mut bytes = two_chunks();
    let at = entry(&bytes, 1);
    put_u32(&mut bytes, at + 16, 1);
    put_u32(&mut bytes, at + 20, crc32c::crc32c(b"c"));
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(Error::Invalid { what: "bytes between chunks and index", value: 1 }));
}

#[test]
fn decode_rejects_a_wrong_chunk_crc() {
    let mut bytes = two_chunks();
    bytes[47] = b'D';
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(Error::Crc { at: 46, expected: crc32c::crc32c(b"cd"), actual: crc32c::crc32c(b"cD") }));
}

#[test]
fn chunk_verify_rejects_a_short_or_long_read() {
    let bytes = two_chunks();
    let object = decode(&bytes).unwrap();
    let c = object.chunks[1];
    assert_eq!(c.verify(&bytes[46..48]), Ok(()));
    assert_eq!(c.verify(&bytes[46..47]), Err(Error::Truncated { at: 46, needed: 2, have: 1 }));
    assert_eq!(c.verify(&bytes[46..49]), Err(Error::Truncated { at: 46, needed: 2, have: 3 }));
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn arb_chunks(max_chunks: usize, max_len: usize) -> impl Strategy<Value = Chunks> {
    prop::collection::btree_map(any::<u64>(), prop::collection::vec(any::<u8>(), 0..max_len), 0..max_chunks)
}

/// An object with up to 20 chunks of up to 300 bytes, and its encoding.
fn arb_object() -> impl Strategy<Value = (u128, i64, Chunks)> {
    (any::<u128>(), any::<i64>(), arb_chunks(20, 300))
}

/// A smaller object, for properties that decode once per byte of it.
fn arb_small_object() -> impl Strategy<Value = (u128, i64, Chunks)> {
    (any::<u128>(), any::<i64>(), arb_chunks(8, 64))
}

proptest! {
    #[test]
    fn objects_round_trip((object_id, created_ms, chunks) in arb_object()) {
        let bytes = encode(object_id, created_ms, &inputs(&chunks));
        let object = decode(&bytes).unwrap();
        prop_assert_eq!(object.object_id, object_id);
        prop_assert_eq!(object.created_ms, created_ms);
        prop_assert_eq!(object.chunks.len(), chunks.len());
        for (c, (stream_id, data)) in object.chunks.iter().zip(&chunks) {
            prop_assert_eq!(c.stream_id, *stream_id);
            prop_assert_eq!(c.length as usize, data.len());
            prop_assert_eq!(object.chunk_bytes(&bytes, c), &data[..]);
        }
        let data_len: usize = chunks.values().map(Vec::len).sum();
        prop_assert_eq!(bytes.len(), HEADER_LEN + data_len + chunks.len() * INDEX_ENTRY_LEN + FOOTER_LEN);
        check_tiling(&bytes, &object)?;
    }

    /// Appending a stream's bytes in pieces writes the same object as appending them whole.
    #[test]
    fn builder_pieces_equal_encode_whole(
        (object_id, created_ms, chunks) in arb_object(),
        cuts in prop::collection::vec(prop::collection::vec(any::<Index>(), 0..5), 20),
        capacity in 0usize..4096,
    ) {
        let whole = encode(object_id, created_ms, &inputs(&chunks));
        let mut b = ObjectBuilder::new(object_id, created_ms, capacity);
        for ((&stream_id, data), cuts) in chunks.iter().zip(&cuts) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            b.begin_chunk(stream_id);
            for w in at.windows(2) {
                b.append(&data[w[0]..w[1]]);
            }
        }
        let (pieces, index) = b.finish();
        prop_assert_eq!(&pieces, &whole);
        prop_assert_eq!(decode(&whole).unwrap().chunks, index);
    }

    /// The footer CRC covers every byte before it, and CRC32C catches any single-byte error, so
    /// no flipped byte anywhere decodes.
    #[test]
    fn any_flipped_byte_is_detected(
        (object_id, created_ms, chunks) in arb_object(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let mut bytes = encode(object_id, created_ms, &inputs(&chunks));
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(decode(&bytes).is_err(), "flip at {} of {} went unnoticed", i, bytes.len());
    }

    #[test]
    fn every_truncation_is_rejected((object_id, created_ms, chunks) in arb_small_object()) {
        let bytes = encode(object_id, created_ms, &inputs(&chunks));
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes[..len]).is_err(), "accepted {} of {} bytes", len, bytes.len());
        }
    }

    #[test]
    fn trailing_bytes_are_rejected(
        (object_id, created_ms, chunks) in arb_small_object(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let mut bytes = encode(object_id, created_ms, &inputs(&chunks));
        bytes.extend_from_slice(&extra);
        prop_assert!(decode(&bytes).is_err());
    }

    /// A ranged read of one chunk is checked against the index entry alone.
    #[test]
    fn chunk_verify_detects_a_flipped_byte(
        (object_id, created_ms, chunks) in arb_object(),
        pick in any::<Index>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let bytes = encode(object_id, created_ms, &inputs(&chunks));
        let object = decode(&bytes).unwrap();
        let nonempty: Vec<&ChunkInfo> = object.chunks.iter().filter(|c| c.length > 0).collect();
        prop_assume!(!nonempty.is_empty());
        let c = nonempty[pick.index(nonempty.len())];
        let range = c.position as usize..c.position as usize + c.length as usize;
        let mut read = bytes[range].to_vec();
        prop_assert_eq!(c.verify(&read), Ok(()));
        let i = at.index(read.len());
        read[i] ^= mask;
        let is_crc_error = matches!(c.verify(&read), Err(Error::Crc { at: pos, .. }) if pos == c.position as usize);
        prop_assert!(is_crc_error);
    }

    #[test]
    fn decode_never_panics_on_random_bytes(
        mut bytes in prop::collection::vec(any::<u8>(), 0..300),
        magic in any::<bool>(),
    ) {
        if magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&MAGIC);
        }
        if let Ok(object) = decode(&bytes) {
            check_tiling(&bytes, &object)?;
        }
    }

    /// Corrupt a valid object, then fix its footer so the corruption reaches the header and
    /// index checks. decode may refuse it but never panics, and whatever it accepts is
    /// consistent.
    #[test]
    fn decode_never_panics_on_resealed_corruption(
        (object_id, created_ms, chunks) in arb_small_object(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(object_id, created_ms, &inputs(&chunks));
        let body = bytes.len() - FOOTER_LEN;
        for (at, value) in &edits {
            bytes[at.index(body)] = *value;
        }
        reseal(&mut bytes);
        if let Ok(object) = decode(&bytes) {
            check_tiling(&bytes, &object)?;
        }
    }
}
