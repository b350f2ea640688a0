"""torchrun with exit codes a job controller can act on.

    python -m alpaca_jobs.train.launch --no-python alpaca train --config /etc/alpaca/train.json

Takes torchrun's arguments (and its PET_* variables) unchanged. torchrun itself exits 1 whatever
its workers did, and on SIGTERM too, which a PyTorchJob with `restartPolicy: ExitCode` reads as a
permanent failure; this launcher exits with the workers' permanent code when one has one, and
with a retryable code otherwise (see `exit_codes`).
"""

from __future__ import annotations

import sys

from .exit_codes import OK, pod_exit_code


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        code = pod_exit_code(codes)
        print(f"alpaca train launcher: workers exited with {codes}; exiting {code}", file=sys.stderr)
        return code
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return OK


if __name__ == "__main__":
    sys.exit(main())
