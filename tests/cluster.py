"""Running a real Sluice cluster (control plane + data plane) for the end-to-end tests.

Binaries are taken from $SLUICE_BIN_DIR (default $CARGO_TARGET_DIR/release, with
CARGO_TARGET_DIR defaulting to ~/.cache/sluice-target).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import kafka_wire

TARGET_DIR = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/sluice-target")
BIN_DIR = Path(os.environ.get("SLUICE_BIN_DIR") or os.path.join(TARGET_DIR, "release"))
CONTROLPLANE = "sluice-controlplane"
DATAPLANE = "sluice-dataplane"

STARTUP_TIMEOUT = float(os.environ.get("SLUICE_STARTUP_TIMEOUT", "60"))
LOG_TAIL_LINES = 80


def binary(name):
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"binary {path} not found: build with `cargo build --release --bins` "
                    f"(CARGO_TARGET_DIR={TARGET_DIR}) or set SLUICE_BIN_DIR", pytrace=False)
    return str(path)


_PORTS_GIVEN = set()


def free_port():
    """A loopback port nothing listens on now and that this process has not handed out before:
    the kernel can give the same free port to two binds in a row (a cluster once got its RPC and
    Kafka ports equal), so the ports already given to a test's processes are skipped."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value; return that value or raise.

    Exceptions from predicate() count as 'not yet' (the last one is reported on timeout),
    except AssertionError, which fails at once.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - remembered for the failure message
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path, lines=LOG_TAIL_LINES):
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "<no log>"
    return "\n".join(data[-lines:])


def child_env():
    env = dict(os.environ)
    env.setdefault("RUST_BACKTRACE", "1")
    return env


class ProcessDied(AssertionError):
    pass


TOOLS_DIR = Path(os.environ.get("SLUICE_TOOLS_DIR") or os.path.expanduser("~/.cache/sluice-tools"))


class ServerProcess:
    """A server the tests start once (an S3 server, etcd): launched with its output in a log,
    ready when its port accepts, stopped at the end."""

    name = "server"

    def __init__(self, log):
        self.log = Path(log)
        self.proc = None

    def launch(self, cmd, port, env=None):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=None if env is None else {**child_env(), **env})

        def ready():
            if self.proc.poll() is not None:
                raise ProcessDied(f"{self.name} {describe_exit(self.proc.returncode)}; log tail:\n{tail(self.log)}")
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until(ready, STARTUP_TIMEOUT, what=f"{self.name} to accept")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class S3Server(ServerProcess):
    """A real S3-compatible server (s3s-fs, installed by scripts/s3-server.sh) on a free
    loopback port, checking SigV4 signatures; it keeps each object as a file under root/BUCKET."""

    ACCESS_KEY = "sluice-test"
    SECRET_KEY = "sluice-test-secret-key"
    BUCKET = "sluice-test"

    name = "s3s-fs"

    def __init__(self, root):
        self.root = Path(root)
        self.port = free_port()
        super().__init__(self.root.parent / "s3-server.log")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY}

    def start(self):
        exe = TOOLS_DIR / "bin" / "s3s-fs"
        if not exe.exists():
            pytest.fail(f"{exe} not found: run scripts/s3-server.sh --install", pytrace=False)
        (self.root / self.BUCKET).mkdir(parents=True, exist_ok=True)
        return self.launch([exe, "--host", "127.0.0.1", "--port", self.port, "--access-key", self.ACCESS_KEY,
                            "--secret-key", self.SECRET_KEY, self.root], self.port)

    def objects(self, prefix=""):
        """Keys of the objects stored under prefix (read from the server's own directory)."""
        base = self.root / self.BUCKET
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                      if p.is_file() and str(p.relative_to(base)).startswith(prefix) and not p.name.startswith("."))


def describe_exit(returncode):
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class EtcdServer(ServerProcess):
    """A real one-member etcd (Debian's etcd-server, installed by scripts/etcd.sh) on free
    loopback ports, its data in a directory; each cluster keeps its keys under its own namespace."""

    name = "etcd"

    def __init__(self, data_dir):
        self.data_dir = Path(data_dir)
        self.port, self.peer_port = free_port(), free_port()
        super().__init__(self.data_dir.parent / "etcd.log")

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        exe = shutil.which("etcd")
        if exe is None:
            pytest.fail("etcd not found: run scripts/etcd.sh --install", pytrace=False)
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.endpoint}"
        return self.launch(
            [exe, "--name", "test", "--data-dir", self.data_dir, "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--max-txn-ops", "16384", "--max-request-bytes", "16777216",
             "--log-level", "warn"], self.port)


