//! Every stream's log start offset and high watermark as this shard knows them, and the signal
//! long-polling fetches wait on.
//!
//! Raised by the owner's commits, by the control plane's notifications (commits made by other
//! shards and other data planes) and by look-ups; never lowered, since those race.

use crate::notify::Notify;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

/// Log start offset and high watermark of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    pub log_start: i64,
    pub hwm: i64,
}

/// Marks by stream, with a wake-up for whoever waits for them to move.
#[derive(Default)]
pub struct Watermarks {
    marks: RefCell<HashMap<u64, Marks>>,
    changed: Notify,
}

impl Watermarks {
    /// A stream's marks, if the stream is known.
    pub fn get(&self, stream: u64) -> Option<Marks> {
        self.marks.borrow().get(&stream).copied()
    }

    /// Makes a stream known (at zero marks, until it is told more).
    pub fn know(&self, stream: u64) {
        self.marks.borrow_mut().entry(stream).or_default();
    }

    /// Forgets a stream (its topic was deleted).
    pub fn forget(&self, stream: u64) {
        self.marks.borrow_mut().remove(&stream);
    }

    /// Raises a stream's marks and wakes waiters if they moved.
    pub fn advance(&self, stream: u64, m: Marks) {
        let changed = {
            let mut all = self.marks.borrow_mut();
            let e = all.entry(stream).or_default();
            let changed = m.hwm > e.hwm || m.log_start > e.log_start;
            e.hwm = e.hwm.max(m.hwm);
            e.log_start = e.log_start.max(m.log_start);
            changed
        };
        if changed {
            self.changed.notify_all();
        }
    }

    /// Wakes every waiter (the cluster's metadata changed as a whole).
    pub fn wake_all(&self) {
        self.changed.notify_all();
    }

    /// A future that completes at the next change of any stream.
    pub fn changed(&self) -> futures::channel::oneshot::Receiver<()> {
        self.changed.notified()
    }

    /// Waits until one of `wants` (stream, high watermark already seen) has a higher watermark,
    /// or `timeout` completes first. True when woken by an advance. Long-polling fetches wait
    /// here: no polling, no wake-up for streams they do not read.
    pub async fn wait_past(&self, wants: &[(u64, i64)], timeout: impl Future<Output = ()>) -> bool {
        let past = || wants.iter().any(|(s, seen)| self.get(*s).is_some_and(|m| m.hwm > *seen));
        let mut timeout = std::pin::pin!(timeout);
        loop {
            // Registered before the check, so an advance between the two is not missed.
            let changed = self.changed();
            if past() {
                return true;
            }
            match futures::future::select(changed, timeout.as_mut()).await {
                futures::future::Either::Left(_) => continue,
                futures::future::Either::Right(_) => return past(),
            }
        }
    }
}
