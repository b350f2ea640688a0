"""A small synchronous client for the few kinds of objects the operator creates and patches.

Every write passes one gate: with leader election on, a replica that does not hold the Lease
(operator/leader.py) cannot send a single write, whichever thread tries. Every call has a timeout
so a hung connection cannot stall a worker thread forever.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from .api.base import API_VERSION

# apiVersion/kind -> plural, for every kind the operator writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjobs",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
}


def collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The one field manager of everything the operator applies.
FIELD_MANAGER = "alpaca-operator"


class NotLeader(RuntimeError):
    """A write was attempted by a replica that does not hold the lease; nothing was sent."""


class Cluster:
    """Create/patch/get by manifest; counts requests by verb (for metrics and the scale benchmark)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, *, timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        # Whether this replica may write now; None: always (a single replica, local tools, tests).
        self.gate: Callable[[], bool] | None = None

    def may_write(self) -> bool:
        return self.gate is None or self.gate()

    def call(self, verb: str, path: str, body: Any = None, content_type: str | None = None, *, gated: bool = True) -> Any:
        """One request; a write from a replica that is not the leader raises NotLeader unsent."""
        if gated and verb in WRITE_VERBS and not self.may_write():
            raise NotLeader(f"{verb} {path}: this replica does not hold the lease")
        return self._call(verb, path, body, content_type)

    @classmethod
    def from_kubeconfig(cls, path: str | None, *, timeout: float = 30.0, pool_size: int = 32) -> Cluster:
        configuration = kubernetes.client.Configuration()
        if path:
            kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=configuration)
        # One connection per handler thread, or threads queue on the pool.
        configuration.connection_pool_maxsize = pool_size
        return cls(kubernetes.client.ApiClient(configuration), timeout=timeout)

    def _call(self, verb: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        with self._lock:
            self.requests[verb] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type or "application/json"}
        client = self.api_client
        if not hasattr(client, "param_serialize"):  # kubernetes < 34: the older generated client
            return client.call_api(
                path, verb, header_params=headers, body=body, response_type="object",
                auth_settings=["BearerToken"], _return_http_data_only=True, _request_timeout=self.timeout,
            )
        method, url, header_params, serialized, post_params = client.param_serialize(
            verb, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = client.call_api(method, url, header_params=header_params, body=serialized, post_params=post_params, _request_timeout=self.timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, body=data.decode(errors="replace") if data else None)
        return json.loads(data) if data else None

    def _object_path(self, manifest: dict[str, Any]) -> tuple[str, str]:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural = PLURALS[(api_version, kind)]
        meta = manifest["metadata"]
        return collection_path(api_version, plural, meta.get("namespace")), meta["name"]

    def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object; False when one of that name already exists."""
        collection, _ = self._object_path(manifest)
        try:
            self.call("POST", collection, manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def get(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        collection, name = self._object_path(manifest)
        try:
            result: dict[str, Any] = self._call("GET", f"{collection}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list(self, api_version: str, kind: str, plural: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        """Every object of a kind (in a namespace, or all); empty when the kind is not served."""
        from urllib.parse import quote

        path = collection_path(api_version, plural, namespace)
        if label_selector:
            path += f"?labelSelector={quote(label_selector)}"
        try:
            result = self._call("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        items: list[dict[str, Any]] = result.get("items") or []
        for item in items:  # list items come without their type
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, manifest: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply: the object becomes exactly `manifest` in the fields this manager owns.

        Keys the manifest no longer has (a nodeSelector entry, an affinity) are removed, because
        this manager set them; fields other managers own are left alone. Creates when missing.
        """
        collection, name = self._object_path(manifest)
        query = f"?fieldManager={field_manager}&force=true"
        result: dict[str, Any] = self.call("PATCH", f"{collection}/{name}{query}", manifest, "application/apply-patch+yaml")
        return result

    def delete(self, manifest: dict[str, Any], *, uid: str | None = None) -> None:
        """Delete the object (only that incarnation of it, with `uid`); already gone is fine."""
        collection, name = self._object_path(manifest)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}} if uid else None
        try:
            self.call("DELETE", f"{collection}/{name}", body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def merge_patch(self, manifest: dict[str, Any], patch: dict[str, Any]) -> None:
        collection, name = self._object_path(manifest)
        self.call("PATCH", f"{collection}/{name}", patch, "application/merge-patch+json")

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the status; with `resource_version`, only if nobody wrote since (else HTTP 409)."""
        path = f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}/{name}/status"
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = self.call("PATCH", path, body, "application/merge-patch+json")
        return result

    def patch_custom(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        path = f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}/{name}"
        self.call("PATCH", path, patch, "application/merge-patch+json")

    def post_event(self, involved: dict[str, Any], *, type_: str, reason: str, message: str, now: str) -> None:
        """A core/v1 Event on a resource, as `kubectl describe` shows it."""
        meta = involved["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "alpaca-operator"},
            "reportingComponent": "alpaca.dev/operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.call("POST", collection_path("v1", "events", meta["namespace"]), event)

    def close(self) -> None:
        self.api_client.close()
