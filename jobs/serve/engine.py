"""The batching engine: one thread owns the model and runs every active sequence together.

Each step (1) admits waiting sequences up to `max_batch_size` and a budget of prompt tokens,
prefills them together in one left-padded forward pass and merges their caches into the running
batch, then (2) decodes one token for every running sequence in one forward pass. Sequences leave
the batch as soon as they finish, or before the next forward pass once their client went away,
so a long answer never holds a short one back and nobody computes for a closed connection.
A failure in one sequence (unusable logits) ends that sequence alone; only a failed forward pass
fails the sequences that were in it. Requests talk to the engine through a RequestHandle whose
events arrive on an asyncio queue. With LoRA adapters loaded (a peft model), each sequence names
its adapter (or the base) and every forward pass routes each row through its own, so requests of
different adapters share batches; adapters are added and dropped between steps only.
A prompt that starts with tokens prefilled recently (the same adapter's) reuses their keys and
values from a bounded store (prefix_cache.py), and only the rest of it is prefilled.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from . import batch
from .prefix_cache import Prefix, PrefixStore
from .sampling import RowSampler, Sampled, SamplingParams, sample_rows
from .text import Detokenizer, StopScanner

log = logging.getLogger(__name__)

# peft's name for "no adapter" in a mixed-adapter batch (peft.tuners.tuners_utils).
BASE_ADAPTER = "__base__"


class QueueFullError(Exception):
    """More sequences are waiting than the engine accepts."""


class UnknownAdapterError(ValueError):
    """A request named an adapter the engine does not serve (any more)."""


class EngineStoppedError(Exception):
    """The engine is shutting down or has died."""


@dataclass(frozen=True)
class Event:
    """A piece of one choice's answer. `finish_reason` is set on the last event of a choice.

    `logprobs` holds the tokens generated since the previous event (when the request asked for
    log-probabilities): text can lag its tokens, so the two are sent together when text is ready.
    """

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None
    logprobs: tuple[Sampled, ...] = ()


class RequestHandle:
    """The asyncio side of a request: events arrive on `events`; `cancel()` stops its sequences."""

    def __init__(self, loop: asyncio.AbstractEventLoop, choices: int, clock: Callable[[], int] = lambda: 0) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.choices = choices
        self.cancelled = False
        self.cancelled_at: int | None = None  # the engine's forward-pass count when cancelled
        # Prompt tokens of its sequences taken from the prefix cache rather than prefilled
        # (OpenAI's usage.prompt_tokens_details.cached_tokens); set by the engine thread.
        self.cached_tokens = 0
        self._loop = loop
        self._clock = clock

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled_at = self._clock()
            self.cancelled = True

    def _push(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancel()


@dataclass
class _Sequence:
    handle: RequestHandle
    index: int
    prompt: list[int]
    sampler: RowSampler
    detokenizer: Detokenizer
    stops: StopScanner
    # The LoRA adapter this sequence runs through (None: the base model).
    adapter: str | None = None
    # The start of the prompt whose keys and values are reused (looked up at admission).
    prefix: Prefix | None = None
    output: list[int] = field(default_factory=list)
    pending_logprobs: list[Sampled] = field(default_factory=list)
    finished: bool = False

    @property
    def params(self) -> SamplingParams:
        return self.sampler.params


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        max_prefill_tokens: int = 8192,
        max_prefill_tokens_while_decoding: int | None = None,
        prefix_cache_tokens: int = 4096,
        on_step: Callable[[int, int, int], None] | None = None,
        on_abandon: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        # While streams are running, every prefilled token delays their next token: new arrivals
        # then join a few at a time (at least one per step, so nobody starves).
        self.max_prefill_tokens_while_decoding = max_prefill_tokens_while_decoding or max_prefill_tokens
        # Called after each forward pass with (sequences, prompt tokens prefilled, prompt tokens
        # reused from the prefix cache); a decode step prefills none.
        self.on_step = on_step
        # Prompts' keys and values, at most this many tokens in all (0: no prefix caching).
        self.prefix_store = PrefixStore(prefix_cache_tokens) if prefix_cache_tokens > 0 else None
        self.prefilled_tokens = 0  # prompt tokens that went through a forward pass
        self.prefix_hit_tokens = 0  # prompt tokens whose keys and values came from the store
        self.on_abandon = on_abandon
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = next(iter(self.eos_ids), 0) if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.device = next(model.parameters()).device
        # A peft model takes the base model's keywords through **kwargs: ask the base which.
        self._cache_keyword = batch.cache_keyword(model.get_base_model() if hasattr(model, "get_base_model") else model)
        # Adapters loaded beside the base (a peft model): every forward names each row's adapter.
        self.adapter_order: tuple[str, ...] = tuple(getattr(model, "peft_config", None) or ())
        # Work that must not overlap a forward pass (loading or dropping an adapter), run between steps.
        self._between: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._rows: list[_Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._next: list[int] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode forward passes
        self.forwards = 0  # all forward passes, prefills included

    # -- the asyncio side -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def adapters(self) -> frozenset[str]:
        return frozenset(self.adapter_order)

    def between_steps(self, work: Callable[[], Any]) -> Future[Any]:
        """Run `work` on the engine thread between two steps (no forward pass in flight); its result
        or exception arrives on the returned future."""
        future: Future[Any] = Future()
        with self._cond:
            self._between.append((work, future))
            self._cond.notify()
        return future

    def add_adapter(self, name: str, load: Callable[[Any], Any]) -> Future[Any]:
        """Between steps: `load(model)` returns the model with adapter `name` added (a peft model),
        which then serves it; requests may name it from then on."""

        def work() -> None:
            self.model = load(self.model)
            self._forget_prefixes(name)  # a reloaded name may carry other weights
            with self._cond:
                self.adapter_order = (*[n for n in self.adapter_order if n != name], name)

        return self.between_steps(work)

    def remove_adapter(self, name: str, unload: Callable[[Any], None]) -> Future[Any]:
        """Between steps: stop serving adapter `name` and `unload(model)` it, unless a waiting or
        running sequence still answers through it (then the result is False: try again later)."""

        def work() -> bool:
            with self._cond:
                if any(s.adapter == name for s in (*self._waiting, *self._rows) if not s.finished):
                    return False
                self.adapter_order = tuple(n for n in self.adapter_order if n != name)
            self._forget_prefixes(name)
            unload(self.model)
            return True

        return self.between_steps(work)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alpaca-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was admitted or queued, then stop. New submissions are refused."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(
        self, prompts: Sequence[list[int]], params: SamplingParams, n: int, loop: asyncio.AbstractEventLoop,
        adapter: str | None = None,
    ) -> RequestHandle:
        """Queue `n` choices per prompt; choice i*n+j answers prompt i. Raises QueueFullError.

        `adapter` names a loaded LoRA adapter to answer with (None: the base model). Sequences of
        different adapters share batches: each row of a forward pass goes through its own.
        Before `start()` sequences wait in the queue (a caller may also drive `step()` itself).
        """
        handle = RequestHandle(loop, len(prompts) * n, clock=lambda: self.forwards)
        sequences = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                seed = None if params.seed is None else params.seed + j
                choice_params = params if seed == params.seed else _with_seed(params, seed)
                sequences.append(
                    _Sequence(handle, i * n + j, list(prompt), RowSampler.create(choice_params),
                              Detokenizer(self.tokenizer), StopScanner(params.stop), adapter)
                )
        with self._cond:
            if self._stopping or (self._thread is not None and not self._thread.is_alive()):
                raise EngineStoppedError("the server is shutting down")
            # Checked under the lock that adapter removal takes: a sequence never outlives its adapter.
            if adapter is not None and adapter not in self.adapter_order:
                raise UnknownAdapterError(f"adapter {adapter!r} is not served; served: {', '.join(self.adapter_order) or 'none'}")
            if len(self._waiting) + len(sequences) > self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} sequences are already waiting (max_queue {self.max_queue})")
            self._waiting.extend(sequences)
            self._cond.notify()
        return handle

    # -- the engine thread ------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._waiting and not self._rows and not self._stopping and not self._between:
                    self._cond.wait()
                if self._stopping and not self._waiting and not self._rows:
                    return
            self.step()

    def step(self) -> None:
        """One round: admit and prefill what fits, then decode one token for every running row."""
        self._run_between()
        with self._cond:
            admitted = self._admit()
        try:
            with torch.no_grad():
                self._drop_cancelled()
                if admitted:
                    self._prefill(admitted)
                # A client may have gone while the prefill ran: check again before the next pass.
                self._drop_cancelled()
                if self._rows:
                    self._decode()
        except Exception as error:  # a failed forward pass fails its sequences, not the server
            log.exception("engine step failed")
            self._fail_all(admitted, error)

    def _run_between(self) -> None:
        while True:
            with self._cond:
                if not self._between:
                    return
                work, future = self._between.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except Exception as error:  # noqa: BLE001 - handed to whoever asked
                future.set_exception(error)

    def _admit(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        budget = self.max_prefill_tokens_while_decoding if self._rows else self.max_prefill_tokens
        while self._waiting and len(self._rows) + len(admitted) < self.max_batch_size:
            candidate = self._waiting[0]
            if candidate.handle.cancelled:
                self._waiting.popleft()
                continue
            # The budget bounds the prefill's work: a reused prefix costs no forward pass.
            prefix = self.prefix_store.lookup(candidate.adapter, candidate.prompt) if self.prefix_store else None
            cost = len(candidate.prompt) - (prefix.length if prefix else 0)
            if admitted and cost > budget:
                break
            budget -= cost
            candidate.prefix = prefix
            admitted.append(self._waiting.popleft())
        return admitted

    def _forget_prefixes(self, adapter: str) -> None:
        if self.prefix_store is not None:
            self.prefix_store.drop_adapter(adapter)

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, rows: list[_Sequence]) -> torch.Tensor:
        extra: dict[str, Any] = {}
        if self.adapters:
            # peft's mixed-adapter batches: each row through its own adapter, the base's rows through none.
            extra["adapter_names"] = [s.adapter or BASE_ADAPTER for s in rows]
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=batch.positions(mask, input_ids.shape[1]).to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: cache},
            **extra,
        )
        self.forwards += 1
        return out.logits[:, -1, :]

    def _prefill(self, sequences: list[_Sequence]) -> None:
        # The batch's cache starts as the rows' reused prefixes (left-padded to the longest; a row
        # without one is all padding there) and the rest of each prompt follows, left-padded too.
        cache, prefix_mask = batch.from_prefixes([s.prefix.layers if s.prefix else None for s in sequences])
        reused = [s.prefix.length if s.prefix else 0 for s in sequences]
        width = max(len(s.prompt) - r for s, r in zip(sequences, reused, strict=True))
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (seq, start) in enumerate(zip(sequences, reused, strict=True)):
            rest = seq.prompt[start:]
            ids[row, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[row, width - len(rest) :] = 1
        prefilled, hits = int(mask.sum()), sum(reused)
        mask = torch.cat([prefix_mask, mask], dim=1)
        logits = self._forward(ids, mask, cache, sequences)
        self.prefilled_tokens += prefilled
        self.prefix_hit_tokens += hits
        for seq, start in zip(sequences, reused, strict=True):
            seq.handle.cached_tokens += start
            seq.prefix = None  # the store's tensors are not held longer than needed
        if self.on_step:
            self.on_step(len(sequences), prefilled, hits)
        results = sample_rows(logits, [s.sampler for s in sequences], [s.output for s in sequences])
        mask = mask.to(self.device)
        if hits:
            mask = batch.pack_right(cache, mask)  # each row's prompt in its last columns, as without reuse
        if self.prefix_store is not None:
            for row, seq in enumerate(sequences):
                self.prefix_store.add(seq.adapter, seq.prompt, batch.row_tail(cache, row, len(seq.prompt)))
        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows, self._next = cache, mask, [], []
        else:
            self._cache, self._mask = batch.merge(self._cache, self._mask, cache, mask)
        self._rows.extend(sequences)
        self._next.extend(r.token if isinstance(r, Sampled) else self.pad_id for r in results)
        self._finish_step(results)

    def _decode(self) -> None:
        assert self._cache is not None and self._mask is not None
        ids = torch.tensor(self._next, dtype=torch.long).unsqueeze(1)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        logits = self._forward(ids, self._mask, self._cache, self._rows)
        self.steps += 1
        if self.on_step:
            self.on_step(len(self._rows), 0, 0)
        results = sample_rows(logits, [s.sampler for s in self._rows], [s.output for s in self._rows])
        self._next = [r.token if isinstance(r, Sampled) else self.pad_id for r in results]
        self._finish_step(results)

    def _finish_step(self, results: list[Sampled | Exception]) -> None:
        """Record what was sampled for every row (the last len(results) rows), emit text, drop finished rows."""
        first = len(self._rows) - len(results)
        for seq, result in zip(self._rows[first:], results, strict=True):
            if seq.handle.cancelled:
                self._abandon(seq)
            elif isinstance(result, Exception):
                log.warning("a sequence failed and leaves the batch: %s", result)
                self._fail(seq, result)
            else:
                self._advance(seq, result)
        self._compact()

    def _compact(self) -> None:
        if not any(s.finished for s in self._rows):
            return
        keep = [i for i, s in enumerate(self._rows) if not s.finished]
        if keep:
            assert self._cache is not None and self._mask is not None
            self._mask = batch.select_rows(self._cache, self._mask, keep)
            self._rows = [self._rows[i] for i in keep]
            self._next = [self._next[i] for i in keep]
        else:
            self._cache, self._mask, self._rows, self._next = None, None, [], []

    def _advance(self, seq: _Sequence, sampled: Sampled) -> None:
        finish: str | None = None
        piece = ""
        if sampled.token in self.eos_ids:
            finish = "stop"
        else:
            seq.output.append(sampled.token)
            if seq.params.logprobs is not None:
                seq.pending_logprobs.append(sampled)
            piece = seq.detokenizer.push(sampled.token)
            if len(seq.output) >= seq.params.max_tokens:
                finish = "length"
        if finish is not None:
            piece += seq.detokenizer.flush()
        delta = seq.stops.feed(piece, final=finish is not None)
        if delta.stopped:
            finish = "stop"
        if finish is not None:
            seq.finished = True
        if delta.text or finish is not None:
            logprobs = tuple(seq.pending_logprobs)
            seq.pending_logprobs.clear()
            seq.handle._push(Event(seq.index, delta.text, len(seq.output), finish, logprobs=logprobs))

    def _abandon(self, seq: _Sequence) -> None:
        seq.finished = True
        if self.on_abandon is not None and seq.handle.cancelled_at is not None:
            self.on_abandon(self.forwards - seq.handle.cancelled_at)

    def _fail(self, seq: _Sequence, error: Exception) -> None:
        seq.finished = True
        seq.handle._push(Event(seq.index, "", len(seq.output), "error", error=str(error)))

    def _drop_cancelled(self) -> None:
        if any(s.handle.cancelled for s in self._rows):
            for seq in self._rows:
                if seq.handle.cancelled and not seq.finished:
                    self._abandon(seq)
            self._compact()

    def _fail_all(self, admitted: list[_Sequence], error: Exception) -> None:
        for seq in {id(s): s for s in [*self._rows, *admitted]}.values():
            if not seq.finished:
                self._fail(seq, error)
        self._cache, self._mask, self._rows, self._next = None, None, [], []


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=seed)
