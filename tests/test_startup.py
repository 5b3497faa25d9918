"""Process lifecycle: start-up errors are one clear line (no panic, no backtrace), and both
processes stop on SIGTERM / SIGINT without losing acknowledged data."""

import os
import signal
import socket
import subprocess

import pytest

import kafka_wire as kw
from cluster import CONTROLPLANE, DATAPLANE, RestCatalogServer, binary, free_port
from helpers import HealthProbe, Rec, consume_range, create_topic, now_ms, produce_records, unique

ROLES = ["controlplane", "dataplane"]


def clean_env():
    env = dict(os.environ)
    for var in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG"):
        env.pop(var, None)
    return env


def command(role, data_dir, listen, controlplane_addr=None, extra=()):
    if role == "controlplane":
        return [binary(CONTROLPLANE), "--data-dir", str(data_dir), "--rpc-listen", listen, *extra]
    return [binary(DATAPLANE), "--data-dir", str(data_dir), "--controlplane", controlplane_addr,
            "--listen", listen, "--cores", "1", *extra]


def run_expecting_failure(cmd, timeout=30):
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=clean_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{cmd[0]} did not exit within {timeout}s; stderr so far: {e.stderr!r}")
    return proc


def assert_one_line_error(proc, *any_of):
    """Non-zero exit, exactly one non-empty stderr line, no panic/backtrace; the line contains
    at least one of any_of (case-insensitive) when given."""
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (0, None) and proc.returncode > 0, \
        f"exit status {proc.returncode} (want a non-zero exit, not a signal); stderr:\n{stderr}"
    lower = stderr.lower()
    assert "panicked" not in lower and "backtrace" not in lower, f"panic/backtrace on stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a single-line error on stderr, got {len(lines)} lines:\n{stderr}"
    if any_of:
        assert any(s.lower() in lines[0].lower() for s in any_of), \
            f"error line does not mention any of {any_of}: {lines[0]!r}"
    return lines[0]


@pytest.fixture
def controlplane_addr(sluice_factory):
    """A running control plane for data-plane start-up tests (so only the tested fault remains)."""
    cluster = sluice_factory(start=False)
    cluster.start_controlplane()
    return cluster.rpc_addr


def role_command(role, request, tmp_path, listen, extra=(), data_dir=None):
    """Command line for role; a data plane gets a running control plane, and a fresh data dir
    is created unless data_dir is given."""
    cp = request.getfixturevalue("controlplane_addr") if role == "dataplane" else None
    if data_dir is None:
        data_dir = tmp_path / f"{role}-data"
        data_dir.mkdir(exist_ok=True)
    return command(role, data_dir, listen, cp, extra)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("extra,mentions", [
    (["--definitely-not-a-flag"], ["definitely-not-a-flag"]),
    (["--definitely-not-a-flag", "value"], ["definitely-not-a-flag"]),
], ids=["unknown-flag", "unknown-flag-with-value"])
def test_bad_flag(request, tmp_path, role, extra, mentions):
    cmd = role_command(role, request, tmp_path, f"127.0.0.1:{free_port()}", extra)
    assert_one_line_error(run_expecting_failure(cmd), *mentions)


@pytest.mark.parametrize("extra,mentions", [
    (["--catalog", "mysql://db/sluice"], ["--catalog", "scheme"]),
    (["--object-store", "ftp://host/dir"], ["--object-store", "scheme"]),
    (["--object-store", "s3://bucket"], ["--s3-endpoint"]),
    (["--catalog-warehouse", "lake"], ["--catalog-warehouse"]),
    (["--catalog", f"http://127.0.0.1:{free_port()}"], ["cannot reach the REST catalog"]),
], ids=["catalog-scheme", "object-store-scheme", "s3-without-endpoint", "warehouse-without-rest", "rest-unreachable"])
def test_controlplane_bad_lake_flags(request, tmp_path, extra, mentions):
    cmd = role_command("controlplane", request, tmp_path, f"127.0.0.1:{free_port()}", extra)
    assert_one_line_error(run_expecting_failure(cmd), *mentions)


