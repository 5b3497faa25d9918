//! Kafka record batch v2 (magic 2), read and patched in place without decoding records.
//!
//! ```text
//! offset  size  field
//!      0     8  base_offset            (patched by Sluice when served; outside the CRC)
//!      8     4  batch_length           (bytes after this field)
//!     12     4  partition_leader_epoch (outside the CRC)
//!     16     1  magic = 2
//!     17     4  crc (CRC32C of bytes 21..end)
//!     21     2  attributes             (bits 0-2 compression, 3 timestamp type,
//!                                       4 transactional, 5 control)
//!     23     4  last_offset_delta
//!     27     8  base_timestamp
//!     35     8  max_timestamp
//!     43     8  producer_id
//!     51     2  producer_epoch
//!     53     4  base_sequence
//!     57     4  record_count
//!     61     -  records
//! ```
//!
//! All integers are big-endian, as everywhere in the Kafka protocol.

use crate::{be_u16, be_u32, be_u64, need, Error, Result};

/// Length of the fixed batch header, up to the first record.
pub const HEADER_LEN: usize = 61;
/// Bytes before (and including) `batch_length`: `batch_length` counts the rest.
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

/// Compression codec named by the low three bits of `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing, as Kafka writes it).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// The fixed header of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (as sent by a producer, usually 0).
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    /// Leader epoch the batch was written under.
    pub partition_leader_epoch: i32,
    /// Always 2 here.
    pub magic: i8,
    /// Stored CRC32C of the bytes from `attributes` to the end.
    pub crc: u32,
    /// Codec, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Total size of the batch in bytes, header included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Number of offsets the batch occupies (`last_offset_delta + 1`).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Codec of the records section; `None` for a codec Kafka does not define.
    pub fn compression(&self) -> Option<Compression> {
        match self.attributes & 0x7 {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// True when timestamps are broker append times (`LogAppendTime`).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }

    /// True for a batch written inside a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// True for a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Reads the header of the batch at the start of `buf`, checking only that the header is
/// present, the magic is 2 and the length fields are sane (not that the whole batch is there).
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader> {
    need(buf, 0, HEADER_LEN)?;
    let magic = buf[16] as i8;
    if magic != 2 {
        return Err(Error::Unsupported { what: "record batch magic", value: magic.into() });
    }
    let h = BatchHeader {
        base_offset: be_u64(buf, 0) as i64,
        batch_length: be_u32(buf, 8) as i32,
        partition_leader_epoch: be_u32(buf, 12) as i32,
        magic,
        crc: be_u32(buf, 17),
        attributes: be_u16(buf, 21) as i16,
        last_offset_delta: be_u32(buf, 23) as i32,
        base_timestamp: be_u64(buf, 27) as i64,
        max_timestamp: be_u64(buf, 35) as i64,
        producer_id: be_u64(buf, 43) as i64,
        producer_epoch: be_u16(buf, 51) as i16,
        base_sequence: be_u32(buf, 53) as i32,
        record_count: be_u32(buf, 57) as i32,
    };
    if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
        return Err(Error::Invalid { what: "batch_length", value: h.batch_length.into() });
    }
    if h.last_offset_delta < 0 {
        return Err(Error::Invalid { what: "last_offset_delta", value: h.last_offset_delta.into() });
    }
    if h.record_count < 0 {
        return Err(Error::Invalid { what: "record_count", value: h.record_count.into() });
    }
    Ok(h)
}

/// Computes the CRC32C of a whole batch (bytes 21 to the end), as Kafka defines it.
pub fn compute_crc(batch: &[u8]) -> Result<u32> {
    need(batch, 0, HEADER_LEN)?;
    Ok(crc32c::crc32c(&batch[CRC_START..]))
}

/// Checks that `batch` is exactly one whole batch and that its stored CRC matches.
pub fn verify(batch: &[u8]) -> Result<BatchHeader> {
    let h = parse_header(batch)?;
    if batch.len() != h.size() {
        need(batch, 0, h.size())?;
        return Err(Error::Invalid { what: "batch size", value: batch.len() as i64 });
    }
    let actual = compute_crc(batch)?;
    if actual != h.crc {
        return Err(Error::Crc { at: 0, expected: h.crc, actual });
    }
    Ok(h)
}

/// Overwrites the base offset of the batch at the start of `batch`. The CRC does not cover it.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Splits a buffer of concatenated batches into `(start, header)` pairs, one per whole batch.
/// A trailing partial batch is an error: producers never send one, and Sluice never stores one.
pub fn split(buf: &[u8]) -> Result<Vec<(usize, BatchHeader)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let h = parse_header(&buf[at..]).map_err(|e| shift(e, at))?;
        need(buf, at, h.size())?;
        out.push((at, h));
        at += h.size();
    }
    Ok(out)
}

