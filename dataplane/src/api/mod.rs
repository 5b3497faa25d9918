//! The Kafka APIs: one module per API, one dispatcher ([`handle`]).
//!
//! [`parse`] reads a request's header and checks the API key and version against
//! [`SUPPORTED`] (what ApiVersions advertises); [`handle`] decodes the body, runs the API and
//! encodes the response with the response header version the API and version call for.

mod admin;
mod alter_configs;
mod api_versions;
mod delete_records;
mod describe_cluster;
mod describe_configs;
mod fetch;
mod group;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod produce;

use crate::context::ConnContext;
use crate::order::Turn;
use crate::shard::Shard;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::rc::Rc;

/// APIs and version ranges served (and advertised by ApiVersions): what Kafka 4.1 serves, for
/// every API here. Kafka 4.1's OffsetCommit and OffsetFetch v10 (topic ids) and InitProducerId
/// v6 (two-phase commit) are marked unstable there and not advertised, so not here either.
/// What each version adds and how it is answered:
/// - Produce v12 (transactions v2, only inside transactions), v13 (topics by id).
/// - Fetch v13 (topics by id), v14-v18 (tiered storage and follower fields, nothing to answer).
/// - ListOffsets v7-v9 (MAX_TIMESTAMP, EARLIEST_LOCAL, LATEST_TIERED), v10 (a timeout for
///   tiered look-ups, none here).
/// - Metadata v13 (a top-level error code, always 0 here).
/// - DescribeCluster v2 (fenced brokers: a data plane is either registered or gone).
/// - InitProducerId v5 (a new error code for transactions, which are refused anyway).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// What the connection writes for a request.
pub enum Reply {
    /// A size-prefixed response frame.
    Send(Bytes),
    /// Nothing (Produce with acks=0).
    Nothing,
    /// Close the connection.
    Close,
}

/// A request whose header has been read.
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    /// The body, still encoded.
    pub body: Bytes,
    /// An ApiVersions request at a version we do not know: answered with UNSUPPORTED_VERSION.
    pub unsupported_api_versions: bool,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("frame of {0} bytes too short for a request header")]
    Short(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {1} of API {0:?}")]
    UnsupportedVersion(ApiKey, i16),
    #[error("bad request header: {0}")]
    Header(String),
}

/// Every API served: [`SUPPORTED`] here, then the group APIs forwarded to the coordinator.
pub fn all_supported() -> impl Iterator<Item = &'static (ApiKey, i16, i16)> {
    SUPPORTED.iter().chain(sluice_rpc::forward::GROUP_APIS)
}

fn supported(api: ApiKey) -> Option<(i16, i16)> {
    all_supported().find(|(k, _, _)| *k == api).map(|(_, a, b)| (*a, *b))
}

