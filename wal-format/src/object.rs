//! WAL object format v1: whole Kafka record batches from many streams in one object.
//!
//! ```text
//! +--------------------------- header (44 bytes) ----------------------------+
//! | magic "SLWL" (4) | version u16 = 1 | flags u16 = 0 | object_id u128 (16)  |
//! | created_ms i64 (8) | chunk_count u32 (4) | chunk_index_pos u64 (8)        |
//! +--------------------------------------------------------------------------+
//! | chunk 0 bytes: whole record batches of one stream, exactly as received   |
//! | chunk 1 bytes ...        (streams strictly increasing, no gaps between)  |
//! +---------------------- chunk index (24 bytes each) -----------------------+
//! | stream_id u64 | position u64 | length u32 | crc32c of chunk bytes u32    |
//! +------------------------------ footer -------------------------------------+
//! | crc32c u32 of every byte before the footer                               |
//! +--------------------------------------------------------------------------+
//! ```
//!
//! Integers are big-endian. The per-chunk CRC lets a reader verify a ranged read of one chunk
//! without fetching the whole object; the footer CRC covers the whole object.

use crate::{be_u16, be_u32, be_u64, need, Error, Result};

/// The four bytes every WAL object starts with.
pub const MAGIC: [u8; 4] = *b"SLWL";
/// The format version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 44;
/// Size of one chunk-index entry.
pub const INDEX_ENTRY_LEN: usize = 24;
/// Size of the footer.
pub const FOOTER_LEN: usize = 4;

/// Where one stream's chunk lies inside an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The stream (one topic partition) whose batches the chunk holds.
    pub stream_id: u64,
    /// Byte position of the chunk inside the object.
    pub position: u64,
    /// Length of the chunk in bytes.
    pub length: u32,
    /// CRC32C of the chunk bytes.
    pub crc: u32,
}

impl ChunkInfo {
    /// Verifies bytes read from `position..position+length` against the chunk's CRC.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() != self.length as usize {
            return Err(Error::Truncated { at: self.position as usize, needed: self.length as usize, have: bytes.len() });
        }
        let actual = crc32c::crc32c(bytes);
        if actual != self.crc {
            return Err(Error::Crc { at: self.position as usize, expected: self.crc, actual });
        }
        Ok(())
    }
}

/// A decoded object: its identity and its chunk index (the chunk bytes stay where they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// Unique id of the object.
    pub object_id: u128,
    /// Milliseconds since the Unix epoch when the object was cut.
    pub created_ms: i64,
    /// The chunks, in increasing stream order.
    pub chunks: Vec<ChunkInfo>,
}

impl WalObject {
    /// The bytes of `chunk` inside the encoded `object`.
    pub fn chunk_bytes<'a>(&self, object: &'a [u8], chunk: &ChunkInfo) -> &'a [u8] {
        &object[chunk.position as usize..chunk.position as usize + chunk.length as usize]
    }
}

/// One chunk to encode.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInput<'a> {
    /// Stream id; chunks must be given in strictly increasing stream order.
    pub stream_id: u64,
    /// Whole record batches.
    pub data: &'a [u8],
}

/// Writes an object incrementally, so a stream's batches can come from many buffers without
/// first being gathered in one.
#[derive(Debug)]
pub struct ObjectBuilder {
    buf: Vec<u8>,
    chunks: Vec<ChunkInfo>,
}