fn shift(e: Error, by: usize) -> Error {
    match e {
        Error::Truncated { at, needed, have } => Error::Truncated { at: at + by, needed, have },
        Error::Crc { at, expected, actual } => Error::Crc { at: at + by, expected, actual },
        other => other,
    }
}

/// One record's position inside an uncompressed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPos {
    /// Offset delta from the batch's base offset.
    pub offset_delta: i32,
    /// Absolute timestamp (base timestamp plus delta).
    pub timestamp: i64,
}

/// Offsets and timestamps of the records of an uncompressed batch (used to answer ListOffsets by
/// timestamp to the record). Returns `Unsupported` for a compressed batch.
pub fn record_positions(batch: &[u8]) -> Result<Vec<RecordPos>> {
    let h = parse_header(batch)?;
    need(batch, 0, h.size())?;
    if h.compression() != Some(Compression::None) {
        return Err(Error::Unsupported { what: "compressed batch scan", value: (h.attributes & 7).into() });
    }
    let body = &batch[HEADER_LEN..h.size()];
    // record_count comes off the wire: every record takes at least one byte of the body, so the
    // body bounds the allocation where the count alone could ask for gigabytes.
    let mut out = Vec::with_capacity((h.record_count.max(0) as usize).min(body.len()));
    for_each_record(body, h.record_count, |rec, mut p| {
        let (ts_delta, n) = varint(rec, p)?;
        p += n;
        let (off_delta, _) = varint(rec, p)?;
        out.push(RecordPos { offset_delta: off_delta as i32, timestamp: h.base_timestamp.wrapping_add(ts_delta) });
        Ok(())
    })?;
    Ok(out)
}

/// Whether a record of `records` (a batch's records section, uncompressed: see [`records`])
/// has a null key. Kafka refuses such a record on a key-compacted topic.
pub fn has_null_key(records: &[u8], record_count: i32) -> Result<bool> {
    let mut null = false;
    for_each_record(records, record_count, |rec, mut p| {
        for _ in 0..2 {
            // timestamp delta, offset delta
            p += varint(rec, p)?.1;
        }
        null |= varint(rec, p)?.0 < 0;
        Ok(())
    })?;
    Ok(null)
}

/// Calls `f(record, at)` for each of the `count` records of an uncompressed records section:
/// `record` ends where the record does, and `at` is where its fields start after `attributes`.
fn for_each_record(body: &[u8], count: i32, mut f: impl FnMut(&[u8], usize) -> Result<()>) -> Result<()> {
    let mut at = 0usize;
    for _ in 0..count {
        let (len, n) = varint(body, at)?;
        let start = at + n;
        if len < 0 {
            return Err(Error::Invalid { what: "record length", value: len });
        }
        let end = start.checked_add(len as usize).filter(|e| *e <= body.len()).ok_or(Error::Truncated {
            at: HEADER_LEN + start,
            needed: len as usize,
            have: body.len() - start,
        })?;
        f(&body[..end], start + 1)?;
        at = end;
    }
    Ok(())
}

/// The records section of a whole batch, decompressed (a copy when it was not compressed).
#[cfg(feature = "codecs")]
pub fn records(batch: &[u8]) -> Result<bytes::Bytes> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    let h = parse_header(batch)?;
    need(batch, 0, h.size())?;
    let mut body = bytes::Bytes::copy_from_slice(&batch[HEADER_LEN..h.size()]);
    let whole = |b: &mut bytes::Bytes| Ok(b.clone());
    let out = match h.compression() {
        Some(Compression::None) => Ok(body),
        Some(Compression::Gzip) => Gzip::decompress(&mut body, whole),
        Some(Compression::Snappy) => Snappy::decompress(&mut body, whole),
        Some(Compression::Lz4) => Lz4::decompress(&mut body, whole),
        Some(Compression::Zstd) => Zstd::decompress(&mut body, whole),
        None => return Err(Error::Unsupported { what: "compression codec", value: (h.attributes & 7).into() }),
    };
    out.map_err(|_| Error::Invalid { what: "compressed records of codec", value: (h.attributes & 7).into() })
}

/// Decodes a zig-zag varint (Kafka's `varint`/`varlong`) at `at`; returns value and length.
fn varint(buf: &[u8], at: usize) -> Result<(i64, usize)> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(at + i).ok_or(Error::Truncated { at: at + i, needed: 1, have: 0 })?;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), i + 1));
        }
    }
    Err(Error::Invalid { what: "varint", value: raw as i64 })
}

#[cfg(test)]
mod tests;
