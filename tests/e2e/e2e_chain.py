"""The quickstart chain as a platform team runs it on the test node, shared by the chain test and
the fault tests: examples/quickstart/ shrunk (tests/support/quickstart.py), with the FineTune
spread over two CPU pods so that a Master and a Worker train together through the training
operator. Only the teacher reserves CPU: one of the node's two cores, so that it answers at its
pace however busy the machine (a pod without a request gets a minimal CPU share under load, and
the teacher's answers are what generation waits on); the other pods take what is free."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from support.quickstart import write_shrunk_quickstart

from e2e_cluster import Cluster

SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Minutes on two shared cores: the teacher loads, generation asks it a few times, two training
# pods each load SmolLM2 and take two steps, and the chat server loads the result.
CHAIN_TIMEOUT_S = 2400

TEACHER_CPU = "1"

PVC = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: alpaca}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 4Gi}}
"""


def chain_manifests(folder: Path) -> list[dict[str, Any]]:
    documents = []
    for path in write_shrunk_quickstart(folder):
        document = yaml.safe_load(path.read_text())
        # The chain ends at the chat server: an Evaluation would add a Job and a judge's load
        # that none of these tests looks at.
        if document["kind"] == "Evaluation":
            continue
        spec = document["spec"]
        spec.pop("resources", None)
        if document["metadata"]["name"] == "teacher":
            spec["resources"] = {"cpu": TEACHER_CPU}
        if document["kind"] == "FineTune":
            spec["gpus"] = {"nodes": 2, "perNode": 0}
        documents.append(document)
    return documents


def apply_chain(cluster: Cluster, namespace: str, folder: Path) -> list[dict[str, Any]]:
    cluster.apply(PVC, namespace)
    documents = chain_manifests(folder)
    cluster.apply(yaml.safe_dump_all(documents, sort_keys=False), namespace)
    return documents


def resource(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.get(kind, name, "-n", namespace)
    return obj


def phase(cluster: Cluster, namespace: str, kind: str, name: str) -> str | None:
    status = resource(cluster, namespace, kind, name).get("status") or {}
    value = status.get("phase")
    assert value != "Failed", f"{kind}/{name} failed: {status}"
    return value


def wait_phase(cluster: Cluster, namespace: str, kind: str, name: str, wanted: str, timeout: float) -> None:
    cluster.wait_for(
        f"{kind}/{name} phase {wanted}", lambda: phase(cluster, namespace, kind, name) == wanted, timeout, 5
    )


def pods(cluster: Cluster, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
    items: list[dict[str, Any]] = cluster.get(*args)["items"]
    return items
