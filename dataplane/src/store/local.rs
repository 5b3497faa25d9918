//! The local-directory [`ObjectStore`], on the shard's own io_uring (glommio file I/O).
//!
//! Objects live in segments: per-shard files under `objects/seg/` of 64 MiB, allocated ahead of
//! need with `fallocate` (in the background, then fdatasynced, and the directory synced). A put
//! writes the object into the next free 4 KiB-aligned range of the current segment with one
//! DMA write and fdatasyncs. The range is already allocated and inside the file's size, so that
//! flush creates no inode, changes no size and no directory: its only metadata is the small
//! journal record that marks the range written (about 0.2 ms on an idle disk here, against 7 ms
//! or more under load for a new file per object, which cost ext4 several journal commits).
//! The object's key names its segment and offset (`seg/<segment>@<offset>`), so a read goes
//! straight to the bytes.
//!
//! Segments were zero-filled at first, which made the flush a pure overwrite, but that writes
//! every byte twice: at 200 MB/s of produce the zeros took as much disk bandwidth as the data,
//! zero-filling fell behind, and puts fell back to files (see BENCHMARKS.md).
//!
//! Nothing reads an object before its commit, which comes after the put, so a range cut short
//! by a crash is never referenced (unwritten ranges read back as zeros). A put that finds no
//! segment ready or an object too large for a segment is written as a file of its own under
//! `objects/wal/` instead: written to `objects/tmp/`, synced, renamed, directory synced.
//! Reads are ranged (one chunk of an object at a time).
//!
//! The topics' tables (Parquet and Iceberg metadata files the control plane's compaction writes)
//! live under `tables/` as plain files; their keys are their paths there.

