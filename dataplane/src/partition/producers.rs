//! Producer idempotence, as Kafka does it: the last few committed batches of each (stream,
//! producer) are remembered with the offsets they got, so a retried batch (same producer, epoch
//! and first sequence) is answered with its first offsets instead of being stored twice; a retry
//! arriving while the first copy is still on its way waits for that copy's answer.
//!
//! Kept in memory: a retry that spans a data plane restart is stored again.

use super::AppendResult;
use futures::channel::oneshot;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

/// Committed batches remembered per producer and stream, as Kafka does.
const WINDOW: usize = 5;
/// Most (stream, producer) windows kept; past it they are all forgotten (bounded memory rather
/// than growing with producers never seen again).
const LIMIT: usize = 100_000;

/// (stream, producer id, epoch, first sequence) of an idempotent batch.
pub type BatchId = (u64, i64, i16, i32);

/// (epoch, first sequence, base offset) of the recent committed batches of a (stream, producer).
type Window = VecDeque<(i16, i32, i64)>;

/// What to do with an idempotent batch.
pub enum Seen {
    /// Not seen: store it, then [`Producers::finish`].
    New,
    /// Committed already, at this base offset.
    Committed(i64),
    /// On its way: its answer comes here.
    InFlight(oneshot::Receiver<AppendResult>),
}

/// The owner's memory of idempotent producers.
#[derive(Default)]
pub struct Producers {
    /// (stream, producer id) → the recent committed batches' (epoch, first sequence, base offset).
    recent: RefCell<HashMap<(u64, i64), Window>>,
    /// Batches appended and not yet answered, and the retries waiting for their answer.
    pending: RefCell<HashMap<BatchId, Vec<oneshot::Sender<AppendResult>>>>,
}

impl Producers {
    /// Looks a batch up; a new one is marked in flight.
    pub fn check(&self, id: BatchId) -> Seen {
        let (stream, pid, epoch, seq) = id;
        let known = self.recent.borrow().get(&(stream, pid)).and_then(|d| d.iter().find(|(e, s, _)| (*e, *s) == (epoch, seq)).map(|r| r.2));
        if let Some(base) = known {
            return Seen::Committed(base);
        }
        let mut pending = self.pending.borrow_mut();
        if let Some(waiters) = pending.get_mut(&id) {
            let (tx, rx) = oneshot::channel();
            waiters.push(tx);
            return Seen::InFlight(rx);
        }
        pending.insert(id, Vec::new());
        Seen::New
    }

    /// Answers the retries that waited for a batch marked in flight by [`Producers::check`].
    pub fn finish(&self, id: BatchId, result: &AppendResult) {
        for w in self.pending.borrow_mut().remove(&id).unwrap_or_default() {
            let _ = w.send(result.clone());
        }
    }

    /// Remembers a committed batch's base offset (called as the commit is applied, before any
    /// answer goes out, so a retry sent after the answer finds it).
    pub fn remember(&self, id: BatchId, base: i64) {
        let (stream, pid, epoch, seq) = id;
        let mut recent = self.recent.borrow_mut();
        if recent.len() > LIMIT {
            recent.clear();
        }
        let d = recent.entry((stream, pid)).or_default();
        if d.len() == WINDOW {
            d.pop_front();
        }
        d.push_back((epoch, seq, base));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_five_batches_per_producer_is_remembered() {
        let p = Producers::default();
        for seq in 0..6 {
            assert!(matches!(p.check((1, 7, 0, seq)), Seen::New));
            p.remember((1, 7, 0, seq), i64::from(seq) * 10);
            p.finish((1, 7, 0, seq), &Ok((i64::from(seq) * 10, 0)));
        }
        assert!(matches!(p.check((1, 7, 0, 5)), Seen::Committed(50)));
        assert!(matches!(p.check((1, 7, 0, 1)), Seen::Committed(10)));
        assert!(matches!(p.check((1, 7, 0, 0)), Seen::New), "out of the window");
        assert!(matches!(p.check((2, 7, 0, 1)), Seen::New), "another stream");
        assert!(matches!(p.check((1, 7, 1, 1)), Seen::New), "another epoch");
    }
}
