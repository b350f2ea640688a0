"""Kueue's labels on a top-level child: the queue it waits in and, optionally, its priority class.

The operator only labels; Kueue's webhook suspends the child on creation and its controller
unsuspends it once the ClusterQueue has room. Nothing is created suspended here.
"""

from __future__ import annotations

from ..api.common import Queue
from ..settings import OperatorSettings
from .common import Manifest

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def effective(queue: Queue | None, settings: OperatorSettings) -> Queue | None:
    """The resource's own queue, else the operator-wide default (None: not queued)."""
    return queue if queue is not None else settings.queue


def queue_labels(queue: Queue | None, settings: OperatorSettings) -> dict[str, str]:
    chosen = effective(queue, settings)
    if chosen is None:
        return {}
    out = {QUEUE_LABEL: chosen.name}
    if chosen.priority_class:
        out[PRIORITY_LABEL] = chosen.priority_class
    return out


def label(manifest: Manifest, queue: Queue | None, settings: OperatorSettings) -> Manifest:
    """`manifest` with the queue labels on its own metadata (not its pods': Kueue reads the top level)."""
    extra = queue_labels(queue, settings)
    if extra:
        manifest["metadata"].setdefault("labels", {}).update(extra)
    return manifest
