//! WAL chunks to table rows: record batches decoded (every codec) into one row per record, and
//! rows into Arrow columns of the table's schema.

use arrow_array::builder::{LargeBinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use bytes::Bytes;
use std::sync::Arc;

/// One record as the table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub offset: i64,
    /// Milliseconds since the epoch, as a consumer sees it (the append time for LogAppendTime).
    pub timestamp: i64,
    /// 0 CreateTime, 1 LogAppendTime.
    pub timestamp_type: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Appends the records of a chunk whose first offset is `base` to `out`. Control batches
/// (transaction markers) hold no records a consumer sees and give no rows. An error means the
/// chunk cannot be decoded (corrupt, or a codec this build lacks): nothing of it is appended.
pub fn decode_chunk(data: &[u8], base: i64, out: &mut Vec<Row>) -> Result<(), String> {
    let batches = wal_format::batch::split(data).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut offset = base;
    for (pos, h) in batches {
        let batch = &data[pos..pos + h.size()];
        wal_format::batch::verify(batch).map_err(|e| format!("batch at offset {offset}: {e}"))?;
        if !h.is_control() {
            let log_append = h.is_log_append_time();
            let body = records_of(batch, &h).map_err(|e| format!("batch at offset {offset}: {e}"))?;
            let mut at = 0usize;
            for _ in 0..h.record_count.max(0) {
                let mut r = Cursor { buf: &body, at };
                let len = r.varint()?;
                let end = r.at.checked_add(usize::try_from(len).map_err(|_| "negative record length")?).filter(|e| *e <= body.len());
                let end = end.ok_or("record past the batch")?;
                r.at += 1; // attributes
                let ts_delta = r.varint()?;
                let offset_delta = r.varint()?;
                let key = r.bytes()?;
                let value = r.bytes()?;
                let mut headers = Vec::new();
                for _ in 0..r.varint()?.max(0) {
                    let k = r.bytes()?.ok_or("null header key")?;
                    let k = String::from_utf8(k.to_vec()).map_err(|_| "header key is not UTF-8")?;
                    headers.push((k, r.bytes()?));
                }
                rows.push(Row {
                    offset: offset + offset_delta,
                    timestamp: if log_append { h.max_timestamp } else { h.base_timestamp.wrapping_add(ts_delta) },
                    timestamp_type: i32::from(log_append),
                    key,
                    value,
                    headers,
                });
                at = end;
            }
        }
        offset += h.offset_count();
    }
    out.append(&mut rows);
    Ok(())
}

/// Where a v2 batch's records start.
const RECORDS: usize = 61;

/// The records of a batch, decompressed (Kafka's codecs, through kafka-protocol's).
fn records_of(batch: &[u8], h: &wal_format::batch::BatchHeader) -> Result<Bytes, String> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    use wal_format::batch::Compression as C;
    let mut body = Bytes::copy_from_slice(&batch[RECORDS..]);
    let whole = |b: &mut Bytes| Ok(b.clone());
    let out = match h.compression() {
        Some(C::None) => Ok(body),
        Some(C::Gzip) => Gzip::decompress(&mut body, whole),
        Some(C::Snappy) => Snappy::decompress(&mut body, whole),
        Some(C::Lz4) => Lz4::decompress(&mut body, whole),
        Some(C::Zstd) => Zstd::decompress(&mut body, whole),
        None => return Err(format!("unknown codec {}", h.attributes & 7)),
    };
    out.map_err(|e| e.to_string())
}

/// Reads a v2 record's fields.
struct Cursor<'a> {
    buf: &'a Bytes,
    at: usize,
}

impl Cursor<'_> {
    /// A zig-zag varint (Kafka's varint and varlong).
    fn varint(&mut self) -> Result<i64, String> {
        let mut raw = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.at).ok_or("record cut short")?;
            self.at += 1;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err("bad varint".into())
    }

    /// Length-prefixed bytes, None for length -1.
    fn bytes(&mut self) -> Result<Option<Bytes>, String> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.at.checked_add(len as usize).filter(|e| *e <= self.buf.len()).ok_or("field past the record")?;
        let out = self.buf.slice(self.at..end);
        self.at = end;
        Ok(Some(out))
    }
}

