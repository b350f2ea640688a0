"""Shared by the addon tests (Kueue, Trainer v2, metrics-server): the addons installed by
hack/addons.sh, the operator release they run under, a small dataset on a PVC, and the events
the evidence is read from."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "alpaca-operator"
RELEASE_NAMESPACE = "alpaca-system"

# Alpaca-format rows: enough for two optimizer steps of a global batch of 4.
ROWS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour."},
    {"instruction": "Write the plural.", "input": "mouse", "output": "mice"},
    {"instruction": "Name a planet.", "input": "", "output": "Mars is a planet."},
    {"instruction": "Capitalise the word.", "input": "paris", "output": "Paris"},
    {"instruction": "Count the letters.", "input": "cat", "output": "3"},
]
DATASET_PATH = "data/rows.jsonl"
PVC_TEMPLATE = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 2Gi}}}}
"""


def addons_script(*args: str, timeout: float = 3600) -> None:
    result = subprocess.run([str(ROOT / "hack" / "addons.sh"), *args], timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hack/addons.sh {' '.join(args)} failed with exit code {result.returncode}")


def installed(name: str) -> Iterator[None]:
    """The addon, installed (built on first use, cached after) and left running: removing Kueue
    while namespaces that used it are still being deleted would leave its finalizers behind, and
    removing metrics-server would leave namespace deletion waiting on its API. `hack/cluster.sh
    down` takes them away with the rest of the cluster."""
    addons_script("up", name)
    yield


def release(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The operator release with the workload images: one already deployed on the cluster is
    used as it is (a helm upgrade here would undo what another session's test set up, such as
    its replica count); otherwise the chain's own fixture installs it."""
    try:
        values = json.loads(cluster.helm("get", "values", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json"))
    except AssertionError:
        values = {}
    images = ((values or {}).get("workloads") or {}).get("images") or {}
    if all((images.get(name) or {}).get("tag") for name in ("train", "serve")):
        return RELEASE_NAMESPACE
    return str(request.getfixturevalue("chain_release"))


def seed_dataset(cluster: Cluster, namespace: str, claim: str = "data") -> None:
    """A PVC holding ROWS at DATASET_PATH, written by a busybox pod as the workloads' user, and the
    `alpaca` PVC the models go to. Two claims: an operator image older than the one-volume-per-claim
    fix (builders/common.py Mounts.add) mounts a shared claim read-only for the output too."""
    cluster.apply(PVC_TEMPLATE.format(claim=claim), namespace)
    cluster.apply(PVC_TEMPLATE.format(claim="alpaca"), namespace)
    rows = "\n".join(json.dumps(row) for row in ROWS) + "\n"
    script = f"mkdir -p /data/{Path(DATASET_PATH).parent} && cat > /data/{DATASET_PATH} <<'ROWS'\n{rows}ROWS\n"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "seed-dataset"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containers": [{
                "name": "seed",
                "image": cluster.busybox,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }
    cluster.apply(json.dumps(pod), namespace)
    cluster.wait_for(
        "the dataset seeding pod",
        lambda: cluster.get("pod", "seed-dataset", "-n", namespace)["status"].get("phase") == "Succeeded",
        600,
    )
    cluster.kubectl("delete", "pod", "seed-dataset", "-n", namespace, "--wait=false")


def finetune(name: str, **spec: Any) -> dict[str, Any]:
    """A FineTune of the built-in SmolLM2 on the seeded rows: two CPU steps, fp32."""
    body: dict[str, Any] = {
        "baseModel": {"builtin": "smollm2-135m-instruct"},
        "dataset": {"pvc": {"claimName": "data", "path": DATASET_PATH}},
        "hyperparameters": {
            "maxSteps": 2, "maxSeqLength": 128, "globalBatchSize": 4, "microBatchSize": 2,
            "precision": "fp32", "learningRate": 0.0001, "validationFraction": 0,
        },
        "gpus": {"nodes": 1, "perNode": 0},
        "output": {"pvc": {"claimName": "alpaca", "subPath": f"models/{name}"}},
    }
    body.update(spec)
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": name}, "spec": body}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "events", "-n", namespace, "--field-selector", f"involvedObject.kind={kind},involvedObject.name={name}"
    )["items"]
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
