"""Faults on a real node, each on its own chain in its own namespace: a pod deleted mid-run is
replaced by its controller, and the work resumes without duplicates or lost status."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e_chain import CHAIN_TIMEOUT_S, PVC, apply_chain, chain_manifests, pods, resource, wait_phase
from e2e_cluster import Cluster

# Each builds the torch images and runs a chain: minutes to tens of minutes on two cores.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(5400)]

# Rows of the generation fault's run: more than one request's worth (a request adds at most 3
# new tasks), and few, since the small teacher keeps about one row in three it writes.
ROWS = 4
# Optimizer steps of the training fault's run: long enough that the worker dies mid-run.
STEPS = 6

def _read_from_claim(cluster: Cluster, namespace: str, path: str) -> str:
    """A file on the `alpaca` claim, read by a pod (the claim lives on the node, not here)."""
    name = f"read-{abs(hash(path)) % 10**8}"
    cluster.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
    - name: cat
      image: {cluster.busybox}
      imagePullPolicy: Never
      command: ["cat", "/claim/{path}"]
      volumeMounts: [{{name: claim, mountPath: /claim, readOnly: true}}]
  volumes: [{{name: claim, persistentVolumeClaim: {{claimName: alpaca}}}}]
""",
        namespace,
    )
    cluster.wait_for(
        f"pod {name} to finish",
        lambda: cluster.get("pod", name, "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed"),
        120,
    )
    return cluster.kubectl("logs", "-n", namespace, name)


def _running_pod(cluster: Cluster, namespace: str, selector: str) -> dict[str, Any] | None:
    running = [p for p in pods(cluster, namespace, selector) if p["status"].get("phase") == "Running"]
    return running[0] if running else None


def _teacher_requests(cluster: Cluster, namespace: str) -> int:
    """Completions the teacher answered, from its own Prometheus counter."""
    teacher = resource(cluster, namespace, "modelserver", "teacher")["status"]
    service = teacher["url"].split("//", 1)[1].split(".", 1)[0]
    # The serving port answers the API; Prometheus reads the Service's port named metrics.
    out = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/{service}:metrics/proxy/metrics")
    total = 0
    for line in out.splitlines():
        match = re.match(r'alpaca_serve_requests_total\{(.*)\} ([0-9.e+]+)$', line)
        if match and "completions" in match.group(1) and 'status="200"' in match.group(1):
            total += int(float(match.group(2)))
    return total


def test_generation_pod_deleted_mid_run_resumes_from_the_journal(
    cluster: Cluster, chain_release: str, namespace: str, tmp_path: Path
) -> None:
    documents = [d for d in chain_manifests(tmp_path) if d["kind"] in ("ModelServer", "InstructDataset")]
    documents = [d for d in documents if d["metadata"]["name"] != "quickstart-chat"]
    dataset = next(d for d in documents if d["kind"] == "InstructDataset")
    # Requests asked one at a time: when the first answer is journaled the pod is surely mid-run
    # (one request cannot hold all the rows), and at most one answer is in flight when it dies.
    dataset["spec"]["generation"]["numExamples"] = ROWS
    dataset["spec"]["teacher"]["maxConcurrency"] = 1
    cluster.apply(PVC, namespace)
    cluster.apply(yaml.safe_dump_all(documents, sort_keys=False), namespace)

    def first_rows_kept() -> dict[str, Any] | None:
        status = resource(cluster, namespace, "instructdataset", "quickstart-data").get("status") or {}
        progress = status.get("progress") or {}
        if status.get("jobName") and progress.get("requests", 0) >= 1:
            return _running_pod(cluster, namespace, f"job-name={status['jobName']}")
        return None

    first = cluster.wait_for("the generation pod to journal an answer", first_rows_kept, CHAIN_TIMEOUT_S, 3)
    before = resource(cluster, namespace, "instructdataset", "quickstart-data")["status"]["progress"]
    cluster.kubectl("delete", "pod", "-n", namespace, first["metadata"]["name"], "--wait=false")
    print(f"deleted generation pod {first['metadata']['name']} at progress {before}")

    wait_phase(cluster, namespace, "instructdataset", "quickstart-data", "Succeeded", CHAIN_TIMEOUT_S)
    status = resource(cluster, namespace, "instructdataset", "quickstart-data")["status"]
    job_pods = [p["metadata"]["name"] for p in pods(cluster, namespace, f"job-name={status['jobName']}")]
    print("generation pods:", job_pods, "final progress:", status["progress"])
    assert first["metadata"]["name"] not in job_pods or len(job_pods) >= 2

    # The file sits in the claim's subPath that the pod mounted as its output folder.
    relative = f"{dataset['spec']['output']['pvc']['subPath']}/{status['dataset']['uri'].rsplit('/', 1)[-1]}"
    rows = [json.loads(line) for line in _read_from_claim(cluster, namespace, relative).splitlines() if line]
    instructions = [row["instruction"] for row in rows]
    print(f"rows: {len(rows)}, distinct instructions: {len(set(instructions))}")
    assert len(rows) == status["progress"]["kept"] == ROWS
    assert len(set(instructions)) == len(instructions)
    # Billed requests are the journaled answers: the teacher answered at most the requests that
    # were in flight when the pod died on top of them, never a journaled one twice.
    answered = _teacher_requests(cluster, namespace)
    billed = status["progress"]["requests"]
    print(f"teacher answered {answered} completions, billed {billed}")
    assert billed <= answered <= billed + dataset["spec"]["teacher"]["maxConcurrency"]


