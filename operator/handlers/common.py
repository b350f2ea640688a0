"""What the three reconcilers share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..conditions import FALSE, Desired
from ..controller import Body, Controller
from ..observe import FAILED, READY, ChildState, Computed


def invalid_spec(error: Exception) -> Computed:
    """A spec the operator cannot act on: Failed with the reason, never retried until it changes."""
    message = str(error).replace("\n", " ")[:1000]
    return Computed(fields={"phase": FAILED, "message": message}, conditions=[Desired(READY, FALSE, "InvalidSpec", message)])


def pending_child(
    ctl: Controller, manifest: Body, created: bool, summarize: Callable[[dict[str, Any]], ChildState]
) -> ChildState:
    """The state of a child just created, or found existing (409) before its watch event arrived.

    Reading an existing one back keeps a restarted operator from reporting a running child as
    pending for a moment (and posting Events for that false transition).
    """
    existing = None if created else ctl.cluster.get(manifest)
    return summarize(existing if existing is not None else manifest)
