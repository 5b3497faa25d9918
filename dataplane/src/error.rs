//! The data plane's one error type, [`Error`], and its one mapping to the Kafka error a client
//! gets ([`Error::response`], from kafka-protocol's `ResponseError`). Handlers return or store
//! an `Error` and ask it for its code when they fill a response; no code is written as a
//! number anywhere else.

use kafka_protocol::error::ResponseError;
use std::sync::Arc;

/// Why a call to the control plane got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection: the control plane refused it (nothing listens at its address) or refused
    /// this data plane's registration.
    #[error("control plane refused the connection")]
    Refused,
    /// The connection dropped before the answer came, or the control plane answered with
    /// something else than the request calls for.
    #[error("control plane connection lost")]
    Unavailable,
    /// No answer (or no connection) within the deadline.
    #[error("no answer from the control plane in time")]
    TimedOut,
}

/// Everything that can go wrong while serving a request. Cheap to clone (an append's result is
/// handed to every retry waiting on it), so I/O errors sit in an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// This data plane is draining: the client is to go to another.
    #[error("this data plane is leaving the cluster")]
    Draining,
    #[error("unknown topic id")]
    UnknownTopicId,
    #[error("invalid topic name")]
    InvalidTopic,
    #[error("topic not available yet")]
    TopicNotAvailable,
    #[error("offset out of range")]
    OffsetOutOfRange,
    #[error("record batch corrupt (size, CRC or framing)")]
    CorruptBatch,
    #[error("record batch larger than max.message.bytes")]
    BatchTooLarge,
    #[error("record batch refused (control, transactional, bad codec or empty)")]
    InvalidRecord,
    #[error("record format (magic) older than v2")]
    UnsupportedRecordFormat,
    #[error("acks must be -1, 0 or 1")]
    InvalidRequiredAcks,
    #[error("version not supported for this request")]
    UnsupportedVersion,
    #[error("object store: {0}")]
    Storage(Arc<std::io::Error>),
    #[error("WAL object chunk corrupt: {0}")]
    CorruptObject(String),
    #[error(transparent)]
    ControlPlane(#[from] RpcError),
    #[error("WAL commit not accepted before its deadline")]
    CommitTimedOut,
    /// A Kafka error the control plane answered with.
    #[error("control plane answered {0}")]
    Remote(ResponseError),
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The error the control plane answered with (a Kafka error code on the wire); `None` for 0.
    pub fn remote(code: i32) -> Option<Error> {
        let code = i16::try_from(code).unwrap_or(ResponseError::UnknownServerError.code());
        ResponseError::try_from_code(code).map(Error::Remote)
    }

    /// The Kafka error a client is answered with.
    pub fn response(&self) -> ResponseError {
        use ResponseError as R;
        match self {
            Error::UnknownTopicOrPartition => R::UnknownTopicOrPartition,
            // Retriable everywhere: clients refresh their metadata, which no longer lists it.
            Error::Draining => R::NotLeaderOrFollower,
            Error::UnknownTopicId => R::UnknownTopicId,
            Error::InvalidTopic => R::InvalidTopicException,
            Error::TopicNotAvailable => R::LeaderNotAvailable,
            Error::OffsetOutOfRange => R::OffsetOutOfRange,
            Error::CorruptBatch => R::CorruptMessage,
            Error::BatchTooLarge => R::MessageTooLarge,
            Error::InvalidRecord => R::InvalidRecord,
            Error::UnsupportedRecordFormat => R::UnsupportedForMessageFormat,
            Error::InvalidRequiredAcks => R::InvalidRequiredAcks,
            Error::UnsupportedVersion => R::UnsupportedVersion,
            Error::Storage(_) | Error::CorruptObject(_) => R::KafkaStorageError,
            // Retriable: the client tries again, by then the control plane is back.
            Error::ControlPlane(_) | Error::CommitTimedOut => R::RequestTimedOut,
            Error::Remote(r) => *r,
            Error::Internal(_) => R::UnknownServerError,
        }
    }

    /// The Kafka error code of [`Error::response`].
    pub fn code(&self) -> i16 {
        self.response().code()
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_kafka_code_clients_expect() {
        let io = || std::io::Error::other("disk gone");
        let table: &[(Error, i16, bool)] = &[
            (Error::UnknownTopicOrPartition, 3, true),
            (Error::Draining, 6, true),
            (Error::UnknownTopicId, 100, true),
            (Error::InvalidTopic, 17, false),
            (Error::TopicNotAvailable, 5, true),
            (Error::OffsetOutOfRange, 1, false),
            (Error::CorruptBatch, 2, true),
            (Error::BatchTooLarge, 10, false),
            (Error::InvalidRecord, 87, false),
            (Error::UnsupportedRecordFormat, 43, false),
            (Error::InvalidRequiredAcks, 21, false),
            (Error::UnsupportedVersion, 35, false),
            (Error::from(io()), 56, true),
            (Error::CorruptObject("crc".into()), 56, true),
            (Error::ControlPlane(RpcError::Refused), 7, true),
            (Error::ControlPlane(RpcError::Unavailable), 7, true),
            (Error::ControlPlane(RpcError::TimedOut), 7, true),
            (Error::CommitTimedOut, 7, true),
            (Error::Remote(ResponseError::NotCoordinator), 16, true),
            (Error::Internal("shard gone"), -1, false),
        ];
        for (e, code, retriable) in table {
            assert_eq!(e.code(), *code, "{e}");
            assert_eq!(e.response().is_retriable(), *retriable, "{e}");
        }
    }

    #[test]
    fn control_plane_codes_come_back_as_themselves() {
        assert!(Error::remote(0).is_none());
        assert_eq!(Error::remote(3).map(|e| e.code()), Some(3));
        assert_eq!(Error::remote(36).map(|e| e.code()), Some(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(Error::remote(70_000).map(|e| e.code()), Some(-1), "out of range is an unknown server error");
    }
}
