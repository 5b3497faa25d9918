"""The control plane's status page (on --metrics-listen: `/` and `/status` the page,
`/status.json` its data, `/metrics` still Prometheus), rendered by a real headless Chromium.

A cluster of two zones with two data planes each, of different cores, a topic produced to by a
client of zone a and a group with committed offsets: the rendered page shows every data plane
in its zone with its cores and the partitions it leads (the same leaders the data planes give
clients of that zone), the topic's partitions and the group's lag; a screenshot is a real
render; a data plane killed with SIGKILL leaves the page; a failing fetch shows the control
plane unreachable.
"""

import json
import shutil
import signal
import struct
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka import TopicPartition

from cluster import free_port, wait_until
from helpers import admin, consumer, create_topic, producer, unique

PARTITIONS = 8
WIDTH, HEIGHT = 1280, 900


def chromium(tmp_path, *args):
    """Runs headless Chromium on a page (the last argument); returns its stdout."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium not found: scripts/test.sh installs it (apt-get install chromium)", pytrace=False)
    # The page polls every 2 s: 5 s of virtual time renders it after a few polls.
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=90, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
    return proc.stdout.decode()


class Page(HTMLParser):
    """The rendered DOM: each data plane row (`tr[data-node]`) with its attributes and cell
    texts, the zone, topic and group sections (`tbody[data-zone|data-topic|data-group]`), the
    body's classes and the text of elements with an id."""

    def __init__(self, html):
        super().__init__()
        self.nodes, self.zones, self.topics, self.groups, self.by_id = {}, {}, {}, {}, {}
        self.body_class = ""
        self._row = self._cell = self._section = None
        self._ids = []  # [id, tag, text parts, same tags open inside] of open elements with an id
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self._in_script = True
        if tag == "body":
            self.body_class = a.get("class") or ""
        if tag == "tbody":
            for key, into in (("data-zone", self.zones), ("data-topic", self.topics), ("data-group", self.groups)):
                if key in a:
                    self._section = into.setdefault(a[key], {"attrs": a, "rows": []})
        if tag == "tr":
            self._row = {"attrs": a, "cells": []}
            if "data-node" in a:
                self.nodes[int(a["data-node"])] = self._row
            elif self._section is not None:
                self._section["rows"].append(self._row)
        if tag in ("td", "th") and self._row is not None:
            self._cell = []
        for open_ in self._ids:
            if open_[1] == tag:
                open_[3] += 1
        if "id" in a:
            self._ids.append([a["id"], tag, [], 0])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row["cells"].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "tbody":
            self._section = None
        for i in range(len(self._ids) - 1, -1, -1):
            if self._ids[i][1] == tag:
                if self._ids[i][3] == 0:
                    name, _, parts, _ = self._ids.pop(i)
                    self.by_id[name] = " ".join("".join(parts).split())
                else:
                    self._ids[i][3] -= 1

    def handle_data(self, data):
        if self._in_script:
            return
        if self._cell is not None:
            self._cell.append(data)
        for _, _, parts, _ in self._ids:
            parts.append(data)


