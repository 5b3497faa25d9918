//! # sluice-rpc
//!
//! The internal protocol between data planes and the control plane, defined once. Messages are
//! protobuf (prost derives, no protoc), so fields can be added for rolling upgrades: new fields
//! get new tags and old readers skip them.
//!
//! On the wire every message is a [`Frame`]: `u32` big-endian length, then the encoded
//! [`Envelope`]. Requests carry a non-zero `request_id` echoed by their response; pushed
//! notifications use `request_id` 0. Requests on one connection may be pipelined.
//!
//! ```
//! use sluice_rpc::{Envelope, body, encode_frame, decode_frame};
//! let env = Envelope { request_id: 7, body: Some(body::Body::Ping(sluice_rpc::Ping {})) };
//! let frame = encode_frame(&env);
//! let (decoded, used) = decode_frame(&frame, 1 << 20).unwrap().unwrap();
//! assert_eq!(used, frame.len());
//! assert_eq!(decoded, env);
//! ```

pub mod acl;
pub mod cli;
pub mod configs;
pub mod forward;
pub mod routing;

use prost::Message;

/// Version of this protocol a peer speaks; sent in [`Register`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 256 << 20;

/// Errors reading frames.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame longer than the limit.
    #[error("frame of {0} bytes over limit")]
    TooLarge(usize),
    /// Bytes that are not an [`Envelope`].
    #[error("bad frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Encodes a frame: length prefix then envelope.
pub fn encode_frame(env: &Envelope) -> Vec<u8> {
    let len = env.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    env.encode(&mut out).expect("vec grows");
    out
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the envelope and the number of bytes it used.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(Envelope, usize)>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(Error::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((Envelope::decode(&buf[4..4 + len])?, 4 + len)))
}

/// Result code of an RPC, mirroring the Kafka error codes a data plane passes on to clients.
/// 0 is success; other values are Kafka `ErrorCode`s.
pub type Code = i32;

/// Every message.
#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    /// Non-zero for requests and their responses; 0 for notifications.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The message.
    #[prost(
        oneof = "body::Body",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34"
    )]
    pub body: Option<body::Body>,
}

