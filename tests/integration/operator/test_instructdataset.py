"""InstructDataset -> Job: the operator creates it, follows it, and prices the usage the job reports."""

from __future__ import annotations

import json

import kubernetes.client

from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import condition, create, event_reasons, now_minus, status_of
from support.cluster import wait_for

SPEC = {
    "teacher": {
        "baseURL": "https://api.example.com/v1",
        "model": "gpt-teacher",
        "apiKeySecretRef": {"name": "teacher-key", "key": "api-key"},
    },
    "generation": {"numExamples": 100},
    "output": {"pvc": {"claimName": "data", "subPath": "alpaca"}},
}


def test_job_is_created_followed_and_priced(
    start_operator, custom, api_client: kubernetes.client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    start_operator()
    create(custom, namespace, "instructdatasets", "InstructDataset", "alpaca-data", SPEC)
    batch = kubernetes.client.BatchV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)

    job = wait_for(lambda: batch.read_namespaced_job("alpaca-data-generate", namespace), what="the Job")
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.command == ["alpaca", "generate", "--config", "/etc/alpaca/config.json"]
    key_env = next(e for e in container.env if e.name == "ALPACA_TEACHER_API_KEY")
    assert key_env.value is None and key_env.value_from.secret_key_ref.name == "teacher-key"
    assert pod.service_account_name == "alpaca-workload"
    assert job.metadata.owner_references[0].kind == "InstructDataset"
    assert job.metadata.labels["app.kubernetes.io/instance"] == "alpaca-data"
    claim = next(v for v in pod.volumes if v.name == "output").persistent_volume_claim
    assert claim.claim_name == "data"

    config_map = core.read_namespaced_config_map("alpaca-data-generate-config", namespace)
    config = json.loads(config_map.data["config.json"])
    assert config["apiKeyEnv"] == "ALPACA_TEACHER_API_KEY"
    assert config["teacherURL"] == "https://api.example.com/v1"
    assert config["output"] == "/var/lib/alpaca/output"
    assert config["pricing"] == {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 2.0}
    assert config_map.metadata.owner_references[0].name == "alpaca-data"

    status = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "alpaca-data")).get("phase") and s)
    assert status["phase"] == "Pending"
    assert condition(status, "Ready")["reason"] == "JobCreated"

    # The Job controller's part: a pod runs.
    batch.patch_namespaced_job_status("alpaca-data-generate", namespace, {"status": {"active": 1, "startTime": now_minus(5)}})
    wait_for(lambda: status_of(custom, namespace, "instructdatasets", "alpaca-data").get("phase") == "Running", what="Running")

    # The workload's part, with the workload's own ServiceAccount: progress with token usage.
    token = control_plane.token_for_service_account(namespace, "alpaca-workload")
    with control_plane.api_client(token) as workload:
        kubernetes.client.CustomObjectsApi(workload).patch_namespaced_custom_object_status(
            "alpaca.dev", "v1alpha1", namespace, "instructdatasets", "alpaca-data",
            {"status": {"progress": {"kept": 40, "generated": 60, "promptTokens": 1_000_000, "completionTokens": 500_000}}},
        )
    # 1M prompt tokens at $1/M + 0.5M completion tokens at $2/M.
    wait_for(lambda: status_of(custom, namespace, "instructdatasets", "alpaca-data").get("costUSD") == 2.0, what="cost")

    batch.patch_namespaced_job_status(
        "alpaca-data-generate", namespace,
        {"status": {"active": 0, "succeeded": 1, "completionTime": now_minus(0), "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now_minus(0)},
            {"type": "Complete", "status": "True", "lastTransitionTime": now_minus(0)},
        ]}},
    )
    done = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "alpaca-data")).get("phase") == "Succeeded" and s, what="Succeeded")
    assert condition(done, "Ready")["status"] == "True"
    assert done["progress"]["kept"] == 40, "the operator must not overwrite what the workload reported"
    assert done["observedGeneration"] == 1
    wait_for(lambda: {"JobCreated", "Running", "Completed"} <= event_reasons(api_client, namespace, "alpaca-data"), what="events")


def test_spec_edit_after_start_is_reported_not_applied(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "instructdatasets", "InstructDataset", "edited", SPEC)
    batch = kubernetes.client.BatchV1Api(api_client)
    wait_for(lambda: batch.read_namespaced_job("edited-generate", namespace), what="the Job")
    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "instructdatasets", "edited", {"spec": {"generation": {"numExamples": 500}}})

    status = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "edited")).get("observedGeneration") == 2 and s, what="generation 2 observed")
    assert condition(status, "SpecApplied")["reason"] == "ChangeNotApplied"
    config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("edited-generate-config", namespace).data["config.json"])
    assert config["spec"]["generation"]["numExamples"] == 100


def test_a_key_is_never_sent_to_a_metadata_address(start_operator, custom, api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "instructdatasets", "InstructDataset", "exfil", {
        **SPEC, "teacher": {**SPEC["teacher"], "baseURL": "http://169.254.169.254/latest/v1"},
    })
    failed = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "exfil")).get("phase") == "Failed" and s, what="Failed")
    assert condition(failed, "Ready")["reason"] == "TeacherHostRefused"
    assert "link-local" in condition(failed, "Ready")["message"]
    assert not kubernetes.client.BatchV1Api(api_client).list_namespaced_job(namespace).items


def test_a_prompt_template_configmap_reaches_the_job_read_only(start_operator, custom, api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "prompts"}, "data": {"alpaca.txt": "Write {open} tasks.\n"}})
    start_operator()
    create(custom, namespace, "instructdatasets", "InstructDataset", "own-prompt",
           {**SPEC, "promptTemplate": {"configMapRef": {"name": "prompts", "key": "alpaca.txt"}}})

    job = wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("own-prompt-generate", namespace), what="the Job")
    pod = job.spec.template.spec
    volume = next(v for v in pod.volumes if v.name == "prompt")
    assert volume.config_map.name == "prompts"
    assert [(item.key, item.path) for item in volume.config_map.items] == [("alpaca.txt", "prompt.txt")]
    mount = next(m for m in pod.containers[0].volume_mounts if m.name == "prompt")
    assert (mount.mount_path, mount.read_only) == ("/etc/alpaca/prompt", True)
    # The workload finds the file where its config says.
    config = json.loads(core.read_namespaced_config_map("own-prompt-generate-config", namespace).data["config.json"])
    assert config["promptTemplate"] == f"{mount.mount_path}/prompt.txt"
    assert config["spec"]["promptTemplate"] == {"configMapRef": {"name": "prompts", "key": "alpaca.txt"}}
    # The prompt's text stays in the user's ConfigMap: the operator copies no part of it.
    assert "Write {open} tasks." not in json.dumps(config)
