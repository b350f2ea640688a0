"""The `alpaca` command. Each subcommand lives in its own module and is imported only when used,
so the generate image never imports torch and the operator image never imports transformers."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# name -> (module, one-line help). A module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("alpaca_operator.crd.cli", "print or write the CustomResourceDefinitions"),
    "train": ("alpaca_jobs.train.cli", "fine-tune a model on Alpaca-format data (alone or under torchrun)"),
    "operator": ("alpaca_operator.runner", "run the kopf operator (all namespaces or a list; one active replica, chosen by a Lease)"),
    "validate": ("alpaca_operator.validate_cli", "validate manifests as the cluster would"),
    "generate": ("alpaca_jobs.generate.cli", "generate instruction data from seed tasks with a teacher model"),
    "evaluate": ("alpaca_jobs.evaluate.cli", "judge a candidate model against a baseline, pairwise in both orders"),
    "serve": ("alpaca_jobs.serve.cli", "serve a model with an OpenAI-compatible API and a chat page"),
    "run": ("alpaca_operator.local.cli", "run manifests as a local pipeline (no cluster needed)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpaca", description="Stanford-Alpaca-style instruction tuning, declaratively.")
    parser.add_argument("--version", action="version", version=f"alpaca-operator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