/// The oneof of [`Envelope`].
pub mod body {
    use super::*;
    /// What an envelope carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Liveness check.
        #[prost(message, tag = "2")]
        Ping(Ping),
        /// A data plane shard introduces itself.
        #[prost(message, tag = "3")]
        Register(Register),
        /// Answer to [`Register`].
        #[prost(message, tag = "4")]
        Registered(Registered),
        /// Commit a durable WAL object.
        #[prost(message, tag = "5")]
        CommitWal(CommitWal),
        /// Answer to [`CommitWal`].
        #[prost(message, tag = "6")]
        CommitWalReply(CommitWalReply),
        /// Find index entries of a stream.
        #[prost(message, tag = "7")]
        Lookup(Lookup),
        /// Answer to [`Lookup`].
        #[prost(message, tag = "8")]
        LookupReply(LookupReply),
        /// Ask for topic metadata.
        #[prost(message, tag = "9")]
        GetTopics(GetTopics),
        /// Topic metadata (answer or pushed change).
        #[prost(message, tag = "10")]
        Topics(Topics),
        /// Create topics.
        #[prost(message, tag = "11")]
        CreateTopics(CreateTopics),
        /// Delete topics.
        #[prost(message, tag = "12")]
        DeleteTopics(DeleteTopics),
        /// Add partitions.
        #[prost(message, tag = "13")]
        CreatePartitions(CreatePartitions),
        /// Per-topic results of admin requests.
        #[prost(message, tag = "14")]
        AdminReply(AdminReply),
        /// Pushed: high watermarks advanced.
        #[prost(message, tag = "15")]
        Watermarks(Watermarks),
        /// Ask for stream offsets (log start, high watermark).
        #[prost(message, tag = "16")]
        GetWatermarks(GetWatermarks),
        /// Find an offset by timestamp.
        #[prost(message, tag = "17")]
        OffsetForTime(OffsetForTime),
        /// Answer to [`OffsetForTime`].
        #[prost(message, tag = "18")]
        OffsetForTimeReply(OffsetForTimeReply),
        /// Generic failure answer.
        #[prost(message, tag = "19")]
        Failed(Failed),
        /// Data planes currently registered.
        #[prost(message, tag = "20")]
        GetBrokers(GetBrokers),
        /// Answer to [`GetBrokers`].
        #[prost(message, tag = "21")]
        Brokers(Brokers),
        /// Pushed: topics removed.
        #[prost(message, tag = "22")]
        TopicsDeleted(TopicsDeleted),
        /// Answer to [`Ping`].
        #[prost(message, tag = "23")]
        Pong(Ping),
        /// Allocate a producer id (InitProducerId).
        #[prost(message, tag = "24")]
        AllocateProducerId(AllocateProducerId),
        /// Answer to [`AllocateProducerId`].
        #[prost(message, tag = "25")]
        ProducerIdAllocated(ProducerIdAllocated),
        /// A group API request, forwarded unchanged to the group coordinator.
        #[prost(message, tag = "26")]
        KafkaRequest(KafkaRequest),
        /// Answer to [`KafkaRequest`]: the encoded Kafka response body.
        #[prost(message, tag = "27")]
        KafkaResponse(KafkaResponse),
        /// Change topic configs (AlterConfigs, IncrementalAlterConfigs); answered by
        /// [`AdminReply`].
        #[prost(message, tag = "28")]
        AlterTopicConfigs(AlterTopicConfigs),
        /// Advance partitions' log start offsets (DeleteRecords).
        #[prost(message, tag = "29")]
        DeleteRecords(DeleteRecords),
        /// Answer to [`DeleteRecords`].
        #[prost(message, tag = "30")]
        DeleteRecordsReply(DeleteRecordsReply),
        /// Reports WAL objects deleted from the object store and asks for more to delete;
        /// answered by [`Garbage`].
        #[prost(message, tag = "31")]
        TakeGarbage(TakeGarbage),
        /// Answer to [`TakeGarbage`].
        #[prost(message, tag = "32")]
        Garbage(Garbage),
        /// A draining data plane leaves the cluster (its registration is deleted at once, not
        /// when its session lapses); answered by [`Brokers`].
        #[prost(message, tag = "33")]
        Deregister(Deregister),
        /// A data plane's traffic counters, reported every few seconds by its first shard (for
        /// the status page); answered by [`Pong`](Body::Pong).
        #[prost(message, tag = "34")]
        DataPlaneStats(DataPlaneStats),
    }
}

/// Liveness check.
#[derive(Clone, PartialEq, Message)]
pub struct Ping {}

/// Sent first on every data plane shard connection.
#[derive(Clone, PartialEq, Message)]
pub struct Register {
    /// [`PROTOCOL_VERSION`] of the sender.
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    /// Kafka broker (node) id of the data plane.
    #[prost(int32, tag = "2")]
    pub node_id: i32,
    /// Availability zone.
    #[prost(string, tag = "3")]
    pub zone: String,
    /// Host clients reach the Kafka listener at.
    #[prost(string, tag = "4")]
    pub host: String,
    /// Port of the Kafka listener.
    #[prost(int32, tag = "5")]
    pub port: i32,
    /// Shard index of this connection.
    #[prost(uint32, tag = "6")]
    pub shard: u32,
    /// Number of shards of the data plane.
    #[prost(uint32, tag = "7")]
    pub cores: u32,
    /// Random id of the data plane process, the same on each of its shards' connections: tells
    /// a data plane registering again (a new connection, a new control plane) from another one
    /// claiming the same node id.
    #[prost(uint64, tag = "8")]
    pub instance: u64,
    /// `node_id` was assigned by a control plane, not configured: when another data plane holds
    /// it meanwhile, a new one is assigned instead of refusing.
    #[prost(bool, tag = "9")]
    pub assigned: bool,
    /// When the data plane process started (ms since the epoch).
    #[prost(int64, tag = "10")]
    pub started_ms: i64,
    /// The data plane is draining: it connects again (to a new control plane) only to finish
    /// what is in flight, and must not be listed again.
    #[prost(bool, tag = "11")]
    pub leaving: bool,
    /// How often the data plane reports [`DataPlaneStats`], in ms (0: never, a data plane from
    /// before that message); one silent for much longer is taken as gone.
    #[prost(uint32, tag = "12")]
    pub reports_every_ms: u32,
}

