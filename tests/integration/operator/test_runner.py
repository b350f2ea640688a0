"""The operator with leader election (as deployed) and its liveness endpoint."""

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


def test_lease_and_liveness(control_plane, crds, custom, api_client, namespace: str) -> None:
    port = _free_port()
    wiring = wire(OperatorSettings.model_validate(FAST), kubeconfig=control_plane.kubeconfig, namespaces=[namespace],
                  lease_namespace=namespace, identity="replica-0")
    coordination = kubernetes.client.CoordinationV1Api(api_client)
    with OperatorThread(wiring, liveness=f"http://127.0.0.1:{port}/healthz"):
        lease = wait_for(lambda: coordination.read_namespaced_lease("alpaca-operator", namespace), what="the Lease")
        assert lease.spec.holder_identity == "replica-0" and lease.spec.lease_duration_seconds == 15
        create(custom, namespace, "instructdatasets", "InstructDataset", "elected", {
            "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/p"},
        })
        wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("elected-generate", namespace), what="the Job")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    # A clean stop hands the lease over at once rather than making the next replica wait it out.
    assert coordination.read_namespaced_lease("alpaca-operator", namespace).spec.holder_identity in ("", None)
