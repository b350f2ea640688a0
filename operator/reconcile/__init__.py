"""One pure reconcile per kind: (resource, observed child, references, settings, now) -> Plan.

No I/O: everything a decision needs comes in as arguments, and what to do goes out as a Plan
(the children wanted now, the status, any stop). The cluster applier (handlers/) turns a Plan into
requests; the table tests in tests/unit/operator/reconcile/ read it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ..builders.common import Parent
from ..conditions import FALSE, Desired
from ..observe import FAILED, PENDING, READY, ChildState, Computed, kept, lost, terminal

Body = dict[str, Any]
Manifest = dict[str, Any]
# Resources this one refers to, by (kind, name) in its namespace; absent when they do not exist.
References = dict[tuple[str, str], Body]


@dataclass
class Plan:
    """What a reconcile decided."""

    status: Computed
    # Children to create (batch kinds) or apply (servers), the primary one last; empty: none now.
    children: list[Manifest] = field(default_factory=list)
    # Server-side apply (a server's children follow its spec) rather than create-once.
    apply: bool = False
    # A child to stop (merge patch), e.g. a PyTorchJob suspended when its budget ran out.
    patch: tuple[Manifest, Manifest] | None = None
    # Children no longer wanted (a server's HPA once autoscaling is off): deleted when they are ours.
    remove: list[Manifest] = field(default_factory=list)
    # Fields handed to another owner before the children are applied without them (a server's
    # replicas, when an HPA takes over): applied under HANDOVER_MANAGER, which keeps them set.
    handover: Manifest | None = None


HANDOVER_MANAGER = "alpaca-operator-handover"


def invalid_spec(error: Exception, reason: str = "InvalidSpec") -> Computed:
    """A spec the operator cannot act on: Failed with the reason, never retried until it changes."""
    message = str(error).replace("\n", " ")[:1000]
    return Computed(fields={"phase": FAILED, "message": message}, conditions=[Desired(READY, FALSE, reason, message)])


def not_ours(owner: Body, kind: str, child: ChildState) -> Desired:
    return Desired(
        READY, FALSE, "WaitingForOldChild",
        f"a {kind} named {child.name!r} exists but belongs to another {owner['kind']} (uid {child.owner_uid}), "
        "probably a deleted one whose children are being garbage-collected; waiting for it to go",
    )


def waiting_for_old_child(owner: Body, kind: str, child: ChildState) -> Plan:
    return Plan(Computed(fields={"phase": PENDING}, conditions=[not_ours(owner, kind, child)]))


def foreign(owner: Body, child: ChildState | None) -> bool:
    """A child of our name that another UID owns (a deleted namesake's, awaiting garbage collection)."""
    return child is not None and child.owner_uid != owner["metadata"]["uid"]


Spec = TypeVar("Spec", bound=BaseModel)


@dataclass(frozen=True)
class Opened(Generic[Spec]):
    """What a reconcile goes on from: its parsed spec, its current status, and itself as a parent."""

    spec: Spec
    status: dict[str, Any]
    parent: Parent


def open_resource(
    body: Body,
    child: ChildState | None,
    spec_model: type[Spec],
    plural: str,
    child_kind: str | Callable[[Spec], str],
    artifact_field: str | None = None,
) -> Opened[Spec] | Plan:
    """The checks every reconcile starts with, or the Plan that ends it there: a spec it cannot act
    on, or a namesake's child (of `child_kind`, which may follow from the spec) still in the way.

    With `artifact_field` (batch kinds: the status field of what the work produced), finished work
    is kept as it is and a child lost before its outcome was seen is never run again.
    """
    try:
        spec = spec_model.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Plan(invalid_spec(exc))
    kind = child_kind if isinstance(child_kind, str) else child_kind(spec)
    if foreign(body, child):
        assert child is not None
        return waiting_for_old_child(body, kind, child)
    status: dict[str, Any] = body.get("status") or {}
    if artifact_field is not None and child is None:
        if terminal(status):
            return Plan(kept(status))
        if status.get("jobName"):
            return Plan(lost(status, kind, artifact_field))
    meta = body["metadata"]
    return Opened(spec, status, Parent(meta["name"], meta["namespace"], plural, meta.get("generation")))


def cost_clock(now: datetime, interval: float) -> datetime:
    """`now` rounded down to the cost interval: within one interval, cost figures stay identical, so
    recomputing the status does not write (and re-trigger) on every event."""
    seconds = now.timestamp()
    return datetime.fromtimestamp(seconds - seconds % interval, tz=timezone.utc)