def test_operator_pod_deleted_mid_chain_finishes_without_duplicates(
    cluster: Cluster, chain_release: str, namespace: str, tmp_path: Path
) -> None:
    apply_chain(cluster, namespace, tmp_path)
    cluster.wait_for(
        "the InstructDataset to run",
        lambda: (resource(cluster, namespace, "instructdataset", "quickstart-data").get("status") or {}).get("phase")
        == "Running",
        CHAIN_TIMEOUT_S,
        3,
    )
    lease = cluster.get("lease", "-n", chain_release)["items"]
    holder = lease[0]["spec"]["holderIdentity"]
    print(f"deleting the leader {holder}; lease {lease[0]['metadata']['name']}")
    cluster.kubectl("delete", "pod", "-n", chain_release, holder, "--wait=false")

    wait_phase(cluster, namespace, "modelserver", "quickstart-chat", "Ready", CHAIN_TIMEOUT_S)
    new_holder = cluster.get("lease", "-n", chain_release)["items"][0]["spec"]["holderIdentity"]
    print(f"new leader {new_holder}; operator pods:", [p["metadata"]["name"] for p in pods(cluster, chain_release)])
    print(cluster.kubectl("get", "alpaca", "-n", namespace, "-o", "wide"))
    assert new_holder != holder
    # One child of each kind per parent: nothing was created twice across the hand-over.
    assert len(cluster.get("jobs", "-n", namespace)["items"]) == 1
    assert len(cluster.get("pytorchjobs", "-n", namespace)["items"]) == 1
    assert len(cluster.get("deployments", "-n", namespace)["items"]) == 2
    dataset = resource(cluster, namespace, "instructdataset", "quickstart-data")["status"]
    finetune = resource(cluster, namespace, "finetune", "quickstart-tune")["status"]
    assert finetune["dataset"]["sha256"] == dataset["dataset"]["sha256"]
    assert finetune["phase"] == "Succeeded"


