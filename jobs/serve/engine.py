"""The batching engine: one thread owns the model and runs every active sequence together.

Each step (1) admits waiting sequences up to `max_batch_size`, prefills them together in one
left-padded forward pass and merges their caches into the running batch, then (2) decodes one
token for every running sequence in one forward pass. Sequences leave the batch as soon as they
finish, so a long answer never holds a short one back, and throughput grows with concurrency.
Requests talk to the engine through a RequestHandle whose events arrive on an asyncio queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from . import batch
from .sampling import RowSampler, SamplingParams, sample_rows
from .text import next_delta

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """More sequences are waiting than the engine accepts."""


class EngineStoppedError(Exception):
    """The engine is shutting down or has died."""


@dataclass(frozen=True)
class Event:
    """A piece of one choice's answer. `finish_reason` is set on the last event of a choice."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


class RequestHandle:
    """The asyncio side of a request: events arrive on `events`; `cancel()` stops its sequences."""

    def __init__(self, loop: asyncio.AbstractEventLoop, choices: int) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.choices = choices
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        self.cancelled = True

    def _push(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True


@dataclass
class _Sequence:
    handle: RequestHandle
    index: int
    prompt: list[int]
    sampler: RowSampler
    output: list[int] = field(default_factory=list)
    sent: int = 0
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
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.on_step = on_step
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = next(iter(self.eos_ids), 0) if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.device = next(model.parameters()).device
        self._cache_keyword = batch.cache_keyword(model)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._rows: list[_Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._next: list[int] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- the asyncio side -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
        self, prompts: Sequence[list[int]], params: SamplingParams, n: int, loop: asyncio.AbstractEventLoop
    ) -> RequestHandle:
        """Queue `n` choices per prompt; choice i*n+j answers prompt i. Raises QueueFullError."""
        handle = RequestHandle(loop, len(prompts) * n)
        sequences = []
        for i, prompt in enumerate(prompts):
            for j in range(n):
                seed = None if params.seed is None else params.seed + j
                choice_params = params if seed == params.seed else _with_seed(params, seed)
                sequences.append(_Sequence(handle, i * n + j, list(prompt), RowSampler.create(choice_params)))
        with self._cond:
            if self._stopping or not self.alive:
                raise EngineStoppedError("the server is shutting down")
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
                while not self._waiting and not self._rows and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._waiting and not self._rows:
                    return
                admitted = self._admit()
            try:
                self._drop_cancelled()
                if admitted:
                    self._prefill(admitted)
                if self._rows:
                    self._decode()
            except Exception as error:  # a failed step fails its sequences, not the server
                log.exception("engine step failed")
                self._fail_all(admitted, error)

    def _admit(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        budget = self.max_prefill_tokens
        while self._waiting and len(self._rows) + len(admitted) < self.max_batch_size:
            candidate = self._waiting[0]
            if candidate.handle.cancelled:
                self._waiting.popleft()
                continue
            if admitted and len(candidate.prompt) > budget:
                break
            budget -= len(candidate.prompt)
            admitted.append(self._waiting.popleft())
        return admitted

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=batch.positions(mask, input_ids.shape[1]).to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: cache},
        )
        return out.logits[:, -1, :]

    def _prefill(self, sequences: list[_Sequence]) -> None:
        width = max(len(s.prompt) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, width - len(seq.prompt) :] = torch.tensor(seq.prompt, dtype=torch.long)
            mask[row, width - len(seq.prompt) :] = 1
        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        if self.on_step:
            self.on_step(len(sequences), int(mask.sum()))
        tokens = sample_rows(logits, [s.sampler for s in sequences], [s.output for s in sequences])
        mask = mask.to(self.device)
        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows, self._next = cache, mask, [], []
        else:
            self._cache, self._mask = batch.merge(self._cache, self._mask, cache, mask)
        self._rows.extend(sequences)
        self._next.extend(tokens)
        self._finish_step(tokens)

    def _decode(self) -> None:
        assert self._cache is not None and self._mask is not None
        ids = torch.tensor(self._next, dtype=torch.long).unsqueeze(1)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        logits = self._forward(ids, self._mask, self._cache)
        self.steps += 1
        if self.on_step:
            self.on_step(len(self._rows), 0)
        tokens = sample_rows(logits, [s.sampler for s in self._rows], [s.output for s in self._rows])
        self._next = list(tokens)
        self._finish_step(tokens)

    def _finish_step(self, tokens: list[int]) -> None:
        """Record the token sampled for every row (the last len(tokens) rows), emit text, drop finished rows."""
        first = len(self._rows) - len(tokens)
        for seq, token in zip(self._rows[first:], tokens, strict=True):
            self._advance(seq, token)
        if any(s.finished for s in self._rows):
            keep = [i for i, s in enumerate(self._rows) if not s.finished]
            if keep:
                assert self._cache is not None and self._mask is not None
                self._mask = batch.select_rows(self._cache, self._mask, keep)
                self._rows = [self._rows[i] for i in keep]
                self._next = [self._next[i] for i in keep]
            else:
                self._cache, self._mask, self._rows, self._next = None, None, [], []

    def _advance(self, seq: _Sequence, token: int) -> None:
        if seq.handle.cancelled:
            seq.finished = True
            return
        finish: str | None = None
        if token in self.eos_ids:
            finish = "stop"
        else:
            seq.output.append(token)
            if len(seq.output) >= seq.params.max_tokens:
                finish = "length"
        text = self.tokenizer.decode(seq.output, skip_special_tokens=True)
        delta = next_delta(text, seq.sent, seq.params.stop, final=finish is not None)
        seq.sent += len(delta.text)
        if delta.stopped:
            finish = "stop"
        if finish is not None:
            seq.finished = True
        if delta.text or finish is not None:
            seq.handle._push(Event(seq.index, delta.text, len(seq.output), finish))

    def _drop_cancelled(self) -> None:
        if any(s.handle.cancelled for s in self._rows):
            for seq in self._rows:
                if seq.handle.cancelled:
                    seq.finished = True
            self._finish_step([])

    def _fail_all(self, admitted: list[_Sequence], error: Exception) -> None:
        for seq in {id(s): s for s in [*self._rows, *admitted]}.values():
            if not seq.finished:
                seq.finished = True
                seq.handle._push(Event(seq.index, "", len(seq.output), "error", error=str(error)))
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
