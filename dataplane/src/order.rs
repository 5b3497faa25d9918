//! The order of one connection's requests.
//!
//! Kafka runs a connection's requests one after another, and clients rely on it: a later
//! OffsetCommit wins over an earlier one, a SyncGroup finds the JoinGroup sent before it, a
//! Metadata request sent after a CreateTopics sees the topic. A connection here still reads
//! ahead and works on several requests at once (answers go out in request order), but each
//! request takes effect only after the one before it has:
//!
//! - Produce: its batches enter their partitions' WAL buffers only after the previous
//!   request's did (or it finished), so pipelined produces to one partition get increasing
//!   offsets in the order sent; waiting for durability and the commit overlaps with the next
//!   requests.
//! - Forwarded group requests: sent to the coordinator in the order received, on one control
//!   plane connection, tagged with the connection's id; the coordinator runs one connection's
//!   requests one after another. Waiting for the answer overlaps with the next requests.
//! - Every other request: starts after the previous one has finished.
//!
//! Each request gets a [`Turn`]: [`Turn::wait`] returns when the request before it has passed
//! its turn on; [`Turn::pass`] (or dropping the turn) hands it to the next request.

use futures::channel::oneshot;

/// One request's place in its connection's order.
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    next: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits until the request before this one has passed its turn on.
    pub async fn wait(&mut self) {
        if let Some(rx) = self.after.take() {
            // Err: the previous request was dropped, which passes the turn on too.
            let _ = rx.await;
        }
    }

    /// Lets the next request of the connection take effect. Call only after [`Turn::wait`].
    pub fn pass(&mut self) {
        debug_assert!(self.after.is_none(), "turn passed before it was waited for");
        if let Some(tx) = self.next.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let (Some(after), Some(next)) = (self.after.take(), self.next.take()) {
            // Dropped before its turn came (the connection is closing): the next request
            // still waits for the previous one.
            glommio::spawn_local(async move {
                let _ = after.await;
                let _ = next.send(());
            })
            .detach();
        }
    }
}

/// Hands out the turns of one connection, in the order its requests were read.
pub struct Order {
    tail: Option<oneshot::Receiver<()>>,
}

impl Order {
    /// The first request's turn comes at once.
    pub fn new() -> Self {
        Order { tail: None }
    }

    /// The turn of the next request read.
    pub fn next(&mut self) -> Turn {
        let (tx, rx) = oneshot::channel();
        Turn { after: self.tail.replace(rx), next: Some(tx) }
    }
}

impl Default for Order {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Requests whose work takes longer the earlier they were read still take effect in the
    /// order read; a turn dropped unused passes on only after its predecessor.
    #[test]
    fn turns_take_effect_in_order() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let log = Rc::new(RefCell::new(Vec::new()));
                let mut order = Order::new();
                let mut tasks = Vec::new();
                for i in 0..8u64 {
                    let mut turn = order.next();
                    if i == 3 {
                        drop(turn);
                        continue;
                    }
                    let log = log.clone();
                    tasks.push(glommio::spawn_local(async move {
                        glommio::timer::sleep(std::time::Duration::from_millis(8 - i)).await;
                        turn.wait().await;
                        log.borrow_mut().push(i);
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        turn.pass();
                    }));
                }
                for t in tasks {
                    t.await;
                }
                assert_eq!(*log.borrow(), vec![0, 1, 2, 4, 5, 6, 7]);
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
