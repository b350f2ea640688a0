"""kopf handlers. They stay thin: each watch event updates the controller's caches and queues the
resource; a worker then runs the kind's pure reconcile (operator/reconcile/) through the cluster
applier (apply.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kopf

from ..api.base import GROUP, VERSION
from ..naming import COMPONENT, EVALUATE, GENERATE, MANAGED_BY, MANAGED_BY_LABEL, SERVE, TRAIN
from ..observe import ChildState, summarize_deployment, summarize_job, summarize_pytorchjob
from ..controller import Controller, KindInfo
from ..reconcile import evaluation, finetune, instructdataset, modelserver
from .apply import applier
from .common import WorkloadIdentity

# (group, version, plural) of each child kind, its component label, its parent kind, its summary.
CHILDREN: tuple[tuple[str, str, str, str, str, Callable[[dict[str, Any]], ChildState]], ...] = (
    ("batch", "v1", "jobs", GENERATE, instructdataset.KIND, summarize_job),
    ("kubeflow.org", "v1", "pytorchjobs", TRAIN, finetune.KIND, summarize_pytorchjob),
    # A FineTune with backend: trainjob. Unwatched (kopf skips it) where Trainer v2 is not installed.
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs", TRAIN, finetune.KIND, finetune.summarize_trainjob),
    ("apps", "v1", "deployments", SERVE, modelserver.KIND, summarize_deployment),
    ("batch", "v1", "jobs", EVALUATE, evaluation.KIND, evaluation.summarize),
)

KINDS = {"jobs": "Job", "pytorchjobs": "PyTorchJob", "trainjobs": "TrainJob", "deployments": "Deployment"}


def register(registry: kopf.OperatorRegistry, ctl: Controller) -> None:
    """Register the reconcilers with the controller and the watches with kopf."""
    identity = WorkloadIdentity()
    summaries = {parent_kind: summarize for *_, parent_kind, summarize in CHILDREN}
    summaries[finetune.KIND] = finetune.summarize  # two backends: by the child's kind
    primaries = {
        parent_kind: (f"{group}/{version}" if group else version, KINDS[plural])
        for group, version, plural, _, parent_kind, _ in CHILDREN
    }
    for module in (instructdataset, finetune, modelserver, evaluation):
        info = KindInfo(module.KIND, module.PLURAL, applier(module, summaries[module.KIND], primaries[module.KIND], identity), module.refs)
        ctl.register(info)
        _watch_parent(registry, ctl, info.plural, info.kind)
    for group, version, plural, component, parent_kind, summarize in CHILDREN:
        _watch_child(registry, ctl, group, version, plural, component, parent_kind, summarize)


def prime(ctl: Controller, namespaces: list[str]) -> None:
    """Fill the caches with one list per kind before any reconcile runs.

    The watches start independently; without this, a FineTune seen before the InstructDataset it
    names would be reported NotFound for a moment after every operator restart.
    """
    scopes: list[str | None] = list(namespaces) or [None]
    for scope in scopes:
        for info in ctl.kinds.values():
            for body in ctl.cluster.list(f"{GROUP}/{VERSION}", info.kind, info.plural, scope):
                ctl.observe_parent(info.kind, None, body)
        for group, version, plural, component, parent_kind, summarize in CHILDREN:
            kind = KINDS[plural]
            selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{COMPONENT}={component}"
            for body in ctl.cluster.list(f"{group}/{version}", kind, plural, scope, selector):
                ctl.observe_child(parent_kind, None, body, summarize(body))


def _watch_parent(registry: kopf.OperatorRegistry, ctl: Controller, plural: str, kind: str) -> None:
    async def on_parent_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's kwarg
        ctl.observe_parent(kind, type, _plain(body))

    kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-event", registry=registry)(on_parent_event)


def _watch_child(
    registry: kopf.OperatorRegistry, ctl: Controller, group: str, version: str, plural: str,
    component: str, parent_kind: str, summarize: Callable[[dict[str, Any]], ChildState],
) -> None:
    async def on_child_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's kwarg
        plain = _plain(body)
        ctl.observe_child(parent_kind, type, plain, summarize(plain))

    labels = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT: component}
    # Two kinds own Jobs: one watch per component label, each with an id of its own.
    kopf.on.event(group, version, plural, labels=labels, id=f"{plural}-{component}-event", registry=registry)(on_child_event)


def _plain(body: kopf.Body) -> dict[str, Any]:
    # kopf's Body is a live view that kopf keeps mutating; the caches need a snapshot.
    return copy.deepcopy(dict(body))