/// [`Register::node_id`] asking the control plane to assign one.
pub const ASSIGN_NODE_ID: i32 = -1;

/// Answer to [`Register`].
#[derive(Clone, PartialEq, Message)]
pub struct Registered {
    /// The control plane's epoch.
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    /// Cluster id (Kafka's DescribeCluster/Metadata cluster id).
    #[prost(string, tag = "2")]
    pub cluster_id: String,
    /// Every topic, so the shard starts with a full metadata cache.
    #[prost(message, repeated, tag = "3")]
    pub topics: Vec<Topic>,
    /// Node id of the controller reported to clients.
    #[prost(int32, tag = "4")]
    pub controller_id: i32,
    /// Watermarks of every stream, so the shard's view starts current.
    #[prost(message, repeated, tag = "5")]
    pub marks: Vec<Watermark>,
    /// The coordinator's defaults of the group configs that come from its flags
    /// (`consumer.session.timeout.ms`, ...), for DescribeConfigs of a group.
    #[prost(map = "string, string", tag = "6")]
    pub group_defaults: std::collections::HashMap<String, String>,
    /// The data plane's node id (the one asked for, or the one assigned).
    #[prost(int32, tag = "7")]
    pub node_id: i32,
    /// Every registered data plane, so the shard starts with the cluster's brokers.
    #[prost(message, optional, tag = "8")]
    pub brokers: Option<Brokers>,
}

/// A topic as the metadata store holds it.
#[derive(Clone, PartialEq, Message)]
pub struct Topic {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kafka topic id (UUID bytes, 16).
    #[prost(bytes = "vec", tag = "2")]
    pub topic_id: Vec<u8>,
    /// Stream id of each partition, indexed by partition.
    #[prost(uint64, repeated, tag = "3")]
    pub streams: Vec<u64>,
    /// Configs set on the topic (others take broker defaults).
    #[prost(map = "string, string", tag = "4")]
    pub configs: std::collections::HashMap<String, String>,
    /// Metadata revision of the last change.
    #[prost(uint64, tag = "5")]
    pub revision: u64,
}

/// One stream's part of a WAL object.
#[derive(Clone, PartialEq, Message)]
pub struct CommitChunk {
    /// Stream (topic partition).
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    /// Position of the chunk in the object.
    #[prost(uint64, tag = "2")]
    pub position: u64,
    /// Length of the chunk.
    #[prost(uint32, tag = "3")]
    pub length: u32,
    /// CRC32C of the chunk bytes.
    #[prost(uint32, tag = "4")]
    pub crc: u32,
    /// Offsets the chunk's batches occupy (sum of last_offset_delta + 1).
    #[prost(uint64, tag = "5")]
    pub offset_count: u64,
    /// Largest batch max_timestamp in the chunk.
    #[prost(int64, tag = "6")]
    pub max_timestamp: i64,
    /// Number of batches.
    #[prost(uint32, tag = "7")]
    pub batch_count: u32,
}

/// Commit a durable WAL object: assign offsets to every chunk in one transaction.
#[derive(Clone, PartialEq, Message)]
pub struct CommitWal {
    /// Object key in the object store.
    #[prost(string, tag = "1")]
    pub object_key: String,
    /// Total object size.
    #[prost(uint64, tag = "2")]
    pub object_size: u64,
    /// Chunks in stream order.
    #[prost(message, repeated, tag = "3")]
    pub chunks: Vec<CommitChunk>,
    /// The object the same shard cut just before this one, when its commit may still be in
    /// flight: this commit is refused unless that one is committed first (so pipelined commits
    /// can never be applied out of cut order). Empty: no constraint.
    #[prost(string, tag = "4")]
    pub after: String,
}

/// Answer to [`CommitWal`]: per chunk, in the same order, the base offset or an error.
#[derive(Clone, PartialEq, Message)]
pub struct CommitWalReply {
    /// Result per chunk.
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<ChunkResult>,
}

