"""Running helm and kubectl, and reading what the chart renders."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "alpaca-operator"
Documents = list[dict[str, Any]]


def run(argv: list[str], **kwargs: Any) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr or result.stdout}")
    return result.stdout


def find(documents: Documents, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def as_json_list(documents: Documents) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
