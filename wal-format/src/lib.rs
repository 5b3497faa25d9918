//! # wal-format
//!
//! The bytes Sluice writes to object storage, and the Kafka record-batch helpers the data plane
//! needs to accept and serve batches without decoding their records. No I/O happens here.
//!
//! - [`batch`]: Kafka record batch v2 (magic 2): header fields, CRC32C check, base-offset patch,
//!   splitting a produce payload into whole batches.
//! - [`object`]: WAL object format v1 (specified byte by byte in `README.md`): chunks of whole
//!   batches, one per stream, with a chunk index and a CRC32C footer.
//!
//! ```
//! use wal_format::object::{encode, decode, ChunkInput};
//! let chunks = [ChunkInput { stream_id: 7, data: b"batches" }];
//! let bytes = encode(42, 1_700_000_000_000, &chunks);
//! let object = decode(&bytes).unwrap();
//! assert_eq!(object.object_id, 42);
//! assert_eq!(object.chunk_bytes(&bytes, &object.chunks[0]), b"batches");
//! ```
#![deny(missing_docs)]

pub mod batch;
pub mod object;

/// Everything that can be wrong with bytes handed to this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than the structure needs.
    #[error("truncated: need {needed} bytes at {at}, have {have}")]
    Truncated {
        /// Position where the structure starts.
        at: usize,
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A CRC32C did not match.
    #[error("crc mismatch at {at}: expected {expected:#010x}, computed {actual:#010x}")]
    Crc {
        /// Position of the checksummed structure.
        at: usize,
        /// Checksum stored in the bytes.
        expected: u32,
        /// Checksum computed over the bytes.
        actual: u32,
    },
    /// A magic number or version this crate does not understand.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: i64,
    },
    /// A field holds a value that cannot be right.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: i64,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn need(buf: &[u8], at: usize, needed: usize) -> Result<()> {
    if buf.len() < at.saturating_add(needed) {
        return Err(Error::Truncated { at, needed, have: buf.len().saturating_sub(at) });
    }
    Ok(())
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
