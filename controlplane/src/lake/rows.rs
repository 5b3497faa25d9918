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
    /// When the record was committed to the stream (milliseconds since the epoch; not a column
    /// of the table): key compaction ages tombstones by it.
    pub appended_ms: i64,
}

/// Appends the records of a chunk whose first offset is `base` to `out`. Control batches
/// (transaction markers) hold no records a consumer sees and give no rows. An error means the
/// chunk cannot be decoded (corrupt, or a codec this build lacks): nothing of it is appended.
pub fn decode_chunk(data: &[u8], base: i64, appended_ms: i64, out: &mut Vec<Row>) -> Result<(), String> {
    let batches = wal_format::batch::split(data).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut offset = base;
    for (pos, h) in batches {
        let batch = &data[pos..pos + h.size()];
        wal_format::batch::verify(batch).map_err(|e| format!("batch at offset {offset}: {e}"))?;
        if !h.is_control() {
            let log_append = h.is_log_append_time();
            let body = wal_format::batch::records(batch).map_err(|e| format!("batch at offset {offset}: {e}"))?;
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
                    appended_ms,
                });
                at = end;
            }
        }
        offset += h.offset_count();
    }
    out.append(&mut rows);
    Ok(())
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

/// The rows of table columns (as [`to_arrow`] writes them); `appended_ms` from `appended`.
pub fn from_arrow(batch: &RecordBatch, appended: impl Fn(i64, bool) -> i64) -> Result<Vec<Row>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::Array;
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("no column {name}"));
    let offsets = column("offset")?.as_primitive_opt::<Int64Type>().ok_or("offset is not a long")?;
    let timestamps = column("timestamp")?.as_primitive_opt::<TimestampMicrosecondType>().ok_or("timestamp is not a timestamp")?;
    let types = column("timestamp_type")?.as_primitive_opt::<Int32Type>().ok_or("timestamp_type is not an int")?;
    let keys = column("key")?.as_binary_opt::<i64>().ok_or("key is not binary")?;
    let values = column("value")?.as_binary_opt::<i64>().ok_or("value is not binary")?;
    let headers = column("headers")?.as_list_opt::<i32>().ok_or("headers is not a list")?;
    let bytes = |a: &arrow_array::LargeBinaryArray, i: usize| (!a.is_null(i)).then(|| Bytes::copy_from_slice(a.value(i)));
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut record_headers = Vec::new();
        if !headers.is_null(i) {
            let h = headers.value(i);
            let h = h.as_struct_opt().ok_or("a header is not a struct")?;
            let hk = h.column(0).as_string_opt::<i32>().ok_or("a header key is not a string")?;
            let hv = h.column(1).as_binary_opt::<i64>().ok_or("a header value is not binary")?;
            for j in 0..h.len() {
                record_headers.push((hk.value(j).to_string(), bytes(hv, j)));
            }
        }
        let value = bytes(values, i);
        out.push(Row {
            offset: offsets.value(i),
            timestamp: timestamps.value(i).div_euclid(1000),
            timestamp_type: types.value(i),
            key: bytes(keys, i),
            appended_ms: appended(offsets.value(i), value.is_none()),
            value,
            headers: record_headers,
        });
    }
    Ok(out)
}

/// Key compaction, as Kafka's log cleaner does it: of the records with one key, only the one
/// with the highest offset stays; a tombstone (null value) stays until `delete_retention_ms`
/// after it was appended. Records without a key stay (Kafka refuses them on compacted topics),
/// and so does the last record, which marks the end of the range. `rows` are in offset order.
pub fn key_compact(rows: Vec<Row>, now_ms: i64, delete_retention_ms: i64) -> Vec<Row> {
    let mut latest: std::collections::HashMap<&[u8], i64> = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        if let Some(k) = &r.key {
            latest.insert(k, r.offset);
        }
    }
    let last = rows.last().map_or(i64::MIN, |r| r.offset);
    let keep: Vec<bool> = rows
        .iter()
        .map(|r| {
            let Some(k) = &r.key else { return true };
            let expired = r.value.is_none() && now_ms.saturating_sub(r.appended_ms) > delete_retention_ms;
            r.offset == last || (latest[&k[..]] == r.offset && !expired)
        })
        .collect();
    rows.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r)).collect()
}

/// Footer metadata key of a file's tombstones and when they were appended ("offset:ms,...").
pub const TOMBSTONES_KEY: &str = "sluice.tombstones";

pub fn tombstones_of(rows: &[Row]) -> String {
    let marks: Vec<String> = rows.iter().filter(|r| r.value.is_none()).map(|r| format!("{}:{}", r.offset, r.appended_ms)).collect();
    marks.join(",")
}

pub fn parse_tombstones(text: &str) -> std::collections::HashMap<i64, i64> {
    text.split(',').filter_map(|m| m.split_once(':')).filter_map(|(o, t)| Some((o.parse().ok()?, t.parse().ok()?))).collect()
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
            decode_chunk(&chunk, 100, 0, &mut rows).unwrap();
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
        assert!(decode_chunk(&chunk, 0, 0, &mut rows).is_err());
        assert!(rows.is_empty());
    }

    #[test]
    fn rows_become_columns_of_the_table_schema() {
        let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&crate::lake::schema().unwrap()).unwrap());
        let mut rows = Vec::new();
        let mut chunk = BytesMut::new();
        let records: Vec<Record> = (0..4).map(|o| record(o, if o == 2 { None } else { Some("key") }, &[("a", Some("b"))])).collect();
        RecordBatchEncoder::encode(&mut chunk, &records, &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
        decode_chunk(&chunk, 7, 99, &mut rows).unwrap();
        let batch = to_arrow(&schema, 3, &rows).unwrap();
        assert_eq!(batch.num_rows(), 4);
        assert_eq!(batch.column(4).null_count(), 1, "a null key stays null");
        assert_eq!(batch.column(5).null_count(), 2, "records 0 and 3 have null values");
        let back = from_arrow(&batch, |_, _| 99).unwrap();
        assert_eq!(back, rows, "columns read back into the same rows");
    }

    fn row(offset: i64, key: Option<&str>, value: Option<&str>, appended_ms: i64) -> Row {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        Row { offset, timestamp: 0, timestamp_type: 0, key: key.map(b), value: value.map(b), headers: vec![], appended_ms }
    }

    #[test]
    fn key_compaction_keeps_the_latest_of_each_key_and_young_tombstones() {
        let rows = vec![
            row(0, Some("a"), Some("1"), 0),
            row(1, Some("b"), Some("1"), 0),
            row(2, None, Some("x"), 0),
            row(3, Some("a"), Some("2"), 0),
            row(4, Some("c"), None, 100),    // tombstone, old
            row(5, Some("d"), Some("1"), 0), // deleted by 6
            row(6, Some("d"), None, 950),    // tombstone, young
            row(7, Some("b"), Some("2"), 0),
            row(8, Some("e"), None, 0), // an old tombstone, but the last record
        ];
        let kept: Vec<i64> = key_compact(rows, 1000, 500).iter().map(|r| r.offset).collect();
        assert_eq!(kept, vec![2, 3, 6, 7, 8]);
    }

    #[test]
    fn tombstone_times_survive_the_footer_text() {
        let rows = vec![row(3, Some("a"), None, 17), row(4, Some("a"), Some("v"), 18), row(9, Some("b"), None, 20)];
        assert_eq!(parse_tombstones(&tombstones_of(&rows)), [(3, 17), (9, 20)].into_iter().collect());
        assert!(parse_tombstones("").is_empty());
    }
}
