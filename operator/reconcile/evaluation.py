"""Evaluation: wait for its ModelServers, resolve the endpoints, plan ConfigMap + Job, account cost.

The workload owns `progress`, `score` and `result` (it writes them with its ServiceAccount); the
operator derives the phase from the Job, mirrors the report's artifact, and prices the run: the
tokens the workload priced per endpoint, plus the GPU time of the in-cluster servers it asked while
the Job ran (serverCostUSD, accrued up to accruedUntil, never counted twice).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from ..api.evaluation import EvaluationSpec
from ..builders import evaluation as build
from ..builders.inputs import TeacherServer
from ..conditions import TRUE, Desired
from ..cost import Ledger, accrue, round_usd
from ..observe import (
    READY,
    SUCCEEDED,
    ChildState,
    Computed,
    batch_phase,
    kept,
    parse_time,
    record_child,
    run_end,
    running_since,
    stamp_time,
    summarize_job,
    terminal,
)
from ..settings import OperatorSettings
from . import Body, Plan, References, cost_clock, invalid_spec, open_resource
from .endpoints import key_refusal, ready_server, servers_hourly_usd

KIND = "Evaluation"
PLURAL = "evaluations"
# One condition per side that is a ModelServer: which one the evaluation waits for.
SERVER_READY = {"candidate": "CandidateReady", "baseline": "BaselineReady", "judge": "JudgeReady"}


def refs(body: Body) -> list[tuple[str, str]]:
    spec = body.get("spec") or {}
    names = [((spec.get(role) or {}).get("modelServerRef") or {}).get("name") for role in build.ROLES]
    return [("ModelServer", name) for name in dict.fromkeys(n for n in names if n)]


def summarize(body: dict[str, Any]) -> ChildState:
    """A Job, in the evaluation's words."""
    child = summarize_job(body)
    return dataclasses.replace(child, message=child.message.replace("generation Job", "evaluation Job"))


def servers(spec: EvaluationSpec, references: References, settings: OperatorSettings) -> tuple[dict[str, TeacherServer], list[Desired]]:
    """The Ready ModelServers by name, and a condition per side that is one (False: what it waits for)."""
    ready: dict[str, TeacherServer] = {}
    conditions: list[Desired] = []
    for role, ref in build.server_refs(spec):
        server, condition = ready_server(ref.name, references, settings, SERVER_READY[role], prefix=f"{role}: ")
        if server is not None:
            ready[ref.name] = server
        conditions.append(condition)
    return ready, conditions


def servers_hourly(spec: EvaluationSpec, references: References, settings: OperatorSettings) -> float:
    """What the distinct in-cluster servers it asks cost per hour (one server asked twice counts once)."""
    return servers_hourly_usd((ref.name for _, ref in build.server_refs(spec)), references, settings)


def _host_refusal(resolved: build.Resolved, settings: OperatorSettings) -> str | None:
    """A key is sent only to the hosts the operator allows (as a teacher's is)."""
    for role, endpoint in resolved.endpoints():
        if (why := key_refusal(endpoint, settings)) is not None:
            return f"{role}.baseURL: {why}"
    return None


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    opened = open_resource(body, child, EvaluationSpec, PLURAL, "Job", "report")
    if isinstance(opened, Plan):
        return opened
    spec, status, parent = opened.spec, opened.status, opened.parent
    dependencies: list[Desired] = []
    children = []
    if child is None:
        ready, dependencies = servers(spec, references, settings)
        if all(c.status == TRUE for c in dependencies):
            try:
                resolved = build.resolve(spec, settings, ready)
            except build.Unresolved as exc:
                return Plan(invalid_spec(exc))
            if (why := _host_refusal(resolved, settings)) is not None:
                return Plan(invalid_spec(ValueError(why), reason="EndpointHostRefused"))
            children = list(build.build(parent, spec, settings, resolved))
            # Reported as the Job just made (the applier creates it before the status is written).
            child = summarize(children[-1])
    computed = evaluation_status(
        spec, status,
        generation=parent.generation,
        child=child,
        dependencies=dependencies,
        servers_hourly_usd=servers_hourly(spec, references, settings),
        now=cost_clock(now, settings.cost_interval_seconds),
    )
    return Plan(computed, children)


def _score_line(score: dict[str, Any]) -> str | None:
    try:
        rate, low, high = float(score["winRate"]), float(score["winRateLow"]), float(score["winRateHigh"])
        wins, ties, losses = int(score["wins"]), int(score["ties"]), int(score["losses"])
    except (KeyError, TypeError, ValueError):
        return None
    line = f"win rate {rate:.1%} (95% interval {low:.1%}-{high:.1%}) over {wins + ties + losses} tasks: {wins} wins, {ties} ties, {losses} losses"
    if score.get("lengthControlledWinRate") is not None:
        line += f"; length-controlled {float(score['lengthControlledWinRate']):.1%}"
    return line


def evaluation_status(
    spec: EvaluationSpec,
    current: dict[str, Any],
    *,
    generation: int | None,
    child: ChildState | None,
    dependencies: list[Desired],
    servers_hourly_usd: float,
    now: datetime,
) -> Computed:
    """`dependencies` are the per-server conditions to set (empty leaves them as they are)."""
    if child is None and terminal(current):
        return kept(current)
    out = Computed(conditions=list(dependencies))
    waiting = next((c for c in dependencies if c.status != TRUE), None)
    phase, ready = batch_phase(child, waiting, creating="the Job is being created")
    # The final result, once written, is the workload's last word; progress until then. The
    # workload prices each endpoint's tokens itself (they may have different prices).
    usage = current.get("result") or current.get("progress") or {}
    token_usd = float(usage.get("costUSD") or 0.0)
    if (current.get("result") or {}).get("artifact"):
        out.fields["report"] = current["result"]["artifact"]
    ledger = Ledger(0.0, float(current.get("serverCostUSD") or 0.0), parse_time(current.get("accruedUntil")))
    if child is not None:
        if child.start_time is not None and servers_hourly_usd > 0:
            ledger = accrue(ledger, since=running_since(child), end=run_end(child, now), units=0, usd_per_hour=servers_hourly_usd)
            out.fields["serverCostUSD"] = round_usd(ledger.usd)
            if ledger.until is not None:
                out.fields["accruedUntil"] = stamp_time(ledger.until)
        if phase == SUCCEEDED:
            line = _score_line(current.get("score") or {})
            if spec.budget_usd is not None and token_usd >= spec.budget_usd:
                ready = Desired(READY, TRUE, "BudgetReached", f"judging stopped at the budget of ${spec.budget_usd:g}; the verdicts paid for are reported" + (f": {line}" if line else ""))
            elif line:
                ready = Desired(READY, TRUE, "Completed", line)
        record_child(out, child, generation, "spec changed after the evaluation Job was created; the Job keeps its spec (recreate the Evaluation to apply it)")
    out.conditions.append(ready)
    out.fields.update(phase=phase, costUSD=round_usd(token_usd + ledger.usd), message=ready.message or None)
    return out
