//! Topic configurations both planes agree on: names, Kafka's defaults, and validation. The
//! control plane validates CreateTopics configs against this table; the data plane answers
//! DescribeConfigs from it.

/// The type of a config value, as Kafka's DescribeConfigs v3+ reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    /// `true` or `false`.
    Boolean,
    /// A string from a fixed set.
    String(&'static [&'static str]),
    /// 32-bit integer with a minimum.
    Int(i32),
    /// 64-bit integer with a minimum.
    Long(i64),
    /// Floating point in [0, 1].
    Double,
    /// Comma-separated list of values from a fixed set.
    List(&'static [&'static str]),
}

impl ConfigType {
    /// Kafka's `ConfigType` code in DescribeConfigs responses.
    pub fn kafka_code(&self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String(_) => 2,
            ConfigType::Int(_) => 3,
            ConfigType::Long(_) => 5,
            ConfigType::Double => 6,
            ConfigType::List(_) => 7,
        }
    }
}

/// One topic config.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfig {
    /// Name.
    pub name: &'static str,
    /// Default value, as Kafka 4.x ships it.
    pub default: &'static str,
    /// Type and allowed values.
    pub kind: ConfigType,
    /// One-line documentation.
    pub doc: &'static str,
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config Sluice accepts, sorted by name.
pub const TOPIC_CONFIGS: &[TopicConfig] = &[
    TopicConfig {
        name: "cleanup.policy",
        default: "delete",
        kind: ConfigType::List(&["delete", "compact"]),
        doc: "Retention policy for old log segments.",
    },
    TopicConfig {
        name: "compression.type",
        default: "producer",
        kind: ConfigType::String(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        doc: "Final compression type; Sluice keeps the producer's batches.",
    },
    TopicConfig {
        name: "delete.retention.ms",
        default: "86400000",
        kind: ConfigType::Long(0),
        doc: "How long delete tombstones are kept for compacted topics.",
    },
    TopicConfig {
        name: "file.delete.delay.ms",
        default: "60000",
        kind: ConfigType::Long(0),
        doc: "Delay before deleting a file from the filesystem.",
    },
    TopicConfig {
        name: "flush.messages",
        default: LONG_MAX,
        kind: ConfigType::Long(1),
        doc: "Accepted for compatibility; Sluice flushes WAL objects by size and interval.",
    },
    TopicConfig {
        name: "flush.ms",
        default: LONG_MAX,
        kind: ConfigType::Long(0),
        doc: "Accepted for compatibility; Sluice flushes WAL objects by size and interval.",
    },
    TopicConfig { name: "index.interval.bytes", default: "4096", kind: ConfigType::Int(0), doc: "Accepted for compatibility." },
    TopicConfig {
        name: "max.compaction.lag.ms",
        default: LONG_MAX,
        kind: ConfigType::Long(1),
        doc: "Maximum time a message stays uncompacted.",
    },
    TopicConfig { name: "max.message.bytes", default: "1048588", kind: ConfigType::Int(0), doc: "Largest record batch size allowed." },
    TopicConfig {
        name: "message.timestamp.after.max.ms",
        default: "3600000",
        kind: ConfigType::Long(0),
        doc: "Largest allowed timestamp lead over broker time.",
    },
    TopicConfig {
        name: "message.timestamp.before.max.ms",
        default: LONG_MAX,
        kind: ConfigType::Long(0),
        doc: "Largest allowed timestamp lag behind broker time.",
    },
    TopicConfig {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String(&["CreateTime", "LogAppendTime"]),
        doc: "Whether record timestamps are create or append times.",
    },
    TopicConfig {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: ConfigType::Double,
        doc: "Dirty ratio that makes a log eligible for cleaning.",
    },
    TopicConfig {
        name: "min.compaction.lag.ms",
        default: "0",
        kind: ConfigType::Long(0),
        doc: "Minimum time a message stays uncompacted.",
    },
    TopicConfig {
        name: "min.insync.replicas",
        default: "1",
        kind: ConfigType::Int(1),
        doc: "Accepted for compatibility; object storage provides durability.",
    },
    TopicConfig { name: "preallocate", default: "false", kind: ConfigType::Boolean, doc: "Accepted for compatibility." },
    TopicConfig {
        name: "retention.bytes",
        default: "-1",
        kind: ConfigType::Long(-1),
        doc: "Maximum partition size before old data is deleted (-1: unlimited).",
    },
    TopicConfig {
        name: "retention.ms",
        default: "604800000",
        kind: ConfigType::Long(-1),
        doc: "Maximum age of data before it is deleted (-1: unlimited).",
    },
    TopicConfig { name: "segment.bytes", default: "1073741824", kind: ConfigType::Int(14), doc: "Accepted for compatibility." },
    TopicConfig { name: "segment.index.bytes", default: "10485760", kind: ConfigType::Int(4), doc: "Accepted for compatibility." },
    TopicConfig { name: "segment.jitter.ms", default: "0", kind: ConfigType::Long(0), doc: "Accepted for compatibility." },
    TopicConfig { name: "segment.ms", default: "604800000", kind: ConfigType::Long(1), doc: "Accepted for compatibility." },
    TopicConfig {
        name: "sluice.table.keep",
        default: "false",
        kind: ConfigType::Boolean,
        doc: "true: rows stay in the topic's Iceberg table after retention or DeleteRecords removed them from the stream (history in the lake).",
    },
    TopicConfig {
        name: "unclean.leader.election.enable",
        default: "false",
        kind: ConfigType::Boolean,
        doc: "Accepted for compatibility; Sluice has no leaders to elect.",
    },
];

/// The configs of a group (Kafka 4.1's `GroupConfig`, DescribeConfigs resource type 32), sorted
/// by name, with Kafka's defaults. The coordinator overrides the defaults of those that come
/// from its flags (`consumer.session.timeout.ms`, `consumer.heartbeat.interval.ms`). Share and
/// streams groups are not served; their configs are listed as Kafka lists them.
pub const GROUP_CONFIGS: &[TopicConfig] = &[
    TopicConfig {
        name: "consumer.heartbeat.interval.ms",
        default: "5000",
        kind: ConfigType::Int(1),
        doc: "The heartbeat interval given to the members of a consumer group (KIP-848).",
    },
    TopicConfig {
        name: "consumer.session.timeout.ms",
        default: "45000",
        kind: ConfigType::Int(1),
        doc: "The timeout to detect client failures when using the consumer group protocol (KIP-848).",
    },
    TopicConfig {
        name: "share.auto.offset.reset",
        default: "latest",
        kind: ConfigType::String(&["latest", "earliest", "by_duration"]),
        doc: "Where a share group starts consuming; share groups are not served.",
    },
    TopicConfig {
        name: "share.heartbeat.interval.ms",
        default: "5000",
        kind: ConfigType::Int(1),
        doc: "The heartbeat interval of share group members; share groups are not served.",
    },
    TopicConfig {
        name: "share.isolation.level",
        default: "read_uncommitted",
        kind: ConfigType::String(&["read_committed", "read_uncommitted"]),
        doc: "Which records a share group reads; share groups are not served.",
    },
    TopicConfig {
        name: "share.record.lock.duration.ms",
        default: "30000",
        kind: ConfigType::Int(1),
        doc: "How long a share group member holds a record; share groups are not served.",
    },
    TopicConfig {
        name: "share.session.timeout.ms",
        default: "45000",
        kind: ConfigType::Int(1),
        doc: "The session timeout of share group members; share groups are not served.",
    },
    TopicConfig {
        name: "streams.heartbeat.interval.ms",
        default: "5000",
        kind: ConfigType::Int(1),
        doc: "The heartbeat interval of streams group members; streams groups are not served.",
    },
    TopicConfig {
        name: "streams.num.standby.replicas",
        default: "0",
        kind: ConfigType::Int(0),
        doc: "Standby replicas of a streams group; streams groups are not served.",
    },
    TopicConfig {
        name: "streams.session.timeout.ms",
        default: "45000",
        kind: ConfigType::Int(1),
        doc: "The session timeout of streams group members; streams groups are not served.",
    },
];

/// Looks up a topic config by name.
pub fn topic_config(name: &str) -> Option<&'static TopicConfig> {
    TOPIC_CONFIGS.iter().find(|c| c.name == name)
}

