"""A FineTune with `backend: trainjob` trains end to end on Kubeflow Trainer v2.3.0 and JobSet
v0.12.0, both built from their Go modules by hack/addons.sh: the operator creates a TrainJob on
the `torch-distributed` ClusterTrainingRuntime, Trainer makes a JobSet of two CPU nodes, the two
pods train together under torchrun over gloo, and the FineTune records the model they wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from e2e_addons import condition, finetune, installed, release, seed_dataset
from e2e_chain import SHA256, pods, resource, wait_phase
from e2e_cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.addons, pytest.mark.timeout(5400)]

TRAIN_TIMEOUT_S = 2400


@pytest.fixture(scope="module")
def trainer() -> Iterator[None]:
    yield from installed("trainer")


def test_finetune_trains_as_a_trainjob(
    cluster: Cluster, trainer: None, request: pytest.FixtureRequest, namespace: str
) -> None:
    release(cluster, request)
    seed_dataset(cluster, namespace)
    tune = finetune("tune", backend="trainjob", gpus={"nodes": 2, "perNode": 0})
    cluster.apply(json.dumps(tune), namespace)
    wait_phase(cluster, namespace, "finetune", "tune", "Succeeded", TRAIN_TIMEOUT_S)

    print(cluster.kubectl("get", "finetunes", "-n", namespace, "-o", "wide"))
    print(cluster.kubectl("get", "trainjobs,jobsets,jobs,pods", "-n", namespace, "-o", "wide"))
    status = resource(cluster, namespace, "finetune", "tune")["status"]
    assert SHA256.match(status["model"]["sha256"])

    job = cluster.get("trainjob", status["jobName"], "-n", namespace)
    complete = condition(job, "Complete")
    assert complete and complete["status"] == "True", job.get("status")
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert job["spec"]["trainer"]["numNodes"] == 2
    print("TrainJob conditions:", json.dumps(job["status"]["conditions"], indent=1))

    # Two pods of the JobSet's `node` job, ranks 0 and 1, both ran to completion.
    training = [p for p in pods(cluster, namespace, f"jobset.sigs.k8s.io/jobset-name={status['jobName']}")]
    assert sorted(p["status"]["phase"] for p in training) == ["Succeeded", "Succeeded"], [
        (p["metadata"]["name"], p["status"]["phase"]) for p in training
    ]
    for pod in training:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        print(pod["metadata"]["name"], {k: v for k, v in env.items() if k.startswith("PET_")})
        assert env.get("PET_NNODES") == "2"
    logs = cluster.kubectl("logs", "-n", namespace, training[0]["metadata"]["name"], "--tail=15")
    print(logs)
