"""Leader election decisions, as client-go makes them: a table of Lease states."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from alpaca_operator.leader import LeaderElector, Record, Timings, decide

WALL = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
STAMP = "2026-01-01T12:00:00.000000Z"
T = Timings(lease_duration=15, renew_deadline=10, retry_period=2)
OTHERS = Record("b", 15, "2026-01-01T11:00:00.000000Z", "2026-01-01T11:59:59.000000Z", 3)


@pytest.mark.parametrize(
    ("current", "observed_at", "now", "expected"),
    [
        # No Lease yet: create it, no transitions yet.
        (None, 0.0, 100.0, Record("a", 15, STAMP, STAMP, 0)),
        # Someone else renewed 14.9 s ago by our clock: still theirs.
        (OTHERS, 85.1, 100.0, None),
        # Not renewed for the full duration by our clock: ours, one more transition.
        (OTHERS, 85.0, 100.0, Record("a", 15, STAMP, STAMP, 4)),
        # Released (empty holder): ours at once.
        (Record("", 1, None, None, 3), 99.0, 100.0, Record("a", 15, STAMP, STAMP, 4)),
        # Ours: renewed, acquire time and transitions kept.
        (Record("a", 15, "2026-01-01T11:00:00.000000Z", "x", 2), 99.0, 100.0, Record("a", 15, "2026-01-01T11:00:00.000000Z", STAMP, 2)),
    ],
)
def test_decide(current: Record | None, observed_at: float, now: float, expected: Record | None) -> None:
    assert decide(current, identity="a", observed_at=observed_at, now=now, wall=WALL, timings=T) == expected


def test_timings_must_leave_the_old_leader_time_to_stop() -> None:
    with pytest.raises(ValueError, match="leaseDuration > renewDeadline > retryPeriod"):
        Timings(lease_duration=10, renew_deadline=10, retry_period=2)


class FakeLeases:
    """A Lease store with resourceVersion checks, as the API server does them."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    def _stored(self, record: Record) -> dict:
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": record.to_spec()}
        return self.lease

    def get(self) -> dict | None:
        return self.lease

    def create(self, record: Record) -> dict:
        from kubernetes.client.exceptions import ApiException

        if self.lease is not None:
            raise ApiException(status=409)
        return self._stored(record)

    def update(self, record: Record, resource_version: str) -> dict:
        from kubernetes.client.exceptions import ApiException

        if self.lease is None or self.lease["metadata"]["resourceVersion"] != resource_version:
            raise ApiException(status=409)
        return self._stored(record)


def test_one_leader_and_a_takeover_only_after_the_lease_expires() -> None:
    leases = FakeLeases()
    clock = [0.0]
    a = LeaderElector(leases, "a", T, clock=lambda: clock[0])  # type: ignore[arg-type]
    b = LeaderElector(leases, "b", T, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    # a stops renewing (crashed). After its renew deadline it no longer counts itself leader...
    clock[0] = 10.0
    assert not a.is_leader()
    assert not b.try_acquire_or_renew()
    # ...and b takes over only once the lease duration has passed since b saw the last renewal.
    clock[0] = 14.9
    assert not b.try_acquire_or_renew()
    clock[0] = 15.0
    assert b.try_acquire_or_renew() and b.is_leader()
    assert Record.from_lease(leases.lease).transitions == 1  # type: ignore[arg-type]
    # a comes back: it sees b's lease and stays a follower.
    assert not a.try_acquire_or_renew() and not a.is_leader()
