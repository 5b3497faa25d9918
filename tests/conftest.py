"""Pytest fixtures that run a real Sluice cluster (control plane + data plane) per test.

Usage:
    def test_x(sluice): ...                       # 1 core, default flags

    @pytest.mark.sluice(cores=2, dataplane_args=["--auto-create-topics", "false"])
    def test_y(sluice): ...

    @pytest.mark.parametrize("sluice", [{"cores": 2}], indirect=True)
    def test_z(sluice): ...

    def test_w(sluice_factory): a = sluice_factory(cores=2); b = sluice_factory(start=False)
"""

import pytest

from cluster import ProcessDied, Sluice


def pytest_configure(config):
    config.addinivalue_line("markers", "sluice(cores=1, dataplane_args=(), controlplane_args=()): "
                                       "options for the `sluice` fixture")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    clusters = getattr(item, "_sluice_clusters", [])
    if rep.failed and clusters:
        for i, cluster in enumerate(clusters):
            rep.sections.append((f"sluice cluster {i} logs ({rep.when})", cluster.log_tails()))


@pytest.fixture
def sluice_factory(request, tmp_path):
    """Returns make(cores=1, dataplane_args=(), controlplane_args=(), start=True) -> Sluice."""
    clusters = []
    request.node._sluice_clusters = clusters

    def make(cores=1, dataplane_args=(), controlplane_args=(), start=True):
        cluster = Sluice(tmp_path / f"cluster{len(clusters)}", cores=cores,
                         dataplane_args=dataplane_args, controlplane_args=controlplane_args)
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
