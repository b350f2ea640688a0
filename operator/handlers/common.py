"""What the three reconcilers share: invalid specs, and creating children that are really ours."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..builders.rbac import workload_rbac
from ..conditions import FALSE, Desired
from ..controller import Body, Controller
from ..observe import FAILED, READY, ChildState, Computed, owner_uid
from ..reconcile import not_ours

BLOCKED = "Blocked"
# Refusals that a spec edit must fix; the others (quota, policy, webhooks down) may pass on their own.
_INVALID = frozenset({400, 422})


class Refused(Exception):
    """The API server refused to create a child: its reason and message, for a condition."""

    def __init__(self, manifest: Body, error: ApiException) -> None:
        self.kind = manifest["kind"]
        self.name = manifest["metadata"]["name"]
        self.status = error.status or 0
        self.reason, detail = _server_reason(error)
        self.message = f"the API server refused the {self.kind} {self.name!r} (HTTP {self.status} {self.reason}): {detail}"
        super().__init__(self.message)

    def computed(self) -> Computed:
        phase = FAILED if self.status in _INVALID else BLOCKED
        return Computed(
            fields={"phase": phase, "message": self.message[:1000]},
            conditions=[Desired(READY, FALSE, f"{self.kind}{self.reason}", self.message[:32768])],
        )


def _server_reason(error: ApiException) -> tuple[str, str]:
    try:
        status = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        status = {}
    reason = str(status.get("reason") or error.reason or "Refused")
    reason = "".join(part[:1].upper() + part[1:] for part in reason.replace("-", " ").split()) or "Refused"
    return reason, str(status.get("message") or error.reason or "")


def controller_reference(owner: Body) -> dict[str, Any]:
    """Owned by the parent's UID: garbage-collected with it, and ours only while that UID lives."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


class WorkloadIdentity:
    """The workloads' ServiceAccount, Role and RoleBinding, made once per namespace and process.

    Shared by every resource in the namespace, so none of them owns it (builders/rbac.py).
    """

    def __init__(self) -> None:
        self._ready: set[str] = set()

    def ensure(self, ctl: Controller, namespace: str) -> None:
        if namespace in self._ready:
            return
        for manifest in workload_rbac(namespace, ctl.settings.workload_service_account):
            # The Role is applied, not only created: a namespace set up by an older operator gets
            # the grants of kinds added since (a new kind's status), or its workloads could not report.
            if manifest["kind"] == "Role":
                ctl.cluster.apply(manifest)
            else:
                ctl.cluster.create(manifest)
        self._ready.add(namespace)


@dataclass(frozen=True)
class Ensured:
    """The primary child after creation: ours, or one of the same name that belongs to someone else."""

    child: ChildState | None
    foreign: Desired | None = None


def ensure_owned(
    ctl: Controller, owner: Body, manifests: list[Body], summarize: Callable[[dict[str, Any]], ChildState]
) -> Ensured:
    """Create the children (the last one is the primary); raise Refused when the server says no.

    A 409 is not "mine": the existing object is read back and is ours only when its controller
    owner reference carries our UID. One left by a deleted namesake (waiting for garbage
    collection) is waited for, never adopted.
    """
    uid = owner["metadata"]["uid"]
    last: ChildState | None = None
    for manifest in manifests:
        created = _write_owned(owner, manifest, ctl.cluster.create)
        existing = None if created else ctl.cluster.get(manifest)
        if existing is not None and owner_uid(existing.get("metadata") or {}) != uid:
            # A namesake's leftover (its config, say): the primary must not start with it.
            leftover = ChildState(name=manifest["metadata"]["name"], phase="", reason="", owner_uid=owner_uid(existing.get("metadata") or {}))
            return Ensured(None, not_ours(owner, manifest["kind"], leftover))
        if manifest is manifests[-1]:
            last = summarize(existing if existing is not None else manifest)
    assert last is not None
    return Ensured(last)


def apply_owned(
    ctl: Controller, owner: Body, manifests: list[Body], summarize: Callable[[dict[str, Any]], ChildState],
    current: ChildState | None,
) -> Ensured:
    """Server-side apply the children (the last one is the primary), owned by `owner`'s UID.

    Apply would take over an object of the same name, so the primary is looked at first (the
    cache, else a GET): one that belongs to another UID is waited for, never adopted.
    """
    primary = manifests[-1]
    if current is None:
        existing = ctl.cluster.get(primary)
        current = summarize(existing) if existing is not None else None
    if current is not None and current.owner_uid != owner["metadata"]["uid"]:
        return Ensured(None, not_ours(owner, primary["kind"], current))
    applied: dict[str, Any] = {}
    for manifest in manifests:
        applied = _write_owned(owner, manifest, ctl.cluster.apply)
    return Ensured(summarize(applied))


def remove_owned(ctl: Controller, owner: Body, stub: Body) -> None:
    """Delete a child the plan no longer wants, only when it is ours (our UID as its controller)."""
    existing = ctl.cluster.get(stub)
    if existing is None or owner_uid(existing.get("metadata") or {}) != owner["metadata"]["uid"]:
        return
    ctl.cluster.delete(stub, uid=existing["metadata"].get("uid"))


def _write_owned(owner: Body, manifest: Body, write: Callable[[Body], Any]) -> Any:
    """Write one child with `owner` as its controller; what the server refuses for good (invalid,
    forbidden) becomes Refused, for a condition with the server's reason."""
    manifest["metadata"]["ownerReferences"] = [controller_reference(owner)]
    try:
        return write(manifest)
    except ApiException as exc:
        # 404: the kind is not served (a FineTune with backend: trainjob where Trainer v2 is not installed).
        if exc.status in (400, 403, 404, 422):
            raise Refused(manifest, exc) from None
        raise
