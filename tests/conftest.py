"""Pytest fixtures that run a real Sluice cluster (control plane + data plane) per test.

Usage:
    def test_x(sluice): ...                       # 1 core, default flags

    @pytest.mark.sluice(cores=2, dataplane_args=["--auto-create-topics", "false"])
    def test_y(sluice): ...

    @pytest.mark.parametrize("sluice", [{"cores": 2}], indirect=True)
    def test_z(sluice): ...

    def test_w(sluice_factory): a = sluice_factory(cores=2); b = sluice_factory(start=False)

    @pytest.mark.each_backend                     # run once per back end: local+redb, s3+etcd
    def test_v(sluice): ...
"""

import pytest

from cluster import EtcdServer, ProcessDied, S3Server, Sluice

# The back ends a scenario marked `each_backend` runs on: object store + metadata store.
BACKENDS = ["local+redb", "s3+etcd"]


def pytest_configure(config):
    config.addinivalue_line("markers", "sluice(cores=1, dataplane_args=(), controlplane_args=()): "
                                       "options for the `sluice` fixture")
    config.addinivalue_line("markers", "each_backend: run the test once per back end (local+redb, s3+etcd)")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("each_backend") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request):
    """The back end of the test's clusters, "OBJECTS+METADATA": local+redb unless the test is
    marked each_backend or parametrizes it."""
    return getattr(request, "param", "local+redb")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One S3-compatible server for the whole session; each cluster uses its own key prefix."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "root").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One etcd for the whole session; each cluster keeps its keys under its own namespace."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    yield server
    server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    clusters = getattr(item, "_sluice_clusters", [])
    if rep.failed and clusters:
        for i, cluster in enumerate(clusters):
            rep.sections.append((f"sluice cluster {i} logs ({rep.when})", cluster.log_tails()))


@pytest.fixture
def sluice_factory(request, tmp_path, backend):
    """Returns make(cores=1, dataplane_args=(), controlplane_args=(), start=True, s3=..., etcd=...)
    -> Sluice (s3, etcd: servers other than the back end's, e.g. one behind a proxy, or one the
    test kills)."""
    clusters = []
    request.node._sluice_clusters = clusters
    objects, metadata = backend.split("+")
    s3 = request.getfixturevalue("s3_server") if objects == "s3" else None
    etcd = request.getfixturevalue("etcd_server") if metadata == "etcd" else None

    def make(cores=1, dataplane_args=(), controlplane_args=(), start=True, s3=s3, etcd=etcd):
        name = f"cluster{len(clusters)}"
        cluster = Sluice(tmp_path / name, cores=cores, dataplane_args=dataplane_args,
                         controlplane_args=controlplane_args, s3=s3, s3_prefix=f"{tmp_path.name}/{name}",
                         etcd=etcd, etcd_namespace=f"{tmp_path.name}/{name}")
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make

    died = []
    for cluster in clusters:
        try:
            cluster.check_alive()
        except ProcessDied as e:
            died.append(str(e))
        cluster.stop()
    if died:
        pytest.fail("a Sluice process died during the test:\n" + "\n".join(died), pytrace=False)


@pytest.fixture
def sluice(request, sluice_factory):
    """A started cluster; options from indirect parametrization or the `sluice` marker."""
    opts = {}
    marker = request.node.get_closest_marker("sluice")
    if marker is not None:
        opts.update(marker.kwargs)
    if hasattr(request, "param"):
        opts.update(request.param)
    return sluice_factory(**opts)
