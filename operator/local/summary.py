"""The table local mode ends with: one row per resource, what a person checks first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .plan import Step
from .runner import StepReport


def _details(report: StepReport) -> str:
    summary = report.outputs.summary
    kind = report.step.manifest.kind
    parts: list[str] = []
    if kind == "InstructDataset":
        kept, generated = summary.get("kept"), summary.get("generated")
        tokens_in, tokens_out = summary.get("promptTokens"), summary.get("completionTokens")
        if kept is not None:
            parts.append(f"{kept} kept / {generated} generated")
        if tokens_in is not None:
            parts.append(f"{tokens_in + (tokens_out or 0):,} tokens")
        parts.append(f"{report.outputs.location}")
    elif kind == "FineTune":
        steps, loss = summary.get("steps"), summary.get("finalLoss")
        if steps is not None:
            parts.append(f"{steps} steps")
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.3f}")
        parts.append(str(summary.get("modelPath", report.outputs.location)))
        if (Path(report.outputs.location or "") / "loss_curve.png").exists():
            parts.append("loss_curve.png")
    elif kind == "Evaluation":
        parts.append(_score(summary))
        parts.append(str(summary.get("report", report.outputs.location)))
    else:
        parts.append(f"{report.outputs.summary.get('page', '')}  API {report.outputs.url}")
    return ", ".join(p for p in parts if p)


def _score(summary: dict[str, Any]) -> str:
    """The headline of an evaluation: win rate, its interval, and the split."""
    score = summary.get("score")
    if not isinstance(score, dict):
        return f"nothing judged ({summary.get('stopReason', 'no report')})"
    wins, ties, losses = score.get("wins", 0), score.get("ties", 0), score.get("losses", 0)
    return (
        f"win rate {score['winRate']:.1%} (95% {score['winRateLow']:.1%}-{score['winRateHigh']:.1%}), "
        f"{wins} wins / {ties} ties / {losses} losses of {summary.get('judged', wins + ties + losses)} judged"
    )


def summary_table(reports: list[StepReport], failed: Step | None = None) -> None:
    table = Table(title="alpaca run")
    for column in ("Resource", "Phase", "Cost (USD)", "Time"):
        table.add_column(column)
    # Paths and URLs are what people copy from here: fold them, never cut them short.
    table.add_column("Details", overflow="fold")
    for report in reports:
        cost = report.outputs.summary.get("costUSD")
        phase = report.phase + (" (cached)" if report.skipped else "")
        table.add_row(
            report.step.title, phase, "-" if cost is None else f"{cost:.4f}", f"{report.seconds:.0f}s", _details(report)
        )
    if failed is not None:
        table.add_row(failed.title, "[red]Failed[/red]", "-", "-", "see the error above")
    Console(stderr=True).print(table)
