//! Fetches of compacted ranges: a row group of a Parquet file of the topic's table, read with
//! ranged reads through the object store (the footer once per file, then the row group's
//! column chunks), decoded on the shard and rebuilt into record batches with the records' own
//! offsets, timestamps, keys, values and headers (uncompressed, version 2, no producer ids: a
//! consumer sees the same records). Batches are encoded here rather than by kafka-protocol,
//! whose records keep headers in a map: Kafka allows a header key more than once.
//!
//! The batches cover the entry's whole offset range: a key-compacted range has gaps where
//! superseded records were, and, as in Kafka's cleaned logs, a batch's base offset and last
//! offset delta span the gap around its records, so a consumer's next fetch (the batch's last
//! offset plus one) lands on the next batch.

use crate::error::Error;
use crate::store::ObjectStore;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::{FooterTail, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::reader::{ChunkReader, Length};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Footers kept per shard.
const FOOTERS: usize = 256;
/// Records per rebuilt batch, and bytes (whichever comes first).
const BATCH_RECORDS: usize = 2000;
const BATCH_BYTES: usize = 1 << 20;

/// One rebuilt batch: its position and length in the buffer, its first and last offset.
pub type Span = (usize, usize, i64, i64);

/// Parsed footers of the files recently read, by key.
#[derive(Default)]
pub struct Footers {
    map: RefCell<HashMap<String, Arc<ParquetMetaData>>>,
    order: RefCell<VecDeque<String>>,
}

impl Footers {
    /// The footer of the file `key` of `size` bytes, from memory or read (two ranged reads).
    pub async fn get(&self, store: &dyn ObjectStore, key: &str, size: u64) -> Result<Arc<ParquetMetaData>, Error> {
        if let Some(m) = self.map.borrow().get(key) {
            return Ok(m.clone());
        }
        let corrupt = |what: String| Error::CorruptObject(format!("{key}: {what}"));
        if size < 8 {
            return Err(corrupt(format!("a Parquet file of {size} bytes")));
        }
        let tail = store.get_range(key, size - 8, 8).await?;
        let len = FooterTail::try_from(&tail[..]).map_err(|e| corrupt(e.to_string()))?.metadata_length() as u64;
        if len + 8 > size {
            return Err(corrupt(format!("footer of {len} bytes in {size}")));
        }
        let raw = store.get_range(key, size - 8 - len, len as usize).await?;
        let meta = Arc::new(ParquetMetaDataReader::decode_metadata(&raw).map_err(|e| corrupt(e.to_string()))?);
        let mut map = self.map.borrow_mut();
        if map.insert(key.to_string(), meta.clone()).is_none() {
            let mut order = self.order.borrow_mut();
            order.push_back(key.to_string());
            if order.len() > FOOTERS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
        Ok(meta)
    }
}

/// The bytes of a file at `[start, start + data.len())`: enough to decode one row group.
pub struct RowGroupBytes {
    pub start: u64,
    pub data: Bytes,
    pub file_size: u64,
}

impl RowGroupBytes {
    fn slice(&self, start: u64, len: usize) -> parquet::errors::Result<Bytes> {
        let at = start.checked_sub(self.start).map(|a| a as usize).filter(|a| a + len <= self.data.len());
        match at {
            Some(at) => Ok(self.data.slice(at..at + len)),
            None => Err(parquet::errors::ParquetError::General(format!(
                "read of {len} bytes at {start} outside the row group's {} bytes at {}",
                self.data.len(),
                self.start
            ))),
        }
    }
}

impl Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.file_size
    }
}

