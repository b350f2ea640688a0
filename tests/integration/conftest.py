"""Fixtures for tests that need a real Kubernetes API server.

One control plane serves the whole session: starting etcd and kube-apiserver costs seconds,
while isolation comes cheaply from a fresh namespace per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import kubernetes.client
import pytest

from alpaca_operator.testing.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as cp:
        yield cp


@pytest.fixture
def api_client(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    with control_plane.api_client() as client:
        yield client


@pytest.fixture
def namespace(api_client: kubernetes.client.ApiClient) -> str:
    # No namespace controller runs, so a deleted namespace would stay Terminating and its name
    # stay taken: every test gets a new name instead, and the namespaces die with etcd.
    name = f"test-{uuid.uuid4().hex[:10]}"
    kubernetes.client.CoreV1Api(api_client).create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
    )
    return name


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> list[str]:
    """The project's CRDs, installed from crds/*.yaml and Established."""
    from support.cluster import PROJECT_CRDS, install_crds

    with control_plane.api_client() as client:
        return install_crds(client, PROJECT_CRDS)
