"""Fixtures for the e2e tier: a real single-node cluster (hack/cluster.sh: kubelet, containerd,
kube-proxy, CoreDNS, local-path volumes, the Kubeflow training operator), the project's images
built from images/*/Dockerfile and loaded into the node (hack/images.sh), and the chart installed
with helm as a platform team would.

The tier needs root and builds for many minutes when cold, so it runs only when selected:
``pytest -m e2e tests/e2e``. One cluster serves the whole session; every test works in a fresh
namespace, and the cluster is torn down (pods first) when the session ends.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "alpaca-operator"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Selected explicitly (-m e2e, or a marker expression naming it), or skipped with the reason.
    if "e2e" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="e2e tier (root, a real node, image builds): select it with -m e2e")
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


def _run_script(*args: str, timeout: float) -> str:
    result = subprocess.run(
        [str(ROOT / "hack" / args[0]), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=None,  # progress goes to the test's output as it happens
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/{' '.join(args)} failed with exit code {result.returncode}")
    return result.stdout


def _cluster_from(kubeconfig: Path) -> Cluster:
    bin_dir = Path((kubeconfig.parent / "k8s-bin").read_text().strip())
    return Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's cluster. One already started by `hack/cluster.sh up` is used and left
    running (handy while writing a test); otherwise one is started here and torn down after."""
    if os.geteuid() != 0:
        pytest.skip("the e2e cluster needs root (containerd, iptables, cgroups)")
    status = subprocess.run([str(ROOT / "hack" / "cluster.sh"), "status"], capture_output=True, check=False)
    if status.returncode == 0:
        yield _cluster_from(Path(os.environ.get("ALPACA_CLUSTER_DIR", "/tmp/alpaca-cluster")) / "kubeconfig")
        return
    # A cluster left half-started by an interrupted run would block this one: take it down first.
    _run_script("cluster.sh", "down", timeout=300)
    kubeconfig = Path(_run_script("cluster.sh", "up", timeout=3600).strip().splitlines()[-1])
    try:
        yield _cluster_from(kubeconfig)
    finally:
        _run_script("cluster.sh", "down", timeout=300)


def _build_images(cluster: Cluster, *names: str) -> dict[str, str]:
    """image name -> reference loaded into the node, building (or reusing) only those named."""
    missing = [name for name in names if name not in cluster.images]
    if missing:
        out = _run_script("images.sh", *missing, timeout=7200)
        cluster.images.update(line.split(" ", 1) for line in out.strip().splitlines())
    return {name: cluster.images[name] for name in names}


def _split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


RELEASE = "alpaca-operator"


def _wait_for_the_new_leader(cluster: Cluster, namespace: str) -> None:
    """After an upgrade, until the only operator pod left is the new one and holds the lease: helm's
    --wait returns once the new pod is ready, while the old one (with the old settings, the
    default workload images among them) may still lead and create children for a while."""

    def settled() -> bool:
        selector = "app.kubernetes.io/name=alpaca-operator"
        names = [p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace, "-l", selector)["items"]]
        leases = cluster.get("lease", "-n", namespace)["items"]
        holders = {(lease.get("spec") or {}).get("holderIdentity") for lease in leases}
        return len(names) == 1 and names[0] in holders

    cluster.wait_for("one operator pod, holding the lease", settled, 300, 2)


@pytest.fixture(scope="session")
def operator_release(cluster: Cluster) -> str:
    """The chart installed as a platform team would, with the operator image built here (one
    replica: the scale test adds the second); returns its namespace."""
    namespace = "alpaca-system"
    repository, tag = _split(_build_images(cluster, "operator")["operator"])
    # helm installs a chart's CRDs only with the release and never upgrades them: on a cluster
    # that outlives sessions they are applied as an upgrade runbook does, before the operator.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.helm(
        # The release's other values (the workload images a chain session set) stay: sessions
        # that share the running cluster do not undo each other's.
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace",
        "--reset-then-reuse-values",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", "replicaCount=1", "--wait", "--timeout", "5m",
    )
    _wait_for_the_new_leader(cluster, namespace)
    return namespace


@pytest.fixture(scope="session")
def chain_release(cluster: Cluster, operator_release: str) -> str:
    """The release told the workload images built here (generate, train, serve: torch makes
    these the long builds, so only the chain's tests wait for them)."""
    values: list[str] = []
    for name, ref in _build_images(cluster, "generate", "train", "serve").items():
        repository, tag = _split(ref)
        values += ["--set", f"workloads.images.{name}.repository={repository}"]
        values += ["--set", f"workloads.images.{name}.tag={tag}"]
    cluster.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", operator_release, "--reset-then-reuse-values", *values,
        "--wait", "--timeout", "5m",
    )
    _wait_for_the_new_leader(cluster, operator_release)
    return operator_release


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
