"""The operator with peering (as deployed) and its liveness endpoint."""

from __future__ import annotations

import socket
import urllib.request

import kubernetes.client

from alpaca_operator.runner import OperatorThread, wire
from alpaca_operator.settings import OperatorSettings
from operator_helpers import FAST, create
from support.cluster import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_peering_and_liveness(control_plane, crds, custom, api_client, namespace: str) -> None:
    port = _free_port()
    wiring = wire(OperatorSettings.model_validate(FAST), kubeconfig=control_plane.kubeconfig, namespaces=[namespace], peering_name="alpaca-operator")
    with OperatorThread(wiring, liveness=f"http://127.0.0.1:{port}/healthz"):
        peering = wait_for(lambda: custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "alpaca-operator"), what="the KopfPeering")
        assert peering["metadata"]["name"] == "alpaca-operator"
        create(custom, namespace, "instructdatasets", "InstructDataset", "peered", {
            "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/p"},
        })
        wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("peered-generate", namespace), what="the Job")
        # kopf records the active replica in the peering object's status.
        wait_for(lambda: (custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "alpaca-operator").get("status") or {}), what="a peer")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