def test_controlplane_refused_by_the_rest_catalog(request, tmp_path):
    """A REST catalog that refuses the token: one line naming the catalog and its answer."""
    server = RestCatalogServer(tmp_path / "rest-catalog", f"file://{tmp_path / 'objects'}").start()
    try:
        cmd = role_command("controlplane", request, tmp_path, f"127.0.0.1:{free_port()}", ["--catalog", server.uri])
        env = clean_env()
        env["SLUICE_CATALOG_TOKEN"] = "rb_not-the-token-0123456789abcdefghijklmnopqrstuvwxyz"
        proc = subprocess.run(cmd, capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
        assert_one_line_error(proc, "REST catalog")
        assert "401" in proc.stderr.decode()
    finally:
        server.stop()


def test_dataplane_bad_flag_value(request, tmp_path):
    cmd = role_command("dataplane", request, tmp_path, f"127.0.0.1:{free_port()}")
    cmd[cmd.index("--cores") + 1] = "many"
    assert_one_line_error(run_expecting_failure(cmd), "cores", "many")


@pytest.mark.parametrize("role", ROLES)
def test_unusable_data_dir(request, tmp_path, role):
    regular_file = tmp_path / "file"
    regular_file.write_text("not a directory\n")
    cmd = role_command(role, request, tmp_path, f"127.0.0.1:{free_port()}",
                       data_dir=regular_file / "data")
    assert_one_line_error(run_expecting_failure(cmd), str(regular_file))


@pytest.mark.parametrize("role", ROLES)
def test_port_in_use(request, tmp_path, role):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        cmd = role_command(role, request, tmp_path, f"127.0.0.1:{port}")
        assert_one_line_error(run_expecting_failure(cmd), str(port), "in use")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stops_on_signal_and_keeps_data(sluice, role, sig):
    probe = HealthProbe(sluice.bootstrap, n=200)
    if role == "dataplane":
        code = sluice.kill_dataplane(sig, timeout=15)
        sluice.start_dataplane()
    else:
        code = sluice.kill_controlplane(sig, timeout=15)
        sluice.start_controlplane()
    assert code in (0, -sig), f"{role} exit status {code} after {sig.name}"
    probe.check()


@pytest.mark.parametrize("role,sig", [
    ("dataplane", signal.SIGKILL),
    ("dataplane", signal.SIGTERM),
    ("controlplane", signal.SIGKILL),
], ids=["dataplane-SIGKILL", "dataplane-SIGTERM", "controlplane-SIGKILL"])
def test_restart_on_same_port_with_clients_connected(sluice, role, sig):
    """A supervisor restarts a stopped process at once on the same address. Connections that
    were open when it stopped (closed by the server side, so left in TIME_WAIT) must not make
    the new process fail with 'address in use'."""
    probe = HealthProbe(sluice.bootstrap)
    conns = [kw.KafkaConnection(sluice.bootstrap) for _ in range(3)]
    try:
        for conn in conns:
            assert kw.api_versions(conn)[0] == kw.NONE
        if role == "dataplane":
            sluice.kill_dataplane(sig)
            sluice.start_dataplane()
        else:
            sluice.kill_controlplane(sig)
            sluice.start_controlplane()
    finally:
        for conn in conns:
            conn.close()
    probe.check()


def toml_file(path, settings):
    """Writes settings (key -> str, int, float or bool) as a TOML file; returns its path."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    path.write_text("".join(f"{k} = {value(v)}\n" for k, v in settings.items()))
    return path


def test_started_from_config_files(sluice_factory, tmp_path):
    """Both processes started with nothing but --config FILE (ports, data dirs, the control
    plane's address, all in the files, kebab and snake keys, every kind of value) serve a Kafka
    client."""
    cluster = sluice_factory(start=False)
    cp_config = toml_file(tmp_path / "controlplane.toml", {
        "data-dir": cluster.cp_dir,
        "rpc_listen": cluster.rpc_addr,
        "object-store": cluster.store_root,
        "gc-interval-ms": 5000,
        "log": "info",
    })
    dp_config = toml_file(tmp_path / "dataplane.toml", {
        "data_dir": cluster.dp_dir,
        "controlplane": cluster.rpc_addr,
        "listen": cluster.bootstrap,
        "cores": 1,
        "wal-flush-interval-ms": 2,
        "s3-hedge-percentile": 90.0,
        "auto_create_topics": False,
    })
    cluster.controlplane_cmd = lambda: [binary(CONTROLPLANE), "--config", str(cp_config)]
    cluster.dataplane_cmd = lambda: [binary(DATAPLANE), f"--config={dp_config}"]
    cluster.start()

    topic = unique("config-file")
    create_topic(cluster.bootstrap, topic)
    record = Rec(0, b"k", b"from a config file", [], now_ms())
    assert produce_records(cluster.bootstrap, topic, [record]) == [(0, 0)]
    got = consume_range(cluster.bootstrap, topic, {0: 1})[0]
    assert [(g.offset, g.key, g.value) for g in got] == [(0, b"k", b"from a config file")]
    # The file's auto-create-topics = false took effect: Metadata for a new name creates nothing.
    name = unique("not-created")
    with kw.KafkaConnection(cluster.bootstrap) as conn:
        md = kw.metadata_v1(conn, topics=[name])
    assert md["topics"][name]["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, md


# Config files each process refuses: (file contents, what the error line names), per role.
BAD_CONFIG_FILES = {
    "unknown-key": {role: ('log = "info"\nno-such-flag = 1\n', 'unknown key "no-such-flag"') for role in ROLES},
    "array-value": {role: ('log = "info"\ndata-dir = ["a", "b"]\n', 'key "data-dir": expected a string') for role in ROLES},
    "bad-toml": {role: ('log = info\n', "invalid TOML at line 1, column 7") for role in ROLES},
    "bad-value": {"controlplane": ("gc-interval-ms = 0\n", 'key "gc-interval-ms": invalid value \'0\''),
                  "dataplane": ('cores = "many"\n', 'key "cores": invalid value \'many\'')},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", list(BAD_CONFIG_FILES))
@pytest.mark.parametrize("given_by", ["flag", "env"])
def test_bad_config_file(tmp_path, role, case, given_by):
    """A config file the process cannot use: one line on stderr naming the file and the key, exit
    code 2, whether the file comes from --config or SLUICE_CONFIG."""
    contents, mention = BAD_CONFIG_FILES[case][role]
    path = tmp_path / "bad.toml"
    path.write_text(contents)
    cmd = [binary(CONTROLPLANE if role == "controlplane" else DATAPLANE)]
    env = clean_env()
    if given_by == "flag":
        cmd += ["--config", str(path)]
    else:
        env["SLUICE_CONFIG"] = str(path)
    proc = subprocess.run(cmd, capture_output=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    line = assert_one_line_error(proc, mention)
    assert proc.returncode == 2, f"exit status {proc.returncode}: {line}"
    assert line.startswith(f"sluice-{role}: error: config {path}: "), line


@pytest.mark.parametrize("role", ROLES)
def test_config_file_missing_and_in_help(tmp_path, role):
    """A config file that is not there is one line; --help documents --config."""
    bin_path = binary(CONTROLPLANE if role == "controlplane" else DATAPLANE)
    proc = run_expecting_failure([bin_path, "--config", str(tmp_path / "missing.toml")])
    assert_one_line_error(proc, "missing.toml", "cannot read")
    assert proc.returncode == 2
    help_text = subprocess.run([bin_path, "--help"], capture_output=True, timeout=30, env=clean_env(),
                               check=True).stdout.decode()
    assert "--config <FILE>" in help_text and "SLUICE_CONFIG" in help_text, help_text
