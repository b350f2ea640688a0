"""Helpers of the operator integration tests."""

from __future__ import annotations

from typing import Any

import kubernetes.client

GROUP, VERSION = "alpaca.dev", "v1alpha1"

# Operator settings for tests: quick resyncs, a second of cost granularity, prices and a GPU pool.
FAST = {
    "resyncSeconds": 0.5,
    "costIntervalSeconds": 1,
    "gpuHourUSD": {"nvidia-a100-80gb": 2.0},
    "tokenPrices": {"gpt-teacher": {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 2.0}},
    "gpuPools": {"nvidia-a100-80gb": {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
    "workers": 4,
}




def create(custom: kubernetes.client.CustomObjectsApi, namespace: str, plural: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    return result


def get(custom: kubernetes.client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return result


def status_of(custom: kubernetes.client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return get(custom, namespace, plural, name).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def event_reasons(api_client: kubernetes.client.ApiClient, namespace: str, name: str) -> set[str]:
    events = kubernetes.client.CoreV1Api(api_client).list_namespaced_event(namespace)
    return {e.reason for e in events.items if e.involved_object.name == name}


def now_minus(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
