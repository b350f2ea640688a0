"""ModelServer autoscaling and adapters, and Kueue's labels on every top-level child: builders only."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator.api.common import Artifact, PVCLocation, Storage
from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.api.instructdataset import InstructDatasetSpec
from alpaca_operator.api.modelserver import ModelServerSpec
from alpaca_operator.api.workloads import ResolvedModel
from alpaca_operator.builders import finetune, instructdataset, modelserver
from alpaca_operator.builders.common import Mounts, Parent
from alpaca_operator.builders.inputs import dataset_direct, model_from_upstream
from alpaca_operator.builders.queue import PRIORITY_LABEL, QUEUE_LABEL
from alpaca_operator.settings import OperatorSettings

SERVER = Parent("demo", "ns", "modelservers", 2)
BASE = {"model": {"source": {"uri": "s3://models/base"}}}
QUEUED = OperatorSettings.model_validate({"queue": {"name": "team-default"}})


def server(settings: OperatorSettings = OperatorSettings(), adapters: tuple[modelserver.AdapterInput, ...] = (),
           adapters_spec: int = 0, **changes: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`adapters_spec`: how many of ("fr", "de") spec.adapters names (the resolved ones come in `adapters`)."""
    named = [{"name": n, "fineTuneRef": {"name": n}} for n in ("fr", "de")[:adapters_spec]]
    spec = ModelServerSpec.model_validate({**BASE, **changes, **({"adapters": named} if named else {})})
    return modelserver.build(SERVER, spec, settings, ResolvedModel(location="s3://models/base"), Mounts(), adapters)


# -- autoscaling -------------------------------------------------------------------------

def test_without_autoscaling_the_deployment_carries_the_spec_replicas_and_no_hpa_is_built() -> None:
    _, deployment, _ = server(replicas=3)
    assert deployment["spec"]["replicas"] == 3
    assert modelserver.autoscaler(SERVER, ModelServerSpec.model_validate(BASE)) is None


def test_with_autoscaling_replicas_is_left_to_the_hpa_which_targets_the_deployment() -> None:
    scaling = {"minReplicas": 1, "maxReplicas": 4, "podsMetric": {"name": "alpaca_serve_queue_depth", "averageValue": "4"}}
    _, deployment, _ = server(replicas=3, autoscaling=scaling)
    # Left out entirely: server-side apply then never owns (or resets) what the HPA writes.
    assert "replicas" not in deployment["spec"]
    hpa = modelserver.autoscaler(SERVER, ModelServerSpec.model_validate({**BASE, "autoscaling": scaling}))
    assert hpa is not None and hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "alpaca_serve_queue_depth"}, "target": {"type": "AverageValue", "averageValue": "4"}}}]
    assert hpa["metadata"]["name"] == modelserver.autoscaler_name("demo")


def test_cpu_autoscaling_targets_utilisation_of_the_request() -> None:
    spec = ModelServerSpec.model_validate({**BASE, "resources": {"cpu": "2"}, "autoscaling": {
        "maxReplicas": 2, "targetCPUUtilizationPercentage": 60, "scaleDownStabilizationSeconds": 30}})
    hpa = modelserver.autoscaler(SERVER, spec)
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 30}}


def test_an_autoscaling_edit_changes_the_spec_hash_so_it_is_applied() -> None:
    _, before, _ = server(autoscaling={"maxReplicas": 2, "podsMetric": {"name": "m", "averageValue": "1"}})
    _, after, _ = server(autoscaling={"maxReplicas": 3, "podsMetric": {"name": "m", "averageValue": "1"}})
    key = "alpaca.dev/spec-hash"
    assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]


@pytest.mark.parametrize("scaling", [{"maxReplicas": 2}, {"minReplicas": 3, "maxReplicas": 2, "podsMetric": {"name": "m", "averageValue": "1"}}])
def test_autoscaling_needs_a_target_and_an_ordered_range(scaling: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="autoscaling"):
        ModelServerSpec.model_validate({**BASE, "autoscaling": scaling})


def test_the_pod_selector_string_matches_the_deployments_selector() -> None:
    _, deployment, _ = server()
    wanted = ",".join(f"{k}={v}" for k, v in sorted(deployment["spec"]["selector"]["matchLabels"].items()))
    assert modelserver.pod_selector("demo") == wanted


# -- adapters ------------------------------------------------------------------------------

def adapter(name: str, index: int, output: Storage, rank: int = 8) -> modelserver.AdapterInput:
    upstream = model_from_upstream(output, Artifact(uri="/var/lib/alpaca/output", sha256="a" * 64) if output.pvc else None)
    return modelserver.adapter_input(name, index, upstream, rank)


def test_adapters_reach_the_serve_config_by_their_adapter_folders() -> None:
    uri = adapter("fr", 0, Storage(uri="s3://b/tune-fr"))
    pvc = adapter("de", 1, Storage(pvc=PVCLocation(claim_name="models", sub_path="de")))
    cm, deployment, _ = server(adapters=(uri, pvc))
    import json

    config = json.loads(cm["data"]["config.json"])
    assert config["adapters"] == [
        {"name": "fr", "location": "s3://b/tune-fr/adapter"},
        {"name": "de", "location": "/var/lib/alpaca/adapters/1/adapter"},
    ]
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "adapter-1"]
    assert volume["persistentVolumeClaim"]["claimName"] == "models"
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "adapter-1"]
    assert mount["mountPath"] == "/var/lib/alpaca/adapters/1" and mount["readOnly"] is True
    assert mount.get("subPath") == "de"