impl ObjectBuilder {
    /// Starts an object with room for `capacity` bytes of chunk data.
    pub fn new(object_id: u128, created_ms: i64, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity + 64 * INDEX_ENTRY_LEN + FOOTER_LEN);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&VERSION.to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&object_id.to_be_bytes());
        buf.extend_from_slice(&created_ms.to_be_bytes());
        buf.extend_from_slice(&[0u8; 12]); // chunk_count and chunk_index_pos, set by finish
        Self { buf, chunks: Vec::new() }
    }

    /// Opens the chunk of `stream_id`. Panics if streams are not strictly increasing: that is a
    /// bug in the caller, not bad input.
    pub fn begin_chunk(&mut self, stream_id: u64) {
        if let Some(last) = self.chunks.last() {
            assert!(stream_id > last.stream_id, "chunks must be in strictly increasing stream order");
        }
        self.chunks.push(ChunkInfo { stream_id, position: self.buf.len() as u64, length: 0, crc: 0 });
    }

    /// Appends bytes (whole batches) to the open chunk.
    pub fn append(&mut self, data: &[u8]) {
        let chunk = self.chunks.last_mut().expect("append before begin_chunk");
        chunk.crc = crc32c::crc32c_append(chunk.crc, data);
        // Checked on the sum, not just this piece: a length that wrapped in a release build would
        // write an index no reader accepts.
        let len = u32::try_from(data.len()).ok().and_then(|n| chunk.length.checked_add(n));
        chunk.length = len.expect("chunk under 4 GiB");
        self.buf.extend_from_slice(data);
    }

    /// Writes the chunk index and footer; returns the object and where each chunk lies.
    pub fn finish(mut self) -> (Vec<u8>, Vec<ChunkInfo>) {
        let index_pos = self.buf.len() as u64;
        self.buf[32..36].copy_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        self.buf[36..44].copy_from_slice(&index_pos.to_be_bytes());
        for c in &self.chunks {
            self.buf.extend_from_slice(&c.stream_id.to_be_bytes());
            self.buf.extend_from_slice(&c.position.to_be_bytes());
            self.buf.extend_from_slice(&c.length.to_be_bytes());
            self.buf.extend_from_slice(&c.crc.to_be_bytes());
        }
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        (self.buf, self.chunks)
    }
}

/// Encodes an object from whole chunks.
pub fn encode(object_id: u128, created_ms: i64, chunks: &[ChunkInput<'_>]) -> Vec<u8> {
    let mut b = ObjectBuilder::new(object_id, created_ms, chunks.iter().map(|c| c.data.len()).sum());
    for c in chunks {
        b.begin_chunk(c.stream_id);
        b.append(c.data);
    }
    b.finish().0
}

/// Decodes and fully verifies an object: magic, version, footer CRC, and a chunk index that
/// tiles the space between header and index exactly, in strictly increasing stream order.
pub fn decode(buf: &[u8]) -> Result<WalObject> {
    need(buf, 0, HEADER_LEN + FOOTER_LEN)?;
    if buf[0..4] != MAGIC {
        return Err(Error::Unsupported { what: "WAL object magic", value: be_u32(buf, 0).into() });
    }
    let body_len = buf.len() - FOOTER_LEN;
    let expected = be_u32(buf, body_len);
    let actual = crc32c::crc32c(&buf[..body_len]);
    if expected != actual {
        return Err(Error::Crc { at: body_len, expected, actual });
    }
    let version = be_u16(buf, 4);
    if version != VERSION {
        return Err(Error::Unsupported { what: "WAL object version", value: version.into() });
    }
    let object_id = u128::from_be_bytes(buf[8..24].try_into().expect("16 bytes"));
    let created_ms = be_u64(buf, 24) as i64;
    let count = be_u32(buf, 32) as usize;
    let index_pos = be_u64(buf, 36);
    let index_len = (count as u64).checked_mul(INDEX_ENTRY_LEN as u64);
    if index_pos < HEADER_LEN as u64 || index_len.and_then(|l| l.checked_add(index_pos)) != Some(body_len as u64) {
        return Err(Error::Invalid { what: "chunk index position", value: index_pos as i64 });
    }
    let index_pos = index_pos as usize;
    let mut chunks = Vec::with_capacity(count);
    let mut next = HEADER_LEN as u64;
    for i in 0..count {
        let at = index_pos + i * INDEX_ENTRY_LEN;
        let c = ChunkInfo {
            stream_id: be_u64(buf, at),
            position: be_u64(buf, at + 8),
            length: be_u32(buf, at + 16),
            crc: be_u32(buf, at + 20),
        };
        if c.position != next {
            return Err(Error::Invalid { what: "chunk position", value: c.position as i64 });
        }
        if chunks.last().is_some_and(|p: &ChunkInfo| p.stream_id >= c.stream_id) {
            return Err(Error::Invalid { what: "chunk stream order", value: c.stream_id as i64 });
        }
        next = c.position + u64::from(c.length);
        if next > index_pos as u64 {
            return Err(Error::Invalid { what: "chunk length", value: c.length.into() });
        }
        c.verify(&buf[c.position as usize..next as usize])?;
        chunks.push(c);
    }
    if next != index_pos as u64 {
        return Err(Error::Invalid { what: "bytes between chunks and index", value: (index_pos as u64 - next) as i64 });
    }
    Ok(WalObject { object_id, created_ms, chunks })
}

#[cfg(test)]
mod tests;
