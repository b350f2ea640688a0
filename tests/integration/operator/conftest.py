"""The operator running in-process against the real control plane, one namespace per test.

There is no kubelet and no Job or PyTorchJob controller: the tests patch the children's status
the way those controllers would, and play the workloads by patching the resources' progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from alpaca_operator.runner import OperatorThread, wire
from alpaca_operator.settings import OperatorSettings
from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import FAST
from support.cluster import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> None:
    files = sorted((REPO / "crds").glob("*.yaml")) + sorted((REPO / "tests/integration/crds").glob("*.yaml"))
    with control_plane.api_client() as client:
        ext = kubernetes.client.ApiextensionsV1Api(client)
        names = []
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                names.append(doc["metadata"]["name"])
                try:
                    ext.create_custom_resource_definition(doc)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
        for name in names:
            wait_for(lambda name=name: _established(ext, name), timeout=30, what=f"CRD {name} established")


def _established(ext: kubernetes.client.ApiextensionsV1Api, name: str) -> bool:
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


@pytest.fixture
def start_operator(control_plane: ControlPlane, crds: None, namespace: str) -> Iterator[Callable[..., OperatorThread]]:
    running: list[OperatorThread] = []

    def start(**overrides: Any) -> OperatorThread:
        settings = OperatorSettings.model_validate({**FAST, **overrides})
        wiring = wire(settings, kubeconfig=control_plane.kubeconfig, namespaces=[namespace], standalone=True)
        op = OperatorThread(wiring).start()
        running.append(op)
        return op

    yield start
    for op in running:
        op.stop()


@pytest.fixture
def custom(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client)