/// Result of one chunk of a commit.
#[derive(Clone, PartialEq, Message)]
pub struct ChunkResult {
    /// Kafka error code (0 ok). UNKNOWN_TOPIC_OR_PARTITION when the stream was deleted.
    #[prost(int32, tag = "1")]
    pub error: Code,
    /// First offset assigned.
    #[prost(int64, tag = "2")]
    pub base_offset: i64,
    /// High watermark after the commit.
    #[prost(int64, tag = "3")]
    pub high_watermark: i64,
    /// Log start offset.
    #[prost(int64, tag = "4")]
    pub log_start: i64,
}

/// Index entries of `stream_id` covering offsets from `offset`, at most `max_entries`.
#[derive(Clone, PartialEq, Message)]
pub struct Lookup {
    /// Stream.
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    /// First offset wanted.
    #[prost(int64, tag = "2")]
    pub offset: i64,
    /// Most entries to return.
    #[prost(uint32, tag = "3")]
    pub max_entries: u32,
}

/// One index entry: offsets `[base_offset, end_offset)` live in a chunk of an object.
#[derive(Clone, PartialEq, Message)]
pub struct IndexEntry {
    /// First offset of the chunk.
    #[prost(int64, tag = "1")]
    pub base_offset: i64,
    /// One past the last offset.
    #[prost(int64, tag = "2")]
    pub end_offset: i64,
    /// Object key.
    #[prost(string, tag = "3")]
    pub object_key: String,
    /// Chunk position in the object.
    #[prost(uint64, tag = "4")]
    pub position: u64,
    /// Chunk length.
    #[prost(uint32, tag = "5")]
    pub length: u32,
    /// Chunk CRC32C.
    #[prost(uint32, tag = "6")]
    pub crc: u32,
    /// Largest timestamp in the chunk.
    #[prost(int64, tag = "7")]
    pub max_timestamp: i64,
    /// Number of batches (of a Parquet row group: its rows).
    #[prost(uint32, tag = "8")]
    pub batch_count: u32,
    /// What the range holds: [`ENTRY_WAL`] (a chunk of record batches) or [`ENTRY_PARQUET`] (a
    /// row group of a Parquet file of the topic's table, whose footer ends at `file_size`).
    #[prost(uint32, tag = "9")]
    pub format: u32,
    /// Size of the object (Parquet entries: where the footer ends).
    #[prost(uint64, tag = "10")]
    pub file_size: u64,
    /// Index of the row group in the Parquet file.
    #[prost(uint32, tag = "11")]
    pub row_group: u32,
    /// When the control plane committed the entry (ms since the epoch; 0: before this field).
    #[prost(int64, tag = "12")]
    pub committed_ms: i64,
}

/// [`IndexEntry::format`] of a WAL chunk.
pub const ENTRY_WAL: u32 = 0;
/// [`IndexEntry::format`] of a Parquet row group.
pub const ENTRY_PARQUET: u32 = 1;

/// Answer to [`Lookup`].
#[derive(Clone, PartialEq, Message)]
pub struct LookupReply {
    /// Kafka error code.
    #[prost(int32, tag = "1")]
    pub error: Code,
    /// Entries in offset order.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<IndexEntry>,
    /// Log start offset.
    #[prost(int64, tag = "3")]
    pub log_start: i64,
    /// High watermark.
    #[prost(int64, tag = "4")]
    pub high_watermark: i64,
}

