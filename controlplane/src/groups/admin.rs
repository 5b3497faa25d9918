//! DescribeGroups, ListGroups, DeleteGroups: what `kafka-consumer-groups` and the admin clients
//! use.

use super::{sb, Client, Coordinator, Kind};
use crate::error::Error;
use crate::meta::{keys, MetaStore, Op};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{DeletableGroupResult, DeleteGroupsResponse};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{DescribeGroupsResponse, DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::GroupId;

use sluice_rpc::acl;

impl<M: MetaStore + Clone> Coordinator<M> {
    pub(super) async fn describe_groups(&self, req: DescribeGroupsRequest, version: i16, _client: &Client) -> DescribeGroupsResponse {
        let ops = acl::if_asked(version >= 3 && req.include_authorized_operations, acl::GROUP_OPS);
        // A group that does not exist is "Dead"; from v6 (KIP-1043) also GROUP_ID_NOT_FOUND.
        let dead = |d: DescribedGroup| {
            let d = d.with_group_state(sb("Dead"));
            if version >= 6 {
                let message = format!("Group {} not found.", d.group_id.as_str());
                d.with_error_code(E::GroupIdNotFound.code())
                    .with_error_message(Some(sb(&message)))
                    .with_authorized_operations(acl::NOT_REQUESTED)
            } else {
                d
            }
        };
        let mut out = Vec::new();
        for id in req.groups {
            let d = DescribedGroup::default().with_group_id(id.clone()).with_authorized_operations(ops);
            let Some(g) = self.existing(&id) else {
                out.push(dead(d));
                continue;
            };
            let g = g.lock().await;
            if !g.exists && g.is_empty() {
                out.push(dead(d));
                continue;
            }
            let described = |id: &str, instance: Option<&str>, client_id: &str, host: &str| {
                DescribedGroupMember::default()
                    .with_member_id(sb(id))
                    .with_group_instance_id(instance.map(sb))
                    .with_client_id(sb(client_id))
                    .with_client_host(sb(host))
            };
            let members = match g.kind() {
                Some(Kind::Consumer) => {
                    g.consumer.members.values().map(|m| described(&m.id, m.instance_id.as_deref(), &m.client_id, &m.client_host)).collect()
                }
                _ => {
                    let c = &g.classic;
                    c.members
                        .values()
                        .map(|m| {
                            described(&m.id, m.instance_id.as_deref(), &m.client_id, &m.client_host)
                                .with_member_metadata(m.metadata(c.protocol.as_deref()))
                                .with_member_assignment(m.assignment.clone())
                        })
                        .collect()
                }
            };
            let protocol = match g.kind() {
                Some(Kind::Consumer) => g.consumer.assignor_name().to_string(),
                _ => g.classic.protocol.clone().unwrap_or_default(),
            };
            out.push(
                d.with_group_state(sb(g.state_name()))
                    .with_protocol_type(sb(&g.protocol_type()))
                    .with_protocol_data(sb(&protocol))
                    .with_members(members),
            );
        }
        DescribeGroupsResponse::default().with_groups(out)
    }

    pub(super) async fn list_groups(&self, req: ListGroupsRequest, _version: i16, _client: &Client) -> ListGroupsResponse {
        let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
        let mut out = Vec::new();
        for g in self.all_groups() {
            let g = g.lock().await;
            if !g.exists && g.is_empty() {
                continue;
            }
            let (state, kind) = (g.state_name(), g.group_type());
            if (!states.is_empty() && !states.contains(&state.to_lowercase())) || (!types.is_empty() && !types.contains(&kind.to_string()))
            {
                continue;
            }
            out.push(
                ListedGroup::default()
                    .with_group_id(GroupId(sb(&g.id)))
                    .with_protocol_type(sb(&g.protocol_type()))
                    .with_group_state(sb(state))
                    .with_group_type(sb(kind)),
            );
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        ListGroupsResponse::default().with_groups(out)
    }

    pub(super) async fn delete_groups(&self, req: DeleteGroupsRequest, _version: i16, _client: &Client) -> DeleteGroupsResponse {
        let mut results = Vec::new();
        for id in req.groups_names {
            let code = match self.existing(&id) {
                None => E::GroupIdNotFound.code(),
                Some(g) => {
                    let mut g = g.lock().await;
                    if !g.exists && g.is_empty() {
                        E::GroupIdNotFound.code()
                    } else if !g.is_empty() {
                        E::NonEmptyGroup.code()
                    } else {
                        let (a, b) = keys::group_all(&id);
                        match self.shared.store.write(vec![], vec![Op::DeleteRange(a, b)]).await {
                            Ok(_) => {
                                // Emptied in place rather than dropped from the map: a request
                                // already waiting for this group's lock then sees an empty
                                // group, not an orphan. The sweeper forgets it once unused.
                                *g = Default::default();
                                g.id = id.to_string();
                                0
                            }
                            Err(e) => {
                                tracing::warn!(group = %id.as_str(), error = %e, "cannot delete group");
                                Error::Coordinator(e).response().code()
                            }
                        }
                    }
                }
            };
            results.push(DeletableGroupResult::default().with_group_id(id).with_error_code(code));
        }
        DeleteGroupsResponse::default().with_results(results)
    }
}
