"""What local mode remembers between runs: a fingerprint of each finished step's inputs.

A step whose manifest fields and upstream digests are unchanged is skipped, like a build tool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from .inputs import Outputs


def fingerprint(kind: str, spec_wire: dict[str, Any], upstream_digests: list[str | None]) -> str:
    payload = {"kind": kind, "spec": spec_wire, "upstream": upstream_digests, "version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class StepRecords:
    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, kind: str, name: str) -> Path:
        return self._folder / f"{kind}-{name}.json"

    def load(self, kind: str, name: str, expected: str) -> Outputs | None:
        """The recorded outputs when the step ran with the same fingerprint and they still exist."""
        path = self._path(kind, name)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if record.get("fingerprint") != expected:
            return None
        outputs = Outputs(**record["outputs"])
        if outputs.location and not Path(outputs.location).exists():
            return None
        return outputs

    def save(self, kind: str, name: str, value: str, outputs: Outputs) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        record = {"fingerprint": value, "outputs": asdict(outputs)}
        tmp = self._path(kind, name).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self._path(kind, name))
