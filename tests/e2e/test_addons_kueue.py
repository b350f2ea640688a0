"""Kueue (built from sigs.k8s.io/kueue by hack/addons.sh) gives a queue room for one FineTune:
of two FineTunes in its LocalQueue, the second waits (its status says Queued, read from its
suspended PyTorchJob) and trains once the first has finished.

The evidence printed is each Workload's admission history (created, quota reserved, admitted,
finished) and the FineTunes' phases as they changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e_addons import condition, finetune, installed, release, seed_dataset
from e2e_chain import phase, resource, wait_phase
from e2e_cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.addons, pytest.mark.timeout(5400)]

# Per training pod: the queue's memory quota holds one of these, not two. No CPU request: the API's
# CPU value is also the pod's limit, and two shared cores leave no whole one to reserve.
MEMORY = "4Gi"
QUOTA_CPU, QUOTA_MEMORY = "2", "6Gi"
TRAIN_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def kueue() -> Iterator[None]:
    yield from installed("kueue")


def _queue_objects(name: str, namespace: str) -> str:
    return "\n---\n".join(json.dumps(obj) for obj in (
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name}},
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "queueingStrategy": "StrictFIFO",
                "resourceGroups": [{
                    "coveredResources": ["cpu", "memory"],
                    "flavors": [{"name": name, "resources": [
                        {"name": "cpu", "nominalQuota": QUOTA_CPU},
                        {"name": "memory", "nominalQuota": QUOTA_MEMORY},
                    ]}],
                }],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "training", "namespace": namespace},
            "spec": {"clusterQueue": name},
        },
    ))


def _workload_of(cluster: Cluster, namespace: str, job_name: str) -> dict[str, Any] | None:
    for item in cluster.get("workloads.kueue.x-k8s.io", "-n", namespace)["items"]:
        owners = item["metadata"].get("ownerReferences") or []
        if any(o.get("kind") == "PyTorchJob" and o.get("name") == job_name for o in owners):
            return dict(item)
    return None


def _history(workload: dict[str, Any]) -> dict[str, str | None]:
    def at(type_: str) -> str | None:
        found = condition(workload, type_)
        return found.get("lastTransitionTime") if found and found.get("status") == "True" else None

    return {
        "workload": workload["metadata"]["name"],
        "created": workload["metadata"]["creationTimestamp"],
        "quotaReserved": at("QuotaReserved"),
        "admitted": at("Admitted"),
        "finished": at("Finished"),
    }


def test_second_finetune_waits_for_the_queue(
    cluster: Cluster, kueue: None, request: pytest.FixtureRequest, namespace: str
) -> None:
    release(cluster, request)
    # Kueue's webhooks act only where this label is (hack/addons.sh): the test namespace opts in.
    cluster.kubectl("label", "namespace", namespace, "alpaca.dev/kueue=enabled")
    queue = f"alpaca-{namespace}"
    cluster.kubectl("apply", "-f", "-", stdin=_queue_objects(queue, namespace))
    try:
        _run(cluster, namespace, queue)
    finally:
        cluster.kubectl("delete", "clusterqueue,resourceflavor", queue, "--wait=false", check=False)


def _run(cluster: Cluster, namespace: str, queue: str) -> None:
    seed_dataset(cluster, namespace)
    tunes = ["first", "second"]
    spec = {"queue": {"name": "training"}, "resources": {"memory": MEMORY}}
    timeline: list[tuple[str, str, str | None, str | None]] = []
    last: dict[str, tuple[str | None, str | None]] = {}

    def record() -> None:
        # Each FineTune's (phase, Ready reason) whenever it changed, with the local time seen.
        for name in tunes:
            status = resource(cluster, namespace, "finetune", name).get("status") or {}
            seen = (status.get("phase"), (condition({"status": status}, "Ready") or {}).get("reason"))
            if last.get(name) != seen:
                last[name] = seen
                timeline.append((time.strftime("%H:%M:%S", time.gmtime()), name, *seen))

    cluster.apply(json.dumps(finetune("first", **spec)), namespace)
    # The first is admitted (its PyTorchJob unsuspended) before the second exists: FIFO order.
    cluster.wait_for(
        "the first FineTune's PyTorchJob admitted",
        lambda: (job := resource(cluster, namespace, "finetune", "first").get("status", {}).get("jobName"))
        and (w := _workload_of(cluster, namespace, job)) and condition(w, "Admitted"),
        600,
    )
    cluster.apply(json.dumps(finetune("second", **spec)), namespace)

    # The second waits: its PyTorchJob was created suspended by Kueue's webhook, its Workload has
    # no quota, and the FineTune says Queued while the first holds the quota.
    def second_queued() -> bool:
        record()
        status = resource(cluster, namespace, "finetune", "second").get("status") or {}
        ready = condition({"status": status}, "Ready") or {}
        return ready.get("reason") == "Queued"

    cluster.wait_for("the second FineTune Queued", second_queued, 600)
    second = resource(cluster, namespace, "finetune", "second")["status"]
    job = cluster.get("pytorchjob", second["jobName"], "-n", namespace)
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
    waiting = _workload_of(cluster, namespace, second["jobName"])
    assert waiting is not None
    admitted = condition(waiting, "Admitted")
    assert admitted is None or admitted["status"] != "True", waiting["status"]
    assert phase(cluster, namespace, "finetune", "first") in {"Pending", "Running", "Succeeded"}
    print("second FineTune while queued:", json.dumps(condition({"status": second}, "Ready")))

    # The first finishes, then the second is admitted and trains too.
    def both_done() -> bool:
        record()
        return all(phase(cluster, namespace, "finetune", name) == "Succeeded" for name in tunes)

    cluster.wait_for("both FineTunes Succeeded", both_done, 2 * TRAIN_TIMEOUT_S, 5)

    histories = {}
    for name in tunes:
        status = resource(cluster, namespace, "finetune", name)["status"]
        workload = _workload_of(cluster, namespace, status["jobName"])
        assert workload is not None, name
        histories[name] = _history(workload)
        assert status["model"]["sha256"]
    print("Kueue admission order (UTC):")
    for name, history in histories.items():
        print(f"  {name}: {json.dumps(history)}")
    print("FineTune phases as observed (UTC, phase, Ready reason):")
    for row in timeline:
        print("  ", *row)
    print(cluster.kubectl("get", "finetunes,pytorchjobs,workloads.kueue.x-k8s.io", "-n", namespace, "-o", "wide"))

    first, later = histories["first"], histories["second"]
    assert first["admitted"] and first["finished"] and later["admitted"]
    # RFC 3339 UTC timestamps of one clock compare as strings. The second was admitted only
    # once the first had finished and released the quota, though it was created long before.
    assert later["created"] < first["finished"] <= later["admitted"], histories
    assert any(reason == "Queued" for _, name, _, reason in timeline if name == "second")
