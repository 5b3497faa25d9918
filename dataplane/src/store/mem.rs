//! An [`ObjectStore`] in memory, for tests: objects in a map, and faults to inject (a put that
//! fails, puts held until released, so they finish in any order a test wants).

use super::{ObjectStore, StoreFuture};
use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// Objects in memory. Lives on one executor, like a shard's store.
#[derive(Default)]
pub struct MemObjectStore {
    objects: RefCell<BTreeMap<String, Bytes>>,
    /// Puts still to fail (each fails once, before storing anything).
    fail_puts: Cell<usize>,
    /// While set, puts wait here (in arrival order) until [`MemObjectStore::release`].
    hold: Cell<bool>,
    held: RefCell<Vec<(String, oneshot::Sender<()>)>>,
    puts: Cell<u64>,
}

#[allow(dead_code)] // The fault hooks serve the tests.
impl MemObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` puts fail with an I/O error.
    pub fn fail_next_puts(&self, n: usize) {
        self.fail_puts.set(n);
    }

    /// From now on puts wait until released (or until holding stops).
    pub fn hold_puts(&self, on: bool) {
        self.hold.set(on);
        if !on {
            for (_, tx) in self.held.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Keys of the puts now held, in arrival order.
    pub fn held(&self) -> Vec<String> {
        self.held.borrow().iter().map(|(k, _)| k.clone()).collect()
    }

    /// Lets the held put of `key` finish.
    pub fn release(&self, key: &str) -> bool {
        let mut held = self.held.borrow_mut();
        let Some(i) = held.iter().position(|(k, _)| k == key) else { return false };
        let (_, tx) = held.remove(i);
        tx.send(()).is_ok()
    }

    /// Puts that stored an object.
    pub fn puts(&self) -> u64 {
        self.puts.get()
    }

    /// Whether `key` is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.objects.borrow().contains_key(key)
    }
}

impl ObjectStore for MemObjectStore {
    fn put<'a>(&'a self, key: &'a str, data: &'a [u8]) -> StoreFuture<'a, String> {
        Box::pin(async move {
            if self.hold.get() {
                let (tx, rx) = oneshot::channel();
                self.held.borrow_mut().push((key.to_string(), tx));
                let _ = rx.await;
            }
            if self.fail_puts.get() > 0 {
                self.fail_puts.set(self.fail_puts.get() - 1);
                return Err(std::io::Error::other(format!("injected failure putting {key}")));
            }
            self.objects.borrow_mut().insert(key.to_string(), Bytes::copy_from_slice(data));
            self.puts.set(self.puts.get() + 1);
            Ok(key.to_string())
        })
    }

    fn get_range<'a>(&'a self, key: &'a str, pos: u64, len: usize) -> StoreFuture<'a, BytesMut> {
        Box::pin(async move {
            let objects = self.objects.borrow();
            let data = objects.get(key).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no object {key}")))?;
            let start = usize::try_from(pos).unwrap_or(usize::MAX);
            let range = data.get(start..start.saturating_add(len)).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("object {key}: wanted {len} bytes at {pos}"))
            })?;
            Ok(BytesMut::from(range))
        })
    }

    fn delete<'a>(&'a self, key: &'a str, _len: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.objects.borrow_mut().remove(key);
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { Ok(self.objects.borrow().keys().filter(|k| k.starts_with(prefix)).cloned().collect()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::contract;

    fn run<F: std::future::Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default().spawn(|| async move { test().await }).expect("executor").join().expect("join");
    }

    #[test]
    fn mem_store_keeps_the_object_store_contract() {
        run(|| async { contract(&MemObjectStore::new()).await });
    }

    #[test]
    fn held_puts_finish_in_the_order_released_and_injected_failures_store_nothing() {
        run(|| async {
            let store = std::rc::Rc::new(MemObjectStore::new());
            store.hold_puts(true);
            let (a, b) = (store.clone(), store.clone());
            let first = glommio::spawn_local(async move { a.put("a", b"1").await });
            let second = glommio::spawn_local(async move { b.put("b", b"2").await });
            while store.held().len() < 2 {
                glommio::yield_if_needed().await;
                glommio::executor().yield_task_queue_now().await;
            }
            assert_eq!(store.held(), ["a", "b"]);
            assert!(store.release("b"));
            assert_eq!(second.await.expect("put"), "b");
            assert!(!store.contains("a"));
            store.hold_puts(false);
            assert_eq!(first.await.expect("put"), "a");
            store.fail_next_puts(1);
            assert!(store.put("c", b"3").await.is_err());
            assert!(!store.contains("c"));
            assert_eq!(store.put("c", b"3").await.expect("put"), "c");
            assert_eq!(store.puts(), 3);
        });
    }
}