use super::{ObjectStore, StoreFuture};
use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::io::{DmaFile, DmaStreamWriterBuilder};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Size of a segment. Objects up to half of it go into segments (the default flush size is
/// 4 MiB). At 100 MB/s a shard starts a new segment about every 0.6 s.
const SEGMENT_BYTES: u64 = 64 << 20;
/// DMA alignment of object ranges in a segment.
const ALIGN: u64 = 4096;
/// Length of a segment's file until it is sealed: objects fill at most [`SEGMENT_BYTES`], and
/// the block after them marks the file as one that may still be written (see [`seal`]).
const SEGMENT_FILE_BYTES: u64 = SEGMENT_BYTES + ALIGN;
/// Files a shard keeps open for reads.
const OPEN_FOR_READ: usize = 32;

/// Creates the store's directories; run once at start-up, before the shards, so a bad data
/// directory is one clear error.
pub fn prepare_dirs(root: &Path) -> Result<(), String> {
    for d in ["wal", "tmp", "seg"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot use object directory {}: {e}", root.display()))?;
    }
    // Also the file each shard's first DMA read goes to (see `LocalObjectStore::probe_device`).
    let probe = root.join(PROBE_FILE);
    std::fs::write(&probe, [0u8; 4096]).map_err(|e| format!("object directory {} is not writable: {e}", root.display()))?;
    Ok(())
}

const PROBE_FILE: &str = "tmp/.iopoll-probe";

/// A segment being filled.
struct Segment {
    name: String,
    file: Rc<DmaFile>,
    /// Next free (aligned) offset.
    next: u64,
}

/// The shard's current segment and the one prepared next.
#[derive(Default)]
struct Segments {
    current: Option<Segment>,
    spare: Option<Segment>,
    preparing: bool,
}

/// Prefix of the keys of the topics' tables' files, kept as plain files under the store's root.
const TABLES: &str = "tables/";

/// Objects under `DATA_DIR/objects`. One per shard.
pub struct LocalObjectStore {
    root: PathBuf,
    wal_dir: PathBuf,
    tmp_dir: PathBuf,
    seg_dir: PathBuf,
    segments: Rc<RefCell<Segments>>,
    /// Files opened for reads, least recently used first: a cold read of many chunks of one
    /// segment opens it once, not once per chunk.
    readers: RefCell<std::collections::VecDeque<(PathBuf, Rc<DmaFile>)>>,
}

impl LocalObjectStore {
    /// A store rooted at `root` (by default `DATA_DIR/objects`).
    pub fn new(root: &Path) -> Self {
        // Absolute paths: glommio opens directories through io_uring, where a relative path
        // fails with EBADF.
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Self {
            wal_dir: root.join("wal"),
            tmp_dir: root.join("tmp"),
            seg_dir: root.join("seg"),
            root,
            segments: Rc::default(),
            readers: RefCell::default(),
        }
    }

    /// Opens a 4 KiB file of the store with DMA before anything else does. glommio decides once
    /// per device whether to use its polled ring, by issuing a read on the first DMA file opened
    /// there: on an empty file (a fresh WAL object) that read succeeds trivially, polling gets
    /// enabled on a device that cannot poll, and every later DMA read fails with EOPNOTSUPP; on a
    /// write-only file the probe fails with EBADF and logs an error. A real 4 KiB read gives
    /// the right answer.
    pub async fn probe_device(&self) {
        if let Ok(f) = DmaFile::open(self.root.join(PROBE_FILE)).await {
            let _ = f.close().await;
        }
    }

    /// Starts preparing the next segment unless one is ready or on its way.
    fn refill(&self) {
        let mut segs = self.segments.borrow_mut();
        if segs.spare.is_some() || segs.preparing {
            return;
        }
        segs.preparing = true;
        let (dir, slot) = (self.seg_dir.clone(), self.segments.clone());
        glommio::spawn_local(async move {
            let seg = prepare_segment(&dir).await;
            let mut segs = slot.borrow_mut();
            segs.preparing = false;
            match seg {
                Ok(seg) => segs.spare = Some(seg),
                Err(e) => tracing::warn!(error = %e, "cannot prepare a segment"),
            }
        })
        .detach();
    }

    /// Reserves an aligned range of `len` bytes in the current segment (moving to the spare
    /// when it is full): the segment's file, name and offset. The next segment is prepared
    /// once the current one is half full (or when there is none: the first objects of a shard
    /// are files while its first segment is prepared).
    fn reserve(&self, len: u64) -> Option<(Rc<DmaFile>, String, u64)> {
        let mut segs = self.segments.borrow_mut();
        let fits = |s: &Segment| s.next + len <= SEGMENT_BYTES;
        if !segs.current.as_ref().is_some_and(fits) {
            match segs.spare.take() {
                Some(spare) => {
                    if let Some(full) = segs.current.replace(spare) {
                        seal(full);
                    }
                }
                None => {
                    drop(segs);
                    self.refill();
                    return None;
                }
            }
        }
        let seg = segs.current.as_mut()?;
        let at = seg.next;
        seg.next += len;
        let reserved = (seg.file.clone(), seg.name.clone(), at);
        let half_full = seg.next >= SEGMENT_BYTES / 2;
        drop(segs);
        if half_full {
            self.refill();
        }
        Some(reserved)
    }

    /// Durably stores `data`; returns its key. `fallback_key` names it if it has to be written
    /// as a file of its own.
    async fn put_object(&self, fallback_key: &str, data: &[u8]) -> std::io::Result<String> {
        let aligned = (data.len() as u64).div_ceil(ALIGN) * ALIGN;
        if aligned <= SEGMENT_BYTES / 2 {
            if let Some((file, name, at)) = self.reserve(aligned) {
                let mut buf = file.alloc_dma_buffer(aligned as usize);
                let bytes = buf.as_bytes_mut();
                bytes[..data.len()].copy_from_slice(data);
                bytes[data.len()..].fill(0);
                file.write_at(buf, at).await?;
                file.fdatasync().await?;
                return Ok(format!("seg/{name}@{at}"));
            }
        }
        self.put_file(fallback_key, data).await?;
        Ok(fallback_key.to_string())
    }

    /// Stores an object as a file of its own: temporary name, sync, rename, directory sync.
    async fn put_file(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        let tmp = self.tmp_dir.join(key);
        let file = DmaFile::create(&tmp).await?;
        let mut w = DmaStreamWriterBuilder::new(file).with_buffer_size(512 << 10).with_write_behind(4).build();
        w.write_all(data).await?;
        // close() flushes, truncates the aligned tail to the real length and fdatasyncs.
        w.close().await?;
        glommio::io::rename(&tmp, self.wal_dir.join(key)).await?;
        sync_dir(&self.wal_dir).await
    }

    /// Where an object's bytes are: a file and the offset of the object in it.
    fn locate(&self, key: &str) -> std::io::Result<(PathBuf, u64)> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad object key {key}"));
        if let Some(file) = key.strip_prefix(TABLES) {
            // A file of a topic's table (written by the control plane's compaction).
            if file.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(bad());
            }
            return Ok((self.root.join(key), 0));
        }
        match key.strip_prefix("seg/").and_then(|k| k.rsplit_once('@')) {
            Some((name, at)) => Ok((self.seg_dir.join(name), at.parse().map_err(|_| bad())?)),
            None if key.is_empty() || key.contains('/') => Err(bad()),
            None => Ok((self.wal_dir.join(key), 0)),
        }
    }

    /// Reads `len` bytes at `pos` of object `key` into a buffer the caller may patch in place.
    async fn read_range(&self, key: &str, pos: u64, len: usize) -> std::io::Result<BytesMut> {
        let (path, base) = self.locate(key)?;
        let file = self.reader(path).await?;
        let buf = file.read_at(base + pos, len).await?;
        if buf.len() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("object {key}: wanted {len} bytes at {pos}, got {}", buf.len()),
            ));
        }
        Ok(BytesMut::from(&buf[..]))
    }

    /// An open handle on `path` for reads, from the open files or newly opened (the least
    /// recently used one is let go; glommio closes it).
    async fn reader(&self, path: PathBuf) -> std::io::Result<Rc<DmaFile>> {
        {
            let mut open = self.readers.borrow_mut();
            if let Some(i) = open.iter().position(|(p, _)| *p == path) {
                let hit = open.remove(i).expect("position is in range");
                let file = hit.1.clone();
                open.push_back(hit);
                return Ok(file);
            }
        }
        let file = Rc::new(DmaFile::open(&path).await?);
        let mut open = self.readers.borrow_mut();
        open.push_back((path, file.clone()));
        if open.len() > OPEN_FOR_READ {
            open.pop_front();
        }
        Ok(file)
    }
}

