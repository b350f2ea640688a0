"""A generation run: concurrent requests, journal first, then filters; stop on target, budget or trouble.

The loop keeps up to `maxConcurrency` requests in flight. Each request is journaled before it is
sent, with the most it can cost; each answer is journaled and only then parsed and filtered, in the
order answers arrive; that order is the journal's, so replaying the journal rebuilds the same
dataset. Requests already in flight when the run decides to stop are still awaited and journaled:
they are paid for, and a later run with a larger target uses them; at an in-cluster teacher, whose
tokens are free, those still in flight at the target are cancelled instead (and journaled so).
Requests in flight when a process is killed are charged at their worst case when the next one
starts, and the budget reserves the worst case of every request in flight, so no sequence of kills
spends past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from alpaca_operator.api.instructdataset import TeacherFormat
from alpaca_operator.api.workloads import GenerateConfig
from alpaca_jobs import api_keys, storage
from alpaca_jobs.report import StatusReporter
from alpaca_jobs.results import add_to_manifest, dataset_result, report

from .batches import BatchClient
from .checkpoint import Journal, Record
from .manifest import CHECKPOINT_FILE, DATASET_FILE, MANIFEST_FILE, Manifest, StopReason
from .output import OutputFolder
from .prompt import (
    TEMPLATE_FIELD,
    PromptTemplateError,
    build_prompt,
    build_structured_prompt,
    check_template,
    choose_examples,
    open_slots,
    request_rng,
)
from .retry import RetryPolicy
from .seeds import load_seed_tasks
from .state import GenerationState
from .teacher import Answer, GaveUp, Teacher, TeacherRejected

log = logging.getLogger(__name__)

# Byte-level BPE (OpenAI's, Llama's, SmolLM's tokenizers) never makes more tokens than UTF-8 bytes;
# the chat template adds a few tokens of its own around the message.
_TEMPLATE_TOKENS = 64
_CHECKPOINT_PUSH_INTERVAL_S = 60.0


class ConfigError(ValueError):
    """The run cannot start as configured; the message says what to fix."""


@dataclass(frozen=True)
class RunOptions:
    retry: RetryPolicy | None = None  # None: from the spec's maxRetries with default delays
    progress_bar: bool | None = None  # None: when stderr is a terminal
    status_interval_s: float = 5.0
    # Stop when this many answers in a row added nothing (None: 50, or 4x the concurrency if more).
    stall_after: int | None = None
    # Stop when this many requests in a row gave up (None: 5, or the concurrency if more).
    fail_after: int | None = None


def resolve_api_key(env_name: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The teacher's key from the named env var or its `<NAME>_FILE`; a bad config when missing."""
    try:
        return api_keys.resolve_api_key(env_name, "teacher", environ)
    except api_keys.ApiKeyError as exc:
        raise ConfigError(str(exc)) from None


def load_prompt_template(location: str | None, teacher_format: TeacherFormat) -> str | None:
    """The user's prompt template (a mounted file, a path or a URI), checked for its format."""
    if location is None:
        return None
    source = f"{TEMPLATE_FIELD} ({location})"
    try:
        text = storage.local_path(location).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the prompt template: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return check_template(text, teacher_format, source)
    except PromptTemplateError as exc:
        raise ConfigError(str(exc)) from None


