"""helm and kubectl against the session's control plane, and the chart rendered by helm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from alpaca_operator.testing.controlplane import ControlPlane
from chart_helpers import CHART, REPO, Documents, run


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary that hack/control-plane.sh builds from the pinned module (cached)."""
    folder = run(["bash", str(REPO / "hack" / "control-plane.sh"), "helm"]).strip().splitlines()[-1]
    return str(Path(folder) / "helm")


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Callable[..., str]:
    assert control_plane.assets_dir is not None
    binary = control_plane.assets_dir / "kubectl"
    if not binary.exists():
        pytest.skip(f"no kubectl in {control_plane.assets_dir}")

    def kubectl(*args: str, stdin: str | None = None) -> str:
        return run([str(binary), f"--kubeconfig={control_plane.kubeconfig}", *args], input=stdin)

    return kubectl


@pytest.fixture(scope="session")
def kube_version(control_plane: ControlPlane) -> str:
    """The control plane's version: helm renders for the cluster it is applied to."""
    with control_plane.api_client() as client:
        import kubernetes.client

        return str(kubernetes.client.VersionApi(client).get_code().git_version)


@pytest.fixture(scope="session")
def render(helm: str, kube_version: str) -> Callable[..., Documents]:
    def render(*args: str, namespace: str = "alpaca-system", release: str = "alpaca") -> Documents:
        out = run([helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", kube_version, *args])
        return [d for d in yaml.safe_load_all(out) if d]

    return render


@pytest.fixture(scope="session")
def chart_crds(kubectl: Callable[..., str]) -> None:
    """The chart's CRDs, applied for real (server-side dry runs of objects need their kinds)."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CHART / "crds"))
