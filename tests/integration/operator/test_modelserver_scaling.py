"""ModelServers that scale: `kubectl scale ms`, and an HPA that the operator never fights over replicas.

The HPA is the real one: kube-controller-manager runs beside the control plane with only its
horizontal-pod-autoscaling controller. Without a metrics API it still enforces the HPA's range
(a Deployment below minReplicas is scaled up to it through the scale subresource), which is all
these tests need to see who writes `replicas`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import kubernetes.client
import pytest

from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import GROUP, VERSION, create, get, status_of
from support.cluster import wait_for

SPEC = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "replicas": 1}
SCALING = {"minReplicas": 2, "maxReplicas": 4, "podsMetric": {"name": "alpaca_serve_queue_depth", "averageValue": "4"}}
HASH = "alpaca.dev/spec-hash"


@pytest.fixture
def hpa_controller(control_plane: ControlPlane) -> Iterator[subprocess.Popen[bytes]]:
    assert control_plane.assets_dir is not None and control_plane.temp_dir is not None
    log = open(control_plane.temp_dir / "kube-controller-manager.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(control_plane.assets_dir / "kube-controller-manager"),
            f"--kubeconfig={control_plane.kubeconfig}",
            "--controllers=horizontalpodautoscaling",
            "--leader-elect=false",
            "--horizontal-pod-autoscaler-sync-period=1s",
            "--secure-port=0",
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    process.wait(timeout=30)
    log.close()


def replicas_managers(deployment: kubernetes.client.V1Deployment) -> set[str]:
    """The field managers that own spec.replicas."""
    return {f.manager for f in deployment.metadata.managed_fields or [] if "f:replicas" in ((f.fields_v1 or {}).get("f:spec") or {})}


def test_kubectl_scale_sets_spec_replicas_and_the_deployment_follows(start_operator, custom, api_client, control_plane, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "chat", SPEC)
    apps = kubernetes.client.AppsV1Api(api_client)
    wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
    status = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "chat")).get("selector") and s, what="the selector")
    deployment = apps.read_namespaced_deployment("chat-serve", namespace)
    assert status["selector"] == ",".join(f"{k}={v}" for k, v in sorted(deployment.spec.selector.match_labels.items()))

    assert control_plane.assets_dir is not None
    kubectl = [str(control_plane.assets_dir / "kubectl"), f"--kubeconfig={control_plane.kubeconfig}", "-n", namespace]
    subprocess.run([*kubectl, "scale", "ms", "chat", "--replicas=3"], check=True, capture_output=True, timeout=60)
    assert get(custom, namespace, "modelservers", "chat")["spec"]["replicas"] == 3
    wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace).spec.replicas == 3, what="the Deployment at 3")

    # The scale subresource itself, as an HPA aimed at the ModelServer would use it.
    custom.patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, "modelservers", "chat", {"spec": {"replicas": 2}})
    wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace).spec.replicas == 2, what="the Deployment at 2")
    scale = wait_for(lambda: (s := custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, "modelservers", "chat"))["status"].get("replicas") == 2 and s,
                     what="the scale status")
    assert scale["status"]["selector"] == status["selector"]
    shown = subprocess.run([*kubectl, "get", "ms", "chat", "-o", "jsonpath={.spec.replicas}"], check=True, capture_output=True, text=True, timeout=60)
    assert shown.stdout == "2"


def test_the_hpa_owns_replicas_and_a_later_apply_leaves_them(start_operator, custom, api_client, hpa_controller, namespace: str) -> None:
    start_operator()
    created = create(custom, namespace, "modelservers", "ModelServer", "auto", {**SPEC, "autoscaling": SCALING})
    apps = kubernetes.client.AppsV1Api(api_client)
    scaling = kubernetes.client.AutoscalingV2Api(api_client)
    hpa = wait_for(lambda: scaling.read_namespaced_horizontal_pod_autoscaler("auto-serve", namespace), what="the HPA")
    assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("Deployment", "auto-serve")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 4)
    assert hpa.spec.metrics[0].pods.metric.name == "alpaca_serve_queue_depth"
    assert hpa.metadata.owner_references[0].uid == created["metadata"]["uid"]

    # The real HPA controller brings the Deployment up to minReplicas through its scale subresource.
    deployment = wait_for(lambda: (d := apps.read_namespaced_deployment("auto-serve", namespace)).spec.replicas == 2 and d,
                          timeout=60, what="the HPA scaling the Deployment to 2")
    assert "alpaca-operator" not in replicas_managers(deployment)
    status = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "auto")).get("replicas") == 2 and s, what="status.replicas 2")
    assert status["autoscalerName"] == "auto-serve"

    # A spec edit re-applies the Deployment (a new spec hash); the HPA's count stands.
    before = deployment.metadata.annotations[HASH]
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "auto", {"spec": {"batching": {"maxBatchSize": 8}}})
    applied = wait_for(lambda: (d := apps.read_namespaced_deployment("auto-serve", namespace)).metadata.annotations[HASH] != before and d,
                       what="the edit applied")
    assert applied.spec.replicas == 2

    # The HPA (here: anyone but the operator, as the HPA writes) sets 3 through the Deployment's scale.
    apps.patch_namespaced_deployment_scale("auto-serve", namespace, {"spec": {"replicas": 3}}, field_manager="scaler-under-test")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "auto", {"spec": {"batching": {"maxBatchSize": 4}}})
    again = wait_for(lambda: (d := apps.read_namespaced_deployment("auto-serve", namespace)).metadata.annotations[HASH] != applied.metadata.annotations[HASH] and d,
                     what="the second edit applied")
    assert again.spec.replicas == 3
    assert "alpaca-operator" not in replicas_managers(again)


def test_turning_autoscaling_off_deletes_the_hpa_and_the_spec_count_returns(start_operator, custom, api_client, hpa_controller, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "flip", {**SPEC, "autoscaling": SCALING})
    apps = kubernetes.client.AppsV1Api(api_client)
    scaling = kubernetes.client.AutoscalingV2Api(api_client)
    wait_for(lambda: scaling.read_namespaced_horizontal_pod_autoscaler("flip-serve", namespace), what="the HPA")
    wait_for(lambda: apps.read_namespaced_deployment("flip-serve", namespace).spec.replicas == 2, timeout=60, what="scaled to 2")

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "flip", {"spec": {"autoscaling": None, "replicas": 1}})

    def hpa_gone() -> bool:
        try:
            scaling.read_namespaced_horizontal_pod_autoscaler("flip-serve", namespace)
        except kubernetes.client.exceptions.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(hpa_gone, what="the HPA deleted")
    deployment = wait_for(lambda: (d := apps.read_namespaced_deployment("flip-serve", namespace)).spec.replicas == 1 and d, what="the spec's 1")
    assert "alpaca-operator" in replicas_managers(deployment)
    status = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "flip")).get("autoscalerName") is None and s, what="status without HPA")
    assert status["replicas"] == 1


def test_a_server_whose_adapter_is_not_lora_says_why(start_operator, custom, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "full-tune", {
        "baseModel": {"uri": "s3://models/base"}, "dataset": {"uri": "s3://b/d.jsonl"}, "output": {"uri": "s3://b/full"},
    })
    create(custom, namespace, "modelservers", "ModelServer", "multi", {
        "model": {"source": {"uri": "s3://models/base"}}, "adapters": [{"name": "tuned", "fineTuneRef": {"name": "full-tune"}}],
    })
    status = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "multi")).get("phase") == "Failed" and s, what="refused")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "AdapterRefused" and "not lora" in ready["message"]


def test_admission_refuses_adapters_without_a_base_source(custom, crds, namespace: str) -> None:
    with pytest.raises(kubernetes.client.exceptions.ApiException) as refused:
        create(custom, namespace, "modelservers", "ModelServer", "bad", {
            "model": {"fineTuneRef": {"name": "t"}}, "adapters": [{"name": "a", "fineTuneRef": {"name": "u"}}],
        })
    assert refused.value.status == 422 and "adapters need model.source" in refused.value.body
    with pytest.raises(kubernetes.client.exceptions.ApiException) as refused:
        create(custom, namespace, "modelservers", "ModelServer", "bad", {**SPEC, "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}})
    assert refused.value.status == 422 and "needs resources.cpu" in refused.value.body


def test_turning_autoscaling_on_hands_the_running_count_over(start_operator, custom, api_client, namespace: str) -> None:
    """No dip: the field is handed over, not dropped (dropped, it would fall back to the default 1)."""
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "grow", {**SPEC, "replicas": 3})
    apps = kubernetes.client.AppsV1Api(api_client)
    first = wait_for(lambda: (d := apps.read_namespaced_deployment("grow-serve", namespace)).spec.replicas == 3 and d, what="3 replicas")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "grow", {"spec": {"autoscaling": SCALING}})
    handed = wait_for(lambda: (d := apps.read_namespaced_deployment("grow-serve", namespace)).metadata.annotations[HASH] != first.metadata.annotations[HASH] and d,
                      what="autoscaling applied")
    assert handed.spec.replicas == 3
    assert "alpaca-operator" not in replicas_managers(handed)
