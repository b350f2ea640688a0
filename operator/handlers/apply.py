"""The cluster applier: gather a reconcile's inputs from the caches, run it, carry out its Plan.

The decision is the kind's pure `reconcile` (operator/reconcile/); this is the only place that
turns it into requests: children created (batch kinds) or server-side applied (servers) with the
parent's UID as controller, a stop patch, and one status write. A refused child or a namesake's
leftover replaces the planned status with a condition saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from ..controller import Body, Controller, Key
from ..observe import ChildState, Computed
from ..reconcile import HANDOVER_MANAGER, Plan
from .common import Refused, WorkloadIdentity, apply_owned, ensure_owned, remove_owned

Summarize = Callable[[dict[str, Any]], ChildState]


def applier(
    kind: ModuleType, summarize: Summarize, primary: tuple[str, str], identity: WorkloadIdentity
) -> Callable[[Controller, Key, Body], None]:
    """`primary`: (apiVersion, kind) of the child whose name status.jobName records (batch kinds)."""

    def reconcile(ctl: Controller, key: Key, body: Body) -> None:
        _, namespace, _ = key
        now = datetime.now(timezone.utc)
        references = {
            (ref_kind, name): found
            for ref_kind, name in kind.refs(body)
            if (found := ctl.parent(ref_kind, namespace, name)) is not None
        }
        child = ctl.child(key)
        recorded = (body.get("status") or {}).get("jobName")
        if child is None and recorded:
            # The cache may simply not have seen it yet: ask before a reconcile calls it lost.
            # A kind whose backend is chosen per resource (FineTune) names the job's kind itself.
            api_version, child_kind = kind.primary(body) if hasattr(kind, "primary") else primary
            found = ctl.cluster.get({"apiVersion": api_version, "kind": child_kind, "metadata": {"name": recorded, "namespace": namespace}})
            child = summarize(found) if found is not None else None
        plan: Plan = kind.reconcile(body, child, references, ctl.settings, now)
        status = plan.status
        if plan.children:
            identity.ensure(ctl, namespace)
            if plan.handover is not None:
                ctl.cluster.apply(plan.handover, field_manager=HANDOVER_MANAGER)
            try:
                if plan.apply:
                    ensured = apply_owned(ctl, body, plan.children, summarize, child)
                else:
                    ensured = ensure_owned(ctl, body, plan.children, summarize)
            except Refused as refused:
                ctl.write_status(key, body, refused.computed(), now=now)
                raise  # the controller retries with a doubling backoff
            if ensured.foreign is not None:
                status = Computed(fields={"phase": "Pending"}, conditions=[ensured.foreign])
        if plan.patch is not None:
            ctl.cluster.merge_patch(*plan.patch)
        for stub in plan.remove:
            remove_owned(ctl, body, stub)
        ctl.write_status(key, body, status, now=now)

    return reconcile