def test_vllm_serves_adapters_with_enable_lora_and_one_module_each() -> None:
    adapters = (adapter("fr", 0, Storage(uri="s3://b/fr"), rank=8), adapter("de", 1, Storage(uri="s3://b/de"), rank=20))
    _, deployment, _ = server(adapters=adapters, runtime="vllm", gpusPerReplica=1)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    tail = command[command.index("--enable-lora"):]
    assert tail == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "32",
                    "--lora-modules", "fr=s3://b/fr/adapter", "de=s3://b/de/adapter"]


def test_vllm_refuses_a_rank_beyond_its_largest() -> None:
    with pytest.raises(modelserver.UnsupportedModel, match="rank"):
        server(adapters=(adapter("big", 0, Storage(uri="s3://b/x"), rank=1024),), runtime="vllm", gpusPerReplica=1)


# -- queues ----------------------------------------------------------------------------------

def test_a_queue_labels_the_deployment_and_the_spec_queue_wins_over_the_default() -> None:
    _, plain, _ = server()
    assert QUEUE_LABEL not in plain["metadata"]["labels"]
    _, defaulted, _ = server(QUEUED)
    assert defaulted["metadata"]["labels"][QUEUE_LABEL] == "team-default"
    _, own, _ = server(QUEUED, queue={"name": "serving", "priorityClass": "high"})
    assert own["metadata"]["labels"][QUEUE_LABEL] == "serving" and own["metadata"]["labels"][PRIORITY_LABEL] == "high"
    # Only the top level: Kueue reads it there, and pod labels would change the selector's pods.
    assert QUEUE_LABEL not in own["spec"]["template"]["metadata"]["labels"]
    assert "suspend" not in own["spec"]


def test_a_queue_labels_the_pytorchjob_which_is_never_created_suspended() -> None:
    spec = FineTuneSpec.model_validate({"dataset": {"uri": "s3://b/d.jsonl"}, "output": {"uri": "s3://b/m"},
                                        "queue": {"name": "gpu", "priorityClass": "batch-low"}})
    _, job = finetune.build(Parent("t", "ns", "finetunes", 1), spec, OperatorSettings(), dataset_direct(spec.dataset))
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu" and job["metadata"]["labels"][PRIORITY_LABEL] == "batch-low"
    assert "suspend" not in job["spec"]["runPolicy"]


def test_the_default_queue_labels_the_generation_job() -> None:
    spec = InstructDatasetSpec.model_validate({"teacher": {"baseURL": "https://api.example.com/v1", "model": "m"},
                                               "output": {"uri": "s3://b/d"}})
    teacher = instructdataset.resolve_teacher(spec, QUEUED, None)
    _, job = instructdataset.build(Parent("d", "ns", "instructdatasets", 1), spec, QUEUED, teacher)
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-default"
    assert PRIORITY_LABEL not in job["metadata"]["labels"]
    assert "suspend" not in job["spec"]


@pytest.mark.parametrize("name", ["", "a" * 64, "-bad", "has space"])
def test_a_queue_name_must_be_a_label_value(name: str) -> None:
    with pytest.raises(ValueError, match="queue"):
        ModelServerSpec.model_validate({**BASE, "queue": {"name": name}})


# -- what rolls the pods ---------------------------------------------------------------------

def rollout(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["annotations"]["alpaca.dev/config-hash"]


def test_scaling_and_queues_never_roll_the_pods_but_a_serving_change_does() -> None:
    _, base, _ = server()
    _, scaled, _ = server(replicas=4)
    _, auto, _ = server(autoscaling={"maxReplicas": 3, "podsMetric": {"name": "m", "averageValue": "1"}})
    _, queued, _ = server(queue={"name": "q"})
    assert rollout(base) == rollout(scaled) == rollout(auto) == rollout(queued)
    # ...while each is still applied: the spec hash moves.
    hashes = {d["metadata"]["annotations"]["alpaca.dev/spec-hash"] for d in (base, scaled, auto, queued)}
    assert len(hashes) == 4
    _, batched, _ = server(batching={"maxBatchSize": 4})
    assert rollout(batched) != rollout(base)


def test_alpaca_serve_takes_new_uri_adapters_without_a_restart_and_vllm_restarts() -> None:
    one = (adapter("fr", 0, Storage(uri="s3://b/fr")),)
    two = (*one, adapter("de", 1, Storage(uri="s3://b/de")))
    _, without, _ = server()
    cm_one, with_one, _ = server(adapters=one, adapters_spec=1)
    cm_two, with_two, _ = server(adapters=two, adapters_spec=2)
    assert rollout(without) == rollout(with_one) == rollout(with_two)
    assert cm_one["data"] != cm_two["data"]  # the new set reaches the mounted config
    assert with_one["metadata"]["annotations"]["alpaca.dev/spec-hash"] != with_two["metadata"]["annotations"]["alpaca.dev/spec-hash"]
    _, vllm_one, _ = server(adapters=one, adapters_spec=1, runtime="vllm", gpusPerReplica=1)
    _, vllm_two, _ = server(adapters=two, adapters_spec=2, runtime="vllm", gpusPerReplica=1)
    assert rollout(vllm_one) != rollout(vllm_two)
