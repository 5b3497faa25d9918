//! Object storage: the [`ObjectStore`] trait the data plane writes WAL objects to and reads them
//! back from, its implementations, and the format of the keys the data plane asks for.
//!
//! - [`local`]: a directory on this machine (segment files on the shard's io_uring).
//! - [`s3`]: a bucket of any S3-compatible server (hyper on the shard's executor, SigV4).
//! - [`mem`]: in memory, for tests, with faults to inject.
//!
//! A store may keep an object under another key than the one asked for (the local store puts
//! objects into preallocated segments and names the range): [`ObjectStore::put`] returns the key
//! that reads it back, and that key is what gets committed to the index.

pub mod local;
pub mod mem;
pub mod s3;

pub use local::{prepare_dirs, LocalObjectStore};
#[allow(unused_imports)] // The data plane runs on the local store or S3; tests run on this one.
pub use mem::MemObjectStore;

use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;

/// What a store operation returns: a future on the shard's executor.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + 'a>>;

/// An object store, as one shard uses it. Objects are written once and never changed.
pub trait ObjectStore {
    /// Stores `data` durably under `key`, or where the store chooses; returns the key that
    /// reads it back. Answered only once the object survives a crash.
    fn put<'a>(&'a self, key: &'a str, data: &'a [u8]) -> StoreFuture<'a, String>;

    /// Reads exactly `len` bytes at `pos` of an object, into a buffer the caller may patch in
    /// place. Only ranges inside the object are defined (the index names them): past its end a
    /// store may fail or, where objects share a file, return the bytes that follow.
    fn get_range<'a>(&'a self, key: &'a str, pos: u64, len: usize) -> StoreFuture<'a, BytesMut>;

    /// Removes an object of `len` bytes (its size when it was put); removing one that is not
    /// there is not an error.
    fn delete<'a>(&'a self, key: &'a str, len: u64) -> StoreFuture<'a, ()>;

    /// The keys that start with `prefix`, sorted.
    #[allow(dead_code)] // For garbage collection and retention; the contract tests cover it.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
}

/// The key a new WAL object is put under: its id, 128 random bits, in hex.
pub fn wal_object_key(object_id: u128) -> String {
    format!("{object_id:032x}.wal")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What every store must do; run by each implementation's tests.
    pub(crate) async fn contract(store: &dyn ObjectStore) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let key = store.put(&wal_object_key(1), &data).await.expect("put");
        assert_eq!(&store.get_range(&key, 0, data.len()).await.expect("whole")[..], &data[..]);
        assert_eq!(&store.get_range(&key, 4000, 100).await.expect("range")[..], &data[4000..4100]);
        assert!(store.get_range(&wal_object_key(2), 0, 1).await.is_err(), "a missing object is an error");
        let other = store.put(&wal_object_key(3), b"second").await.expect("put");
        assert_ne!(key, other);
        assert_eq!(&store.get_range(&other, 0, 6).await.expect("read")[..], b"second");
        store.delete(&wal_object_key(99), 10).await.expect("deleting a missing object is fine");
        store.delete(&other, 6).await.expect("delete");
        assert!(store.get_range(&other, 0, 6).await.map_or(true, |b| b[..] != b"second"[..]), "a deleted object reads back");
        assert_eq!(&store.get_range(&key, 4000, 100).await.expect("a neighbour stays")[..], &data[4000..4100]);
        let listed = store.list("").await.expect("list");
        assert!(listed.windows(2).all(|w| w[0] <= w[1]), "sorted: {listed:?}");
        assert!(store.list("no-such-prefix/").await.expect("list").is_empty());
    }

    #[test]
    fn wal_keys_are_fixed_width_hex() {
        assert_eq!(wal_object_key(0xab), format!("{}ab.wal", "0".repeat(30)));
    }
}