/// The rows of one Kafka partition as columns of the table's Arrow schema.
pub fn to_arrow(schema: &SchemaRef, partition: i32, rows: &[Row]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let ts_type = schema.field_with_name("timestamp")?.data_type().clone();
    let DataType::List(item) = schema.field_with_name("headers")?.data_type().clone() else {
        return Err(ArrowError::SchemaError("headers is not a list".into()));
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        return Err(ArrowError::SchemaError("a header is not a struct".into()));
    };
    let mut headers = ListBuilder::new(StructBuilder::from_fields(fields, n)).with_field(item);
    for r in rows {
        let s = headers.values();
        for (k, v) in &r.headers {
            s.field_builder::<StringBuilder>(0).expect("header key is a string").append_value(k);
            s.field_builder::<LargeBinaryBuilder>(1).expect("header value is binary").append_option(v.as_deref());
            s.append(true);
        }
        headers.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![partition; n])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.timestamp.saturating_mul(1000))).with_data_type(ts_type),
        ),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.timestamp_type))),
        Arc::new(rows.iter().map(|r| r.key.as_deref()).collect::<LargeBinaryArray>()),
        Arc::new(rows.iter().map(|r| r.value.as_deref()).collect::<LargeBinaryArray>()),
        Arc::new(headers.finish()),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn record(offset: i64, key: Option<&str>, headers: &[(&str, Option<&str>)]) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: if offset % 3 == 0 { None } else { Some(Bytes::from(vec![b'v'; offset as usize])) },
            headers: headers.iter().map(|(k, v)| (k.to_string().into(), v.map(|v| Bytes::copy_from_slice(v.as_bytes())))).collect(),
        }
    }

    #[test]
    fn every_codec_decodes_into_rows_with_offsets_from_the_chunk_base() {
        for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut chunk = BytesMut::new();
            // Two batches written with base offset 0, as data planes store them.
            for range in [0..3i64, 3..5] {
                let records: Vec<Record> = range.map(|o| record(o, Some("k"), &[("h", Some("x")), ("n", None)])).collect();
                RecordBatchEncoder::encode(&mut chunk, &records, &RecordEncodeOptions { version: 2, compression }).unwrap();
            }
            let mut rows = Vec::new();
            decode_chunk(&chunk, 100, &mut rows).unwrap();
            assert_eq!(rows.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![100, 101, 102, 103, 104], "{compression:?}");
            assert_eq!(rows[1].value.as_deref(), Some(&b"v"[..]));
            assert_eq!(rows[0].value, None);
            assert_eq!(rows[4].headers, vec![("h".to_string(), Some(Bytes::from_static(b"x"))), ("n".to_string(), None)]);
        }
    }

    #[test]
    fn a_corrupt_chunk_adds_no_rows() {
        let mut chunk = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut chunk,
            &[record(0, None, &[])],
            &RecordEncodeOptions { version: 2, compression: Compression::Zstd },
        )
        .unwrap();
        let n = chunk.len();
        chunk[n - 3] ^= 0xff;
        let mut rows = vec![];
        assert!(decode_chunk(&chunk, 0, &mut rows).is_err());
        assert!(rows.is_empty());
    }

    #[test]
    fn rows_become_columns_of_the_table_schema() {
        let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&crate::lake::schema().unwrap()).unwrap());
        let mut rows = Vec::new();
        let mut chunk = BytesMut::new();
        let records: Vec<Record> = (0..4).map(|o| record(o, if o == 2 { None } else { Some("key") }, &[("a", Some("b"))])).collect();
        RecordBatchEncoder::encode(&mut chunk, &records, &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
        decode_chunk(&chunk, 7, &mut rows).unwrap();
        let batch = to_arrow(&schema, 3, &rows).unwrap();
        assert_eq!(batch.num_rows(), 4);
        assert_eq!(batch.column(4).null_count(), 1, "a null key stays null");
        assert_eq!(batch.column(5).null_count(), 2, "records 0 and 3 have null values");
    }
}
