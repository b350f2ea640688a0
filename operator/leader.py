"""One active replica: leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

A candidate reads the Lease; when it is free, its own, or has not changed for `leaseDurationSeconds`
by the candidate's own clock, the candidate writes itself in as holder with the resourceVersion it
read (optimistic concurrency: of two racing candidates one gets a 409 and stays a follower). The
holder renews every retry period. It stops counting itself leader as soon as `renew_deadline` has
passed since its last successful renewal, which is shorter than the lease duration the others wait
for: the old leader has stopped writing before anyone else may start.

Why not the Kubernetes Python client's `leaderelection` package: its `run()` blocks in the acquire
loop with no way to stop it, and it offers no check a writer can make at the moment of writing.
Here every write asks `is_leader()` (see `kube.Cluster`), which reads a monotonic clock.

`decide` is the whole decision, pure and table-tested; `LeaderElector` is its thin applier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger("alpaca_operator.leader")

LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timings:
    """client-go's defaults are 15 s / 10 s / 2 s; tests shorten them."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs leaseDuration > renewDeadline > retryPeriod > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )


@dataclass(frozen=True)
class Record:
    """The Lease's spec as the election reads and writes it."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(
    current: Record | None, *, identity: str, observed_at: float, now: float, wall: datetime, timings: Timings
) -> Record | None:
    """The record to write to hold the lease, or None when another holder's lease is still valid.

    `current` is what the Lease holds (None: no Lease yet); `observed_at` is when (monotonic, our
    clock) that record was first seen in this state. Expiry is judged by our own clock from when we
    saw the record change, never by comparing the holder's timestamps with our clock.
    """
    stamp = micro_time(wall)
    duration = max(1, round(timings.lease_duration))
    if current is None:
        return Record(identity, duration, stamp, stamp, 0)
    if current.holder and current.holder != identity and now < observed_at + timings.lease_duration:
        return None
    if current.holder == identity:
        return replace(current, lease_duration_seconds=duration, renew_time=stamp)
    return Record(identity, duration, stamp, stamp, current.transitions + 1)


class LeaseClient:
    """Get/create/update one Lease through a `kube.Cluster` (lease calls are never gated)."""

    def __init__(self, cluster: Any, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self._collection = f"/apis/{LEASE_API}/namespaces/{namespace}/leases"

    def get(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.cluster.call("GET", f"{self._collection}/{self.name}", gated=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def create(self, record: Record) -> dict[str, Any]:
        body = {"apiVersion": LEASE_API, "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace}, "spec": record.to_spec()}
        result: dict[str, Any] = self.cluster.call("POST", self._collection, body, gated=False)
        return result

    def update(self, record: Record, resource_version: str) -> dict[str, Any]:
        body = {
            "apiVersion": LEASE_API, "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": resource_version},
            "spec": record.to_spec(),
        }
        result: dict[str, Any] = self.cluster.call("PUT", f"{self._collection}/{self.name}", body, gated=False)
        return result


class LeaderElector:
    """Runs the election in a thread; `is_leader()` is what every writer checks."""

    def __init__(
        self,
        client: LeaseClient,
        identity: str,
        timings: Timings = Timings(),
        *,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.identity = identity
        self.timings = timings
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._clock = clock
        self._lock = threading.Lock()
        self._renewed_at: float | None = None  # monotonic time of our last successful write
        self._observed: tuple[Record, str] | None = None
        self._observed_at = 0.0
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        with self._lock:
            return self._renewed_at is not None and self._clock() < self._renewed_at + self.timings.renew_deadline

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alpaca-leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop campaigning; with `release`, hand the lease over at once (as client-go's ReleaseOnCancel)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timings.retry_period + 30)
        was_leader = self.is_leader()
        with self._lock:
            self._renewed_at = None
        self._set_leading(False)
        if release and was_leader and self._observed is not None:
            record, version = self._observed
            try:
                self.client.update(Record("", 1, record.acquire_time, micro_time(datetime.now(timezone.utc)), record.transitions), version)
            except ApiException as exc:
                log.info("could not release the lease: HTTP %s", exc.status)

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; True when this replica holds the lease afterwards."""
        now = self._clock()
        lease = self.client.get()
        current = Record.from_lease(lease) if lease is not None else None
        version = (lease or {}).get("metadata", {}).get("resourceVersion", "")
        if current is not None and (self._observed is None or self._observed[0] != current):
            self._observed_at = now
        if current is not None:
            self._observed = (current, version)
        wanted = decide(current, identity=self.identity, observed_at=self._observed_at, now=now,
                        wall=datetime.now(timezone.utc), timings=self.timings)
        if wanted is None:
            self._drop()  # someone else holds a valid lease: whatever we thought, we are not leading
            return False
        try:
            written = self.client.create(wanted) if current is None else self.client.update(wanted, version)
        except ApiException as exc:
            if exc.status == 409:  # another candidate wrote first: the lease is not ours
                self._drop()
                return False
            raise
        self._observed = (Record.from_lease(written), written["metadata"]["resourceVersion"])
        self._observed_at = now
        with self._lock:
            self._renewed_at = now
        return True

    def _drop(self) -> None:
        with self._lock:
            self._renewed_at = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                held = self.try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001 - a failed round is retried; leadership lapses by itself
                log.warning("leader election round failed: %r", exc)
                held = False
            if not held and self._leading and not self.is_leader():
                log.warning("lost the lease %s/%s: stopping all writes", self.client.namespace, self.client.name)
            self._set_leading(self.is_leader())
            self._stop.wait(self.timings.retry_period)

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("%s holds the lease %s/%s", self.identity, self.client.namespace, self.client.name)
        callback = self._on_started if leading else self._on_stopped
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a callback's failure must not stop the election
                log.exception("leader election callback failed")