def png_pixels(path):
    """(width, height, set of distinct RGB colours) of an 8-bit RGB or RGBA PNG, decoded with
    zlib (no imaging library in the test venv)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours, pos = bytearray(stride), set(), 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, colours


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode()


@pytest.mark.each_backend
def test_status_page(sluice_factory, tmp_path):
    http = f"127.0.0.1:{free_port()}"
    sluice = sluice_factory(cores=2, dataplane_args=["--zone", "a"], controlplane_args=["--metrics-listen", http])
    extra = {"a1": sluice.add_dataplane(zone="a", cores=1), "b2": sluice.add_dataplane(zone="b", cores=2),
             "b1": sluice.add_dataplane(zone="b", cores=1)}
    # Kafka listener -> (zone, cores) of every data plane.
    planes = {sluice.bootstrap: ("a", 2), **{d.bootstrap: (d.zone, d.cores) for d in extra.values()}}

    topic, group = unique("status"), unique("status-group")
    create_topic(sluice.bootstrap, topic, PARTITIONS)
    p = producer(sluice.bootstrap, **{"client.id": "zone_id=a,app=status-test"})
    for i in range(200):
        p.produce(topic, value=b"x" * 100, key=str(i).encode(), partition=i % PARTITIONS)
    assert p.flush(60) == 0
    c = consumer(sluice.bootstrap, **{"group.id": group, "client.id": "zone_id=a"})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 25)], asynchronous=False)
    finally:
        c.close()
    # 25 records per partition: lag 15 on partition 0, none on 1.
    expected_lag = 15

    # The JSON: every data plane registered with its zone and cores, and reporting traffic.
    def status():
        return json.loads(get(f"http://{http}/status.json")[1])

    def complete():
        s = status()
        rows = [d for z in s["zones"] for d in z["dataplanes"]]
        by_addr = {d["address"]: d for d in rows}
        if set(by_addr) != set(planes) or not all(d["reported"] for d in rows):
            return None
        if sum(d.get("produce_bytes", 0) for d in rows) == 0:
            return None
        ours = next(t for t in s["topics"] if t["name"] == topic)
        return s if all(part["bytes"] for part in ours["partitions"]) else None

    s = wait_until(complete, 60, interval=0.5, what="every data plane registered and reporting, with sizes")
    rows = {d["address"]: (z["zone"], d) for z in s["zones"] for d in z["dataplanes"]}
    for addr, (zone, cores) in planes.items():
        assert (rows[addr][0], rows[addr][1]["cores"]) == (zone, cores), rows[addr]
    node_of = {addr: d["node_id"] for addr, (_, d) in rows.items()}
    # The zone a client produced through zone a only.
    for addr, (zone, d) in rows.items():
        if zone == "b":
            assert d["produce_bytes"] == 0, d
    ours = next(t for t in s["topics"] if t["name"] == topic)
    assert sum(part["hwm"] for part in ours["partitions"]) == 200
    # The leaders are those the data planes tell each zone's clients.
    for zone in ("a", "b"):
        md = admin(sluice.bootstrap, **{"client.id": f"zone_id={zone}"}).list_topics(topic=topic, timeout=10)
        told = {pid: pm.leader for pid, pm in md.topics[topic].partitions.items()}
        assert {part["partition"]: part["leaders"][zone] for part in ours["partitions"]} == told, zone

    # Routes: the page at / and /status, Prometheus text at /metrics, nothing else.
    for path in ("/", "/status"):
        kind, body = get(f"http://{http}{path}")
        assert kind.startswith("text/html") and "<title>Sluice status</title>" in body, path
    kind, body = get(f"http://{http}/metrics")
    assert kind.startswith("application/openmetrics-text") and f'sluice_group_lag{{group="{group}"' in body
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"http://{http}/nope")
    assert e.value.code == 404

    # The rendered page.
    page = Page(chromium(tmp_path, "--dump-dom", f"http://{http}/"))
    assert "live" in page.body_class, page.by_id.get("conn-text")
    assert page.by_id["cluster"] == s["cluster_id"]
    assert set(page.nodes) == set(node_of.values()), page.nodes.keys()
    for addr, (zone, d) in rows.items():
        row = page.nodes[d["node_id"]]
        assert row["attrs"]["data-zone"] == zone
        assert row["attrs"]["data-cores"] == str(planes[addr][1])
        assert row["attrs"]["data-led"] == str(d["partitions_led"])
        cells = row["cells"]
        assert cells[1] == addr and cells[2].split()[0] == str(planes[addr][1]), cells
        assert cells[7].split()[0] == str(d["partitions_led"]), cells
    # Each zone leads every partition for its clients, and its section totals its cores.
    for zone in ("a", "b"):
        led = [int(r["attrs"]["data-led"]) for r in page.nodes.values() if r["attrs"]["data-zone"] == zone]
        assert sum(led) == PARTITIONS, (zone, led)
        total = page.zones[zone]["rows"][-1]["cells"]
        assert total[0] == "zone total" and total[1] == "3", total
    t = page.topics[topic]
    parts = [r for r in t["rows"] if "data-partition" in r["attrs"]]
    assert [r["cells"][2] for r in parts] == ["25"] * PARTITIONS, parts
    g = page.groups[group]
    assert g["attrs"]["data-lag"] == str(expected_lag)
    assert f"total lag {expected_lag}" in " ".join(g["rows"][0]["cells"])

    # A real render: the size asked for, and far from one colour.
    shot = tmp_path / "status.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", f"http://{http}/status")
    width, height, colours = png_pixels(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(colours) > 50, f"{len(colours)} colours"
    print(f"screenshot: {shot}")

    # SIGKILL: the data plane's row leaves; its zone's other data plane leads every partition.
    gone = node_of[extra["b1"].bootstrap]
    left = node_of[extra["b2"].bootstrap]
    extra["b1"].kill(signal.SIGKILL)

    def without():
        page = Page(chromium(tmp_path, "--dump-dom", f"http://{http}/"))
        return page if gone not in page.nodes and page.nodes else None

    page = wait_until(without, 60, interval=0.5, what=f"data plane {gone}'s row to leave the page")
    assert set(page.nodes) == set(node_of.values()) - {gone}
    assert page.nodes[left]["attrs"]["data-led"] == str(PARTITIONS)

    # A fetch that fails: the page says the control plane is unreachable.
    html = get(f"http://{http}/")[1]

    class Unreachable(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/status.json"):
                self.close_connection = True  # no answer at all
                return
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unreachable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = Page(chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{server.server_address[1]}/"))
    finally:
        server.shutdown()
        server.server_close()
    assert "down" in page.body_class
    assert page.by_id["down"].startswith("Control plane unreachable"), page.by_id["down"]
    assert not page.nodes
