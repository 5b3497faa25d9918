//! The control plane's one error type, [`Error`], and its one mapping to the Kafka error a
//! client (or a data plane) gets: [`Error::response`], kafka-protocol's `ResponseError`.
//! Handlers that refuse a request by the protocol's rules (an unknown member, a stale epoch)
//! name the `ResponseError` itself; failures of the control plane's own machinery (the
//! metadata store, shutting down, a malformed RPC) are an `Error`. No code is written as a
//! number anywhere else.

use crate::meta::MetaError;
use kafka_protocol::error::ResponseError;

/// The wire's "no error" code (kafka-protocol's `ResponseError` has no variant for it).
pub const NONE: i32 = 0;

/// Everything that can fail while the control plane serves a request. Cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The metadata store failed or refused a write of the controller (topic administration,
    /// the sequencer, registration).
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The metadata store failed or refused a write of the group coordinator.
    #[error("group coordinator: {0}")]
    Coordinator(MetaError),
    /// This control plane stands by; the leader listens at this address (empty: not known yet).
    #[error("standing by; the leader is {0:?}")]
    Standby(String),
    /// The control plane is shutting down.
    #[error("control plane stopping")]
    Stopping,
    /// An RPC the control plane cannot read.
    #[error("{0}")]
    Malformed(String),
    /// A data plane claimed a node id another running data plane holds.
    #[error("{0}")]
    DuplicateNode(String),
    /// A bug: something that cannot happen did.
    #[error("internal: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The Kafka error a client is answered with.
    pub fn response(&self) -> ResponseError {
        use ResponseError as R;
        match self {
            // Another control plane took over (or is taking over): ask it instead.
            Error::Meta(MetaError::ConditionFailed | MetaError::Fenced) | Error::Stopping | Error::Standby(_) => R::NotController,
            Error::Meta(MetaError::Backend(_) | MetaError::Compacted(_)) => R::KafkaStorageError,
            // Retriable for every group API: the client finds the coordinator again.
            Error::Coordinator(_) => R::CoordinatorNotAvailable,
            Error::Malformed(_) => R::InvalidRequest,
            Error::DuplicateNode(_) => R::DuplicateBrokerRegistration,
            Error::Internal(_) => R::UnknownServerError,
        }
    }

    /// [`Error::response`]'s code, as RPC replies carry it.
    pub fn rpc_code(&self) -> i32 {
        i32::from(self.response().code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_kafka_code_clients_expect() {
        let table: &[(Error, i16, bool)] = &[
            (Error::Meta(MetaError::Fenced), 41, true),
            (Error::Meta(MetaError::ConditionFailed), 41, true),
            (Error::Stopping, 41, true),
            (Error::Standby("10.0.0.1:9093".into()), 41, true),
            (Error::Meta(MetaError::Backend("disk gone".into())), 56, true),
            (Error::Meta(MetaError::Compacted(7)), 56, true),
            (Error::Coordinator(MetaError::Fenced), 15, true),
            (Error::Coordinator(MetaError::Backend("disk gone".into())), 15, true),
            (Error::Malformed("unknown API key 999".into()), 42, false),
            (Error::DuplicateNode("node id 2 is taken".into()), 101, false),
            (Error::Internal("cannot encode response"), -1, false),
        ];
        for (e, code, retriable) in table {
            assert_eq!(e.response().code(), *code, "{e}");
            assert_eq!(e.rpc_code(), i32::from(*code), "{e}");
            assert_eq!(e.response().is_retriable(), *retriable, "{e}");
        }
    }
}
