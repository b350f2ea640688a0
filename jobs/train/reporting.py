"""What a run leaves behind for people and for the operator: metrics.jsonl, the loss curve, manifest.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
MANIFEST = "manifest.json"


class MetricsLog:
    """One JSON object per optimizer step. A resumed run first drops the lines past its checkpoint,
    so the file always reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        kept: list[str] = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    continue
        path.write_text("".join(f"{line}\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def validation_points(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, validation loss) for the steps the held-out rows were measured after."""
    return [(r["step"], r["validation_loss"]) for r in records if r.get("validation_loss") is not None]


def loss_figure(records: list[dict[str, Any]], title: str) -> Any:
    """The training loss of every step, and the validation loss where it was measured."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=1.2, label="training")
    held = validation_points(records)
    if held:
        # Markers as well as a line: a short run may have a single validation point.
        ax.plot([s for s, _ in held], [v for _, v in held], marker="o", markersize=4, linewidth=1.2, label="validation (held-out rows)")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig = loss_figure(records, title)
    fig.savefig(path)
    plt.close(fig)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    partial = folder / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    partial.rename(folder / MANIFEST)  # the operator reads it as the sign the model is complete


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
