"""The workloads' side of the results contract (operator/api/results.py): build a result, record it.

One function per workload turns what it already measured into a `WorkloadResult`; it goes into
manifest.json's `result`, and once the output is published, onto the resource's status. The
artifact is named as a reader outside the workload finds it: under the output's public name
(pvc://claim/subPath) when its config gives one, rather than the path the pod mounts the claim at.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from alpaca_operator.api.common import Artifact
from alpaca_operator.api.results import RESULT_KEY, WorkloadResult
from alpaca_operator.api.workloads import DATASET_FILE

from .report import StatusReporter
from .storage import sha256_file


class WritesOutput(Protocol):
    """What every batch workload's config says about its output (Generate, Train, EvaluateConfig)."""

    @property
    def output(self) -> str: ...

    @property
    def output_uri(self) -> str | None: ...


def published(config: WritesOutput, relative: str = "") -> str:
    """Where `relative` in the output is found from outside the workload: under the public name
    when the config gives one, else under the output as written (a URI, or a local folder)."""
    base = (config.output_uri or config.output).rstrip("/")
    return f"{base}/{relative}" if relative else base


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dataset_result(manifest: Any, config: WritesOutput, dataset: Path) -> WorkloadResult:
    """A generation run's result, from its manifest (jobs/generate/manifest.py) and the local dataset file."""
    counts = {"generated": manifest.generated, "target": manifest.target, "requests": manifest.requests,
              **{f"filtered.{reason}": n for reason, n in sorted(manifest.filtered.items())}}
    return WorkloadResult(
        artifact=Artifact(uri=published(config, DATASET_FILE), sha256=manifest.dataset_sha256, size_bytes=dataset.stat().st_size),
        size_bytes=dataset.stat().st_size,
        records=manifest.kept,
        counts=dict(list(counts.items())[:64]),
        prompt_tokens=manifest.prompt_tokens,
        completion_tokens=manifest.completion_tokens,
        cost_usd=manifest.cost_usd,
        finished_at=manifest.finished_at,
    )


def model_result(manifest: dict[str, Any], config: WritesOutput, folder: Path) -> WorkloadResult:
    """A training run's result, from its manifest dict (jobs/train/trainer.py) and the local model folder."""
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return WorkloadResult(
        artifact=Artifact(uri=published(config), sha256=manifest["model"]["sha256"], size_bytes=size),
        size_bytes=size,
        records=manifest.get("examples"),
        counts={"steps": int(manifest.get("steps") or 0)},
        tokens=int(manifest.get("tokens") or 0),
        finished_at=now(),
    )


def evaluation_result(summary: dict[str, Any], config: WritesOutput, summary_file: Path) -> WorkloadResult:
    """An evaluation's result, from its summary (jobs/evaluate/summary.py): the artifact is summary.json itself."""
    score = summary.get("score") or {}
    counts = {"tasks": summary["tasks"], "judged": summary["judged"], "unparsedVerdicts": summary["unparsedVerdicts"],
              **{key: score[key] for key in ("wins", "ties", "losses") if key in score}}
    size = summary_file.stat().st_size
    return WorkloadResult(
        artifact=Artifact(uri=published(config, summary_file.name), sha256=sha256_file(summary_file), size_bytes=size),
        size_bytes=size,
        records=summary["judged"],
        counts=counts,
        prompt_tokens=summary["promptTokens"],
        completion_tokens=summary["completionTokens"],
        cost_usd=summary["costUSD"],
        finished_at=summary["finishedAt"],
    )


def add_to_manifest(result: WorkloadResult, manifest_file: Path) -> None:
    """manifest.json gets the result under `result` (before the output folder is published)."""
    document = json.loads(manifest_file.read_text())
    document[RESULT_KEY] = result.to_wire()
    partial = manifest_file.with_name(f".{manifest_file.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(manifest_file)  # readers see the old file or the new one


def report(result: WorkloadResult, reporter: StatusReporter | None) -> None:
    """The result onto the resource's status (in a pod; after the output is published)."""
    if reporter is not None:
        reporter.report_result(result)
