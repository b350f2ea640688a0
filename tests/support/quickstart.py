"""The quickstart's own manifests, shrunk: the same kinds and fields, numbers sized for 2 cores.

Used by the quickstart test and by CI's run of the README's quickstart command, so both exercise
exactly what `examples/quickstart/` declares, only smaller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"

# Per file: spec fields merged over what the example declares.
SHRINK: dict[str, dict[str, dict[str, Any]]] = {
    "10-dataset.yaml": {
        "generation": {"numExamples": 3},
        "teacher": {"maxConcurrency": 4},
    },
    "20-finetune.yaml": {
        "hyperparameters": {"maxSteps": 2, "maxSeqLength": 128, "globalBatchSize": 4, "microBatchSize": 2},
    },
    "40-evaluation.yaml": {
        "tasks": {"sampleSize": 2},
        "generation": {"maxTokens": 24},
        "judge": {"maxTokens": 32},
    },
}


def write_shrunk_quickstart(folder: Path) -> list[Path]:
    """Write every manifest of examples/quickstart/ into `folder`, shrunk; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(QUICKSTART.glob("*.yaml")):
        document = yaml.safe_load(source.read_text())
        for field, values in SHRINK.get(source.name, {}).items():
            document["spec"][field] = document["spec"].get(field, {}) | values
        target = folder / source.name
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(target)
    return written