impl ObjectStore for LocalObjectStore {
    fn put<'a>(&'a self, key: &'a str, data: &'a [u8]) -> StoreFuture<'a, String> {
        Box::pin(self.put_object(key, data))
    }

    fn get_range<'a>(&'a self, key: &'a str, pos: u64, len: usize) -> StoreFuture<'a, BytesMut> {
        Box::pin(self.read_range(key, pos, len))
    }

    /// Removes an object. One stored as a file is unlinked. One in a segment shares its file
    /// with others: its range is punched out (the blocks go back to the file system), and once
    /// a sealed segment (see [`seal`]) has nothing allocated any more, its file goes too.
    fn delete<'a>(&'a self, key: &'a str, len: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (path, at) = self.locate(key)?;
            if key.starts_with("seg/") {
                let file = match glommio::io::OpenOptions::new().read(true).write(true).dma_open(&path).await {
                    Ok(f) => f,
                    Err(glommio::GlommioError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                file.deallocate(at, len.div_ceil(ALIGN) * ALIGN).await?;
                let stat = file.stat().await?;
                file.close().await?;
                if stat.allocated_file_size > 0 || stat.file_size > SEGMENT_BYTES {
                    return Ok(());
                }
            }
            self.readers.borrow_mut().retain(|(p, _)| *p != path);
            let table_dir;
            let dir = if key.starts_with("seg/") {
                &self.seg_dir
            } else if key.starts_with(TABLES) {
                table_dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
                &table_dir
            } else {
                &self.wal_dir
            };
            match glommio::io::remove(&path).await {
                Ok(()) => sync_dir(dir).await,
                Err(e) if matches!(&e, glommio::GlommioError::IoError(io) if io.kind() == std::io::ErrorKind::NotFound) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Objects stored as files whose key starts with `prefix`, and segments (`seg/<name>`) whose
    /// name does, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            for (dir, key_prefix) in [(&self.wal_dir, ""), (&self.seg_dir, "seg/")] {
                for entry in std::fs::read_dir(dir)? {
                    let key = format!("{key_prefix}{}", entry?.file_name().to_string_lossy());
                    if key.starts_with(prefix) {
                        keys.push(key);
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
    }
}

/// Cuts a segment no object will be put in any more down to what was put in it, which lets go
/// of its unused tail and marks it sealed: a segment being filled (or prepared) is one guard
/// block longer than anything put in it can reach ([`SEGMENT_FILE_BYTES`]), so a sealed one
/// is always shorter, even when filled to the last byte, and garbage collection never removes
/// one being filled (see [`LocalObjectStore::delete`]). Reservations end at `next`, so no write
/// in flight reaches the cut.
fn seal(seg: Segment) {
    glommio::spawn_local(async move {
        if let Err(e) = seg.file.truncate(seg.next).await {
            tracing::warn!(segment = %seg.name, error = %e, "cannot release the unused end of a segment");
        }
    })
    .detach();
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let d = glommio::io::Directory::open(dir).await?;
    d.sync().await?;
    d.close().await?;
    Ok(())
}

/// Creates a segment: its space allocated (reading as zeros until written) and its size set,
/// durable with its directory entry.
async fn prepare_segment(dir: &Path) -> std::io::Result<Segment> {
    let name = format!("{:032x}.seg", uuid::Uuid::new_v4().as_u128());
    let file = DmaFile::create(dir.join(&name)).await?;
    if file.pre_allocate(SEGMENT_FILE_BYTES, false).await.is_err() {
        // A file system without fallocate: a sparse file, whose blocks each put's flush allocates.
        file.truncate(SEGMENT_FILE_BYTES).await?;
    }
    file.fdatasync().await?;
    sync_dir(dir).await?;
    Ok(Segment { name, file: Rc::new(file), next: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::contract;

    /// Runs `test` on a glommio executor with a fresh store in a temporary data directory.
    fn with_store<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce(LocalObjectStore, PathBuf) -> F + Send + 'static) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                prepare_dirs(&path).expect("dirs");
                let store = LocalObjectStore::new(&path);
                store.probe_device().await;
                test(store, path).await
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    fn object(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
    }

    #[test]
    fn objects_go_to_segments_and_read_back_across_a_rollover() {
        with_store(|store, _| async move {
            // Objects of 1 MiB and a bit, until two segments have been used: the first objects
            // are files (no segment is ready yet), then segments, rolling over to the next.
            let mut keys = Vec::new();
            let segments = |keys: &Vec<(String, Vec<u8>)>| -> std::collections::BTreeSet<String> {
                keys.iter().filter_map(|(k, _)| Some(k.strip_prefix("seg/")?.split('@').next()?.to_string())).collect()
            };
            for i in 0..400 {
                let data = object(i, (1 << 20) + 123 * i);
                let key = store.put(&format!("fallback-{i}"), &data).await.expect("put");
                keys.push((key, data));
                if segments(&keys).len() >= 2 {
                    break;
                }
            }
            assert!(!keys[0].0.starts_with("seg/"), "no segment is ready for the first object: {}", keys[0].0);
            assert!(segments(&keys).len() >= 2, "used a second segment within {} objects", keys.len());
            for (key, data) in &keys {
                assert_eq!(&store.get_range(key, 0, data.len()).await.expect("read")[..], &data[..], "{key}");
                assert_eq!(&store.get_range(key, 1000, 500).await.expect("ranged read")[..], &data[1000..1500], "{key}");
            }
        });
    }

    #[test]
    fn deleting_every_object_of_a_sealed_segment_removes_it_and_spares_the_current_one() {
        with_store(|store, path| async move {
            let mut keys = Vec::new();
            let seg_of = |k: &str| k.strip_prefix("seg/").and_then(|k| k.split('@').next()).map(str::to_string);
            // Fill segments until a third one is in use: the first is sealed, the second too.
            loop {
                // 4 MiB objects fill a segment to its last byte.
                let data = object(keys.len(), 4 << 20);
                let key = store.put(&format!("f-{}", keys.len()), &data).await.expect("put");
                keys.push((key, data.len() as u64));
                let segs: std::collections::BTreeSet<String> = keys.iter().filter_map(|(k, _)| seg_of(k)).collect();
                if segs.len() >= 3 {
                    break;
                }
            }
            let first = keys.iter().find_map(|(k, _)| seg_of(k)).expect("a segment");
            let current = keys.last().and_then(|(k, _)| seg_of(k)).expect("a segment");
            let seg_file = |name: &str| path.join("seg").join(name);
            // The sealed segment is cut to what was put in it (by a task of its own).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::metadata(seg_file(&first)).unwrap().len() > SEGMENT_BYTES {
                assert!(std::time::Instant::now() < deadline, "the sealed segment was never cut");
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }

            // Deleting all but one object of the first segment frees their blocks, not the file.
            let in_first: Vec<_> = keys.iter().filter(|(k, _)| seg_of(k).as_deref() == Some(&first)).cloned().collect();
            let (last, rest) = in_first.split_last().unwrap();
            for (k, len) in rest {
                store.delete(k, *len).await.expect("delete");
            }
            assert!(seg_file(&first).exists());
            assert_eq!(
                &store.get_range(&last.0, 0, 100).await.expect("a live neighbour reads")[..],
                &object(keys.iter().position(|k| k == last).unwrap(), 100)[..]
            );
            store.delete(&last.0, last.1).await.expect("delete");
            assert!(!seg_file(&first).exists(), "an emptied sealed segment stays");

            // The segment being filled stays however empty it gets.
            for (k, len) in keys.iter().filter(|(k, _)| seg_of(k).as_deref() == Some(&current)) {
                store.delete(k, *len).await.expect("delete");
            }
            assert!(seg_file(&current).exists(), "the current segment was removed");
            let key = store.put("after", &object(1, 1000)).await.expect("put after");
            assert_eq!(&store.get_range(&key, 0, 1000).await.expect("read")[..], &object(1, 1000)[..]);
        });
    }

    #[test]
    fn local_store_keeps_the_object_store_contract() {
        with_store(|store, _| async move { contract(&store).await });
    }

    #[test]
    fn an_object_too_large_for_a_segment_is_a_file() {
        with_store(|store, path| async move {
            let data = object(7, (SEGMENT_BYTES / 2 + 1) as usize);
            let key = store.put("big.wal", &data).await.expect("put");
            assert_eq!(key, "big.wal");
            assert!(path.join("wal/big.wal").exists());
            let tail = data.len() - 4096;
            assert_eq!(&store.get_range(&key, tail as u64, 4096).await.expect("read")[..], &data[tail..]);
            assert!(store.get_range("seg/nonexistent.seg@0", 0, 10).await.is_err());
            assert!(store.get_range("seg/x.seg@notanumber", 0, 10).await.is_err());
        });
    }
}
