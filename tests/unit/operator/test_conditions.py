from __future__ import annotations

from alpaca_operator.conditions import Desired, is_bad, merge, transitions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def test_last_transition_time_moves_only_when_status_flips() -> None:
    first = merge([], [Desired("Ready", "False", "Pending", "starting")], generation=1, now=T0)
    same_status = merge(first, [Desired("Ready", "False", "Running", "running")], generation=2, now=T1)
    flipped = merge(same_status, [Desired("Ready", "True", "Completed")], generation=2, now=T1)

    assert first[0]["lastTransitionTime"] == T0
    assert same_status[0] == {"type": "Ready", "status": "False", "reason": "Running", "message": "running", "lastTransitionTime": T0, "observedGeneration": 2}
    assert flipped[0]["lastTransitionTime"] == T1


def test_unchanged_conditions_merge_to_an_identical_list() -> None:
    desired = [Desired("Ready", "False", "Waiting", "x"), Desired("DatasetReady", "False", "Waiting", "x")]
    once = merge([], desired, generation=1, now=T0)
    assert merge(once, list(reversed(desired)), generation=1, now=T1) == once
    assert [c["type"] for c in once] == ["DatasetReady", "Ready"]


def test_conditions_not_computed_are_kept() -> None:
    kept = {"type": "TeacherReady", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": T0}
    merged = merge([kept], [Desired("Ready", "True", "Completed")], generation=1, now=T1)
    assert kept in merged


def test_transitions_are_status_or_reason_changes() -> None:
    before = merge([], [Desired("Ready", "False", "Pending", "a")], generation=1, now=T0)
    message_only = merge(before, [Desired("Ready", "False", "Pending", "b")], generation=1, now=T1)
    reason = merge(before, [Desired("Ready", "False", "BackoffLimitExceeded", "b")], generation=1, now=T1)
    assert transitions(before, message_only) == []
    [event] = transitions(before, reason)
    assert (event.reason, event.warning) == ("BackoffLimitExceeded", True)


def test_waiting_is_not_a_warning_but_a_failure_is() -> None:
    assert not is_bad({"type": "DatasetReady", "status": "False", "reason": "Waiting"})
    assert is_bad({"type": "DatasetReady", "status": "False", "reason": "NotFound"})
    assert not is_bad({"type": "Ready", "status": "True", "reason": "Completed"})
