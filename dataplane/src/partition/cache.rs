//! The cache of recently committed batches of the streams a shard owns, with their real base
//! offsets already patched in. Bounded in bytes; the oldest insertions are evicted first.
//!
//! The cache may have holes (another data plane may have written offsets in between), so a
//! lookup returns the batch holding an offset only when one does; callers read the rest from
//! objects.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;

/// Bytes of a buffer shared by several batches (a WAL object, or a chunk read back from one),
/// kept as the buffer and a range so that neighbouring batches join without a copy.
#[derive(Clone, Debug)]
pub struct Piece {
    pub buf: Bytes,
    pub range: Range<usize>,
}

impl Piece {
    /// All of `buf`.
    #[cfg(test)]
    pub fn whole(buf: Bytes) -> Self {
        Piece { range: 0..buf.len(), buf }
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// The bytes, without a copy.
    pub fn bytes(&self) -> Bytes {
        self.buf.slice(self.range.clone())
    }

    /// Takes `next` into this piece when it follows it directly in the same buffer.
    pub fn join(&mut self, next: &Piece) -> bool {
        let same = self.buf.as_ptr() == next.buf.as_ptr() && self.buf.len() == next.buf.len();
        if same && self.range.end == next.range.start {
            self.range.end = next.range.end;
            return true;
        }
        false
    }
}

struct Entry {
    last_offset: i64,
    data: Piece,
}

/// Batches by stream and base offset.
pub struct BatchCache {
    streams: HashMap<u64, BTreeMap<i64, Entry>>,
    order: VecDeque<(u64, i64)>,
    bytes: usize,
    limit: usize,
}

impl BatchCache {
    /// An empty cache holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { streams: HashMap::new(), order: VecDeque::new(), bytes: 0, limit }
    }

    /// Adds a batch covering `[base, last]`.
    pub fn insert(&mut self, stream: u64, base: i64, last: i64, data: Piece) {
        if data.len() > self.limit {
            return;
        }
        let len = data.len();
        if let Some(old) = self.streams.entry(stream).or_default().insert(base, Entry { last_offset: last, data }) {
            self.bytes -= old.data.len();
        } else {
            self.order.push_back((stream, base));
        }
        self.bytes += len;
        while self.bytes > self.limit {
            let Some((s, b)) = self.order.pop_front() else { break };
            if let Some(m) = self.streams.get_mut(&s) {
                if let Some(e) = m.remove(&b) {
                    self.bytes -= e.data.len();
                }
                if m.is_empty() {
                    self.streams.remove(&s);
                }
            }
        }
    }

    /// The batch holding `offset`: its base, last offset and bytes.
    pub fn get(&self, stream: u64, offset: i64) -> Option<(i64, i64, Piece)> {
        let (base, e) = self.streams.get(&stream)?.range(..=offset).next_back()?;
        (e.last_offset >= offset).then(|| (*base, e.last_offset, e.data.clone()))
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets a stream (its topic was deleted).
    pub fn remove_stream(&mut self, stream: u64) {
        if let Some(m) = self.streams.remove(&stream) {
            self.bytes -= m.values().map(|e| e.data.len()).sum::<usize>();
        }
        // Stale `order` entries are skipped at eviction time.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_batch_holding_an_offset_and_eviction_bounds_bytes() {
        let mut c = BatchCache::new(100);
        c.insert(1, 0, 9, Piece::whole(Bytes::from(vec![0; 40])));
        c.insert(1, 10, 19, Piece::whole(Bytes::from(vec![1; 40])));
        assert_eq!(c.get(1, 5).map(|g| g.0), Some(0));
        assert_eq!(c.get(1, 19).map(|g| g.0), Some(10));
        assert!(c.get(1, 20).is_none());
        assert!(c.get(2, 0).is_none());
        c.insert(1, 30, 39, Piece::whole(Bytes::from(vec![2; 40])));
        assert!(c.get(1, 5).is_none(), "oldest evicted");
        assert!(c.get(1, 25).is_none(), "hole between 19 and 30");
        assert_eq!(c.get(1, 35).map(|g| g.1), Some(39));
        c.remove_stream(1);
        assert!(c.get(1, 35).is_none());
        c.insert(2, 0, 0, Piece::whole(Bytes::from(vec![0; 90])));
        assert_eq!(c.get(2, 0).map(|g| g.2.len()), Some(90));
    }

    #[test]
    fn neighbouring_pieces_of_one_buffer_join_and_others_do_not() {
        let buf = Bytes::from((0..100u8).collect::<Vec<_>>());
        let mut a = Piece { buf: buf.clone(), range: 0..10 };
        assert!(a.join(&Piece { buf: buf.clone(), range: 10..30 }));
        assert_eq!(&a.bytes()[..], &buf[0..30]);
        assert!(!a.join(&Piece { buf: buf.clone(), range: 40..50 }), "not adjacent");
        let copy = Bytes::from(buf.to_vec());
        assert!(!a.join(&Piece { buf: copy, range: 30..40 }), "another buffer");
        assert_eq!(a.len(), 30);
    }
}
