"""The level-based core: caches fed by kopf's watches, a work queue, and worker threads.

kopf watches the four kinds and the children (with its reconnects, inactivity timeouts and
liveness); its thin event handlers only update the caches here and queue the parent. Every replica
keeps its caches warm, but only the one holding the Lease (operator/leader.py) works the queue: a
follower's workers drop what they take, its resync queues nothing, and any write that still slips
through is refused unsent by the cluster client's gate. A worker runs the kind's reconcile (the
pure decision in operator/reconcile/, carried out by handlers/apply.py), retried with a doubling
backoff when it fails; the status is written here, once, only when it changed. A resync re-queues every
resource periodically, which re-checks waits and accrues cost while work runs. This replaces
per-resource kopf timers, which would put a finalizer on every resource and block its deletion
whenever the operator is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

from .kube import Cluster, NotLeader
from .observe import SPEC_APPLIED, ChildState, Computed, diff
from .settings import OperatorSettings
from .workqueue import WorkQueue

log = logging.getLogger("alpaca_operator")

Key = tuple[str, str, str]  # (kind, namespace, name)
Body = dict[str, Any]
Reconciler = Callable[["Controller", Key, Body], None]
RefsOf = Callable[[Body], list[tuple[str, str]]]

# Retries of a reconcile that raised: doubling, capped.
_BACKOFF_START, _BACKOFF_MAX = 1.0, 300.0
_CONFLICT_RETRY = 0.2


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    reconcile: Reconciler
    refs: RefsOf  # (kind, name) of the resources this one waits for


class Controller:
    def __init__(self, settings: OperatorSettings, cluster: Cluster, metrics: Any = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.metrics = metrics
        self.kinds: dict[str, KindInfo] = {}
        self.parents: dict[Key, Body] = {}
        self.children: dict[Key, ChildState] = {}
        self._dependents: dict[Key, set[Key]] = defaultdict(set)
        self._refs: dict[Key, list[Key]] = {}
        self._failures: dict[Key, int] = {}
        self._retry_at: dict[Key, float] = {}
        self._lock = threading.RLock()
        self.queue = WorkQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def register(self, info: KindInfo) -> None:
        self.kinds[info.kind] = info

    # -- caches, fed by kopf's event handlers --------------------------------------------

    def observe_parent(self, kind: str, event_type: str | None, body: Body) -> None:
        meta = body.get("metadata") or {}
        key: Key = (kind, meta["namespace"], meta["name"])
        with self._lock:
            for ref in self._refs.pop(key, []):
                self._dependents[ref].discard(key)
            if event_type == "DELETED":
                self.parents.pop(key, None)
                self._failures.pop(key, None)
                self._retry_at.pop(key, None)
                if self.metrics:
                    self.metrics.forget(key)
            else:
                self.parents[key] = body
                refs = [(ref_kind, key[1], name) for ref_kind, name in self.kinds[kind].refs(body)]
                self._refs[key] = refs
                for ref in refs:
                    self._dependents[ref].add(key)
            dependents = list(self._dependents.get(key, ()))
        if event_type != "DELETED":
            self.queue.add(key)
        # A resource that others wait for changed: let them re-check now rather than at resync.
        for dependent in dependents:
            self.queue.add(dependent)

    def observe_child(self, parent_kind: str, event_type: str | None, body: Body, state: ChildState) -> None:
        meta = body.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == parent_kind), None)
        if owner is None:
            return
        key: Key = (parent_kind, meta["namespace"], owner["name"])
        with self._lock:
            if event_type == "DELETED":
                self.children.pop(key, None)
            else:
                self.children[key] = state
        self.queue.add(key)

    def child(self, key: Key) -> ChildState | None:
        with self._lock:
            return self.children.get(key)

    def parent(self, kind: str, namespace: str, name: str) -> Body | None:
        with self._lock:
            return self.parents.get((kind, namespace, name))

    # -- workers -------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"alpaca-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        resync = threading.Thread(target=self._resync, name="alpaca-resync", daemon=True)
        resync.start()
        self._threads.append(resync)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def is_leader(self) -> bool:
        return self.cluster.may_write()

    def started_leading(self) -> None:
        """Newly the one writer: look at everything, since the caches were filled while following."""
        with self._lock:
            keys = list(self.parents)
        for key in keys:
            self.queue.add(key)

    def _resync(self) -> None:
        while not self._stop.wait(self.settings.resync_seconds):
            if not self.is_leader():
                continue
            now = time.monotonic()
            with self._lock:
                # A resource backing off after errors is retried on its own schedule, not hammered.
                keys = [k for k in self.parents if self._retry_at.get(k, 0.0) <= now]
            for key in keys:
                self.queue.add(key)

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                if self.is_leader():
                    self.reconcile_now(key)  # type: ignore[arg-type]
            finally:
                self.queue.done(key)

    def reconcile_now(self, key: Key) -> None:
        body = self.parent(*key)
        if body is None:
            return
        info = self.kinds[key[0]]
        try:
            info.reconcile(self, key, body)
        except NotLeader:
            # The lease lapsed mid-reconcile: nothing more was sent; the next leader starts afresh.
            return
        except ApiException as exc:
            if exc.status != 409:
                self._failed(key, exc)
                return
            # Written by someone else since we read it: look again once the watch has the new version.
            self.queue.add_after(key, _CONFLICT_RETRY)
            return
        except Exception as exc:  # noqa: BLE001 - one resource's failure must not stop the others
            self._failed(key, exc)
            return
        else:
            self._failures.pop(key, None)
            self._retry_at.pop(key, None)
        finally:
            if self.metrics:
                self.metrics.reconciled(key[0])

    def _failed(self, key: Key, exc: Exception) -> None:
        """Retry later, doubling the wait each time: a refused child or a broken API is never a hot loop."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(_BACKOFF_MAX, _BACKOFF_START * 2 ** (failures - 1))
        detail = f"HTTP {exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc) or repr(exc)
        log.warning("reconcile of %s %s/%s failed (retry in %.0fs): %s", key[0], key[1], key[2], delay, detail)
        if self.metrics:
            self.metrics.error(key[0])
        self._retry_at[key] = time.monotonic() + delay
        self.queue.add_after(key, delay)

    # -- status ------------------------------------------------------------------------------

    def write_status(self, key: Key, body: Body, computed: Computed, *, now: datetime | None = None) -> dict[str, Any]:
        """Write what changed in the status, in one request, and post an Event per condition transition.

        The write carries the resourceVersion the reconcile read: a status someone else changed in
        between (a workload's report, or cost counted by a replica that just lost the lease) gives a
        409 and a fresh reconcile, never a figure computed from an old one.
        """
        moment = now or datetime.now(timezone.utc)
        generation = (body.get("metadata") or {}).get("generation")
        current = dict(body.get("status") or {})
        patch, transitions = diff(current, computed, generation=generation, now=moment)
        info = self.kinds[key[0]]
        if patch:
            written = self.cluster.patch_status(
                info.plural, key[1], key[2], patch, resource_version=(body.get("metadata") or {}).get("resourceVersion"),
            )
            with self._lock:
                # Keep the cache ahead of the watch, so a reconcile before the echo does not rewrite.
                if key in self.parents and written:
                    self.parents[key] = written
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        for transition in transitions:
            if transition.type == SPEC_APPLIED and transition.status == "True":
                continue  # the normal case; only a change that did not apply is news
            try:
                self.cluster.post_event(
                    body, type_="Warning" if transition.warning else "Normal", reason=transition.reason,
                    message=f"{transition.type}={transition.status}: {transition.message}", now=stamp,
                )
            except ApiException as exc:  # an Event is informative; losing one must not fail the reconcile
                log.warning("could not post event %s on %s/%s: HTTP %s", transition.reason, key[1], key[2], exc.status)
        if self.metrics:
            status = {**current, **patch}
            self.metrics.observed(key, status.get("phase"), status.get("costUSD"))
        return patch

