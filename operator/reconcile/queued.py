"""A batch child that Kueue holds back: Ready says "Queued" rather than a bare suspension.

Kueue's webhook creates a queued Job or PyTorchJob suspended and its controller unsuspends it on
admission, so "suspended while a queue is set" means waiting for quota. A suspension with no queue
(a budget stop, a user) keeps the child's own reason.
"""

from __future__ import annotations

from dataclasses import replace

from ..api.common import Queue
from ..conditions import FALSE, Desired
from ..observe import PENDING, READY, ChildState, Computed

QUEUED = "Queued"
SUSPENDED = "Suspended"


def queued(computed: Computed, child: ChildState | None, kind: str, queue: Queue | None) -> Computed:
    """`computed` with Ready=False/Queued when the child is suspended in a Kueue queue."""
    if queue is None or child is None or child.reason != SUSPENDED or computed.fields.get("phase") != PENDING:
        return computed
    message = f"the {kind} {child.name!r} waits in Kueue LocalQueue {queue.name!r} until its ClusterQueue admits it"
    conditions = [Desired(READY, FALSE, QUEUED, message) if c.type == READY else c for c in computed.conditions]
    return replace(computed, fields={**computed.fields, "message": message}, conditions=conditions)
