//! Authorized operations as Kafka reports them with no authorizer configured: every operation
//! that applies to the resource type (Kafka's `AclEntry.supportedOperations`), one bit per
//! `AclOperation` code. Sluice has no authorizer, so these are what Metadata, DescribeCluster,
//! DescribeGroups and ConsumerGroupDescribe answer when asked.

/// Kafka's `AclOperation` codes.
pub mod op {
    pub const READ: u8 = 3;
    pub const WRITE: u8 = 4;
    pub const CREATE: u8 = 5;
    pub const DELETE: u8 = 6;
    pub const ALTER: u8 = 7;
    pub const DESCRIBE: u8 = 8;
    pub const CLUSTER_ACTION: u8 = 9;
    pub const DESCRIBE_CONFIGS: u8 = 10;
    pub const ALTER_CONFIGS: u8 = 11;
    pub const IDEMPOTENT_WRITE: u8 = 12;
}

const fn bits(ops: &[u8]) -> i32 {
    let mut v = 0i32;
    let mut i = 0;
    while i < ops.len() {
        v |= 1 << ops[i];
        i += 1;
    }
    v
}

use op::*;

/// A topic's operations.
pub const TOPIC_OPS: i32 = bits(&[READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS]);
/// The cluster's operations.
pub const CLUSTER_OPS: i32 = bits(&[CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE]);
/// A group's operations.
pub const GROUP_OPS: i32 = bits(&[READ, DELETE, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS]);
/// The value of an authorized-operations field the client did not ask for.
pub const NOT_REQUESTED: i32 = i32::MIN;

/// `ops` when the client asked for authorized operations, else [`NOT_REQUESTED`].
pub fn if_asked(asked: bool, ops: i32) -> i32 {
    if asked {
        ops
    } else {
        NOT_REQUESTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values a Kafka 4.1 broker without an authorizer sends.
    #[test]
    fn bitfields_match_kafka() {
        assert_eq!(TOPIC_OPS, 3576);
        assert_eq!(CLUSTER_OPS, 8096);
        assert_eq!(GROUP_OPS, 3400);
    }
}
