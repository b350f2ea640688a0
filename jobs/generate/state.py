"""Everything a run knows, as a pure function of the seed tasks, the configuration and the journal.

Live answers and replayed ones go through the same `apply`, in journal order, so a resumed run ends
up exactly where the killed one was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from alpaca_operator.api.instructdataset import GenerationProgress, InstructDatasetSpec, TeacherFormat, TokenPricing

from .checkpoint import Record
from .filters import TOO_SIMILAR, InstructionFilters
from .parse import parse_completion, parse_structured
from .prompt import Task, open_slots
from .rouge import RougeLFilter, tokenize


class GenerationState:
    def __init__(self, seeds: Sequence[Task], spec: InstructDatasetSpec, pricing: TokenPricing) -> None:
        self.target = spec.generation.num_examples
        self.last_slot = spec.generation.instructions_per_request
        generation = spec.generation
        # Structured answers are read as JSON, up to the tasks each request asked for.
        self.structured_slots = (
            open_slots(generation.instructions_per_request, generation.seed_tasks_per_prompt,
                       generation.generated_tasks_per_prompt)
            if spec.teacher.format is TeacherFormat.STRUCTURED else None
        )
        self.pricing = pricing
        self.seeds = list(seeds)
        self._filters = InstructionFilters(spec.filters)
        self._rouge = RougeLFilter(spec.filters.rouge_l_threshold)
        for seed in self.seeds:
            self._rouge.add(tokenize(seed.instruction))
        self.kept: list[Task] = []
        self.generated = 0
        self.filtered: Counter[str] = Counter()
        self.requests = 0
        self.failed_requests: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.last_request = -1
        self.consecutive_failures = 0
        self.answers_without_keep = 0
        # Sent and not yet answered: request -> (prompt token bound, completion token bound).
        self.in_flight: dict[int, tuple[int, int]] = {}
        # Batch API: the batch key of each request in flight in one, and the submitted batches' ids.
        self.batch_of: dict[int, str] = {}
        self.slot_of: dict[int, int] = {}  # their first open slot, which parsing their answers needs
        self.submitted: dict[str, str] = {}
        self.batch_prompt_tokens = 0  # the part of the totals billed at batch prices
        self.batch_completion_tokens = 0
        # Requests an earlier process sent and died before recording (their worst-case tokens).
        self.unrecorded_requests = 0
        self.unrecorded_prompt_tokens = 0
        self.unrecorded_completion_tokens = 0
        # Requests this run cancelled in flight once it had its target (their worst-case tokens).
        self.cancelled_requests = 0
        self.cancelled_prompt_tokens = 0
        self.cancelled_completion_tokens = 0

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.target

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Tokens at the run's prices, in US dollars."""
        return (
            prompt_tokens * self.pricing.input_usd_per_million_tokens
            + completion_tokens * self.pricing.output_usd_per_million_tokens
        ) / 1e6

    @property
    def cost_usd(self) -> float:
        """What the recorded answers billed (batch answers at the batch prices)."""
        batch = self.pricing.batch()
        return self.usd(self.prompt_tokens - self.batch_prompt_tokens, self.completion_tokens - self.batch_completion_tokens) + (
            self.batch_prompt_tokens * batch.input_usd_per_million_tokens
            + self.batch_completion_tokens * batch.output_usd_per_million_tokens
        ) / 1e6

    @property
    def unrecorded_cost_usd(self) -> float:
        """The most the requests lost in flight to a kill can have billed."""
        return self.usd(self.unrecorded_prompt_tokens, self.unrecorded_completion_tokens)

    @property
    def cancelled_cost_usd(self) -> float:
        """The most the requests cancelled in flight can have billed (nothing, at an in-cluster teacher)."""
        return self.usd(self.cancelled_prompt_tokens, self.cancelled_completion_tokens)

    @property
    def spent_usd(self) -> float:
        """What the budget is charged: recorded cost plus the worst case of what was never recorded."""
        return self.cost_usd + self.unrecorded_cost_usd + self.cancelled_cost_usd

    def settle_in_flight(self) -> int:
        """Count what an earlier process left in flight as spent at its worst case; returns how many.

        Called once a new process has replayed the journal and before it sends anything, so every
        request still in flight belonged to a process that is gone: its answer will never come.
        Requests in a Batch API batch are not lost: the batch goes on without us and is collected.
        """
        lost = [request for request in self.in_flight if request not in self.batch_of]
        for request in lost:
            prompt_bound, completion_bound = self.in_flight.pop(request)
            self.unrecorded_requests += 1
            self.unrecorded_prompt_tokens += prompt_bound
            self.unrecorded_completion_tokens += completion_bound
        return len(lost)

    def pending_batches(self) -> dict[str, list[int]]:
        """Batch key -> its requests still unanswered, in request order."""
        pending: dict[str, list[int]] = {}
        for request in sorted(self.batch_of):
            pending.setdefault(self.batch_of[request], []).append(request)
        return pending

    def apply(self, record: Record) -> int:
        """Account for one journal record; returns how many examples it added."""
        self.last_request = max(self.last_request, record.request)
        if record.outcome == "sent":
            self.in_flight[record.request] = (record.prompt_tokens, record.completion_tokens)
            if record.batch is not None:
                self.batch_of[record.request] = record.batch
                self.slot_of[record.request] = record.first_slot
            return 0
        if record.outcome == "submitted":
            assert record.batch is not None and record.content is not None
            self.submitted[record.batch] = record.content
            return 0
        self.in_flight.pop(record.request, None)
        self.batch_of.pop(record.request, None)
        self.slot_of.pop(record.request, None)
        if record.outcome == "withdrawn":
            return 0  # never sent: nothing to count
        if record.outcome == "cancelled":
            # Sent, then abandoned: whatever the teacher did for it is counted at its worst case.
            self.cancelled_requests += 1
            self.cancelled_prompt_tokens += record.prompt_tokens
            self.cancelled_completion_tokens += record.completion_tokens
            return 0
        self.retries.update(record.retries)
        if record.outcome == "failed":
            self.failed_requests[record.problem or "unknown"] += 1
            self.consecutive_failures += 1
            return 0
        self.consecutive_failures = 0
        self.requests += 1
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        if record.batch is not None:
            self.batch_prompt_tokens += record.prompt_tokens
            self.batch_completion_tokens += record.completion_tokens
        added = 0
        if record.problem is not None or record.content is None:
            self.failed_requests[record.problem or "malformed_response"] += 1
        else:
            added = self._take(record)
        self.answers_without_keep = 0 if added else self.answers_without_keep + 1
        return added

    def _take(self, record: Record) -> int:
        assert record.content is not None
        truncated = record.finish_reason == "length"
        if self.structured_slots is not None:
            items = parse_structured(record.content, self.structured_slots, truncated=truncated)
        else:
            items = parse_completion(record.content, record.first_slot, truncated=truncated, last_slot=self.last_slot)
        added = 0
        for item in items:
            # Past the target, tasks are not even looked at: the counts describe the dataset.
            if self.done:
                break
            self.generated += 1
            if item.task is None:
                self.filtered[item.problem or "malformed"] += 1
                continue
            reason = self._filters.reason_to_drop(item.task.instruction)
            if reason is not None:
                self.filtered[reason] += 1
                continue
            tokens = tokenize(item.task.instruction)
            if self._rouge.too_similar(tokens):
                self.filtered[TOO_SIMILAR] += 1
                continue
            self._rouge.add(tokens)
            self.kept.append(item.task)
            added += 1
        return added

    def progress(self) -> GenerationProgress:
        return GenerationProgress(
            kept=len(self.kept),
            target=self.target,
            generated=self.generated,
            filtered=dict(self.filtered),
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=round(self.cost_usd, 9),
            unrecorded_requests=self.unrecorded_requests,
            unrecorded_cost_usd=round(self.unrecorded_cost_usd, 9),
        )
