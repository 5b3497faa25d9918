//! The local-directory object store, on the shard's own io_uring (glommio file I/O).
//!
//! A put writes `objects/tmp/<key>`, syncs it, renames it to `objects/wal/<key>` and syncs the
//! directory, so an object is either wholly there under its final name or absent, across crashes.
//! Reads are ranged (one chunk of an object at a time).

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriterBuilder};
use std::path::{Path, PathBuf};

/// Creates the store's directories; run once at start-up, before the shards, so a bad data
/// directory is one clear error.
pub fn prepare_dirs(data_dir: &Path) -> Result<(), String> {
    for d in ["objects/wal", "objects/tmp"] {
        let p = data_dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot use data directory {}: {e}", data_dir.display()))?;
    }
    // Also the file each shard's first DMA read goes to (see `LocalObjectStore::probe_device`).
    let probe = data_dir.join(PROBE_FILE);
    std::fs::write(&probe, [0u8; 4096]).map_err(|e| format!("data directory {} is not writable: {e}", data_dir.display()))?;
    Ok(())
}

const PROBE_FILE: &str = "objects/tmp/.iopoll-probe";

/// Objects under `DATA_DIR/objects`.
pub struct LocalObjectStore {
    wal_dir: PathBuf,
    tmp_dir: PathBuf,
}

impl LocalObjectStore {
    /// A store rooted at `data_dir/objects`.
    pub fn new(data_dir: &Path) -> Self {
        // Absolute paths: glommio opens directories through io_uring, where a relative path
        // fails with EBADF.
        let root = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Self { wal_dir: root.join("objects/wal"), tmp_dir: root.join("objects/tmp") }
    }

    /// Opens a 4 KiB file of the store with DMA before anything else does. glommio decides once
    /// per device whether to use its polled ring, by issuing a read on the first DMA file opened
    /// there: on an empty file (a fresh WAL object) that read succeeds trivially, polling gets
    /// enabled on a device that cannot poll, and every later DMA read fails with EOPNOTSUPP; on a
    /// write-only file the probe fails with EBADF and logs an error. A real 4 KiB read gives
    /// the right answer.
    pub async fn probe_device(&self) {
        if let Some(root) = self.tmp_dir.parent().and_then(Path::parent) {
            if let Ok(f) = DmaFile::open(root.join(PROBE_FILE)).await {
                let _ = f.close().await;
            }
        }
    }

    /// Durably stores `data` under `key`.
    pub async fn put(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        let tmp = self.tmp_dir.join(key);
        let file = DmaFile::create(&tmp).await?;
        let mut w = DmaStreamWriterBuilder::new(file).with_buffer_size(512 << 10).with_write_behind(4).build();
        w.write_all(data).await?;
        // close() flushes, truncates the aligned tail to the real length and fdatasyncs.
        w.close().await?;
        glommio::io::rename(&tmp, self.wal_dir.join(key)).await?;
        let dir = glommio::io::Directory::open(&self.wal_dir).await?;
        dir.sync().await?;
        dir.close().await?;
        Ok(())
    }

    /// Reads `len` bytes at `pos` of object `key` into a buffer the caller may patch in place.
    pub async fn get_range(&self, key: &str, pos: u64, len: usize) -> std::io::Result<BytesMut> {
        let file = DmaFile::open(self.wal_dir.join(key)).await?;
        let result = file.read_at(pos, len).await;
        let _ = file.close().await;
        let buf = result?;
        if buf.len() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object {key}: wanted {len} bytes at {pos}, got {}", buf.len()),
            ));
        }
        Ok(BytesMut::from(&buf[..]))
    }
}
