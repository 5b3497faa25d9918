//! ApiVersions: the APIs and version ranges this broker serves.

use super::{all_supported, encode, Reply, Request};
use crate::error::Error;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

pub fn handle(req: &Request) -> Reply {
    let api_keys = all_supported()
        .map(|(k, min, max)| ApiVersion::default().with_api_key(*k as i16).with_min_version(*min).with_max_version(*max))
        .collect();
    let resp = ApiVersionsResponse::default().with_api_keys(api_keys);
    if req.unsupported_api_versions {
        return encode(req, 0, &resp.with_error_code(Error::UnsupportedVersion.code()));
    }
    encode(req, req.version, &resp)
}
