//! A shard-local "something changed" signal: waiters get a receiver, `notify_all` wakes them all.
//! Local to one executor (`RefCell`, no locks); receivers are futures' oneshots.

use futures::channel::oneshot;
use std::cell::RefCell;

/// Wakes every current waiter at once.
#[derive(Default)]
pub struct Notify {
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl Notify {
    /// A future that completes at the next `notify_all` (or errors if the Notify is dropped).
    pub fn notified(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiters.borrow_mut();
        // Drop waiters that gave up (timed out) so the list does not grow without bound.
        w.retain(|s| !s.is_canceled());
        w.push(tx);
        rx
    }

    /// Wakes everyone waiting now.
    pub fn notify_all(&self) {
        for w in self.waiters.take() {
            let _ = w.send(());
        }
    }
}