class RestCatalogServer(ServerProcess):
    """A real Apache Iceberg REST catalog (Rustberg), started by scripts/rest-catalog.sh as a
    user starts one, on a free loopback port, its own records under data_dir, answering only
    requests with its bearer token; the tables' files are in the warehouse (a directory, or the
    S3 server's bucket), which it writes each commit's metadata file to."""

    TOKEN = "rb_sluice-test-token-0123456789abcdefghijklmnopqrstuvwxyz"

    name = "rustberg"

    def __init__(self, data_dir, warehouse, s3=None):
        self.data_dir = Path(data_dir)
        self.warehouse, self.s3 = warehouse, s3
        self.port = free_port()
        super().__init__(self.data_dir / "rustberg.log")

    @property
    def uri(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        if not (TOOLS_DIR / "bin" / "rustberg").exists():
            pytest.fail(f"{TOOLS_DIR / 'bin' / 'rustberg'} not found: run scripts/rest-catalog.sh --install", pytrace=False)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {"SLUICE_CATALOG_TOKEN": self.TOKEN, "RUSTBERG_DATA": str(self.data_dir)}
        if self.s3 is not None:
            env.update(self.s3.env())
            env["SLUICE_S3_ENDPOINT"] = self.s3.endpoint
        script = Path(__file__).resolve().parent.parent / "scripts" / "rest-catalog.sh"
        return self.launch(["bash", script, self.warehouse, self.port], self.port, env)

    def restart(self):
        """kill -9, then start again on the same port and records."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        return self.start()


class Sluice:
    """One control plane and one data plane on free loopback ports with a private data dir."""

    def __init__(self, base_dir, cores=1, dataplane_args=(), controlplane_args=(), s3=None, s3_prefix=None,
                 etcd=None, etcd_namespace=None):
        self.base_dir = Path(base_dir)
        # With an S3Server, the data plane keeps its objects there, under s3_prefix; with an
        # EtcdServer, the control plane keeps its metadata there, under etcd_namespace.
        self.s3 = s3
        self.s3_prefix = s3_prefix
        self.etcd = etcd
        self.etcd_namespace = etcd_namespace
        # RPC addresses of standby control planes a test started; data planes are told of them.
        self.standby_rpc = []
        self.cores = cores
        self.dataplane_args = [str(a) for a in dataplane_args]
        self.controlplane_args = [str(a) for a in controlplane_args]
        self.cp_dir = self.base_dir / "controlplane-data"
        self.dp_dir = self.base_dir / "dataplane-data"
        self.log_dir = self.base_dir / "logs"
        for d in (self.cp_dir, self.dp_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.rpc_port = free_port()
        self.kafka_port = free_port()
        self.cp_log = self.log_dir / "controlplane.log"
        self.dp_log = self.log_dir / "dataplane.log"
        self.cp = None
        self.dp = None
        self._starts = {"controlplane": 0, "dataplane": 0}
        # A RestCatalogServer holding the topics' tables instead of the SQLite catalog: see
        # use_rest_catalog.
        self.rest_catalog = None
        # Data planes beyond the first: see add_dataplane.
        self.dataplanes = []

    # ------------------------------------------------------------------ properties
    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def rpc_addr(self):
        return f"127.0.0.1:{self.rpc_port}"

    def controlplane_cmd(self):
        meta = []
        if self.etcd is not None:
            meta = ["--metadata", f"etcd://{self.etcd.endpoint}/{self.etcd_namespace}"]
        if self.rest_catalog is not None:
            meta += ["--catalog", self.rest_catalog.uri]
        return [binary(CONTROLPLANE), "--data-dir", str(self.cp_dir),
                "--rpc-listen", self.rpc_addr, *meta, *self.object_store_args(), *self.controlplane_args]

    @property
    def store_root(self):
        """The object store's root URL (where the topics' tables are, under tables/)."""
        if self.s3 is not None:
            return f"s3://{self.s3.BUCKET}/{self.s3_prefix}"
        return f"file://{self.dp_dir / 'objects'}"

    def use_rest_catalog(self):
        """Starts a REST catalog whose warehouse is this cluster's object store and makes the
        control plane keep the topics' tables there (call before start; stopped with the
        cluster)."""
        self.rest_catalog = RestCatalogServer(self.base_dir / "rest-catalog", self.store_root, self.s3).start()
        return self.rest_catalog

    def object_store_args(self):
        """Where the data plane keeps its objects (the control plane's compaction reads them there
        and writes the topics' tables beside them)."""
        if self.s3 is not None:
            return ["--object-store", self.store_root, "--s3-endpoint", self.s3.endpoint]
        return ["--object-store", self.store_root]

    def dataplane_cmd(self, listen=None, cores=None, args=None):
        """The first data plane's command line; another's with its own listen address, cores and
        flags (the cluster's dataplane_args are the first one's)."""
        store = self.object_store_args() if self.s3 is not None else []
        return [binary(DATAPLANE), "--data-dir", str(self.dp_dir),
                "--controlplane", ",".join([self.rpc_addr, *self.standby_rpc]), "--listen", listen or self.bootstrap,
                "--cores", str(cores or self.cores), *store, *(self.dataplane_args if args is None else args)]

    def env(self):
        """The environment of this cluster's processes (with the S3 credentials, on S3, and the
        REST catalog's token)."""
        env = child_env()
        if self.s3 is not None:
            env.update(self.s3.env())
        if self.rest_catalog is not None:
            env["SLUICE_CATALOG_TOKEN"] = self.rest_catalog.TOKEN
        return env

    # ------------------------------------------------------------------ process control
    @staticmethod
    def _default_signals():
        # A suite started in the background by a non-interactive shell inherits SIGINT and
        # SIGQUIT ignored; the processes under test get the dispositions a supervisor gives.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)

    def _spawn(self, role, cmd, log_path):
        self._starts[role] += 1
        log = open(log_path, "ab")
        log.write(f"\n===== start #{self._starts[role]} at {time.strftime('%H:%M:%S')}: "
                  f"{' '.join(cmd)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=self.env(), start_new_session=True, preexec_fn=self._default_signals)
        finally:
            log.close()

    def _spawn_extra(self, name, cmd, log_path):
        self._starts.setdefault(name, 0)
        return self._spawn(name, cmd, log_path)

    def _check_alive(self, proc, role, log_path):
        if proc is not None and proc.poll() is not None:
            raise ProcessDied(f"{role} {describe_exit(proc.returncode)}; log tail:\n{tail(log_path)}")

    def start_controlplane(self):
        assert self.cp is None, "control plane already running"
        self.cp = self._spawn("controlplane", self.controlplane_cmd(), self.cp_log)

        def ready():
            self._check_alive(self.cp, "controlplane", self.cp_log)
            with socket.create_connection(("127.0.0.1", self.rpc_port), timeout=1):
                return True

        self._wait_ready(ready, "control plane RPC port to accept", self.cp_log)

    def start_dataplane(self):
        assert self.dp is None, "data plane already running"
        self.dp = self._spawn("dataplane", self.dataplane_cmd(), self.dp_log)

        def ready():
            self._check_alive(self.dp, "dataplane", self.dp_log)
            with kafka_wire.KafkaConnection(self.bootstrap, timeout=2) as conn:
                md = kafka_wire.metadata_v1(conn, topics=[])
                return bool(md["brokers"])

        self._wait_ready(ready, "data plane to answer Metadata", self.dp_log)

    def _wait_ready(self, ready, what, log_path):
        try:
            wait_until(ready, STARTUP_TIMEOUT, what=what)
        except ProcessDied:
            # Reported here; don't report the same exit again at teardown.
            if self.cp is not None and self.cp.poll() is not None:
                self.cp = None
            if self.dp is not None and self.dp.poll() is not None:
                self.dp = None
            raise
        except TimeoutError as e:
            raise TimeoutError(f"{e}; log tail:\n{tail(log_path)}") from None

    def start(self):
        self.start_controlplane()
        self.start_dataplane()
        return self

    @staticmethod
    def _kill(proc, sig, timeout):
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{proc.args[0]} did not exit within {timeout}s of signal {sig}") from None

    def kill_dataplane(self, sig=signal.SIGKILL, timeout=30):
        """Send sig, wait for the process to exit and return its exit status.

        The process then counts as deliberately stopped (no 'died' complaint at teardown).
        """
        code = self._kill(self.dp, sig, timeout)
        self.dp = None
        return code

    def kill_controlplane(self, sig=signal.SIGKILL, timeout=30):
        code = self._kill(self.cp, sig, timeout)
        self.cp = None
        return code

    def restart_all(self, sig=signal.SIGKILL):
        self.kill_dataplane(sig)
        self.kill_controlplane(sig)
        self.start()

    def add_dataplane(self, zone=None, cores=1, args=(), start=True):
        """Another data plane of this cluster (same control plane and object store) on its own
        port, in `zone` when given; started unless start=False. Stopped with the cluster."""
        dp = DataPlane(self, len(self.dataplanes) + 2, zone, cores, args)
        self.dataplanes.append(dp)
        return dp.start() if start else dp

    def check_alive(self):
        """Raise if a process that was started has died on its own (reports all that did)."""
        problems = []
        extra = [(d.proc, d.name, d.log) for d in self.dataplanes]
        for proc, role, log in ((self.cp, "controlplane", self.cp_log), (self.dp, "dataplane", self.dp_log), *extra):
            try:
                self._check_alive(proc, role, log)
            except ProcessDied as e:
                problems.append(str(e))
        if problems:
            raise ProcessDied("\n".join(problems))

    def stop(self):
        # Every data plane at once (a draining one waits for its clients to move to the others,
        # up to its --drain-timeout-ms), then the control plane.
        for group in ([*[d.proc for d in self.dataplanes], self.dp], [self.cp]):
            running = [p for p in group if p is not None and p.poll() is None]
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            for proc in running:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        if self.rest_catalog is not None:
            self.rest_catalog.stop()

    def log_tails(self):
        tails = (f"--- controlplane log ({self.cp_log}) ---\n{tail(self.cp_log)}\n"
                 f"--- dataplane log ({self.dp_log}) ---\n{tail(self.dp_log)}")
        for d in self.dataplanes:
            tails += f"\n--- {d.name} log ({d.log}) ---\n{tail(d.log)}"
        if self.rest_catalog is not None:
            tails += f"\n--- REST catalog log ({self.rest_catalog.log}) ---\n{tail(self.rest_catalog.log)}"
        return tails


class DataPlane:
    """A data plane of a Sluice cluster beyond its first (Sluice.add_dataplane): its own Kafka
    port, log and flags; the cluster's control plane and object store."""

    def __init__(self, cluster, index, zone, cores, args):
        self.cluster = cluster
        self.name = f"dataplane{index}"
        self.zone = zone
        self.cores = cores
        self.args = [str(a) for a in args]
        self.kafka_port = free_port()
        self.log = cluster.log_dir / f"{self.name}.log"
        self.proc = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    def cmd(self):
        zone = ["--zone", self.zone] if self.zone else []
        return self.cluster.dataplane_cmd(listen=self.bootstrap, cores=self.cores, args=[*zone, *self.args])

    def start(self):
        assert self.proc is None, f"{self.name} already running"
        self.proc = self.cluster._spawn_extra(self.name, self.cmd(), self.log)

        def ready():
            if self.proc.poll() is not None:
                raise ProcessDied(f"{self.name} {describe_exit(self.proc.returncode)}; log tail:\n{tail(self.log)}")
            with kafka_wire.KafkaConnection(self.bootstrap, timeout=2) as conn:
                return bool(kafka_wire.metadata_v1(conn, topics=[])["brokers"])

        try:
            wait_until(ready, STARTUP_TIMEOUT, what=f"{self.name} to answer Metadata")
        except ProcessDied:
            self.proc = None
            raise
        return self

    def kill(self, sig=signal.SIGKILL, timeout=30):
        """Send sig, wait for the exit and return its status (a deliberate stop)."""
        code = Sluice._kill(self.proc, sig, timeout)
        self.proc = None
        return code
