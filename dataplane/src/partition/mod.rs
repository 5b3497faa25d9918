//! The partitions a shard owns: everything that happens to a partition's data on its owner.
//!
//! - [`writer`]: the produce path: the WAL buffer, cutting it into objects, putting them in the
//!   object store, committing them to the sequencer in cut order, applying the offsets.
//! - [`reader`]: the fetch path: the batch cache, loading chunks of committed objects.
//! - [`producers`]: idempotent producers' recent batches, to answer retries.
//! - [`marks`]: every stream's watermarks as this shard knows them, and the long poll on them.
//! - [`cache`]: the batch cache itself.
//!
//! Nothing here knows about shards, connections or Kafka requests: what a partition needs (the
//! object store, the sequencer, the clock, the counters) comes in through [`Partitions::new`],
//! which is how the tests run it on an in-memory store and a fake sequencer. Start with
//! [`writer::Writer::append`] and [`reader::Reader::read`].

pub mod cache;
pub mod marks;
pub mod parquet;
pub mod producers;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod tests;

use crate::error::{Error, RpcError};
use crate::metrics::ShardMetrics;
use crate::store::ObjectStore;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use sluice_rpc::{CommitWal, CommitWalReply, Lookup, LookupReply, Watermark};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

pub use cache::{BatchCache, Piece};
pub use marks::{Marks, Watermarks};

/// Request to append batches to a stream (sent to the stream's owner).
pub struct AppendReq {
    pub stream: u64,
    /// Whole, validated record batches.
    pub data: Bytes,
    /// Position of each batch in `data` and the offsets it takes.
    pub batches: Vec<(u32, i64)>,
    pub offset_count: i64,
    pub max_timestamp: i64,
    /// Idempotent producer id, epoch and first sequence, when the request holds one such batch.
    pub producer: Option<(i64, i16, i32)>,
    /// Told (sent to or dropped) once the batches hold their place in the partition's order:
    /// in the open WAL buffer, or known as a retry. The connection's next request waits for it.
    pub admitted: Option<oneshot::Sender<()>>,
}

/// Base offset and log start offset of an appended request.
pub type AppendResult = Result<(i64, i64), Error>;

/// Request to read a stream from an offset.
pub struct ReadReq {
    pub stream: u64,
    pub offset: i64,
    pub max_bytes: usize,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct ReadResult {
    pub error: Option<Error>,
    pub marks: Marks,
    /// Whole batches, the first holding the requested offset.
    pub batches: Vec<Piece>,
}

/// A future of a sequencer call, on the shard's executor.
pub type SeqFuture<'a, T> = LocalBoxFuture<'a, Result<T, RpcError>>;

/// The control plane as the owner of partitions uses it: it orders WAL objects into streams
/// (assigning offsets) and finds what it ordered.
pub trait Sequencer {
    /// The session commits may be pipelined on: what is started under one session reaches the
    /// sequencer in the order started. `None` while disconnected.
    fn session(&self) -> Option<u64>;

    /// Sends a commit at once if `session` is still the current one (it then follows, on the
    /// same connection, everything started before under it) and returns a future of the answer.
    fn start_commit(&self, commit: CommitWal, session: u64, timeout: Duration) -> Option<SeqFuture<'_, CommitWalReply>>;

    /// Commits an object, waiting for a session first. A repeated commit of the same object is
    /// answered with the offsets it was given the first time.
    fn commit(&self, commit: CommitWal, timeout: Duration) -> SeqFuture<'_, CommitWalReply>;

    /// Index entries of a stream from an offset on.
    fn lookup(&self, req: Lookup, timeout: Duration) -> SeqFuture<'_, LookupReply>;

    /// The authoritative watermarks of streams.
    fn watermarks(&self, streams: Vec<u64>, timeout: Duration) -> SeqFuture<'_, Vec<Watermark>>;
}

/// Time, as the writer needs it: the flush clock's ticks and retry back-off. Tests drive it by
/// hand instead of sleeping.
pub trait Clock {
    /// Completes at the next tick of the flush clock.
    fn next_tick(&self) -> LocalBoxFuture<'static, ()>;
    /// Completes after `d`.
    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()>;
}

/// The real clock: ticks every `interval` on the monotonic clock every shard of the process
/// shares, so shards cut their buffers together.
pub struct SystemClock {
    pub interval: Duration,
}

impl Clock for SystemClock {
    fn next_tick(&self) -> LocalBoxFuture<'static, ()> {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        let period = self.interval.as_nanos().max(1);
        let into = origin.elapsed().as_nanos() % period;
        Box::pin(glommio::timer::sleep(Duration::from_nanos((period - into) as u64)))
    }

    fn sleep(&self, d: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(glommio::timer::sleep(d))
    }
}

/// How the owner's buffers are sized.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Cut the WAL buffer at this many bytes.
    pub flush_bytes: usize,
    /// Most bytes appended and not yet committed (backpressure beyond).
    pub max_inflight_bytes: usize,
    /// The batch cache's size.
    pub cache_bytes: usize,
    /// How long a call to the sequencer may take.
    pub rpc_timeout: Duration,
}

/// What a partition's owner uses, handed in by whoever builds it.
#[derive(Clone)]
pub struct Deps {
    pub store: Rc<dyn ObjectStore>,
    pub sequencer: Rc<dyn Sequencer>,
    pub clock: Rc<dyn Clock>,
    pub metrics: Rc<ShardMetrics>,
    pub marks: Rc<Watermarks>,
    pub cache: Rc<RefCell<BatchCache>>,
}

/// The partitions a shard owns.
pub struct Partitions {
    pub writer: Rc<writer::Writer>,
    pub reader: reader::Reader,
    pub marks: Rc<Watermarks>,
    cache: Rc<RefCell<BatchCache>>,
}

impl Partitions {
    /// The owner's state, empty.
    pub fn new(
        settings: Settings,
        store: Rc<dyn ObjectStore>,
        sequencer: Rc<dyn Sequencer>,
        clock: Rc<dyn Clock>,
        metrics: Rc<ShardMetrics>,
    ) -> Self {
        let deps = Deps {
            store,
            sequencer,
            clock,
            metrics,
            marks: Rc::default(),
            cache: Rc::new(RefCell::new(BatchCache::new(settings.cache_bytes))),
        };
        Partitions {
            writer: writer::Writer::new(settings, deps.clone()),
            reader: reader::Reader::new(settings, deps.clone()),
            marks: deps.marks,
            cache: deps.cache,
        }
    }

    /// Appends validated batches; answers once they are durable and committed.
    pub async fn append(&self, req: AppendReq) -> AppendResult {
        self.writer.append(req).await
    }

    /// Reads committed batches.
    pub async fn read(&self, req: ReadReq) -> ReadResult {
        self.reader.read(req).await
    }

    /// Forgets a stream whose topic was deleted.
    pub fn forget(&self, stream: u64) {
        self.marks.forget(stream);
        self.cache.borrow_mut().remove_stream(stream);
    }
}
