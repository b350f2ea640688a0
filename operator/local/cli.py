"""`alpaca run`: the whole pipeline on this machine, from the same manifests a cluster takes."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from ..manifests import ManifestError, load
from .layout import Layout
from .plan import plan
from .runner import LocalRunner, StepFailed
from .summary import summary_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="manifest files, or folders of *.yaml")
    parser.add_argument(
        "--state-dir", type=Path,
        help="where outputs, logs and step records go (default: .alpaca/ in the current folder)",
    )
    parser.add_argument("--force", action="store_true", help="redo every step, even when its inputs are unchanged")
    parser.add_argument(
        "--exit", action="store_true", dest="exit_when_done",
        help="stop the servers and exit when the pipeline is done, instead of serving until Ctrl-C",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the workloads' own output")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `kill`, a CI timeout), handled as Ctrl-C is: the servers, which
    run in sessions of their own, and the step in progress are stopped rather than left running."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        steps = plan(load(args.paths))
    except (ManifestError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layout = Layout((args.state_dir or Path(".alpaca")).resolve())
    runner = LocalRunner(layout, force=args.force, echo=not args.quiet, say=lambda line: print(line, file=sys.stderr))
    print(f"plan: {' -> '.join(step.title for step in steps)}  (state in {layout.root})", file=sys.stderr)
    try:
        reports = runner.run(steps, keep_serving=not args.exit_when_done)
    except StepFailed as exc:
        runner.stop_all()
        print(f"\nerror: {exc}", file=sys.stderr)
        print("outputs of the steps that finished are kept; fix the cause and run again", file=sys.stderr)
        summary_table(runner.reports, failed=exc.step)
        return 1
    except KeyboardInterrupt as exc:
        runner.stop_all()
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    summary_table(reports)
    if runner.servers:
        print("serving until Ctrl-C (pass --exit to stop when done)", file=sys.stderr)
        try:
            runner.wait_for_servers()
        except KeyboardInterrupt:
            pass
    return 0
