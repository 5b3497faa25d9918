#!/usr/bin/env python3
"""Consumer groups and their lag, as `kafka-consumer-groups --describe` shows them, computed the
same way: the admin APIs (ListGroups, DescribeGroups/ConsumerGroupDescribe, OffsetFetch) for
committed offsets and owners, ListOffsets for the high watermarks; lag = high watermark -
committed offset. Works against any Kafka-compatible broker.

    scripts/consumer-groups.py [--bootstrap 127.0.0.1:9092] [GROUP ...]

Needs confluent-kafka (the test venv has it: ~/.cache/sluice-venv/.venv/bin/python).
"""

import argparse
import sys

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("groups", nargs="*", help="groups to describe (default: every group)")
    args = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    groups = args.groups or sorted(g.group_id for g in admin.list_consumer_groups(request_timeout=15).result().valid)
    if not groups:
        print("no consumer groups")
        return 0
    described = admin.describe_consumer_groups(groups, request_timeout=15)
    probe = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "sluice-consumer-groups-cli"})
    header = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID", "HOST", "STATE")
    rows = []
    try:
        for group in groups:
            desc = described[group].result()
            owners = {}
            for m in desc.members:
                for tp in (m.assignment.topic_partitions if m.assignment else []):
                    owners[(tp.topic, tp.partition)] = (m.member_id, m.host)
            offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
            state = desc.state.name
            seen = set()
            for tp in sorted(offsets.topic_partitions, key=lambda t: (t.topic, t.partition)):
                _, hwm = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10, cached=False)
                committed = tp.offset if tp.offset >= 0 else None
                lag = hwm - committed if committed is not None else "-"
                owner, host = owners.get((tp.topic, tp.partition), ("-", "-"))
                rows.append((group, tp.topic, tp.partition, committed if committed is not None else "-", hwm, lag, owner, host, state))
                seen.add((tp.topic, tp.partition))
            for (topic, partition), (owner, host) in sorted(owners.items()):
                if (topic, partition) not in seen:
                    _, hwm = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
                    rows.append((group, topic, partition, "-", hwm, "-", owner, host, state))
            if not offsets.topic_partitions and not owners:
                rows.append((group, "-", "-", "-", "-", "-", "-", "-", state))
    finally:
        probe.close()
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
