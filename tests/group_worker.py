"""One consumer-group member, run as its own process so a test can SIGKILL it.

    python group_worker.py CLIENT PROTOCOL BOOTSTRAP GROUP LOG TOPIC|--regex PATTERN [key=value ...]

CLIENT is `confluent`, `kafka-python` or `aiokafka`; PROTOCOL is `classic` or `consumer`
(KIP-848, confluent only). Extra key=value pairs go into the client's configuration.

It consumes from the earliest offset, writes every record it receives to LOG, then commits
synchronously (at-least-once), and logs each successful commit. On SIGTERM it commits and closes
(leaving the group). LOG lines, each with a wall-clock time:
    A <time> <topic:partition,...>    partitions assigned now (the whole current assignment)
    V <time> <topic:partition,...>    partitions revoked
    R <time> <topic> <partition> <offset> <value>
    C <time> <topic> <partition> <offset>   committed (next offset to read)
    E <time> <error>
"""

import os
import signal
import sys
import time

# SLUICE_TEST_GROUP_DEFAULT_TIMEOUTS=1: the clients' own session and heartbeat defaults (for
# measuring rebalance times with them); otherwise a 6 s session and 1 s heartbeats.
DEFAULT_TIMEOUTS = os.environ.get("SLUICE_TEST_GROUP_DEFAULT_TIMEOUTS") == "1"

stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)


def fmt(tps):
    return ",".join(sorted(f"{t}:{p}" for t, p in tps)) or "-"


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def line(self, *parts):
        self.f.write(" ".join([parts[0], f"{time.time():.6f}", *map(str, parts[1:])]) + "\n")


def confluent(protocol, bootstrap, group, log, topic, regex, extra):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": protocol,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if protocol == "classic" and not DEFAULT_TIMEOUTS:
        conf.setdefault("session.timeout.ms", 6000)
        conf.setdefault("heartbeat.interval.ms", 1000)
    conf.update(extra)
    c = Consumer(conf)
    owned = set()

    def on_assign(consumer, parts):
        incremental = consumer_is_incremental(consumer)
        new = {(p.topic, p.partition) for p in parts}
        if incremental:
            owned.update(new)
            consumer.incremental_assign(parts)
        else:
            owned.clear()
            owned.update(new)
            consumer.assign(parts)
        log.line("A", fmt(owned))

    def on_revoke(consumer, parts):
        gone = {(p.topic, p.partition) for p in parts}
        log.line("V", fmt(gone))
        if consumer_is_incremental(consumer):
            owned.difference_update(gone)
            consumer.incremental_unassign(parts)
        else:
            owned.clear()
            consumer.unassign()

    def on_lost(consumer, parts):
        on_revoke(consumer, parts)

    incremental = protocol == "consumer" or "cooperative" in str(conf.get("partition.assignment.strategy", ""))

    def consumer_is_incremental(_consumer):
        return incremental

    c.subscribe([f"^{regex}" if regex else topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    while not stop:
        msgs = c.consume(500, 0.2)
        if not msgs:
            continue
        done = {}
        for m in msgs:
            if m.error():
                log.line("E", m.error())
                continue
            log.line("R", m.topic(), m.partition(), m.offset(), m.value().decode())
            done[(m.topic(), m.partition())] = m.offset() + 1
        if done:
            tps = [TopicPartition(t, p, o) for (t, p), o in done.items()]
            try:
                for tp in c.commit(offsets=tps, asynchronous=False):
                    if tp.error is None:
                        log.line("C", tp.topic, tp.partition, tp.offset)
            except KafkaException as e:
                log.line("E", f"commit: {e}")
    c.close()


def kafka_python(protocol, bootstrap, group, log, topic, regex, extra):
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    assert protocol == "classic", "kafka-python speaks only the classic protocol"
    conf = dict(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    if not DEFAULT_TIMEOUTS:
        conf.update(session_timeout_ms=6000, heartbeat_interval_ms=1000)
    conf.update(extra)
    c = KafkaConsumer(**conf)
    listener = logging_listener(ConsumerRebalanceListener, log)
    if regex:
        c.subscribe(pattern=regex, listener=listener)
    else:
        c.subscribe([topic], listener=listener)
    while not stop:
        done = log_records(log, c.poll(timeout_ms=200, max_records=500))
        if done:
            try:
                c.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in done.items()})
                log_commits(log, done)
            except Exception as e:  # noqa: BLE001 - logged; the test judges the outcome
                log.line("E", f"commit: {e!r}")
    c.close()


def logging_listener(base, log):
    """A rebalance listener (kafka-python's and aiokafka's have the same shape) that logs."""
    class Listener(base):
        def on_partitions_revoked(self, revoked):
            log.line("V", fmt((p.topic, p.partition) for p in revoked))

        def on_partitions_assigned(self, assigned):
            log.line("A", fmt((p.topic, p.partition) for p in assigned))

    return Listener()


def log_records(log, batches):
    """Logs polled records ({partition: [record]}); returns the offsets to commit."""
    done = {}
    for tp, msgs in batches.items():
        for m in msgs:
            log.line("R", m.topic, m.partition, m.offset, m.value.decode())
            done[tp] = m.offset + 1
    return done


def log_commits(log, done):
    for tp, o in done.items():
        log.line("C", tp.topic, tp.partition, o)


def aiokafka(protocol, bootstrap, group, log, topic, regex, extra):
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.abc import ConsumerRebalanceListener

    assert protocol == "classic", "aiokafka speaks only the classic protocol"
    conf = dict(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
    if not DEFAULT_TIMEOUTS:
        conf.update(session_timeout_ms=6000, heartbeat_interval_ms=1000)
    conf.update(extra)

    async def run():
        c = AIOKafkaConsumer(**conf)
        listener = logging_listener(ConsumerRebalanceListener, log)
        if regex:
            c.subscribe(pattern=regex, listener=listener)
        else:
            c.subscribe([topic], listener=listener)
        await c.start()
        try:
            while not stop:
                done = log_records(log, await c.getmany(timeout_ms=200, max_records=500))
                if done:
                    try:
                        await c.commit(done)
                        log_commits(log, done)
                    except Exception as e:  # noqa: BLE001 - logged; the test judges the outcome
                        log.line("E", f"commit: {e!r}")
        finally:
            await c.stop()

    asyncio.run(run())


def main():
    client, protocol, bootstrap, group, path = sys.argv[1:6]
    rest = sys.argv[6:]
    regex = None
    if rest[0] == "--regex":
        regex, topic, rest = rest[1], None, rest[2:]
    else:
        topic, rest = rest[0], rest[1:]
    extra = {}
    for kv in rest:
        k, v = kv.split("=", 1)
        extra[k] = int(v) if v.isdigit() else v
    log = Log(path)
    run = {"confluent": confluent, "kafka-python": kafka_python, "aiokafka": aiokafka}[client]
    run(protocol, bootstrap, group, log, topic, regex, extra)


if __name__ == "__main__":
    main()
