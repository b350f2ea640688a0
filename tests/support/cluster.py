"""Installing CRDs into the test control plane and waiting until they serve."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import yaml
from kubernetes.client.rest import ApiException

from alpaca_operator.testing.controlplane import ControlPlane

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CRDS = sorted((ROOT / "crds").glob("*.yaml"))


def install_crds(api_client: kubernetes.client.ApiClient, files: list[Path], timeout_s: float = 60) -> list[str]:
    """Create or replace each CRD, then wait for Established. Returns the CRD names."""
    api = kubernetes.client.ApiextensionsV1Api(api_client)
    names: list[str] = []
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if not document:
                continue
            name = document["metadata"]["name"]
            try:
                api.create_custom_resource_definition(document)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = api.read_custom_resource_definition(name)
                document["metadata"]["resourceVersion"] = current.metadata.resource_version
                api.replace_custom_resource_definition(name, document)
            names.append(name)
    deadline = time.monotonic() + timeout_s
    for name in names:
        while not _established(api.read_custom_resource_definition(name)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout_s}s")
            time.sleep(0.1)
    return names


def _established(crd: Any) -> bool:
    conditions = (crd.status and crd.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def wait_for(check: Callable[[], T], *, timeout: float = 20.0, what: str = "condition", interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; a 404 counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextmanager
def audited_control_plane(folder: Path) -> Iterator[tuple[ControlPlane, Path]]:
    """A control plane of its own that audits every request's metadata to `folder`/audit.log."""
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                                      "rules": [{"level": "Metadata"}]}))
    log = folder / "audit.log"
    with ControlPlane(extra_apiserver_args=[f"--audit-policy-file={policy}", f"--audit-log-path={log}"]) as cp:
        yield cp, log