def test_training_worker_deleted_mid_run_resumes_from_the_checkpoint(
    cluster: Cluster, chain_release: str, namespace: str, tmp_path: Path
) -> None:
    documents = chain_manifests(tmp_path)
    finetune = next(d for d in documents if d["kind"] == "FineTune")
    # A checkpoint after every step; the worker dies once step 2 is reported, so the checkpoint of
    # step 1 at least is surely complete (step 2 started after it was written).
    finetune["spec"]["hyperparameters"] |= {"maxSteps": STEPS, "checkpointEverySteps": 1}
    cluster.apply(PVC, namespace)
    cluster.apply(yaml.safe_dump_all([d for d in documents if d["metadata"]["name"] != "quickstart-chat"]), namespace)

    def worker_after_a_checkpoint() -> dict[str, Any] | None:
        status = resource(cluster, namespace, "finetune", "quickstart-tune").get("status") or {}
        if (status.get("progress") or {}).get("step", 0) >= 2 and status.get("jobName"):
            selector = f"training.kubeflow.org/job-name={status['jobName']},training.kubeflow.org/replica-type=worker"
            return _running_pod(cluster, namespace, selector)
        return None

    worker = cluster.wait_for("a training step and its checkpoint", worker_after_a_checkpoint, CHAIN_TIMEOUT_S, 3)
    step = resource(cluster, namespace, "finetune", "quickstart-tune")["status"]["progress"]["step"]
    job = resource(cluster, namespace, "finetune", "quickstart-tune")["status"]["jobName"]
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cluster, namespace, f"training.kubeflow.org/job-name={job}")}
    print("training pods before:", before)
    print(f"deleting worker {worker['metadata']['name']} (uid {worker['metadata']['uid']}) at step {step}")
    cluster.kubectl("delete", "pod", "-n", namespace, worker["metadata"]["name"], "--wait=false")

    wait_phase(cluster, namespace, "finetune", "quickstart-tune", "Succeeded", CHAIN_TIMEOUT_S)
    status = resource(cluster, namespace, "finetune", "quickstart-tune")["status"]
    selector = f"training.kubeflow.org/job-name={status['jobName']}"
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cluster, namespace, selector)}
    print("training pods after:", after, "progress:", status["progress"])
    assert status["progress"]["step"] == STEPS
    assert worker["metadata"]["uid"] not in after.values()
    # The pods that finished started again from a checkpoint the first ones wrote, not from step 0.
    resumed = [
        int(match.group(1))
        for name in after
        for match in re.finditer(rf"resuming from \S+ \(step (\d+) of {STEPS}\)", cluster.kubectl("logs", "-n", namespace, name))
    ]
    print("resumed from steps:", resumed)
    assert resumed and all(1 <= s < STEPS for s in resumed), resumed
    assert re.match(r"^[0-9a-f]{64}$", status["model"]["sha256"])

    # The same spec trained without a fault, after the first (the two cores train one run at a
    # time): same dataset digest, seed, steps and world size, its own folder on the claim. On CPU
    # with gloo the sums run in the same order every time, and a resume restores the weights, the
    # optimizer state, the RNG and the data order, so the saved model is the same bytes.
    reference = copy.deepcopy(finetune)
    reference["metadata"] = {"name": "quickstart-tune-reference"}
    reference["spec"]["output"]["pvc"]["subPath"] += "-reference"
    cluster.apply(yaml.safe_dump(reference, sort_keys=False), namespace)
    wait_phase(cluster, namespace, "finetune", "quickstart-tune-reference", "Succeeded", CHAIN_TIMEOUT_S)
    uninterrupted = resource(cluster, namespace, "finetune", "quickstart-tune-reference")["status"]
    print(
        f"dataset {status['dataset']['sha256']} / {uninterrupted['dataset']['sha256']}; "
        f"model resumed {status['model']['sha256']}, uninterrupted {uninterrupted['model']['sha256']}"
    )
    assert uninterrupted["progress"]["step"] == STEPS
    # It trained from step 0 to the end in one go: none of its pods resumed from a checkpoint.
    reference_pods = pods(cluster, namespace, f"training.kubeflow.org/job-name={uninterrupted['jobName']}")
    assert len(reference_pods) == 2
    for pod in reference_pods:
        assert "resuming from" not in cluster.kubectl("logs", "-n", namespace, pod["metadata"]["name"])
    assert uninterrupted["dataset"]["sha256"] == status["dataset"]["sha256"]
    assert uninterrupted["model"]["sha256"] == status["model"]["sha256"]


def _operator_writes(cluster: Cluster, namespace: str) -> dict[str, int]:
    """Source address -> number of writes to `namespace` by the operator's ServiceAccount, from
    the API server's audit log (each replica is a pod with its own address)."""
    audit = cluster.kubeconfig.parent / "logs" / "audit.log"
    writers: dict[str, int] = {}
    for line in audit.read_text().splitlines():
        event = json.loads(line)
        user = event.get("user", {}).get("username", "")
        if not user.startswith("system:serviceaccount:alpaca-system:"):
            continue
        if event.get("objectRef", {}).get("namespace") != namespace or event.get("stage") != "ResponseComplete":
            continue
        for address in event.get("sourceIPs", [])[:1]:
            writers[address] = writers.get(address, 0) + 1
    return writers


def test_second_operator_replica_mid_chain_never_writes(
    cluster: Cluster, chain_release: str, namespace: str, tmp_path: Path
) -> None:
    deployment = cluster.get("deployments", "-n", chain_release, "-l", "app.kubernetes.io/name=alpaca-operator")
    name = deployment["items"][0]["metadata"]["name"]
    apply_chain(cluster, namespace, tmp_path)
    cluster.wait_for(
        "the InstructDataset to run",
        lambda: (resource(cluster, namespace, "instructdataset", "quickstart-data").get("status") or {}).get("phase")
        == "Running",
        CHAIN_TIMEOUT_S,
        3,
    )
    cluster.kubectl("scale", "deployment", name, "-n", chain_release, "--replicas=2")
    try:
        cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", chain_release, "--timeout=300s", timeout=320)
        replicas = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods(cluster, chain_release)}
        print("operator replicas:", replicas)
        assert len(replicas) == 2
        wait_phase(cluster, namespace, "modelserver", "quickstart-chat", "Ready", CHAIN_TIMEOUT_S)
        holder = cluster.get("lease", "-n", chain_release)["items"][0]["spec"]["holderIdentity"]
        writers = _operator_writes(cluster, namespace)
        print(f"leader {holder}; writes to {namespace} by source address: {writers}")
        # Both replicas lived through the rest of the chain; every write came from the leader.
        assert set(writers) == {replicas[holder]}
    finally:
        cluster.kubectl("scale", "deployment", name, "-n", chain_release, "--replicas=1")
