"""Everything an evaluation knows, as a pure function of its tasks, prices, answers written
beforehand and the journal.

Live entries and replayed ones go through the same `apply`, in journal order, so a resumed job
knows exactly what the killed one had: which answers and verdicts it holds, what is owed, what
was in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from alpaca_operator.api.evaluation import EvaluationProgress
from alpaca_operator.api.instructdataset import TokenPricing

from .journal import Entry, Order, Role
from .stats import task_outcome
from .tasks import EvalTask

ORDERS: tuple[Order, Order] = ("candidate_first", "baseline_first")
CONTESTANTS: tuple[Role, Role] = ("candidate", "baseline")


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A", "B", "tie"; None: no verdict could be read (counted as a tie)
    reply: str


class EvaluationState:
    def __init__(self, tasks: list[EvalTask], pricing: dict[Role, TokenPricing],
                 written: dict[Role, dict[str, str]] | None = None) -> None:
        self.tasks = list(tasks)
        self.by_key = {task.key: task for task in self.tasks}
        self.pricing = pricing
        # (task key, role) -> answer; answers written beforehand are known from the start.
        self.answers: dict[tuple[str, Role], str] = {}
        for role, answers in (written or {}).items():
            for key, text in answers.items():
                self.answers[(key, role)] = text
        self.verdicts: dict[tuple[str, Order], Verdict] = {}
        # Kept as entries arrive: progress is reported after every one, and a scan would be quadratic.
        self.answered_count = sum(1 for task in self.tasks if self.answered(task.key))
        self.judged_count = 0
        self.unparsed_count = 0
        # Sent and not yet ended: request -> (role, prompt token bound, completion token bound).
        self.in_flight: dict[tuple[str, str, str | None], tuple[Role, int, int]] = {}
        self.requests: Counter[str] = Counter()  # answered requests by role
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # by problem
        self.truncated: Counter[str] = Counter()  # answers and verdicts cut by max_tokens, by role
        self.retries: Counter[str] = Counter()
        self.consecutive_failures = 0
        # Requests an earlier process sent and died before recording, at their worst case, by role.
        self.unrecorded_requests = 0
        self.unrecorded_prompt_tokens: Counter[str] = Counter()
        self.unrecorded_completion_tokens: Counter[str] = Counter()

    # -- money ------------------------------------------------------------------------------------

    def usd(self, role: str, prompt_tokens: int, completion_tokens: int) -> float:
        pricing = self.pricing.get(role)  # type: ignore[call-overload]
        if pricing is None:
            return 0.0
        return (prompt_tokens * pricing.input_usd_per_million_tokens
                + completion_tokens * pricing.output_usd_per_million_tokens) / 1e6

    @property
    def cost_usd(self) -> float:
        """What the recorded answers and verdicts billed."""
        roles = set(self.prompt_tokens) | set(self.completion_tokens)
        return sum(self.usd(r, self.prompt_tokens[r], self.completion_tokens[r]) for r in roles)

    @property
    def unrecorded_cost_usd(self) -> float:
        """The most that requests lost in flight to a kill can have billed."""
        roles = set(self.unrecorded_prompt_tokens) | set(self.unrecorded_completion_tokens)
        return sum(self.usd(r, self.unrecorded_prompt_tokens[r], self.unrecorded_completion_tokens[r]) for r in roles)

    @property
    def spent_usd(self) -> float:
        """What the budget is charged: recorded cost plus the worst case of what was never recorded."""
        return self.cost_usd + self.unrecorded_cost_usd

    @property
    def reserved_usd(self) -> float:
        """The worst case of every request in flight."""
        return sum(self.usd(role, p, c) for role, p, c in self.in_flight.values())

    def settle_in_flight(self) -> int:
        """Charge what an earlier process left in flight at its worst case; returns how many.

        Called after replaying the journal and before sending anything: every request still in
        flight then belonged to a process that is gone, and its answer will never come.
        """
        lost = list(self.in_flight.values())
        for role, prompt_bound, completion_bound in lost:
            self._charge_lost(role, prompt_bound, completion_bound)
        self.in_flight.clear()
        return len(lost)

    def _charge_lost(self, role: Role, prompt_bound: int, completion_bound: int) -> None:
        self.unrecorded_requests += 1
        self.unrecorded_prompt_tokens[role] += prompt_bound
        self.unrecorded_completion_tokens[role] += completion_bound

    # -- the journal ------------------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        if entry.kind == "sent":
            # Sent again while still in flight: only a later process resends, so the earlier send
            # was lost with its process (replaying a journal of several killed processes).
            if (lost := self.in_flight.get(entry.request)) is not None:
                self._charge_lost(*lost)
            self.in_flight[entry.request] = (entry.role, entry.prompt_tokens, entry.completion_tokens)
            return
        self.in_flight.pop(entry.request, None)
        self.retries.update(entry.retries)
        if entry.kind == "failed":
            self.failed[entry.problem or "unknown"] += 1
            self.consecutive_failures += 1
            return
        self.consecutive_failures = 0
        self.requests[entry.role] += 1
        self.prompt_tokens[entry.role] += entry.prompt_tokens
        self.completion_tokens[entry.role] += entry.completion_tokens
        self.truncated[entry.role] += entry.finish_reason == "length"
        counted = entry.task in self.by_key  # a journal may hold tasks an earlier sample had
        if entry.kind == "answer":
            was = self.answered(entry.task)
            self.answers[(entry.task, entry.role)] = entry.content or ""
            self.answered_count += counted and not was and self.answered(entry.task)
        elif entry.kind == "verdict":
            assert entry.order is not None
            was = self.judged(entry.task)
            previous = self.verdicts.get((entry.task, entry.order))
            self.verdicts[(entry.task, entry.order)] = Verdict(entry.winner, entry.content or "")
            self.judged_count += counted and not was and self.judged(entry.task)
            self.unparsed_count += counted * ((entry.winner is None) - (previous is not None and previous.winner is None))

    # -- what is known ----------------------------------------------------------------------------

    def answered(self, key: str) -> bool:
        return all((key, role) in self.answers for role in CONTESTANTS)

    def judged(self, key: str) -> bool:
        return all((key, order) in self.verdicts for order in ORDERS)

    def outcome(self, key: str) -> float:
        return task_outcome(self.verdicts[(key, "candidate_first")].winner, self.verdicts[(key, "baseline_first")].winner)

    @property
    def judged_tasks(self) -> list[EvalTask]:
        return [task for task in self.tasks if self.judged(task.key)]

    @property
    def unparsed_verdicts(self) -> int:
        return self.unparsed_count

    @property
    def done(self) -> bool:
        return self.judged_count == len(self.tasks)

    def progress(self) -> EvaluationProgress:
        return EvaluationProgress(
            tasks=len(self.tasks),
            answered=self.answered_count,
            judged=self.judged_count,
            unparsed_verdicts=self.unparsed_count,
            prompt_tokens=sum(self.prompt_tokens.values()),
            completion_tokens=sum(self.completion_tokens.values()),
            cost_usd=round(self.cost_usd, 9),
        )
