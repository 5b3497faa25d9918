//! Which data planes a client is told about, and which of them "leads" each partition and
//! coordinates each group: one pure function of the registered data planes, so every data plane
//! (and the control plane's status page) gives the same answer.
//!
//! A client names its zone in `client.id` ([`client_zone`]); it is shown the data planes of that
//! zone, or all of them when the zone has none or the client names none ([`serving`]). Among
//! those, a partition's leader is chosen by rendezvous hashing weighted by cores ([`pick`]):
//! each data plane scores `cores / -ln(u)` with `u` a hash of (node, key) in (0, 1), and the
//! highest score wins. A data plane with four times the cores wins about four times the keys,
//! and one joining or leaving changes the winner of only the keys it wins or won.

use crate::Broker;

/// The keys of `client.id` that name a zone: ours first, then those other diskless Kafka systems
/// read, so a client configured for one of them keeps its zone here.
pub const ZONE_KEYS: &[&str] = &["zone_id", "ws_az", "diskless_az", "zone"];

/// Longest zone name accepted.
const MAX_ZONE: usize = 64;

/// The zone a `client.id` names: comma-separated `key=value` pairs, the first pair whose key is
/// one of [`ZONE_KEYS`]. Parts without `=` (a plain client name) are skipped; a zone value that
/// is empty, too long or holds characters other than letters, digits, `-`, `_`, `.` and `:`
/// makes the id name no zone.
pub fn client_zone(client_id: &str) -> Option<&str> {
    let value = client_id.split(',').filter_map(|part| part.split_once('=')).find(|(k, _)| ZONE_KEYS.contains(&k.trim()))?.1.trim();
    let ok = !value.is_empty()
        && value.len() <= MAX_ZONE
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(value)
}

/// The data planes a client in `zone` is shown: those of its zone when there are any, all of
/// them otherwise (no zone named, or none there), in node id order.
pub fn serving<'a>(brokers: &'a [Broker], zone: Option<&str>) -> Vec<&'a Broker> {
    let mut out: Vec<&Broker> = match zone {
        Some(z) if brokers.iter().any(|b| b.zone == z) => brokers.iter().filter(|b| b.zone == z).collect(),
        _ => brokers.iter().collect(),
    };
    out.sort_by_key(|b| b.node_id);
    out
}

/// Whether bytes a data plane in `my_zone` exchanged with clients naming `client_zone` may have
/// crossed a zone: unless both are known and equal, they may have.
pub fn crosses(my_zone: &str, client_zone: &str) -> bool {
    my_zone.is_empty() || client_zone != my_zone
}

/// The rendezvous key of a partition.
pub fn partition_key(topic_id: u128, partition: i32) -> u64 {
    mix(mix(topic_id as u64 ^ (topic_id >> 64) as u64) ^ partition as u32 as u64)
}

/// The rendezvous key of a name (a group's coordinator).
pub fn name_key(name: &[u8]) -> u64 {
    // FNV-1a, then mixed: stable across processes and versions, unlike std's hasher.
    mix(name.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)))
}

/// The data plane among `candidates` that wins `key`: the highest `cores / -ln(u)`.
pub fn pick<'a>(candidates: &[&'a Broker], key: u64) -> Option<&'a Broker> {
    candidates.iter().copied().max_by(|a, b| score(a, key).total_cmp(&score(b, key)).then(b.node_id.cmp(&a.node_id)))
}

fn score(b: &Broker, key: u64) -> f64 {
    let h = mix(key ^ mix(u64::from(b.node_id as u32).wrapping_add(0x9e37_79b9_7f4a_7c15)));
    // 53 random bits as a float strictly inside (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(b.cores.max(1)) / -u.ln()
}

/// splitmix64's finaliser: every input bit flips about half the output bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(node_id: i32, zone: &str, cores: u32) -> Broker {
        Broker { node_id, zone: zone.into(), cores, host: "h".into(), port: 1, ..Default::default() }
    }

    #[test]
    fn zones_in_client_ids() {
        assert_eq!(client_zone("zone_id=use1-az1,app=billing"), Some("use1-az1"));
        assert_eq!(client_zone("app=billing, zone_id = a"), Some("a"));
        assert_eq!(client_zone("ws_az=b"), Some("b"));
        assert_eq!(client_zone("myapp,diskless_az=eu-west-1a"), Some("eu-west-1a"));
        assert_eq!(client_zone("zone=c"), Some("c"));
        assert_eq!(client_zone("zone_id=a,ws_az=b"), Some("a"), "the first zone pair wins");
        for bad in ["", "rdkafka", "zone_id=", "zone_id=a b", "zone_id=a=b", "zone_id=a;b", "zoneid=a", "zone_id=\u{e9}"] {
            assert_eq!(client_zone(bad), None, "{bad:?}");
        }
        assert_eq!(client_zone(&format!("zone_id={}", "a".repeat(65))), None);
    }

    #[test]
    fn a_zone_sees_its_own_data_planes_or_all() {
        let all = [dp(3, "b", 1), dp(1, "a", 1), dp(2, "b", 1)];
        let ids = |v: Vec<&Broker>| v.iter().map(|b| b.node_id).collect::<Vec<_>>();
        assert_eq!(ids(serving(&all, Some("b"))), [2, 3]);
        assert_eq!(ids(serving(&all, Some("a"))), [1]);
        assert_eq!(ids(serving(&all, Some("c"))), [1, 2, 3]);
        assert_eq!(ids(serving(&all, None)), [1, 2, 3]);
    }

    fn leaders(dps: &[Broker], n: i32) -> Vec<i32> {
        let c: Vec<&Broker> = dps.iter().collect();
        (0..n).map(|p| pick(&c, partition_key(0x1234_5678_9abc_def0_0fed_cba9_8765_4321, p)).unwrap().node_id).collect()
    }

    #[test]
    fn leaders_spread_by_cores() {
        let dps = [dp(1, "", 1), dp(2, "", 4)];
        let l = leaders(&dps, 10_000);
        let big = l.iter().filter(|n| **n == 2).count() as f64 / 10_000.0;
        assert!((0.77..0.83).contains(&big), "a data plane with 4 of 5 cores leads {big} of the partitions");
    }

    #[test]
    fn joining_or_leaving_moves_only_its_share() {
        let three = [dp(1, "", 2), dp(2, "", 2), dp(3, "", 2)];
        let four = [dp(1, "", 2), dp(2, "", 2), dp(3, "", 2), dp(9, "", 2)];
        let (before, after) = (leaders(&three, 10_000), leaders(&four, 10_000));
        let moved: Vec<usize> = (0..before.len()).filter(|i| before[*i] != after[*i]).collect();
        assert!(moved.iter().all(|i| after[*i] == 9), "only partitions the new data plane wins move");
        let share = moved.len() as f64 / 10_000.0;
        assert!((0.22..0.28).contains(&share), "the joining data plane took {share}");
        // Leaving is the same move backwards.
        assert_eq!(leaders(&three, 10_000), before);
    }

    #[test]
    fn names_and_partitions_hash_apart() {
        assert_ne!(name_key(b"g1"), name_key(b"g2"));
        assert_ne!(partition_key(1, 0), partition_key(1, 1));
        assert_ne!(partition_key(1, 0), partition_key(2, 0));
    }
}
