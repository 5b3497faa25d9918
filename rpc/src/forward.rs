//! Group APIs: the Kafka requests a data plane forwards, undecoded, to the group coordinator in
//! the control plane ([`crate::KafkaRequest`]), and the answer either side gives when it cannot
//! serve one (coordinator unreachable, metadata store failing): the same response, every error
//! field set to one code, so the client retries as it would against Kafka.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

/// Forwarded APIs and the versions served (and advertised by ApiVersions).
pub const GROUP_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

/// Whether `api` is forwarded to the coordinator.
pub fn is_group_api(api: ApiKey) -> bool {
    GROUP_APIS.iter().any(|(k, _, _)| *k == api)
}

/// Encodes a response body at `version`.
pub fn encode_body<R: Encodable>(resp: &R, version: i16) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(128);
    resp.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

fn decode<T: Decodable>(mut body: Bytes, version: i16) -> Option<T> {
    T::decode(&mut body, version).ok()
}

/// The response to a forwarded request in which every error field is `code`; `None` when the
/// body does not decode (the connection is then closed, as for any malformed request).
pub fn error_response(api: ApiKey, version: i16, body: Bytes, code: i16) -> Option<Bytes> {
    match api {
        ApiKey::JoinGroup => {
            decode::<JoinGroupRequest>(body, version)?;
            let r = JoinGroupResponse::default().with_error_code(code).with_generation_id(-1);
            encode_body(&r, version)
        }
        ApiKey::SyncGroup => {
            decode::<SyncGroupRequest>(body, version)?;
            encode_body(&SyncGroupResponse::default().with_error_code(code), version)
        }
        ApiKey::Heartbeat => {
            decode::<HeartbeatRequest>(body, version)?;
            encode_body(&HeartbeatResponse::default().with_error_code(code), version)
        }
        ApiKey::LeaveGroup => {
            decode::<LeaveGroupRequest>(body, version)?;
            encode_body(&LeaveGroupResponse::default().with_error_code(code), version)
        }
        ApiKey::ListGroups => {
            decode::<ListGroupsRequest>(body, version)?;
            encode_body(&ListGroupsResponse::default().with_error_code(code), version)
        }
        ApiKey::OffsetDelete => {
            decode::<OffsetDeleteRequest>(body, version)?;
            encode_body(&OffsetDeleteResponse::default().with_error_code(code), version)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            decode::<ConsumerGroupHeartbeatRequest>(body, version)?;
            encode_body(&ConsumerGroupHeartbeatResponse::default().with_error_code(code), version)
        }
        ApiKey::DescribeGroups => {
            let req: DescribeGroupsRequest = decode(body, version)?;
            let groups = req
                .groups
                .into_iter()
                .map(|g| describe_groups_response::DescribedGroup::default().with_group_id(g).with_error_code(code))
                .collect();
            encode_body(&DescribeGroupsResponse::default().with_groups(groups), version)
        }
        ApiKey::ConsumerGroupDescribe => {
            let req: ConsumerGroupDescribeRequest = decode(body, version)?;
            let groups = req
                .group_ids
                .into_iter()
                .map(|g| consumer_group_describe_response::DescribedGroup::default().with_group_id(g).with_error_code(code))
                .collect();
            encode_body(&ConsumerGroupDescribeResponse::default().with_groups(groups), version)
        }
        ApiKey::DeleteGroups => {
            let req: DeleteGroupsRequest = decode(body, version)?;
            let results = req
                .groups_names
                .into_iter()
                .map(|g| delete_groups_response::DeletableGroupResult::default().with_group_id(g).with_error_code(code))
                .collect();
            encode_body(&DeleteGroupsResponse::default().with_results(results), version)
        }
        ApiKey::OffsetCommit => {
            let req: OffsetCommitRequest = decode(body, version)?;
            let topics = req
                .topics
                .into_iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect();
                    offset_commit_response::OffsetCommitResponseTopic::default().with_name(t.name).with_partitions(partitions)
                })
                .collect();
            encode_body(&OffsetCommitResponse::default().with_topics(topics), version)
        }
        ApiKey::OffsetFetch => {
            let req: OffsetFetchRequest = decode(body, version)?;
            let r = if version >= 8 {
                let groups = req
                    .groups
                    .into_iter()
                    .map(|g| offset_fetch_response::OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_error_code(code))
                    .collect();
                OffsetFetchResponse::default().with_groups(groups)
            } else {
                // v1 has no top-level error code: each requested partition carries it.
                let topics = req
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|p| {
                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code)
                            })
                            .collect();
                        offset_fetch_response::OffsetFetchResponseTopic::default().with_name(t.name).with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponse::default().with_error_code(code).with_topics(topics)
            };
            encode_body(&r, version)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;

    fn encode_req<R: Encodable>(r: &R, version: i16) -> Bytes {
        encode_body(r, version).expect("encodes")
    }

    #[test]
    fn every_error_answer_decodes_at_every_version() {
        let group = GroupId(StrBytes::from_static_str("g"));
        for (api, min, max) in GROUP_APIS {
            for v in *min..=*max {
                let body = match api {
                    ApiKey::JoinGroup => encode_req(&JoinGroupRequest::default().with_group_id(group.clone()), v),
                    ApiKey::SyncGroup => encode_req(&SyncGroupRequest::default().with_group_id(group.clone()), v),
                    ApiKey::Heartbeat => encode_req(&HeartbeatRequest::default().with_group_id(group.clone()), v),
                    ApiKey::LeaveGroup => encode_req(&LeaveGroupRequest::default().with_group_id(group.clone()), v),
                    ApiKey::ListGroups => encode_req(&ListGroupsRequest::default(), v),
                    ApiKey::OffsetDelete => encode_req(&OffsetDeleteRequest::default().with_group_id(group.clone()), v),
                    ApiKey::ConsumerGroupHeartbeat => encode_req(&ConsumerGroupHeartbeatRequest::default().with_group_id(group.clone()), v),
                    ApiKey::DescribeGroups => encode_req(&DescribeGroupsRequest::default().with_groups(vec![group.clone()]), v),
                    ApiKey::ConsumerGroupDescribe => {
                        encode_req(&ConsumerGroupDescribeRequest::default().with_group_ids(vec![group.clone()]), v)
                    }
                    ApiKey::DeleteGroups => encode_req(&DeleteGroupsRequest::default().with_groups_names(vec![group.clone()]), v),
                    ApiKey::OffsetCommit => encode_req(&OffsetCommitRequest::default().with_group_id(group.clone()), v),
                    ApiKey::OffsetFetch => {
                        let r = if v >= 8 {
                            OffsetFetchRequest::default()
                                .with_groups(vec![offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(group.clone())])
                        } else {
                            OffsetFetchRequest::default().with_group_id(group.clone()).with_topics(Some(vec![]))
                        };
                        encode_req(&r, v)
                    }
                    other => panic!("no test body for {other:?}"),
                };
                let answer = error_response(*api, v, body, 15);
                assert!(answer.is_some(), "{api:?} v{v}");
            }
        }
    }

    #[test]
    fn garbage_gets_no_answer() {
        assert!(error_response(ApiKey::JoinGroup, 5, Bytes::from_static(&[0xff, 0xff, 0xff]), 15).is_none());
    }
}
