"""Exit codes of `alpaca train` and of its launcher, and which of them are worth a restart.

Kubeflow's PyTorchJob with `restartPolicy: ExitCode` (which the operator sets) recreates a replica
whose container exited with 128 or more and fails the job on any lower code: 130, 137 and 143
(SIGINT, SIGKILL, SIGTERM: a preempted or evicted pod, an OOM kill) and 138, the code Kubeflow's
documentation reserves for a program's own "try again", are retried. Everything this module calls
permanent is deterministic: a new pod would read the same config, data and model and fail the
same way.

    0    success
    2    invalid configuration (the TrainConfig file or the flags)      permanent
    3    unusable dataset (missing, malformed row, digest mismatch)     permanent
    4    unusable base model (missing files, too short for maxSeqLength,
         LoRA targets it does not have)                                 permanent
    138  anything else: a crash, a lost peer, unreachable storage       retryable (resumes from the
                                                                        last published checkpoint)
    128+N  the launcher itself got signal N (143 for SIGTERM)           retryable for 130, 137, 143
"""

from __future__ import annotations

from collections.abc import Iterable

OK = 0
INVALID_CONFIG = 2
BAD_DATASET = 3
BAD_MODEL = 4
RETRYABLE = 138

PERMANENT = frozenset({INVALID_CONFIG, BAD_DATASET, BAD_MODEL})


def pod_exit_code(worker_codes: Iterable[int]) -> int:
    """The launcher's exit code from its failed workers' codes (negative: killed by that signal).

    A permanent code from any worker wins, so a deterministic failure is never retried because
    another rank died of the collective it left behind. Otherwise the failure is worth a restart.
    """
    codes = list(worker_codes)
    permanent = sorted(c for c in codes if c in PERMANENT)
    if permanent:
        return permanent[0]
    return OK if codes and all(c == OK for c in codes) else RETRYABLE
