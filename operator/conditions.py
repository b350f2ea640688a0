"""Conditions in the metav1.Condition shape, merged so that lastTransitionTime means what it says.

A condition's lastTransitionTime moves only when its status flips; a new reason or message with
the same status updates those fields in place. The list is kept in a stable order (by type) so
that recomputing an unchanged status gives an identical list and no write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Desired:
    """A condition as the status computation wants it; the merge adds the times."""

    type: str
    status: str
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed: each becomes one Kubernetes Event."""

    type: str
    status: str
    reason: str
    message: str
    warning: bool


def now_rfc3339(now: datetime | None = None) -> str:
    moment = now or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    current: list[dict[str, Any]] | None,
    desired: list[Desired],
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """The new conditions list: desired ones merged over current ones, others kept as they are."""
    by_type = {c.get("type"): dict(c) for c in current or [] if c.get("type")}
    for want in desired:
        old = by_type.get(want.type)
        flipped = old is None or old.get("status") != want.status
        entry: dict[str, Any] = {
            "type": want.type,
            "status": want.status,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": now if flipped or not old.get("lastTransitionTime") else old["lastTransitionTime"],
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[want.type] = entry
    return [by_type[key] for key in sorted(by_type)]


def transitions(current: list[dict[str, Any]] | None, merged: list[dict[str, Any]]) -> list[Transition]:
    """Conditions whose status or reason differs from before (message-only changes are not events)."""
    before = {c.get("type"): c for c in current or []}
    changed: list[Transition] = []
    for condition in merged:
        old = before.get(condition["type"])
        if old is not None and old.get("status") == condition["status"] and old.get("reason") == condition["reason"]:
            continue
        changed.append(
            Transition(
                type=condition["type"],
                status=condition["status"],
                reason=condition["reason"],
                message=condition.get("message", ""),
                warning=is_bad(condition),
            )
        )
    return changed


# Conditions whose healthy status is False: True means trouble.
_NEGATIVE_POLARITY = frozenset({"Degraded", "Stalled"})


def is_bad(condition: dict[str, Any]) -> bool:
    """Whether a condition describes a problem (for Warning rather than Normal events)."""
    status = condition.get("status")
    if condition.get("type") in _NEGATIVE_POLARITY:
        return status == TRUE
    return status == FALSE and condition.get("reason") not in _BENIGN_FALSE_REASONS


# False conditions that are expected steps on the way, not problems.
_BENIGN_FALSE_REASONS = frozenset({"Waiting", "Pending", "Running", "Progressing", "JobCreated", "Created"})


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == TRUE