/// Checks a name/value pair; the error is a message for the client (INVALID_CONFIG).
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let Some(cfg) = topic_config(name) else {
        return Err(format!("Unknown topic config name: {name}"));
    };
    let bad = || format!("Invalid value {value} for configuration {name}");
    match cfg.kind {
        ConfigType::Boolean => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        ConfigType::String(allowed) => allowed.contains(&value),
        ConfigType::Int(min) => value.trim().parse::<i32>().is_ok_and(|v| v >= min),
        ConfigType::Long(min) => value.trim().parse::<i64>().is_ok_and(|v| v >= min),
        ConfigType::Double => value.trim().parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)),
        ConfigType::List(allowed) => value.split(',').all(|v| allowed.contains(&v.trim())),
    }
    .then_some(())
    .ok_or_else(bad)
}

/// Whether a topic's `cleanup.policy` (its configured value; None: Kafka's default, `delete`)
/// includes `policy` (`delete` or `compact`).
pub fn cleanup_policy_includes(configured: Option<&str>, policy: &str) -> bool {
    configured.unwrap_or("delete").split(',').any(|p| p.trim() == policy)
}

/// A valid Kafka topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("Topic name \"{name}\" is illegal"));
    }
    if name.len() > 249 {
        return Err(format!("Topic name is longer than 249 characters: {}", name.len()));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return Err(format!("Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_defaults_are_valid() {
        assert!(TOPIC_CONFIGS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(GROUP_CONFIGS.windows(2).all(|w| w[0].name < w[1].name));
        for c in TOPIC_CONFIGS {
            assert_eq!(validate_topic_config(c.name, c.default), Ok(()), "{}", c.name);
        }
    }

    #[test]
    fn validation_rejects_unknown_names_and_bad_values() {
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("bad name").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