impl ChunkReader for RowGroupBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let end = self.start + self.data.len() as u64;
        Ok(self.slice(start, end.saturating_sub(start) as usize)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// Decodes row group `index`, which holds the offsets `[base, end)`, and encodes its records as
/// Kafka record batches, in offset order, together covering `[base, end)`.
pub fn rebuild(meta: Arc<ParquetMetaData>, index: usize, bytes: RowGroupBytes, base: i64, end: i64) -> Result<(Bytes, Vec<Span>), String> {
    let reader_meta = ArrowReaderMetadata::try_new(meta, ArrowReaderOptions::new()).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, reader_meta)
        .with_row_groups(vec![index])
        .with_batch_size(8192)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Batches { next_base: base, ..Default::default() };
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        out.add(&batch)?;
    }
    out.flush(end - 1)?;
    Ok((out.buf.freeze(), out.spans))
}

/// One record to encode.
struct Rec {
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(Bytes, Option<Bytes>)>,
}

#[derive(Default)]
struct Batches {
    buf: BytesMut,
    spans: Vec<Span>,
    pending: Vec<Rec>,
    /// The pending records' timestamps are append times.
    log_append: bool,
    pending_bytes: usize,
    /// Where the next batch starts (the offset after the last batch's range).
    next_base: i64,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| format!("no column {name}"))
}

/// A binary column's value (large or not).
fn binary(col: &ArrayRef, i: usize) -> Option<Bytes> {
    if col.is_null(i) {
        return None;
    }
    if let Some(a) = col.as_binary_opt::<i64>() {
        return Some(Bytes::copy_from_slice(a.value(i)));
    }
    col.as_binary_opt::<i32>().map(|a| Bytes::copy_from_slice(a.value(i)))
}

impl Batches {
    fn add(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let offsets = column(batch, "offset")?.as_primitive_opt::<Int64Type>().ok_or("offset is not a long")?;
        let timestamps =
            column(batch, "timestamp")?.as_primitive_opt::<TimestampMicrosecondType>().ok_or("timestamp is not a timestamp")?;
        let types = column(batch, "timestamp_type")?.as_primitive_opt::<Int32Type>().ok_or("timestamp_type is not an int")?;
        let (keys, values) = (column(batch, "key")?, column(batch, "value")?);
        let headers = column(batch, "headers")?.as_list_opt::<i32>().ok_or("headers is not a list")?;
        for i in 0..batch.num_rows() {
            let mut record_headers = Vec::new();
            if !headers.is_null(i) {
                let h = headers.value(i);
                let h = h.as_struct_opt().ok_or("a header is not a struct")?;
                let (hk, hv) = (h.column(0), h.column(1));
                let hk = hk.as_string_opt::<i32>().ok_or("a header key is not a string")?;
                for j in 0..h.len() {
                    record_headers.push((Bytes::copy_from_slice(hk.value(j).as_bytes()), binary(hv, j)));
                }
            }
            let log_append = types.value(i) == 1;
            let offset = offsets.value(i);
            if offset < self.next_base || self.pending.last().is_some_and(|r| r.offset >= offset) {
                return Err(format!("offset {offset} out of order"));
            }
            let full = self.pending.len() >= BATCH_RECORDS || self.pending_bytes >= BATCH_BYTES;
            if !self.pending.is_empty() && (full || self.log_append != log_append) {
                self.flush(offset - 1)?;
            }
            self.log_append = log_append;
            let record = Rec {
                offset,
                timestamp: timestamps.value(i).div_euclid(1000),
                key: binary(keys, i),
                value: binary(values, i),
                headers: record_headers,
            };
            self.pending_bytes += record.key.as_ref().map_or(0, |k| k.len()) + record.value.as_ref().map_or(0, |v| v.len()) + 16;
            self.pending.push(record);
        }
        Ok(())
    }

