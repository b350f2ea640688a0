"""Builders: spec in, manifest out, no cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alpaca_operator.api.common import Artifact, PVCLocation, Storage
from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.api.instructdataset import InstructDatasetSpec
from alpaca_operator.api.modelserver import ModelServerSpec
from alpaca_operator.builders import finetune, instructdataset, modelserver
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import TeacherServer, dataset_direct, dataset_from_upstream, model_source
from alpaca_operator.builders.rbac import workload_rbac
from alpaca_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.model_validate({
    "gpuHourUSD": {"nvidia-a100-80gb": 2.0},
    "tokenPrices": {"gpt-x": {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 3.0}},
    "gpuPools": {"nvidia-a100-80gb": {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
})
LABEL_KEYS = {f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "managed-by", "part-of")}


def parent(plural: str, name: str = "demo") -> Parent:
    return Parent(name, "ns", plural, 3)


def pod_of(manifest: dict[str, Any], replica: str | None = None) -> dict[str, Any]:
    if replica:
        return manifest["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]
    return manifest["spec"]["template"]["spec"]


# -- InstructDataset -------------------------------------------------------------------

DATASET = {"teacher": {"baseURL": "https://api.x/v1", "model": "gpt-x", "apiKeySecretRef": {"name": "key", "key": "k"}},
           "output": {"pvc": {"claimName": "data", "subPath": "a"}}}


def build_dataset(**changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = InstructDatasetSpec.model_validate({**DATASET, **changes})
    teacher = instructdataset.resolve_teacher(spec, SETTINGS, None)
    return instructdataset.build(parent("instructdatasets"), spec, SETTINGS, teacher)


def test_dataset_job_runs_generate_with_the_key_from_the_secret_only() -> None:
    config_map, job = build_dataset()
    container = pod_of(job)["containers"][0]
    assert container["command"] == ["alpaca", "generate", "--config", "/etc/alpaca/config.json"]
    assert container["env"] == [{"name": "ALPACA_TEACHER_API_KEY", "valueFrom": {"secretKeyRef": {"name": "key", "key": "k"}}}]
    config = json.loads(config_map["data"]["config.json"])
    assert config["apiKeyEnv"] == "ALPACA_TEACHER_API_KEY"
    assert config["statusTarget"] == {"group": "alpaca.dev", "version": "v1alpha1", "plural": "instructdatasets", "namespace": "ns", "name": "demo"}
    assert config["pricing"] == {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 3.0}
    assert job["metadata"]["name"] == "demo-generate" and config_map["metadata"]["name"] == "demo-generate-config"
    assert set(job["metadata"]["labels"]) == LABEL_KEYS
    assert job["metadata"]["annotations"]["alpaca.dev/parent-generation"] == "3"


@pytest.mark.parametrize(
    ("output", "expected_location", "claim"),
    [
        ({"pvc": {"claimName": "data", "subPath": "a"}}, "/var/lib/alpaca/output", "data"),
        ({"uri": "s3://bucket/prefix"}, "s3://bucket/prefix", None),
    ],
)
def test_dataset_output_is_a_mount_or_a_uri(output: dict[str, Any], expected_location: str, claim: str | None) -> None:
    config_map, job = build_dataset(output=output)
    assert json.loads(config_map["data"]["config.json"])["output"] == expected_location
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_of(job)["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ([claim] if claim else [])


def test_seed_tasks_from_a_configmap_are_mounted_as_a_file() -> None:
    config_map, job = build_dataset(seedTasks={"configMapRef": {"name": "seeds", "key": "tasks.jsonl"}})
    volume = next(v for v in pod_of(job)["volumes"] if v["name"] == "seeds")
    assert volume["configMap"]["items"] == [{"key": "tasks.jsonl", "path": "seed_tasks.jsonl"}]
    assert json.loads(config_map["data"]["config.json"])["seedTasks"] == "/etc/alpaca/seeds/seed_tasks.jsonl"


@pytest.mark.parametrize(
    ("template", "location", "volume", "mount_path"),
    [
        (
            {"configMapRef": {"name": "prompts", "key": "alpaca.txt"}}, "/etc/alpaca/prompt/prompt.txt",
            {"name": "prompt", "configMap": {"name": "prompts", "items": [{"key": "alpaca.txt", "path": "prompt.txt"}]}},
            "/etc/alpaca/prompt",
        ),
        (
            {"pvc": {"claimName": "texts", "path": "prompts/alpaca.txt"}}, "/var/lib/alpaca/prompt/prompts/alpaca.txt",
            {"name": "prompt", "persistentVolumeClaim": {"claimName": "texts", "readOnly": True}},
            "/var/lib/alpaca/prompt",
        ),
        ({"uri": "s3://bucket/prompt.txt"}, "s3://bucket/prompt.txt", None, None),
    ],
)
def test_a_prompt_template_reaches_the_pod_read_only(
    template: dict[str, Any], location: str, volume: dict[str, Any] | None, mount_path: str | None
) -> None:
    config_map, job = build_dataset(promptTemplate=template)
    assert json.loads(config_map["data"]["config.json"])["promptTemplate"] == location
    pod = pod_of(job)
    volumes = [v for v in pod["volumes"] if v["name"] == "prompt"]
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "prompt"]
    if volume is None:
        assert volumes == [] and mounts == []  # the workload reads the URI itself
    else:
        assert volumes == [volume]
        assert mounts == [{"name": "prompt", "mountPath": mount_path, "readOnly": True}]


def test_without_a_prompt_template_the_config_names_none() -> None:
    config_map, job = build_dataset()
    assert "promptTemplate" not in json.loads(config_map["data"]["config.json"])
    assert all(v["name"] != "prompt" for v in pod_of(job)["volumes"])


def test_a_modelserver_teacher_uses_its_url_and_costs_no_tokens() -> None:
    spec = InstructDatasetSpec.model_validate({"teacher": {"modelServerRef": {"name": "srv"}}, "output": {"uri": "s3://b/p"}})
    server = TeacherServer(name="srv", url="http://srv-serve.ns.svc.cluster.local:8000/v1", served_model_name="srv")
    teacher = instructdataset.resolve_teacher(spec, SETTINGS, server)
    assert (teacher.url, teacher.model, teacher.api_key) == (server.url, "srv", None)
    assert teacher.pricing.input_usd_per_million_tokens == 0
    with pytest.raises(instructdataset.TeacherUnresolved):
        instructdataset.resolve_teacher(spec, SETTINGS, None)


# -- FineTune --------------------------------------------------------------------------

TUNE = {"dataset": {"uri": "s3://b/d.jsonl"}, "output": {"pvc": {"claimName": "models"}}}


def build_tune(**changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = FineTuneSpec.model_validate({**TUNE, **changes})
    return finetune.build(parent("finetunes"), spec, SETTINGS, dataset_direct(spec.dataset))


@pytest.mark.parametrize(
    ("gpus", "replicas", "nproc", "gpu_limit"),
    [
        ({"nodes": 1, "perNode": 8}, {"Master": 1}, "8", "8"),
        ({"nodes": 4, "perNode": 8}, {"Master": 1, "Worker": 3}, "8", "8"),
        ({"nodes": 2, "perNode": 0}, {"Master": 1, "Worker": 1}, "1", None),
    ],
)
def test_pytorchjob_layout(gpus: dict[str, int], replicas: dict[str, int], nproc: str, gpu_limit: str | None) -> None:
    _, job = build_tune(gpus=gpus)
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in specs.items()} == replicas
    assert job["spec"]["nprocPerNode"] == nproc
    container = pod_of(job, "Master")["containers"][0]
    assert container["name"] == "pytorch"
    assert container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == gpu_limit
    assert ("nodeSelector" in pod_of(job, "Master")) == (gpu_limit is not None)


def test_placement_from_the_spec_wins_over_the_pool_per_field() -> None:
    _, job = build_tune(placement={"nodeSelector": {"pool": "h100"}})
    pod = pod_of(job, "Master")
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_shm_output_and_run_policy() -> None:
    _, job = build_tune(shmSize="32Gi", runPolicy={"backoffLimit": 1, "cleanPodPolicy": "All", "ttlSecondsAfterFinished": 60})
    pod = pod_of(job, "Master")
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert job["spec"]["runPolicy"] == {"backoffLimit": 1, "cleanPodPolicy": "All", "ttlSecondsAfterFinished": 60}


@pytest.mark.parametrize(
    ("budget", "deadline", "expected", "budget_binds"),
    [
        (32.0, None, 3600, True),  # 8 GPUs x $4/h = $32/h: the budget pays for one hour
        (32.0, 600, 600, False),
        (None, 600, 600, False),
        (None, None, None, False),
    ],
)
def test_budget_becomes_the_deadline(budget: float | None, deadline: int | None, expected: int | None, budget_binds: bool) -> None:
    run_policy = {"activeDeadlineSeconds": deadline} if deadline else {}
    spec = FineTuneSpec.model_validate({**TUNE, "gpus": {"nodes": 1, "perNode": 8}, "budgetUSD": budget, "gpuHourUSD": 4.0, "runPolicy": run_policy})
    assert finetune.active_deadline_seconds(spec, SETTINGS) == expected
    assert finetune.budget_is_the_deadline(spec, SETTINGS) is budget_binds


def test_train_config_pins_the_upstream_dataset_on_its_claim() -> None:
    spec = FineTuneSpec.model_validate({**TUNE, "dataset": {"instructDatasetRef": {"name": "d"}}})
    upstream = dataset_from_upstream(Storage(pvc=PVCLocation(claim_name="data", sub_path="x")), Artifact(uri="/var/lib/alpaca/output/dataset.jsonl", sha256="c" * 64))
    config_map, job = finetune.build(parent("finetunes"), spec, SETTINGS, upstream)
    config = json.loads(config_map["data"]["config.json"])
    assert config["dataset"] == "/var/lib/alpaca/dataset/dataset.jsonl"
    assert config["datasetSha256"] == "c" * 64
    mount = next(m for m in pod_of(job, "Master")["containers"][0]["volumeMounts"] if m["name"] == "dataset")
    assert mount == {"name": "dataset", "mountPath": "/var/lib/alpaca/dataset", "readOnly": True, "subPath": "x"}


# -- ModelServer -----------------------------------------------------------------------


def build_server(**changes: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    spec = ModelServerSpec.model_validate({"model": {"source": {"uri": "s3://b/m"}}, **changes})
    model, mounts = model_source(spec.model.source)
    return modelserver.build(parent("modelservers"), spec, SETTINGS, model, mounts)


def test_transformers_runtime_serves_with_our_probes() -> None:
    config_map, deployment, service = build_server(auth={"apiKeySecretRef": {"name": "s", "key": "k"}})
    container = pod_of(deployment)["containers"][0]
    assert container["command"] == ["alpaca", "serve", "--config", "/etc/alpaca/config.json"]
    assert (container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]) == ("/readyz", "/healthz")
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}
    assert json.loads(config_map["data"]["config.json"])["apiKeyEnv"] == "ALPACA_SERVER_API_KEY"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(deployment["metadata"]["labels"]) == LABEL_KEYS


def test_vllm_runtime_uses_tensor_parallel_and_health() -> None:
    _, deployment, _ = build_server(runtime="vllm", gpusPerReplica=4, replicas=2)
    container = pod_of(deployment)["containers"][0]
    assert container["command"][:3] == ["vllm", "serve", "s3://b/m"]
    assert container["command"][container["command"].index("--tensor-parallel-size") + 1] == "4"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert pod_of(deployment)["nodeSelector"] == {"pool": "a100"}


def test_vllm_cannot_serve_a_builtin_model() -> None:
    spec = ModelServerSpec.model_validate({"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "runtime": "vllm", "gpusPerReplica": 1})
    model, mounts = model_source(spec.model.source)
    with pytest.raises(modelserver.UnsupportedModel, match="builtin"):
        modelserver.build(parent("modelservers"), spec, SETTINGS, model, mounts)


def test_a_config_change_rolls_the_pods() -> None:
    _, first, _ = build_server()
    _, second, _ = build_server(batching={"maxBatchSize": 4})
    key = "alpaca.dev/config-hash"
    assert first["spec"]["template"]["metadata"]["annotations"][key] != second["spec"]["template"]["metadata"]["annotations"][key]
    assert first["metadata"]["annotations"]["alpaca.dev/spec-hash"] != second["metadata"]["annotations"]["alpaca.dev/spec-hash"]


def test_workload_rbac_grants_status_patches_only() -> None:
    account, role, binding = workload_rbac("ns", "alpaca-workload")
    assert account["kind"] == "ServiceAccount"
    assert role["rules"] == [{"apiGroups": ["alpaca.dev"], "resources": ["instructdatasets/status", "finetunes/status", "modelservers/status", "evaluations/status"], "verbs": ["get", "patch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alpaca-workload", "namespace": "ns"}]


def test_long_names_stay_valid_and_distinct() -> None:
    from alpaca_operator.naming import child_name

    a, b = child_name("x" * 80 + "a", "generate"), child_name("x" * 80 + "b", "generate")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.startswith("generate-")


@pytest.mark.parametrize("parent", ["7b", "llama.v2", "a" * 63, "x" * 250 + ".y", "9", "alpaca-7b"])
def test_every_child_name_is_a_dns_1035_label_that_fits(parent: str) -> None:
    from alpaca_operator.builders import finetune, instructdataset, modelserver
    from alpaca_operator.naming import LONGEST_REPLICA_SUFFIX, is_dns_1035

    names = [
        instructdataset.job_name(parent), instructdataset.config_map_name(parent),
        modelserver.deployment_name(parent), modelserver.service_name(parent), modelserver.config_map_name(parent),
        finetune.config_map_name(parent),
    ]
    for name in names:
        assert is_dns_1035(name), name
    job = finetune.job_name(parent)
    # The training operator's Services for the last of 512 nodes still fit.
    assert is_dns_1035(f"{job}-worker-510") and is_dns_1035(f"{job}-master-0")
    assert len(job) + LONGEST_REPLICA_SUFFIX <= 63
    # Stable: the same parent always gives the same name (a restarted operator finds its child).
    assert finetune.job_name(parent) == job


def test_names_of_different_parents_stay_apart() -> None:
    from alpaca_operator.naming import child_name

    assert child_name("llama.v2", "train") != child_name("llama-v2", "train")
    assert child_name("7b", "train") != child_name("7c", "train")
    assert child_name("alpaca-7b", "train") == "alpaca-7b-train"


def test_workload_pods_run_non_root_and_can_write_their_volumes() -> None:
    _, job = build_dataset()
    _, tune = build_tune()
    _, deployment, _ = build_server()
    pods = [job["spec"]["template"]["spec"], tune["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"],
            deployment["spec"]["template"]["spec"]]
    for pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        # A fresh PVC is root-owned: fsGroup gives the workload's group write access to it.
        assert security["fsGroup"] == security["runAsGroup"]
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_only_the_reporting_workloads_get_a_service_account_token() -> None:
    _, job = build_dataset()
    _, tune = build_tune()
    _, deployment, _ = build_server()
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in job["spec"]["template"]["spec"]
    assert "automountServiceAccountToken" not in tune["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
