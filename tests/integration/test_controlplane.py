"""The test control plane is a real API server: it stores, serves and authorizes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client.exceptions import ApiException

from alpaca_operator.testing.controlplane import ControlPlane


def test_configmap_round_trip(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name="seed-tasks"),
            data={"count": "175"},
        ),
    )

    stored = core.read_namespaced_config_map("seed-tasks", namespace)

    assert stored.data == {"count": "175"}
    # Set by the server, not echoed from the request: proof that it went through storage.
    assert stored.metadata.uid
    assert stored.metadata.resource_version


def test_service_account_token_is_authenticated_but_rbac_denies_secrets(
    control_plane: ControlPlane, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    kubernetes.client.CoreV1Api(api_client).create_namespaced_service_account(
        namespace,
        kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name="reader")),
    )
    token = control_plane.token_for_service_account(namespace, "reader")

    with control_plane.api_client(token) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
            kubernetes.client.V1SelfSubjectReview()
        )
        # 403 below must come from RBAC, not from a token the server failed to recognise.
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

        with pytest.raises(ApiException) as denied:
            kubernetes.client.CoreV1Api(client).list_namespaced_secret(namespace)
        assert denied.value.status == 403


def test_rbac_grant_lets_the_service_account_in(
    control_plane: ControlPlane, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace,
        kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name="reader")),
    )
    rbac.create_namespaced_role(
        namespace,
        kubernetes.client.V1Role(
            metadata=kubernetes.client.V1ObjectMeta(name="read-configmaps"),
            rules=[
                kubernetes.client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        kubernetes.client.V1RoleBinding(
            metadata=kubernetes.client.V1ObjectMeta(name="reader-read-configmaps"),
            role_ref=kubernetes.client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
            ),
            subjects=[
                kubernetes.client.RbacV1Subject(
                    kind="ServiceAccount", name="reader", namespace=namespace
                )
            ],
        ),
    )
    token = control_plane.token_for_service_account(namespace, "reader")

    with control_plane.api_client(token) as client:
        kubernetes.client.CoreV1Api(client).list_namespaced_config_map(namespace)
        with pytest.raises(ApiException) as denied:
            kubernetes.client.CoreV1Api(client).list_namespaced_config_map("default")
        assert denied.value.status == 403


def test_kubeconfig_works_for_clients(control_plane: ControlPlane) -> None:
    with kubernetes.config.new_client_from_config(config_file=control_plane.kubeconfig) as client:
        names = {
            ns.metadata.name for ns in kubernetes.client.CoreV1Api(client).list_namespace().items
        }
    assert {"default", "kube-system"} <= names


def test_kubectl_talks_to_the_control_plane(control_plane: ControlPlane) -> None:
    assert control_plane.assets_dir is not None
    kubectl = control_plane.assets_dir / "kubectl"
    if not kubectl.exists():
        kubectl_on_path = shutil.which("kubectl")
        if kubectl_on_path is None:
            pytest.skip("no kubectl beside the control-plane binaries or on PATH")
        kubectl = Path(kubectl_on_path)

    result = subprocess.run(
        [
            str(kubectl),
            "--kubeconfig",
            control_plane.kubeconfig,
            "auth",
            "can-i",
            "create",
            "secrets",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.stdout.strip() == "yes", result.stderr