/// Ask for topics by name (empty: all).
#[derive(Clone, PartialEq, Message)]
pub struct GetTopics {
    /// Names; empty means every topic.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

/// Topics (answer to [`GetTopics`], or pushed on change).
#[derive(Clone, PartialEq, Message)]
pub struct Topics {
    /// The topics.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<Topic>,
}

/// Pushed when topics are deleted.
#[derive(Clone, PartialEq, Message)]
pub struct TopicsDeleted {
    /// Names removed.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    /// Their streams.
    #[prost(uint64, repeated, tag = "2")]
    pub streams: Vec<u64>,
}

/// One topic to create.
#[derive(Clone, PartialEq, Message)]
pub struct NewTopic {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Partitions (already resolved from the default when the client sent -1).
    #[prost(int32, tag = "2")]
    pub partitions: i32,
    /// Configs.
    #[prost(map = "string, string", tag = "3")]
    pub configs: std::collections::HashMap<String, String>,
}

/// Create topics.
#[derive(Clone, PartialEq, Message)]
pub struct CreateTopics {
    /// Topics.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<NewTopic>,
    /// Only check.
    #[prost(bool, tag = "2")]
    pub validate_only: bool,
}

/// Delete topics by name.
#[derive(Clone, PartialEq, Message)]
pub struct DeleteTopics {
    /// Names.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

/// Raise a topic's partition count.
#[derive(Clone, PartialEq, Message)]
pub struct PartitionIncrease {
    /// Topic.
    #[prost(string, tag = "1")]
    pub name: String,
    /// New total count.
    #[prost(int32, tag = "2")]
    pub count: i32,
}

/// Add partitions.
#[derive(Clone, PartialEq, Message)]
pub struct CreatePartitions {
    /// Increases.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<PartitionIncrease>,
    /// Only check.
    #[prost(bool, tag = "2")]
    pub validate_only: bool,
}

/// Config changes of topics.
#[derive(Clone, PartialEq, Message)]
pub struct AlterTopicConfigs {
    /// One entry per topic.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicConfigChange>,
    /// Only check.
    #[prost(bool, tag = "2")]
    pub validate_only: bool,
}

/// The config changes of one topic.
#[derive(Clone, PartialEq, Message)]
pub struct TopicConfigChange {
    /// Topic name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// AlterConfigs: the operations (all [`CONFIG_SET`]) are the topic's whole config, and
    /// every config not named returns to its default.
    #[prost(bool, tag = "2")]
    pub replace: bool,
    /// Operations in request order.
    #[prost(message, repeated, tag = "3")]
    pub ops: Vec<ConfigOp>,
}

/// IncrementalAlterConfigs' operation codes.
pub const CONFIG_SET: i32 = 0;
/// Back to the default.
pub const CONFIG_DELETE: i32 = 1;
/// Add values to a list config.
pub const CONFIG_APPEND: i32 = 2;
/// Remove values from a list config.
pub const CONFIG_SUBTRACT: i32 = 3;

/// One config operation.
#[derive(Clone, PartialEq, Message)]
pub struct ConfigOp {
    /// Config name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// [`CONFIG_SET`], [`CONFIG_DELETE`], [`CONFIG_APPEND`] or [`CONFIG_SUBTRACT`].
    #[prost(int32, tag = "2")]
    pub op: i32,
    /// Value (absent: Kafka's null).
    #[prost(string, optional, tag = "3")]
    pub value: Option<String>,
}

/// Advance log start offsets.
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRecords {
    /// Streams and the offsets below which their records go.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<DeleteRecordsStream>,
}

/// One stream of [`DeleteRecords`].
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRecordsStream {
    /// Stream.
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    /// New log start offset; -1: the high watermark.
    #[prost(int64, tag = "2")]
    pub offset: i64,
}

/// Answer to [`DeleteRecords`], one result per stream in request order.
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRecordsReply {
    /// Results.
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<DeleteRecordsResult>,
}

/// One stream's result of [`DeleteRecords`].
#[derive(Clone, PartialEq, Message)]
pub struct DeleteRecordsResult {
    /// Kafka error code.
    #[prost(int32, tag = "1")]
    pub error: Code,
    /// The log start offset after the request.
    #[prost(int64, tag = "2")]
    pub low_watermark: i64,
}

/// A data plane's part in garbage collection: the objects it deleted since it last asked, and
/// how many more it will take.
#[derive(Clone, PartialEq, Message)]
pub struct TakeGarbage {
    /// Keys of objects deleted (every one handed out by an earlier [`Garbage`]).
    #[prost(string, repeated, tag = "1")]
    pub deleted: Vec<String>,
    /// Most objects to hand out.
    #[prost(uint32, tag = "2")]
    pub max: u32,
}

/// WAL objects no index entry refers to any more, past their grace period: the data plane
/// deletes them from the object store.
#[derive(Clone, PartialEq, Message)]
pub struct Garbage {
    /// Objects to delete.
    #[prost(message, repeated, tag = "1")]
    pub objects: Vec<GarbageObject>,
}

/// One object to delete.
#[derive(Clone, PartialEq, Message)]
pub struct GarbageObject {
    /// The key its put returned (what the index referred to).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its size in bytes (a store that packs objects into shared files frees that range).
    #[prost(uint64, tag = "2")]
    pub size: u64,
}

/// Result for one topic of an admin request.
#[derive(Clone, PartialEq, Message)]
pub struct TopicResult {
    /// Topic name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kafka error code.
    #[prost(int32, tag = "2")]
    pub error: Code,
    /// Message for the client.
    #[prost(string, optional, tag = "3")]
    pub message: Option<String>,
    /// The topic after the change, when it exists.
    #[prost(message, optional, tag = "4")]
    pub topic: Option<Topic>,
}

/// Answer to admin requests, per topic in request order.
#[derive(Clone, PartialEq, Message)]
pub struct AdminReply {
    /// Results.
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<TopicResult>,
}

/// A stream's offsets.
#[derive(Clone, PartialEq, Message)]
pub struct Watermark {
    /// Stream.
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    /// Log start offset.
    #[prost(int64, tag = "2")]
    pub log_start: i64,
    /// High watermark.
    #[prost(int64, tag = "3")]
    pub high_watermark: i64,
}

/// Watermarks (answer to [`GetWatermarks`], or pushed after commits).
#[derive(Clone, PartialEq, Message)]
pub struct Watermarks {
    /// Streams.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<Watermark>,
}

/// Ask for watermarks of streams.
#[derive(Clone, PartialEq, Message)]
pub struct GetWatermarks {
    /// Streams.
    #[prost(uint64, repeated, tag = "1")]
    pub streams: Vec<u64>,
}

/// First index entry whose max timestamp is at or after `timestamp`.
#[derive(Clone, PartialEq, Message)]
pub struct OffsetForTime {
    /// Stream.
    #[prost(uint64, tag = "1")]
    pub stream_id: u64,
    /// Timestamp in ms; or [`MAX_TIMESTAMP`], which asks for the first chunk holding the
    /// stream's largest timestamp.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Kafka's ListOffsets MAX_TIMESTAMP (-3): the record with the largest timestamp.
pub const MAX_TIMESTAMP: i64 = -3;

/// Answer to [`OffsetForTime`]: the entry, or none when every record is older.
#[derive(Clone, PartialEq, Message)]
pub struct OffsetForTimeReply {
    /// Kafka error code.
    #[prost(int32, tag = "1")]
    pub error: Code,
    /// The entry to scan.
    #[prost(message, optional, tag = "2")]
    pub entry: Option<IndexEntry>,
}

/// Ask for registered data planes.
#[derive(Clone, PartialEq, Message)]
pub struct GetBrokers {}

/// A registered data plane.
#[derive(Clone, PartialEq, Message)]
pub struct Broker {
    /// Node id.
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    /// Host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Port.
    #[prost(int32, tag = "3")]
    pub port: i32,
    /// Zone (Kafka rack).
    #[prost(string, tag = "4")]
    pub zone: String,
    /// Shards: the weight of the data plane in choosing partition leaders.
    #[prost(uint32, tag = "5")]
    pub cores: u32,
    /// [`Register::instance`] of the process holding the node id.
    #[prost(uint64, tag = "6")]
    pub instance: u64,
    /// When the process started (ms since the epoch).
    #[prost(int64, tag = "7")]
    pub started_ms: i64,
}

/// A draining data plane leaves the cluster.
#[derive(Clone, PartialEq, Message)]
pub struct Deregister {}

/// Bytes a data plane exchanged with the clients of one zone.
#[derive(Clone, PartialEq, Message)]
pub struct ZoneBytes {
    /// The zone clients named in their `client.id` (empty: none).
    #[prost(string, tag = "1")]
    pub zone: String,
    /// Bytes received from them (request frames).
    #[prost(uint64, tag = "2")]
    pub received: u64,
    /// Bytes sent to them (response frames).
    #[prost(uint64, tag = "3")]
    pub sent: u64,
}

/// A data plane's counters since it started, summed over its shards.
#[derive(Clone, PartialEq, Message)]
pub struct DataPlaneStats {
    /// Record batch bytes produced through it.
    #[prost(uint64, tag = "1")]
    pub produce_bytes: u64,
    /// Record bytes its fetches returned.
    #[prost(uint64, tag = "2")]
    pub fetch_bytes: u64,
    /// Open Kafka connections.
    #[prost(uint64, tag = "3")]
    pub connections: u64,
    /// Bytes per client zone.
    #[prost(message, repeated, tag = "4")]
    pub zones: Vec<ZoneBytes>,
}

/// Answer to [`GetBrokers`].
#[derive(Clone, PartialEq, Message)]
pub struct Brokers {
    /// Data planes.
    #[prost(message, repeated, tag = "1")]
    pub brokers: Vec<Broker>,
    /// Grows with every change of the list (across control planes too): the leader epoch
    /// clients are told, so they take a new leader of a partition as newer.
    #[prost(int32, tag = "2")]
    pub generation: i32,
}

/// A request failed as a whole.
#[derive(Clone, PartialEq, Message)]
pub struct Failed {
    /// Kafka error code.
    #[prost(int32, tag = "1")]
    pub error: Code,
    /// Why.
    #[prost(string, tag = "2")]
    pub message: String,
    /// From a standby control plane: where the leader listens (`host:port`), when it knows.
    #[prost(string, tag = "3")]
    pub leader: String,
}

/// Ask for a new, never used producer id.
#[derive(Clone, PartialEq, Message)]
pub struct AllocateProducerId {}

/// Answer to [`AllocateProducerId`].
#[derive(Clone, PartialEq, Message)]
pub struct ProducerIdAllocated {
    /// The id.
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
}

/// A Kafka request a data plane forwards to the control plane (the group coordinator) without
/// decoding it: see [`forward`].
#[derive(Clone, PartialEq, Message)]
pub struct KafkaRequest {
    /// Kafka API key.
    #[prost(int32, tag = "1")]
    pub api_key: i32,
    /// Kafka API version.
    #[prost(int32, tag = "2")]
    pub api_version: i32,
    /// The request body as the client encoded it (after the request header).
    #[prost(bytes = "bytes", tag = "3")]
    pub body: bytes::Bytes,
    /// The client's `client.id` (from the request header).
    #[prost(string, tag = "4")]
    pub client_id: String,
    /// The client's address, as the data plane sees it.
    #[prost(string, tag = "5")]
    pub client_host: String,
    /// The Kafka connection the request came on, unique on its shard's control plane
    /// connection. The coordinator runs the requests of one Kafka connection one after another,
    /// in the order they arrive (the order the client sent them), as Kafka does; requests of
    /// different connections run concurrently.
    #[prost(uint64, tag = "6")]
    pub conn_id: u64,
}

/// Answer to [`KafkaRequest`].
#[derive(Clone, PartialEq, Message)]
pub struct KafkaResponse {
    /// The response body, encoded at the request's version (without the response header).
    #[prost(bytes = "bytes", tag = "1")]
    pub body: bytes::Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every body variant survives the envelope: a variant missing from the oneof's tag list
    /// decodes as an empty envelope.
    #[test]
    fn the_newest_bodies_survive_the_envelope() {
        let bodies = [
            body::Body::AlterTopicConfigs(AlterTopicConfigs {
                topics: vec![TopicConfigChange {
                    name: "t".into(),
                    replace: true,
                    ops: vec![ConfigOp { name: "retention.ms".into(), op: CONFIG_SET, value: Some("1".into()) }],
                }],
                validate_only: true,
            }),
            body::Body::DeleteRecords(DeleteRecords { streams: vec![DeleteRecordsStream { stream_id: 7, offset: -1 }] }),
            body::Body::DeleteRecordsReply(DeleteRecordsReply { results: vec![DeleteRecordsResult { error: 1, low_watermark: 5 }] }),
            body::Body::TakeGarbage(TakeGarbage { deleted: vec!["a".into()], max: 9 }),
            body::Body::Garbage(Garbage { objects: vec![GarbageObject { key: "seg/x@4096".into(), size: 10 }] }),
        ];
        for b in bodies {
            let env = Envelope { request_id: 3, body: Some(b) };
            let back = Envelope::decode(env.encode_to_vec().as_slice()).unwrap();
            assert_eq!(back, env);
        }
    }
}
