"""`alpaca crds`: print the CRDs, write them to a folder, or check a folder is up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .generate import render_all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, help="write one YAML file per CRD into this folder")
    parser.add_argument("--check", type=Path, metavar="DIR", help="exit 1 if the CRDs in DIR differ from the models")


def run(args: argparse.Namespace) -> int:
    rendered = render_all()
    if args.check:
        stale = [name for name, text in rendered.items() if _read(args.check / name) != text]
        for name in stale:
            print(f"{args.check / name} is stale: run `alpaca crds --output-dir {args.check}`", file=sys.stderr)
        return 1 if stale else 0
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.output_dir / name).write_text(text)
            print(args.output_dir / name)
        return 0
    sys.stdout.write("---\n".join(rendered.values()))
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
