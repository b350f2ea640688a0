"""`alpaca validate`: check manifests with the same models and CEL rules as the cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .manifests import ManifestError, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="manifest files or folders of *.yaml")


def run(args: argparse.Namespace) -> int:
    try:
        manifests = load(args.paths)
    except (ManifestError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    for manifest in manifests:
        print(f"{manifest.source}: {manifest.kind} {manifest.name!r} is valid")
    return 0
