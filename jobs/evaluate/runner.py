"""An evaluation run: answers from both contestants, two verdicts per task, then the report.

Up to `maxConcurrency` requests are in flight. Verdicts for tasks whose answers are in go first, so
judging keeps pace with answering and a budget stop leaves as few answers unjudged as it can; a
new task is started only when its whole worst case (its answers and two verdicts) still fits the
budget. Each request is journaled before it leaves, with the most it can bill, and again when it
ends, before anything is built on it: a killed job resumes from the journal without asking or
judging anything twice, and what its lost requests may have billed is charged at the worst case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from alpaca_operator.api.instructdataset import TokenPricing
from alpaca_operator.api.results import RESULT_KEY
from alpaca_operator.api.workloads import MANIFEST_FILE, EvaluateConfig, ResolvedContestant, ResolvedEndpoint
from alpaca_jobs.generate.output import OutputFolder
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.teacher import GaveUp
from alpaca_jobs.report import StatusReporter
from alpaca_jobs.results import evaluation_result

from . import chart, rubric
from .endpoint import Endpoint, EndpointRejected, resolve_api_key
from .journal import JOURNAL_FILE, Entry, Journal, Order, Role, fingerprint
from .outputs import answers_for, load_outputs
from .state import CONTESTANTS, ORDERS, EvaluationState
from .summary import judgement_rows, score, summary
from .tasks import load_tasks, sample
from .verdicts import parse_verdict

log = logging.getLogger(__name__)

JUDGEMENTS_FILE = "judgements.jsonl"
SUMMARY_FILE = "summary.json"
CHART_FILE = "win_rate.png"
# Byte-level BPE never makes more tokens than UTF-8 bytes; the chat template adds a few of its own.
_TEMPLATE_TOKENS = 64
_JOURNAL_PUSH_INTERVAL_S = 60.0


class ConfigError(ValueError):
    """The run cannot start as configured; the message says what to fix."""


class StopReason(str, Enum):
    COMPLETED = "completed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    ENDPOINT_UNAVAILABLE = "endpoint_unavailable"  # requests failed on every retry
    ENDPOINT_REJECTED = "endpoint_rejected"  # refused outright (auth, model name...)


# A clean end writes the result; a failed one writes the report of what it has and exits non-zero.
SUCCESSFUL = (StopReason.COMPLETED, StopReason.BUDGET_EXHAUSTED)


@dataclass(frozen=True)
class RunOptions:
    retry: RetryPolicy | None = None  # None: the spec's maxRetries with default delays
    progress_bar: bool | None = None  # None: when stderr is a terminal
    status_interval_s: float = 5.0
    fail_after: int | None = None  # requests in a row given up before stopping (None: 5 or the concurrency)


@dataclass(frozen=True)
class Outcome:
    stop_reason: StopReason
    message: str
    summary: dict[str, Any]


def _bound(messages: list[dict[str, str]]) -> int:
    """The most prompt tokens a chat request can bill."""
    return sum(len(m["content"].encode("utf-8")) + 8 for m in messages) + _TEMPLATE_TOKENS


class _Progress:
    """A progress bar in a terminal, a log line now and then otherwise, and the status patch in a pod."""

    def __init__(self, state: EvaluationState, config: EvaluateConfig, options: RunOptions) -> None:
        self._reporter = StatusReporter(config.status_target, min_interval_s=options.status_interval_s)
        self._bar = None
        self._last_log = time.monotonic()
        show = sys.stderr.isatty() if options.progress_bar is None else options.progress_bar
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=len(state.tasks), initial=len(state.judged_tasks), unit="task", desc=config.name, dynamic_ncols=True)

    def update(self, state: EvaluationState, *, force: bool = False) -> None:
        progress = state.progress()
        if self._bar is not None:
            self._bar.n = progress.judged
            self._bar.set_postfix(answered=progress.answered, unparsed=progress.unparsed_verdicts, cost=f"${progress.cost_usd:.4f}")
        elif force or time.monotonic() - self._last_log > 30:
            self._last_log = time.monotonic()
            log.info("judged %d/%d, answered %d, unparsed verdicts %d, cost $%.4f", progress.judged, progress.tasks,
                     progress.answered, progress.unparsed_verdicts, progress.cost_usd)
        self._reporter.report(progress.to_wire(), force=force)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Run:
    def __init__(self, config: EvaluateConfig, keys: dict[str, str | None], options: RunOptions) -> None:
        self.config = config
        self.spec = config.spec
        self.options = options
        for role, contestant in (("candidate", config.candidate), ("baseline", config.baseline)):
            if (contestant.endpoint is None) == (contestant.outputs is None):
                raise ConfigError(f"{role}: exactly one of endpoint or outputs must be set")
        tasks = sample(load_tasks(config.tasks), self.spec.tasks.sample_size, self.spec.tasks.random_seed)
        self.contestants: dict[Role, ResolvedContestant] = {"candidate": config.candidate, "baseline": config.baseline}
        written = {role: answers_for(tasks, load_outputs(c.outputs), c.outputs, role)
                   for role, c in self.contestants.items() if c.outputs is not None}
        pricing: dict[Role, TokenPricing] = {"judge": config.judge.pricing}
        for role, contestant in self.contestants.items():
            if contestant.endpoint is not None:
                pricing[role] = contestant.endpoint.pricing
        self.state = EvaluationState(tasks, pricing, written)
        self.output = OutputFolder(config.output)
        self.journal = Journal(self.output.path / JOURNAL_FILE)
        requests = self.spec.requests
        self.retry = options.retry or RetryPolicy(max_retries=requests.max_retries)
        self.concurrency = requests.max_concurrency
        self.fail_after = options.fail_after or max(5, self.concurrency)
        self._keys = keys
        self._last_push = time.monotonic()
        self._sync: asyncio.Task[None] | None = None
        self._verdict_queue: deque[tuple[str, Order]] = deque()
        self._answer_queue: deque[tuple[str, Role]] = deque()
        self._started: set[str] = set()  # tasks with an answer asked for (or known)

    # -- what to ask next -------------------------------------------------------------------------

    def _queue(self) -> None:
        state = self.state
        for task in state.tasks:
            if state.answered(task.key):
                self._started.add(task.key)
                self._verdict_queue.extend((task.key, o) for o in ORDERS if (task.key, o) not in state.verdicts)
            else:
                if any((task.key, role) in state.answers for role in CONTESTANTS):
                    self._started.add(task.key)
                self._answer_queue.extend((task.key, r) for r in CONTESTANTS if (task.key, r) not in state.answers)

    def _answer_request(self, key: str, role: Role) -> tuple[list[dict[str, str]], dict[str, Any], tuple[int, int]]:
        task = self.state.by_key[key]
        messages = rubric.answer_messages(task.instruction, task.input)
        generation = self.spec.generation
        params = {"temperature": generation.temperature, "top_p": generation.top_p, "max_tokens": generation.max_tokens}
        return messages, params, (_bound(messages), generation.max_tokens)

    def _judge_request(self, key: str, order: Order) -> tuple[list[dict[str, str]], dict[str, Any], tuple[int, int]]:
        task = self.state.by_key[key]
        candidate, baseline = self.state.answers[(key, "candidate")], self.state.answers[(key, "baseline")]
        first, second = (candidate, baseline) if order == "candidate_first" else (baseline, candidate)
        messages = rubric.judge_messages(task.instruction, task.input, first, second)
        judge = self.spec.judge
        params: dict[str, Any] = {"temperature": 0.0, "max_tokens": judge.max_tokens}
        bound = _bound(messages)
        if judge.structured_output:
            params["response_format"] = rubric.response_format()
            # Some APIs put the schema in front of the model, and bill it as prompt tokens.
            bound += len(json.dumps(params["response_format"]).encode("utf-8"))
        return messages, params, (bound, judge.max_tokens)

    def _fingerprint(self, role: Role, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        end = self.config.judge if role == "judge" else self.contestants[role].endpoint
        assert end is not None
        return fingerprint(end.url, end.model, messages, params)

    def _current_fingerprint(self, key: str, role: Role, order: Order | None) -> str | None:
        """The fingerprint of the request this run would send for an entry; None: it sends none."""
        if key not in self.state.by_key:
            return None
        if role == "judge":
            if order is None or not self.state.answered(key):
                return None
            messages, params, _ = self._judge_request(key, order)
        else:
            if self.contestants[role].endpoint is None:  # answers written beforehand replace asking
                return None
            messages, params, _ = self._answer_request(key, role)
        return self._fingerprint(role, messages, params)

    def _replay(self, entries: list[Entry]) -> int:
        """Apply the journal's entries this run would have made itself; returns how many were not.

        Run in journal order, so a verdict is checked against the answers reused before it. An
        entry of another spec (settings, model, judge, rubric, answers, or a task out of the sample)
        is a request of another evaluation: not reused, and not billed to this one, neither what it
        recorded nor, if it was lost in flight, its worst case. The reused entries count as they
        were paid once; what the new settings ask is billed as it comes.
        """
        stale = 0
        for entry in entries:
            if entry.fp is not None and entry.fp == self._current_fingerprint(entry.task, entry.role, entry.order):
                self.state.apply(entry)
            else:
                stale += 1
        return stale

    def _task_worst_case(self, key: str) -> float:
        """What a task not yet started can bill at most: its answers still to ask, then two verdicts."""
        task = self.state.by_key[key]
        generation = self.spec.generation
        usd = 0.0
        answer_bytes = 0
        for role in CONTESTANTS:
            if (key, role) in self.state.answers:
                answer_bytes += len(self.state.answers[(key, role)].encode("utf-8"))
            else:
                messages, _, (prompt, completion) = self._answer_request(key, role)
                usd += self.state.usd(role, prompt, completion)
                answer_bytes += 4 * generation.max_tokens  # an estimate: the answer is not there yet
        judge_prompt = _bound(rubric.judge_messages(task.instruction, task.input, "", "")) + answer_bytes
        return usd + 2 * self.state.usd("judge", judge_prompt, self.spec.judge.max_tokens)

    def _affordable(self, usd: float) -> bool:
        budget = self.spec.budget_usd
        return budget is None or self.state.spent_usd + self.state.reserved_usd + usd <= budget + 1e-12

    def _next(self) -> tuple[str, Role, Order | None, list[dict[str, str]], dict[str, Any], tuple[int, int]] | None | bool:
        """The next request, None when there is none, False when the budget forbids the next one."""
        if self._verdict_queue:
            key, order = self._verdict_queue[0]
            messages, params, bound = self._judge_request(key, order)
            if not self._affordable(self.state.usd("judge", *bound)):
                return False
            self._verdict_queue.popleft()
            return key, "judge", order, messages, params, bound
        while self._answer_queue:
            key, role = self._answer_queue[0]
            if (key, role) in self.state.answers:
                self._answer_queue.popleft()
                continue
            messages, params, bound = self._answer_request(key, role)
            cost = self.state.usd(role, *bound) if key in self._started else self._task_worst_case(key)
            if not self._affordable(cost):
                return False
            self._answer_queue.popleft()
            self._started.add(key)
            return key, role, None, messages, params, bound
        return None

    # -- the loop ---------------------------------------------------------------------------------

    def _record(self, entry: Entry, progress: _Progress) -> None:
        self.journal.append(entry)  # kept before it is used: the heart of resuming
        self.state.apply(entry)
        if entry.kind == "answer" and self.state.answered(entry.task):
            self._verdict_queue.extend((entry.task, o) for o in ORDERS if (entry.task, o) not in self.state.verdicts)
        progress.update(self.state)
        if self.output.remote and time.monotonic() - self._last_push > _JOURNAL_PUSH_INTERVAL_S:
            self._last_push = time.monotonic()
            self.output.push(JOURNAL_FILE)

    async def _ask(self, endpoint: Endpoint, key: str, role: Role, order: Order | None,
                   messages: list[dict[str, str]], params: dict[str, Any], fp: str) -> Entry:
        try:
            answer = await endpoint.complete(messages, **params)
        except GaveUp as exc:
            log.warning("%s request for task %s given up: %s", role, key, exc)
            return Entry("failed", key, role, order, problem=exc.reason, retries=exc.retries, fp=fp)
        if answer.content is None:  # a body that was no chat completion: asked again by a rerun
            return Entry("failed", key, role, order, problem=answer.problem, prompt_tokens=answer.prompt_tokens,
                         completion_tokens=answer.completion_tokens, retries=answer.retries, fp=fp)
        if role == "judge":
            return Entry("verdict", key, role, order, content=answer.content, winner=parse_verdict(answer.content),
                         finish_reason=answer.finish_reason, prompt_tokens=answer.prompt_tokens,
                         completion_tokens=answer.completion_tokens, problem=answer.problem, retries=answer.retries, fp=fp)
        return Entry("answer", key, role, None, content=answer.content, finish_reason=answer.finish_reason,
                     prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                     problem=answer.problem, retries=answer.retries, fp=fp)

    def _sync_in_background(self) -> None:
        """One fsync for every entry appended since the last, off the event loop."""
        if self._sync is None or self._sync.done():
            self._sync = asyncio.create_task(asyncio.to_thread(self.journal.sync))

    async def _loop(self, endpoints: dict[str, Endpoint], progress: _Progress) -> StopReason:
        in_flight: dict[asyncio.Task[Entry], tuple[str, str, str | None]] = {}
        stop: StopReason | None = None
        blocked = False
        try:
            while True:
                if stop is None and self.state.consecutive_failures >= self.fail_after:
                    stop = StopReason.ENDPOINT_UNAVAILABLE
                if stop is None:
                    while len(in_flight) < self.concurrency:
                        chosen = self._next()
                        if chosen is None or chosen is False:
                            blocked = chosen is False
                            break
                        key, role, order, messages, params, bound = chosen
                        fp = self._fingerprint(role, messages, params)
                        sent = Entry("sent", key, role, order, prompt_tokens=bound[0], completion_tokens=bound[1], fp=fp)
                        self.journal.append(sent)  # on record before it leaves
                        self.state.apply(sent)
                        task = asyncio.create_task(self._ask(endpoints[role], key, role, order, messages, params, fp))
                        in_flight[task] = sent.request
                if not in_flight:
                    if stop is not None:
                        return stop
                    if blocked:
                        return StopReason.BUDGET_EXHAUSTED
                    # Nothing left to ask: everything is judged, or what is not failed in this process.
                    return StopReason.COMPLETED if self.state.done else StopReason.ENDPOINT_UNAVAILABLE
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                rejected: BaseException | None = None
                for task in sorted(done, key=lambda t: str(in_flight[t])):
                    del in_flight[task]
                    if isinstance(error := task.exception(), EndpointRejected):
                        rejected = error  # record the other answers first: they are paid for
                        continue
                    self._record(task.result(), progress)
                self._sync_in_background()
                if rejected is not None:
                    raise rejected
        except EndpointRejected:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise

    def _endpoints(self) -> dict[str, Endpoint]:
        timeout = self.spec.requests.request_timeout_seconds
        ends: dict[str, ResolvedEndpoint] = {"judge": self.config.judge}
        for role, contestant in self.contestants.items():
            if contestant.endpoint is not None:
                ends[role] = contestant.endpoint
        return {role: Endpoint(role=role, base_url=end.url, model=end.model, api_key=self._keys.get(role),
                               timeout_s=timeout, retry=self.retry) for role, end in ends.items()}

    async def execute(self) -> Outcome:
        self._fetch_journal()
        replayed = self.journal.load()
        if stale := self._replay(replayed):
            log.info("%d journal entries were made under other settings, tasks or answers: not reused", stale)
        if replayed:
            log.info("resumed from %d journal entries: %d of %d tasks judged", len(replayed),
                     len(self.state.judged_tasks), len(self.state.tasks))
        if lost := self.state.settle_in_flight():
            log.warning("%d requests were in flight when the last process stopped: counted as spent at their worst case ($%.4f)",
                        lost, self.state.unrecorded_cost_usd)
        self.state.consecutive_failures = 0  # a new process gives the endpoints a fresh chance
        self._queue()
        progress = _Progress(self.state, self.config, self.options)
        endpoints = self._endpoints()
        message = ""
        try:
            stop = await self._loop(endpoints, progress)
        except EndpointRejected as exc:
            stop, message = StopReason.ENDPOINT_REJECTED, str(exc)
            self.state.settle_in_flight()  # cancelled after they left: they may have been billed
        finally:
            if self._sync is not None:
                await asyncio.gather(self._sync, return_exceptions=True)
            self.journal.close()
            for endpoint in endpoints.values():
                await endpoint.close()
            progress.update(self.state, force=True)
            progress.close()
        return self._finish(stop, message)

    def _fetch_journal(self) -> None:
        """The store's journal replaces the local one: the store is what survives a lost pod."""
        store = self.output.store
        if store is None or not store.exists(JOURNAL_FILE):
            return
        local = self.output.path / JOURNAL_FILE
        local.unlink(missing_ok=True)
        store.fetch(JOURNAL_FILE, local)

    def _message(self, stop: StopReason) -> str:
        state = self.state
        judged = len(state.judged_tasks)
        return {
            StopReason.COMPLETED: f"judged {judged} tasks",
            StopReason.BUDGET_EXHAUSTED: (
                f"budget of ${self.spec.budget_usd} reached after ${state.spent_usd:.4f}: judged {judged} of "
                f"{len(state.tasks)} tasks; the figures are over those"
            ),
            StopReason.ENDPOINT_UNAVAILABLE: (
                f"requests failed after retries ({dict(state.failed)}); judged {judged} of {len(state.tasks)} tasks; rerun to resume"
            ),
        }.get(stop, "")

    def _finish(self, stop: StopReason, message: str) -> Outcome:
        state = self.state
        message = message or self._message(stop)
        finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        labels = {"candidate": self.config.candidate.label, "baseline": self.config.baseline.label, "judge": self.config.judge.model}
        document = summary(state, name=self.config.name, labels=labels, seed=self.spec.tasks.random_seed,
                           stop_reason=stop.value, message=message, budget_usd=self.spec.budget_usd,
                           structured_output=self.spec.judge.structured_output, finished_at=finished_at)
        rows = judgement_rows(state)
        self.output.write_jsonl(JUDGEMENTS_FILE, rows)  # type: ignore[arg-type]
        summary_file = self.output.write_text(SUMMARY_FILE, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        scored = score(state, self.spec.tasks.random_seed)
        if scored is not None:
            chart.draw(scored[0], self.output.path / CHART_FILE, **labels)
        result = evaluation_result(document, self.config, summary_file) if stop in SUCCESSFUL else None
        manifest: dict[str, Any] = {"name": self.config.name, "stopReason": stop.value, "message": message,
                                    "summary": SUMMARY_FILE, "judgements": JUDGEMENTS_FILE}
        if result is not None:
            manifest[RESULT_KEY] = result.to_wire()
        self.output.write_text(MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        self.output.push()  # the manifest last: a reader keyed on it sees the whole report
        if result is not None:
            extra = {"score": scored[0].to_wire()} if scored is not None else None
            StatusReporter(self.config.status_target).report_result(result, extra=extra)
        return Outcome(stop, message, document)


def api_keys(config: EvaluateConfig, resolve: Callable[[str | None, str], str | None] = resolve_api_key) -> dict[str, str | None]:
    keys: dict[str, str | None] = {"judge": resolve(config.judge.api_key_env, "judge")}
    for role, contestant in (("candidate", config.candidate), ("baseline", config.baseline)):
        if contestant.endpoint is not None:
            keys[role] = resolve(contestant.endpoint.api_key_env, role)
    return keys


def evaluate(config: EvaluateConfig, *, keys: dict[str, str | None] | None = None, options: RunOptions | None = None) -> Outcome:
    """Run (or resume) an evaluation to its end and return how it ended, with its summary."""
    return asyncio.run(Run(config, keys if keys is not None else api_keys(config), options or RunOptions()).execute())