class _Progress:
    """A progress bar in a terminal, a log line now and then otherwise, and the status patch in a pod."""

    def __init__(self, state: GenerationState, config: GenerateConfig, options: RunOptions) -> None:
        self._reporter = StatusReporter(config.status_target, min_interval_s=options.status_interval_s)
        self._bar = None
        self._last_log = time.monotonic()
        show = options.progress_bar
        if show is None:
            import sys

            show = sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=state.target, initial=len(state.kept), unit="ex", desc=config.name, dynamic_ncols=True)

    def update(self, state: GenerationState, *, force: bool = False) -> None:
        progress = state.progress()
        if self._bar is not None:
            self._bar.n = progress.kept
            self._bar.set_postfix(
                requests=progress.requests, filtered=sum(progress.filtered.values()), cost=f"${progress.cost_usd:.4f}"
            )
        elif force or time.monotonic() - self._last_log > 30:
            self._last_log = time.monotonic()
            log.info(
                "kept %d/%d, generated %d, requests %d, cost $%.4f",
                progress.kept, progress.target, progress.generated, progress.requests, progress.cost_usd,
            )
        self._reporter.report(progress.to_wire(), force=force)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Run:
    def __init__(self, config: GenerateConfig, api_key: str | None, options: RunOptions) -> None:
        self.config = config
        self.spec = config.spec
        self.options = options
        self.output = OutputFolder(config.output)
        self.template = load_prompt_template(config.prompt_template, self.spec.teacher.format)
        seeds = [seed.as_task() for seed in load_seed_tasks(config.seed_tasks)]
        self.state = GenerationState(seeds, self.spec, config.pricing)
        self.journal = Journal(self.output.path / CHECKPOINT_FILE)
        teacher_spec = self.spec.teacher
        self.retry = options.retry or RetryPolicy(max_retries=teacher_spec.max_retries)
        self.concurrency = teacher_spec.max_concurrency
        self.stall_after = options.stall_after or max(50, 4 * self.concurrency)
        self.fail_after = options.fail_after or max(5, self.concurrency)
        self._api_key = api_key
        self._last_push = time.monotonic()
        self._sync: asyncio.Task[None] | None = None

    # -- decisions --------------------------------------------------------------------------------

    def _stop_reason(self) -> StopReason | None:
        if self.state.done:
            return StopReason.COMPLETED
        if self.state.consecutive_failures >= self.fail_after:
            return StopReason.TEACHER_UNAVAILABLE
        if self.state.answers_without_keep >= self.stall_after:
            return StopReason.STALLED
        return None

    def _worst_case(self, prompt: str) -> tuple[int, int]:
        """The most tokens a request can bill: its prompt's bound and max_tokens."""
        return len(prompt.encode("utf-8")) + _TEMPLATE_TOKENS, self.spec.generation.max_tokens

    def _affordable(self, bounds: list[tuple[int, int]]) -> bool:
        """Whether the budget still holds if every request in flight, and these, bill their worst case."""
        budget = self.spec.budget_usd
        if budget is None:
            return True
        state = self.state
        reserved = [*state.in_flight.values(), *bounds]
        worst = state.usd(sum(p for p, _ in reserved), sum(c for _, c in reserved))
        return state.spent_usd + worst <= budget

    def _enough_in_flight(self, in_flight: int) -> bool:
        """Whether the requests in flight are likely to fill the target already (no point paying more).

        Never, at an in-cluster teacher: nothing is paid per request, a batching server answers a full
        batch for little more time than a part of one, and what is still in flight at the target is
        cancelled. A guess of the yield that is too high would otherwise leave batch slots idle (it
        starts at every open slot kept) and the batch shrinks as the target nears.
        """
        if self._cancels_at_target:
            return False
        state = self.state
        per_answer = len(state.kept) / state.requests if state.requests else self._slots_per_request()
        return per_answer > 0 and len(state.kept) + in_flight * per_answer >= state.target

    def _slots_per_request(self) -> int:
        generation = self.spec.generation
        shown = generation.seed_tasks_per_prompt + generation.generated_tasks_per_prompt
        return generation.instructions_per_request - shown

    # -- the loop ---------------------------------------------------------------------------------

    def _prompt(self, request: int) -> tuple[str, int]:
        generation = self.spec.generation
        examples = choose_examples(
            self.state.seeds,
            self.state.kept,
            generation.seed_tasks_per_prompt,
            generation.generated_tasks_per_prompt,
            request_rng(generation.random_seed, request),
        )
        if self.spec.teacher.format is TeacherFormat.STRUCTURED:
            wanted = open_slots(generation.instructions_per_request, generation.seed_tasks_per_prompt,
                                generation.generated_tasks_per_prompt)
            return build_structured_prompt(examples, wanted, self.template), len(examples) + 1
        return build_prompt(examples, generation.instructions_per_request, self.template), len(examples) + 1

    async def _ask(self, teacher: Teacher, request: int, prompt: str, first_slot: int) -> Record:
        try:
            answer: Answer = await teacher.complete(prompt)
        except GaveUp as exc:
            log.warning("request %d given up: %s", request, exc)
            return Record(request, first_slot, "failed", problem=exc.reason, retries=exc.retries)
        return Record(
            request,
            first_slot,
            "answered",
            content=answer.content,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            problem=answer.problem,
            retries=answer.retries,
        )

    def _sync_in_background(self) -> None:
        """One fsync for every answer appended since the last, off the event loop."""
        if self._sync is None or self._sync.done():
            self._sync = asyncio.create_task(asyncio.to_thread(self.journal.sync))

    def _record(self, record: Record, progress: _Progress) -> None:
        self.journal.append(record)  # kept before it is used: the heart of resuming
        self.state.apply(record)
        progress.update(self.state)
        if self.output.remote and time.monotonic() - self._last_push > _CHECKPOINT_PUSH_INTERVAL_S:
            self._last_push = time.monotonic()
            self.output.push(CHECKPOINT_FILE)

    def _send(self, request: int, first_slot: int, bound: tuple[int, int], batch: str | None = None) -> None:
        """On record before it leaves: if this process dies, the next one charges (or collects) it."""
        sent = Record(request, first_slot, "sent", prompt_tokens=bound[0], completion_tokens=bound[1], batch=batch)
        self.journal.append(sent)
        self.state.apply(sent)

    @property
    def _cancels_at_target(self) -> bool:
        """Whether answers still in flight at the target are cancelled rather than awaited.

        An in-cluster teacher (a ModelServer) charges nothing per token, so waiting for answers the
        target no longer needs only costs time, and closing their connections frees the server
        (`alpaca serve` drops a closed connection's sequence before its next forward pass). An API
        teacher may bill a request whether or not its answer is read: those answers are awaited and
        journaled, and a later run with a larger target uses them.
        """
        return self.spec.teacher.model_server_ref is not None

    async def _cancel(self, in_flight: dict[asyncio.Task[Record], tuple[int, int]], progress: _Progress) -> None:
        """Cancel every request in flight and journal how each ended, in request order.

        One that was answered before its cancellation took effect is recorded as answered; the others
        as cancelled, with their worst case, which the budget counts (nothing at a free teacher)."""
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for task, (request, first_slot) in sorted(in_flight.items(), key=lambda item: item[1][0]):
            if not task.cancelled() and not isinstance(task.exception(), TeacherRejected):
                self._record(task.result(), progress)
                continue
            prompt_bound, completion_bound = self.state.in_flight[request]
            self._record(
                Record(request, first_slot, "cancelled", prompt_tokens=prompt_bound, completion_tokens=completion_bound),
                progress,
            )
        in_flight.clear()

    async def _run_at_once(self, teacher: Teacher, progress: _Progress) -> StopReason:
        """Up to maxConcurrency requests in flight, each answer recorded as it arrives."""
        # Each task's request number and first open slot.
        in_flight: dict[asyncio.Task[Record], tuple[int, int]] = {}
        next_request = self.state.last_request + 1
        stop: StopReason | None = None
        try:
            while True:
                if stop is None:
                    stop = self._stop_reason()
                if stop is StopReason.COMPLETED and in_flight and self._cancels_at_target:
                    await self._cancel(in_flight, progress)
                if stop is None:
                    while len(in_flight) < self.concurrency and not self._enough_in_flight(len(in_flight)):
                        prompt, first_slot = self._prompt(next_request)
                        bound = self._worst_case(prompt)
                        if not self._affordable([bound]):
                            break
                        self._send(next_request, first_slot, bound)
                        task = asyncio.create_task(self._ask(teacher, next_request, prompt, first_slot))
                        in_flight[task] = (next_request, first_slot)
                        next_request += 1
                    if not in_flight:
                        # Nothing running and nothing may start: only the budget says no.
                        stop = StopReason.BUDGET_EXHAUSTED
                if not in_flight:
                    assert stop is not None
                    return stop
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                rejected: BaseException | None = None
                for task in sorted(done, key=lambda t: in_flight[t][0]):
                    del in_flight[task]
                    if isinstance(error := task.exception(), TeacherRejected):
                        rejected = error  # record the other answers first: they are paid for
                        continue
                    self._record(task.result(), progress)
                self._sync_in_background()
                if rejected is not None:
                    raise rejected
        except TeacherRejected:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise

    def _batch_key(self, first_request: int) -> str:
        """Unique to this resource's output and the batch's first request, the same after a restart."""
        where = hashlib.sha256(f"{self.config.name}\n{self.config.output}".encode()).hexdigest()[:12]
        return f"{self.config.name[:40]}-{where}-{first_request}"

    async def _run_batches(self, batches: BatchClient, progress: _Progress) -> StopReason:
        """Batch API files of requestsPerBatch, one at a time: submit, wait, record every answer."""
        # What an earlier process left: batches submitted (or maybe submitted) and not yet collected.
        for key, requests in self.state.pending_batches().items():
            batch_id = self.state.submitted.get(key) or await batches.find(key)
            if batch_id is None:
                # Planned, never submitted: nothing was sent, nothing is owed.
                for request in requests:
                    self._record(Record(request, self.state.slot_of[request], "withdrawn", batch=key), progress)
                continue
            if key not in self.state.submitted:
                self._record(Record(requests[0], 0, "submitted", content=batch_id, batch=key), progress)
            log.info("collecting batch %s, submitted before a restart", batch_id)
            await self._collect(batches, key, batch_id, progress)
        next_request = self.state.last_request + 1
        assert self.spec.teacher.batch is not None
        size = self.spec.teacher.batch.requests_per_batch
        while (stop := self._stop_reason()) is None:
            plan: dict[int, tuple[str, int, tuple[int, int]]] = {}
            while len(plan) < size and not self._enough_in_flight(len(plan)):
                request = next_request + len(plan)
                prompt, first_slot = self._prompt(request)
                bound = self._worst_case(prompt)
                if not self._affordable([*(b for _, _, b in plan.values()), bound]):
                    break
                plan[request] = (prompt, first_slot, bound)
            if not plan:
                return StopReason.BUDGET_EXHAUSTED
            key = self._batch_key(next_request)
            for request, (_, first_slot, bound) in plan.items():
                self._send(request, first_slot, bound, batch=key)
            self.journal.sync()  # the plan is on disk before the batch exists anywhere
            batch_id = await batches.submit(key, {request: prompt for request, (prompt, _, _) in plan.items()})
            self._record(Record(next_request, 0, "submitted", content=batch_id, batch=key), progress)
            self.journal.sync()
            await self._collect(batches, key, batch_id, progress)
            next_request += len(plan)
        return stop

    async def _collect(self, batches: BatchClient, key: str, batch_id: str, progress: _Progress) -> None:
        """Wait for a batch and record what came back for each of its requests, in request order."""
        status, answers = await batches.results(batch_id)
        for request in self.state.pending_batches().get(key, []):
            slot = self.state.slot_of[request]
            answer = answers.get(request, f"batch_{status}")
            if isinstance(answer, str):
                record = Record(request, slot, "failed", problem=answer, batch=key)
            else:
                record = Record(
                    request, slot, "answered", content=answer.content, finish_reason=answer.finish_reason,
                    prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                    problem=answer.problem, batch=key,
                )
            self._record(record, progress)
        self.journal.sync()

    async def execute(self) -> Manifest:
        self.output.fetch_checkpoint()
        replayed = self.journal.load()
        for record in replayed:
            self.state.apply(record)
        if replayed:
            log.info("resumed from %d journaled requests: %d examples kept", self.state.last_request + 1, len(self.state.kept))
        if lost := self.state.settle_in_flight():
            log.warning(
                "%d requests were in flight when the last process stopped: counted as spent at their worst case ($%.4f)",
                lost, self.state.unrecorded_cost_usd,
            )
        # A new process gives the teacher a fresh chance: an outage or a dry spell that stopped the
        # last run must not stop this one before it asks anything.
        self.state.consecutive_failures = 0
        self.state.answers_without_keep = 0
        progress = _Progress(self.state, self.config, self.options)
        stop: StopReason | None = None
        message = ""
        teacher = Teacher(
            base_url=self.config.teacher_url,
            model=self.config.teacher_model,
            api_key=self._api_key,
            generation=self.spec.generation,
            timeout_s=self.spec.teacher.request_timeout_seconds,
            retry=self.retry,
            api=self.spec.teacher.api,
            format=self.spec.teacher.format,
        )
        try:
            if self.spec.teacher.batch is not None:
                stop = await self._run_batches(BatchClient(teacher, self.spec.teacher.batch.poll_interval_seconds), progress)
            else:
                stop = await self._run_at_once(teacher, progress)
        except TeacherRejected as exc:
            stop, message = StopReason.TEACHER_REJECTED, str(exc)
            # Cancelled after they left: the teacher may have billed them.
            self.state.settle_in_flight()
        finally:
            if self._sync is not None:
                await asyncio.gather(self._sync, return_exceptions=True)
            self.journal.close()
            await teacher.close()
            progress.update(self.state, force=True)
            progress.close()
        return self._finish(stop, message)

    def _finish(self, stop: StopReason, message: str) -> Manifest:
        state = self.state
        dataset = self.output.write_jsonl(DATASET_FILE, [task.as_record() for task in state.kept])
        budget = self.spec.budget_usd
        if not message:
            message = {
                StopReason.COMPLETED: f"kept {len(state.kept)} examples",
                StopReason.BUDGET_EXHAUSTED: (
                    f"budget of ${budget} reached after ${state.spent_usd:.4f}: kept the {len(state.kept)} "
                    f"examples paid for, of {state.target} asked"
                ),
                StopReason.TEACHER_UNAVAILABLE: (
                    f"{state.consecutive_failures} requests in a row failed after retries "
                    f"({dict(state.failed_requests)}); rerun to resume"
                ),
                StopReason.STALLED: (
                    f"{state.answers_without_keep} answers in a row added no new example; the teacher may be "
                    "repeating itself or the filters may be too strict"
                ),
            }.get(stop, "")
        manifest = Manifest(
            name=self.config.name,
            teacher_url=self.config.teacher_url,
            model=self.config.teacher_model,
            stop_reason=stop,
            message=message,
            target=state.target,
            kept=len(state.kept),
            generated=state.generated,
            filtered=dict(sorted(state.filtered.items())),
            requests=state.requests,
            failed_requests=dict(sorted(state.failed_requests.items())),
            retries=dict(sorted(state.retries.items())),
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            cost_usd=round(state.cost_usd, 9),
            unrecorded_requests=state.unrecorded_requests,
            unrecorded_prompt_tokens=state.unrecorded_prompt_tokens,
            unrecorded_completion_tokens=state.unrecorded_completion_tokens,
            unrecorded_cost_usd=round(state.unrecorded_cost_usd, 9),
            cancelled_requests=state.cancelled_requests,
            cancelled_cost_usd=round(state.cancelled_cost_usd, 9),
            budget_usd=budget,
            pricing=self.config.pricing,
            seed_tasks=len(state.seeds),
            dataset_sha256=storage.sha256_file(dataset),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        manifest_file = self.output.write_text(MANIFEST_FILE, manifest.model_dump_json(by_alias=True, indent=2) + "\n")
        result = None if stop in (StopReason.TEACHER_REJECTED, StopReason.TEACHER_UNAVAILABLE) else dataset_result(manifest, self.config, dataset)
        if result is not None:
            add_to_manifest(result, manifest_file)
        self.output.push()
        if result is not None:
            report(result, StatusReporter(self.config.status_target))
        return manifest


def generate(
    config: GenerateConfig,
    *,
    api_key: str | None = None,
    options: RunOptions | None = None,
    key_from_env: Callable[[str | None], str | None] = resolve_api_key,
) -> Manifest:
    """Run (or resume) a generation to its end and return its manifest."""
    key = api_key if api_key is not None else key_from_env(config.api_key_env)
    return asyncio.run(Run(config, key, options or RunOptions()).execute())
