//! The fetch path on a partition's owner: whole batches from the cache, and on a miss from the
//! committed objects the sequencer's index points at (patched with their real offsets and kept
//! in the cache). Long polls wait on [`super::Watermarks::wait_past`].

use super::parquet::{self, Footers, RowGroupBytes, Span};
use super::{Deps, Piece, ReadReq, ReadResult, Settings};
use crate::error::Error;
use crate::metrics::M;
use bytes::Bytes;
use sluice_rpc::{IndexEntry, Lookup, ENTRY_PARQUET};

/// Reads committed batches.
pub struct Reader {
    settings: Settings,
    deps: Deps,
    /// Footers of the Parquet files recently read.
    footers: Footers,
}

impl Reader {
    pub(super) fn new(settings: Settings, deps: Deps) -> Self {
        Reader { settings, deps, footers: Footers::default() }
    }

    /// Asks the sequencer for the authoritative marks of streams (this shard's view may lag
    /// behind commits made by other data planes).
    pub async fn refresh_marks(&self, streams: Vec<u64>) -> Result<(), Error> {
        for m in self.deps.sequencer.watermarks(streams, self.settings.rpc_timeout).await? {
            self.deps.marks.advance(m.stream_id, super::Marks { log_start: m.log_start, hwm: m.high_watermark });
        }
        Ok(())
    }

    /// Reads whole batches of a stream from `offset`, up to about `max_bytes` (always at least
    /// one batch when any is available, as Kafka does, so a consumer can make progress).
    pub async fn read(&self, req: ReadReq) -> ReadResult {
        let marks = &self.deps.marks;
        let Some(mut m) = marks.get(req.stream) else {
            return ReadResult { error: Some(Error::UnknownTopicOrPartition), ..Default::default() };
        };
        if req.offset > m.hwm || req.offset < m.log_start {
            // This shard may not have heard of recent commits made elsewhere: ask before refusing.
            if let Err(e) = self.refresh_marks(vec![req.stream]).await {
                return ReadResult { error: Some(e), marks: m, ..Default::default() };
            }
            m = marks.get(req.stream).unwrap_or(m);
            if req.offset > m.hwm || req.offset < m.log_start {
                tracing::info!(stream = req.stream, offset = req.offset, log_start = m.log_start, hwm = m.hwm, "fetch out of range");
                return ReadResult { error: Some(Error::OffsetOutOfRange), marks: m, ..Default::default() };
            }
        }
        let mut out = ReadResult { error: None, marks: m, batches: Vec::new() };
        let mut offset = req.offset;
        let mut bytes = 0usize;
        while offset < m.hwm && (bytes < req.max_bytes || out.batches.is_empty()) {
            let hit = self.deps.cache.borrow().get(req.stream, offset);
            if let Some((_, last, data)) = hit {
                if !out.batches.is_empty() && bytes + data.len() > req.max_bytes {
                    break;
                }
                bytes += data.len();
                out.batches.push(data);
                offset = last + 1;
                continue;
            }
            let loaded = match self.load(req.stream, offset, req.max_bytes.saturating_sub(bytes)).await {
                Ok(l) => l,
                Err(e) => {
                    if out.batches.is_empty() {
                        out.error = Some(e);
                    }
                    break;
                }
            };
            // Use what was loaded directly: the cache may be too small to keep it.
            let before = offset;
            for (base, last, data) in loaded {
                if last < offset || base > offset {
                    continue;
                }
                // The index may already hold commits whose answers this shard has not had: an
                // offset past the watermarks it answers with would send the client's next fetch
                // out of range.
                if base >= m.hwm {
                    break;
                }
                if !out.batches.is_empty() && bytes + data.len() > req.max_bytes {
                    break;
                }
                bytes += data.len();
                out.batches.push(data);
                offset = last + 1;
            }
            if offset == before {
                break;
            }
        }
        out
    }

    /// Loads the index entries from `offset` on from their objects (into the cache too) and
    /// returns their batches: base offset, last offset, bytes. Empty when the index has nothing.
    async fn load(&self, stream: u64, offset: i64, want_bytes: usize) -> Result<Vec<(i64, i64, Piece)>, Error> {
        let lookup = Lookup { stream_id: stream, offset, max_entries: 8 };
        let reply = self.deps.sequencer.lookup(lookup, self.settings.rpc_timeout).await?;
        if let Some(e) = Error::remote(reply.error) {
            return Err(e);
        }
        let mut out = Vec::new();
        // Read only the chunks this fetch needs (the first always): with a cache too small to
        // keep read-ahead, anything more would be read for nothing.
        let mut read = 0usize;
        for e in reply.entries {
            if read > 0 && read >= want_bytes {
                break;
            }
            read += e.length as usize;
            out.extend(self.load_entry(stream, &e).await?);
        }
        Ok(out)
    }

    async fn load_entry(&self, stream: u64, e: &IndexEntry) -> Result<Vec<(i64, i64, Piece)>, Error> {
        let (buf, spans) = self.entry_batches(stream, e).await?;
        let mut cache = self.deps.cache.borrow_mut();
        let mut out = Vec::with_capacity(spans.len());
        for (pos, len, base, last) in spans {
            let piece = Piece { buf: buf.clone(), range: pos..pos + len };
            cache.insert(stream, base, last, piece.clone());
            out.push((base, last, piece));
        }
        Ok(out)
    }

    /// The record batches an index entry names, with their real offsets: a WAL chunk's batches
    /// patched in place, or a Parquet row group's records rebuilt into batches.
    pub async fn entry_batches(&self, stream: u64, e: &IndexEntry) -> Result<(Bytes, Vec<Span>), Error> {
        let metrics = &self.deps.metrics;
        metrics.add(M::ObjectReads, 1);
        metrics.add(M::ObjectReadBytes, u64::from(e.length));
        let read_failed = |err: std::io::Error| {
            tracing::error!(object = %e.object_key, error = %err, "object read failed");
            Error::from(err)
        };
        if e.format == ENTRY_PARQUET {
            let store = &*self.deps.store;
            let meta = self.footers.get(store, &e.object_key, e.file_size).await?;
            let data = store.get_range(&e.object_key, e.position, e.length as usize).await.map_err(read_failed)?;
            let bytes = RowGroupBytes { start: e.position, data: data.freeze(), file_size: e.file_size };
            return parquet::rebuild(meta, e.row_group as usize, bytes, e.base_offset, e.end_offset).map_err(|err| {
                tracing::error!(object = %e.object_key, row_group = e.row_group, error = %err, "Parquet row group unreadable");
                Error::CorruptObject(format!("{}: {err}", e.object_key))
            });
        }
        let data = self.deps.store.get_range(&e.object_key, e.position, e.length as usize).await.map_err(read_failed)?;
        let info = wal_format::object::ChunkInfo { stream_id: stream, position: e.position, length: e.length, crc: e.crc };
        if let Err(err) = info.verify(&data) {
            tracing::error!(object = %e.object_key, error = %err, "object chunk corrupt");
            return Err(Error::CorruptObject(format!("{}: {err}", e.object_key)));
        }
        let batches = wal_format::batch::split(&data).map_err(|err| Error::CorruptObject(format!("{}: {err}", e.object_key)))?;
        let mut buf = data;
        let mut offset = e.base_offset;
        let mut spans = Vec::with_capacity(batches.len());
        for (pos, h) in &batches {
            wal_format::batch::set_base_offset(&mut buf[*pos..], offset);
            spans.push((*pos, h.size(), offset, offset + h.offset_count() - 1));
            offset += h.offset_count();
        }
        Ok((buf.freeze(), spans))
    }
}
