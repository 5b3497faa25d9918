"""The metrics endpoints and a smoke run of sluice-bench against a started Sluice (no timing
assertions: speed is measured by benchmark runs, written up in BENCHMARKS.md)."""

import json
import subprocess
import urllib.request

import pytest

from cluster import binary, free_port
from helpers import create_topic, make_records, produce_records, unique


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{")[0]
        out[name] = out.get(name, 0) + float(value)
    return out


@pytest.fixture
def metered(sluice_factory):
    dp_port, cp_port = free_port(), free_port()
    cluster = sluice_factory(cores=2, dataplane_args=["--metrics-listen", f"127.0.0.1:{dp_port}"],
                             controlplane_args=["--metrics-listen", f"127.0.0.1:{cp_port}"])
    return cluster, dp_port, cp_port


def test_metrics_count_produced_records_objects_and_transactions(metered):
    sluice, dp_port, cp_port = metered
    before_dp, before_cp = scrape(dp_port), scrape(cp_port)
    topic = unique("metrics")
    create_topic(sluice.bootstrap, topic, 4)
    records = make_records(2000, 4, tag="m")
    produce_records(sluice.bootstrap, topic, records)
    dp, cp = scrape(dp_port), scrape(cp_port)

    assert dp["sluice_produce_records_total"] - before_dp["sluice_produce_records_total"] == 2000
    objects = dp["sluice_wal_objects_total"] - before_dp["sluice_wal_objects_total"]
    commits = cp["sluice_wal_commits_total"] - before_cp["sluice_wal_commits_total"]
    groups = cp["sluice_wal_commit_groups_total"] - before_cp["sluice_wal_commit_groups_total"]
    txns = cp["sluice_metadata_transactions_total"] - before_cp["sluice_metadata_transactions_total"]
    assert objects >= 1
    assert commits == objects, "every written object was committed once"
    assert 1 <= groups <= commits
    assert txns >= groups + 1, "the topic creation and the commit groups are transactions"
    assert dp["sluice_wal_commit_failures_total"] == 0
    # Stage latency histograms: one put and one commit per object, one append per buffered batch.
    def delta(name):
        return dp[name] - before_dp[name]
    assert delta("sluice_wal_put_seconds_count") == objects
    assert delta("sluice_wal_commit_seconds_count") == objects
    appends = delta("sluice_produce_append_seconds_count")
    assert appends >= objects and delta("sluice_wal_buffer_seconds_count") == appends
    # One observation per answered produce request, each holding at least one append.
    requests = delta("sluice_produce_request_seconds_count")
    assert 1 <= requests <= appends
    assert delta("sluice_wal_put_seconds_sum") > 0
    assert cp["sluice_topics"] >= 1
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{dp_port}/nope", timeout=10)


@pytest.mark.timeout(180)
def test_sluice_bench_smoke(metered, tmp_path):
    sluice, dp_port, cp_port = metered
    out = tmp_path / "bench"
    cmd = [binary("sluice-bench"), "--bootstrap", sluice.bootstrap, "--label", "smoke",
           "--rate", "2000", "--duration", "3", "--warmup", "1", "--consumers", "1",
           "--metrics", f"http://127.0.0.1:{dp_port}/metrics,http://127.0.0.1:{cp_port}/metrics",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, timeout=150)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    summary = json.loads((out / "summary.jsonl").read_text().splitlines()[-1])
    # 4 seconds at 2,000 records/s: every record sent was acknowledged and consumed.
    assert summary["acked"] == 8000, summary
    assert summary["failed"] == 0 and summary["missing"] == 0
    assert summary["consumed"] == summary["acked"]
    assert summary["produce_ms_p50_p90_p99_p999_max"] is not None
    assert summary["e2e_ms_p50_p90_p99_p999_max"] is not None
    assert summary["puts_per_gb"] is not None and summary["txns_per_gb"] is not None
    # The WAL stages' tails, read from the data plane's histograms (bucket bounds, ms).
    for stage in ("put_ms_le_p99_p999", "commit_ms_le_p99_p999"):
        p99, p999 = summary[stage]
        assert 0 < p99 <= p999, (stage, summary[stage])
    assert b"WAL stages" in proc.stdout
    for name in ("smoke-produce.hgrm", "smoke-e2e.hgrm", "smoke-latency.svg"):
        assert (out / name).stat().st_size > 0, name
    assert "Percentile" in (out / "smoke-produce.hgrm").read_text()
    assert (out / "smoke-latency.svg").read_text().lstrip().startswith("<svg")
    assert b"end-to-end" in proc.stdout