    /// Encodes the pending records as one uncompressed v2 batch covering the offsets from
    /// `next_base` to `end` (inclusive; at least its last record's).
    fn flush(&mut self, end: i64) -> Result<(), String> {
        let Some(last) = self.pending.last() else { return Ok(()) };
        let (base, end) = (self.next_base, end.max(last.offset));
        let base_ts = self.pending.iter().map(|r| r.timestamp).min().unwrap_or(-1);
        let max_ts = self.pending.iter().map(|r| r.timestamp).max().unwrap_or(-1);
        let pos = self.buf.len();
        let b = &mut self.buf;
        b.put_i64(base);
        b.put_i32(0); // batch length, below
        b.put_i32(-1); // partition leader epoch
        b.put_i8(2); // magic
        b.put_u32(0); // CRC, below
        b.put_i16(if self.log_append { 1 << 3 } else { 0 });
        b.put_i32(i32::try_from(end - base).map_err(|_| "offsets too far apart for one batch")?);
        b.put_i64(base_ts);
        b.put_i64(max_ts);
        b.put_i64(-1); // producer id
        b.put_i16(-1); // producer epoch
        b.put_i32(-1); // base sequence
        b.put_i32(self.pending.len() as i32);
        let mut rec = Vec::new();
        for r in &self.pending {
            rec.clear();
            rec.push(0); // attributes
            varint(&mut rec, r.timestamp - base_ts);
            varint(&mut rec, r.offset - base);
            field(&mut rec, r.key.as_deref());
            field(&mut rec, r.value.as_deref());
            varint(&mut rec, r.headers.len() as i64);
            for (k, v) in &r.headers {
                field(&mut rec, Some(k));
                field(&mut rec, v.as_deref());
            }
            let mut len = Vec::with_capacity(5);
            varint(&mut len, rec.len() as i64);
            b.put_slice(&len);
            b.put_slice(&rec);
        }
        let size = b.len() - pos;
        b[pos + 8..pos + 12].copy_from_slice(&((size - 12) as i32).to_be_bytes());
        let crc = wal_format::batch::compute_crc(&b[pos..]).map_err(|e| e.to_string())?;
        b[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
        self.spans.push((pos, size, base, end));
        self.next_base = end + 1;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Appends a zig-zag varint.
fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends length-prefixed bytes (-1 for null).
fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => {
            varint(out, v.len() as i64);
            out.extend_from_slice(v);
        }
        None => varint(out, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_batches_decode_with_their_records() {
        let pending = (0..3)
            .map(|i| Rec {
                offset: 40 + i,
                timestamp: 1_000 + i,
                key: (i != 1).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; i as usize])),
                headers: vec![(Bytes::from_static(b"dup"), Some(Bytes::from_static(b"1"))), (Bytes::from_static(b"dup"), None)],
            })
            .collect();
        let mut b = Batches { pending, next_base: 40, ..Default::default() };
        b.flush(42).unwrap();
        let (pos, len, base, last) = b.spans[0];
        assert_eq!((pos, base, last), (0, 40, 42));
        let batch = &b.buf[..len];
        wal_format::batch::verify(batch).expect("a whole batch with a good CRC");
        let positions = wal_format::batch::record_positions(batch).unwrap();
        assert_eq!(positions.iter().map(|r| (r.offset_delta, r.timestamp)).collect::<Vec<_>>(), vec![(0, 1000), (1, 1001), (2, 1002)]);
        let mut bytes = Bytes::copy_from_slice(batch);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records[1].key, None);
        assert_eq!(set.records[2].value.as_deref(), Some(&b"vv"[..]));
        assert_eq!(set.records[0].offset, 40);
    }

    #[test]
    fn a_batch_with_gaps_spans_them_as_a_cleaned_kafka_batch_does() {
        let rec = |offset| Rec { offset, timestamp: 5, key: Some(Bytes::from_static(b"k")), value: None, headers: vec![] };
        let mut b = Batches { pending: vec![rec(43), rec(47)], next_base: 40, ..Default::default() };
        b.flush(49).unwrap();
        let (_, len, base, last) = b.spans[0];
        assert_eq!((base, last, b.next_base), (40, 49, 50));
        let mut bytes = Bytes::copy_from_slice(&b.buf[..len]);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![43, 47]);
        let header = wal_format::batch::parse_header(&b.buf[..len]).unwrap();
        assert_eq!(header.offset_count(), 10, "the last offset delta reaches the end of the range");
    }
}
