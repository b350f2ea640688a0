from __future__ import annotations

import signal

import pytest

from alpaca_jobs.train.exit_codes import BAD_DATASET, BAD_MODEL, INVALID_CONFIG, OK, PERMANENT, RETRYABLE, pod_exit_code

def kubeflow_retries(code: int) -> bool:
    """The training operator's rule under restartPolicy: ExitCode (v1.9.3, IsRetryableExitCode):
    a replica whose container exited with 128 or more is recreated, any other code fails the job."""
    return code >= 128


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ([BAD_DATASET, BAD_DATASET], BAD_DATASET),  # every rank read the same bad file
        ([BAD_MODEL, -signal.SIGTERM], BAD_MODEL),  # one rank failed for good, torchrun stopped the other
        ([1, INVALID_CONFIG], INVALID_CONFIG),
        ([BAD_MODEL, BAD_DATASET], BAD_DATASET),  # either is permanent; the choice is stable
        ([1], RETRYABLE),  # an unexpected exception: a crash, worth a restart
        ([-signal.SIGKILL, OK], RETRYABLE),  # a worker OOM-killed
        ([RETRYABLE, RETRYABLE], RETRYABLE),
    ],
)
def test_a_permanent_worker_code_wins_else_the_pod_asks_for_a_restart(workers: list[int], expected: int) -> None:
    assert pod_exit_code(workers) == expected


def test_codes_agree_with_the_job_controllers_rule() -> None:
    assert kubeflow_retries(RETRYABLE)
    assert not any(kubeflow_retries(code) for code in PERMANENT)
    # Signals the launcher itself receives (preemption, eviction, OOM kill) come back as 128+N.
    assert all(kubeflow_retries(128 + s) for s in (signal.SIGINT, signal.SIGKILL, signal.SIGTERM))
    assert OK not in PERMANENT and pod_exit_code([OK, OK]) == OK