/// Reads the header of a request frame.
pub fn parse(mut frame: Bytes) -> Result<Request, ParseError> {
    if frame.len() < 8 {
        return Err(ParseError::Short(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|_| ParseError::UnknownApi(key))?;
    let Some((min, max)) = supported(api) else { return Err(ParseError::UnknownApi(key)) };
    let in_range = (min..=max).contains(&version);
    if !in_range && api != ApiKey::ApiVersions {
        return Err(ParseError::UnsupportedVersion(api, version));
    }
    if !in_range {
        // Kafka answers an ApiVersions it cannot parse with a v0 response carrying
        // UNSUPPORTED_VERSION and its ranges; only the correlation id (bytes 4..8) is needed.
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let header =
            RequestHeader::default().with_request_api_key(key).with_request_api_version(version).with_correlation_id(correlation_id);
        return Ok(Request { api, version, header, body: Bytes::new(), unsupported_api_versions: true });
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version)).map_err(|e| ParseError::Header(e.to_string()))?;
    Ok(Request { api, version, header, body: frame, unsupported_api_versions: false })
}

/// Encodes a response frame: size, header, body.
pub fn encode<R: Encodable>(req: &Request, version: i16, resp: &R) -> Reply {
    // Sized up front: a fetch response carries megabytes of records, and growing the buffer
    // as they are appended copied them several times over.
    let size = resp.compute_size(version).unwrap_or(0);
    frame(req, version, size, |buf| resp.encode(buf, version))
}

/// Frames a response body that is already encoded (at the request's version).
pub fn frame_body(req: &Request, body: &[u8]) -> Reply {
    frame(req, req.version, body.len(), |buf| {
        buf.put_slice(body);
        Ok(())
    })
}

/// Header room in a response frame: size, correlation id, tagged fields.
const HEADER_ROOM: usize = 16;

fn frame(req: &Request, version: i16, body_size: usize, body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>) -> Reply {
    let mut buf = BytesMut::with_capacity(HEADER_ROOM + body_size);
    buf.put_u32(0);
    let header = ResponseHeader::default().with_correlation_id(req.header.correlation_id);
    let header_version = req.api.response_header_version(version);
    if let Err(e) = header.encode(&mut buf, header_version).and_then(|_| body(&mut buf)) {
        tracing::error!(api = ?req.api, version, error = %e, "cannot encode response");
        return Reply::Close;
    }
    let len = (buf.len() - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Reply::Send(buf.freeze())
}

fn decode<T: Decodable>(req: &mut Request) -> Option<T> {
    match T::decode(&mut req.body, req.version) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(api = ?req.api, version = req.version, error = %e, "cannot decode request body; closing connection");
            None
        }
    }
}

/// Runs one request of a connection when its turn comes (see [`crate::order`]): Produce and the
/// forwarded group APIs pass the turn on once their effect is ordered, every other request when
/// it is done.
pub async fn handle(shard: Rc<Shard>, mut req: Request, conn: Rc<ConnContext>, mut turn: Turn) -> Reply {
    let v = req.version;
    if req.api == ApiKey::Produce {
        shard.metrics.add(crate::metrics::M::ProduceRequests, 1);
        let Some(body) = decode(&mut req) else { return Reply::Close };
        return match produce::handle(&shard, body, v, turn).await {
            Some(resp) => encode(&req, v, &resp),
            None => Reply::Nothing,
        };
    }
    if sluice_rpc::forward::is_group_api(req.api) {
        return group::forward(&shard, &req, &conn, turn).await;
    }
    turn.wait().await;
    macro_rules! run {
        ($handler:path) => {{
            let Some(body) = decode(&mut req) else { return Reply::Close };
            let resp = $handler(&shard, body, v).await;
            encode(&req, v, &resp)
        }};
    }
    match req.api {
        ApiKey::ApiVersions => api_versions::handle(&req),
        ApiKey::Fetch => {
            shard.metrics.add(crate::metrics::M::FetchRequests, 1);
            run!(fetch::handle)
        }
        ApiKey::ListOffsets => run!(list_offsets::handle),
        ApiKey::Metadata => {
            let Some(body) = decode(&mut req) else { return Reply::Close };
            let resp = metadata::handle(&shard, body, v, conn.zone().as_deref()).await;
            encode(&req, v, &resp)
        }
        ApiKey::CreateTopics => run!(admin::create_topics),
        ApiKey::DeleteTopics => run!(admin::delete_topics),
        ApiKey::CreatePartitions => run!(admin::create_partitions),
        ApiKey::DescribeConfigs => run!(describe_configs::handle),
        ApiKey::AlterConfigs => run!(alter_configs::handle),
        ApiKey::IncrementalAlterConfigs => run!(alter_configs::handle_incremental),
        ApiKey::DeleteRecords => run!(delete_records::handle),
        ApiKey::DescribeCluster => run!(describe_cluster::handle),
        ApiKey::InitProducerId => run!(init_producer_id::handle),
        ApiKey::FindCoordinator => {
            let Some(body) = decode(&mut req) else { return Reply::Close };
            let resp = group::find_coordinator(&shard, body, v, conn.zone().as_deref()).await;
            encode(&req, v, &resp)
        }
        other => {
            tracing::warn!(api = ?other, "unsupported API; closing connection");
            Reply::Close
        }
    }
}

/// A `StrBytes` from a `&str`.
pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}
