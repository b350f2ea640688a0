"""The serving logic behind /v1: requests -> engine submissions -> OpenAI responses or SSE chunks.

Kept apart from the routers so that it can be read (and tested) as plain async functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import Engine, EngineStoppedError, Event, QueueFullError, RequestHandle, UnknownAdapterError
from .errors import ApiError, bad_request
from .logprobs import TokenTexts, chat_content, completion_logprobs
from .metrics import Metrics
from .prompts import PromptError, PromptFormat, PromptStyle, encode, render_chat
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
    new_id,
    now,
)
from .sampling import Sampled, SamplingParams

if TYPE_CHECKING:
    from .grammar import CompiledFormat, GrammarCompiler

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model and tokenizer ready to serve, plus what the server needs to know about them."""

    model: Any
    tokenizer: Any
    prompt_style: PromptStyle
    context_length: int
    folder: Path | None = None
    # LoRA adapters loaded on the model (a peft model), each served under its own name.
    adapters: tuple[str, ...] = ()


@dataclass
class ServeOptions:
    served_model_name: str
    max_batch_size: int = 16
    max_queue: int = 64
    max_new_tokens: int = 512
    # Prompt tokens prefilled in one step: new arrivals wait a step or two rather than stall
    # every running stream for one long prefill.
    max_prefill_tokens: int = 2048
    max_prefill_tokens_while_decoding: int = 256
    # Tokens of recent prompts whose keys and values are kept for prompts that start the same way (0: off).
    prefix_cache_tokens: int = 4096
    max_request_bytes: int = 1 << 20
    metrics_auth: bool = False
    # False when /metrics has a port of its own: the API port then answers 404 for it, so that a
    # NetworkPolicy can let scrapers reach the metrics and nothing else.
    metrics_on_api_port: bool = True


class OpenAIServing:
    def __init__(self, loaded: LoadedModel, engine: Engine, options: ServeOptions, metrics: Metrics) -> None:
        self.loaded, self.engine, self.options, self.metrics = loaded, engine, options, metrics
        self.token_texts = TokenTexts(loaded.tokenizer)
        self._grammars: GrammarCompiler | None = None
        self._grammars_lock = threading.Lock()

    # -- shared steps ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """What a request's `model` may name: the base model, then each adapter."""
        return [self.options.served_model_name, *self.engine.adapter_order]

    def _check_model(self, name: str) -> str | None:
        """The adapter a request's `model` names (None: the base model); 404 for anything else."""
        if name == self.options.served_model_name:
            return None
        if name in self.engine.adapters:
            return name
        served = ", ".join(f"`{n}`" for n in self.model_names())
        raise ApiError(
            404,
            f"The model `{name}` does not exist; this server serves {served}.",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )

    def _compile_format(self, request: ChatCompletionRequest | CompletionRequest) -> CompiledFormat | None:
        """The request's response_format as a grammar (None for plain text). Blocking: call off the loop."""
        response_format = request.response_format
        if response_format is None or response_format.type == "text":
            return None
        if response_format.type == "json_schema" and response_format.json_schema is None:
            raise bad_request("response_format.json_schema: this field is required when type is json_schema",
                              "response_format.json_schema")
        # Imported on the first structured request: plain serving never loads the grammar library.
        from .grammar import GrammarCompiler, GrammarError

        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.loaded.tokenizer, self.engine.eos_ids)
        try:
            return self._grammars.compile(response_format.spec())
        except GrammarError as error:
            raise bad_request(str(error), error.param) from error

    def _params(self, request: ChatCompletionRequest | CompletionRequest, prompt_tokens: int, param: str,
                grammar: CompiledFormat | None = None) -> SamplingParams:
        context = self.loaded.context_length
        if prompt_tokens >= context:
            raise bad_request(f"{param}: the prompt is {prompt_tokens} tokens; the model's context is {context}", param)
        # A request for more than the server allows is served up to the limit and ends with
        # finish_reason "length", as when the context runs out: teachers often ask for a lot.
        wanted = request.token_limit() or self.options.max_new_tokens
        max_tokens = max(1, min(wanted, self.options.max_new_tokens, context - prompt_tokens))
        vocab = len(self.loaded.tokenizer)
        bias: dict[int, float] = {}
        for key, value in (request.logit_bias or {}).items():
            if int(key) >= vocab:
                raise bad_request(f"logit_bias: token id {key} is outside the vocabulary (size {vocab})", "logit_bias")
            bias[int(key)] = value
        if isinstance(request, ChatCompletionRequest) and request.top_logprobs and not request.logprobs:
            raise bad_request("top_logprobs: needs `logprobs: true`", "top_logprobs")
        if isinstance(request, CompletionRequest) and request.logprobs is not None and request.echo:
            raise bad_request("logprobs: not available together with echo (prompt log-probabilities are not computed)",
                              "logprobs")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stop=request.stop_list(),
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logit_bias=bias,
            logprobs=request.logprobs_wanted(),
            grammar=grammar,
        )

    def _submit(self, prompts: list[list[int]], params: SamplingParams, n: int, adapter: str | None = None) -> RequestHandle:
        try:
            handle = self.engine.submit(prompts, params, n, asyncio.get_running_loop(), adapter)
        except QueueFullError as error:
            self.metrics.rejected.inc()
            raise ApiError(
                429,
                f"The server is busy ({error}); retry shortly.",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from error
        except EngineStoppedError as error:
            raise ApiError(503, str(error), type="server_error", code="unavailable") from error
        except UnknownAdapterError as error:  # removed between the model check and the submission
            raise ApiError(404, str(error), type="not_found_error", param="model", code="model_not_found") from error
        self.metrics.prompt_tokens.inc(sum(len(p) for p in prompts) * n)
        return handle

    async def _events(self, handle: RequestHandle, started: float) -> AsyncIterator[Event]:
        """Every event of a request until all its choices finished; cancels the rest if abandoned."""
        pending = handle.choices
        first = True
        try:
            while pending:
                event = await handle.events.get()
                if first:
                    self.metrics.time_to_first_token.observe(time.perf_counter() - started)
                    first = False
                if event.finish_reason is not None:
                    pending -= 1
                    self.metrics.generation_tokens.inc(event.completion_tokens)
                if event.error is not None:
                    raise ApiError(500, f"generation failed: {event.error}", type="server_error")
                yield event
        finally:
            handle.cancel()

    # -- chat -----------------------------------------------------------------------------

    def _chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        try:
            text = render_chat(request.messages, self.loaded.prompt_style, self.loaded.tokenizer)
        except PromptError as error:
            raise bad_request(str(error), error.param) from error
        return encode(text, self.loaded.tokenizer, chat=self.loaded.prompt_style.format is PromptFormat.CHAT)

    async def chat(self, request: ChatCompletionRequest, request_id: str) -> ChatCompletion | AsyncIterator[str]:
        started = time.perf_counter()
        adapter = self._check_model(request.model)
        # Rendering and tokenizing a long prompt is CPU work: off the event loop.
        prompt = await asyncio.to_thread(self._chat_prompt, request)
        grammar = await asyncio.to_thread(self._compile_format, request)
        params = self._params(request, len(prompt), "messages", grammar)
        handle = self._submit([prompt], params, request.n, adapter)
        response_id = f"chatcmpl-{request_id}"
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._chat_stream(handle, response_id, request.model, len(prompt), include_usage, started)
        answers = await self._collect(handle, started, [""] * handle.choices)
        return ChatCompletion(
            id=response_id,
            model=request.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=answers.texts[i]),
                    finish_reason=answers.reasons[i],
                    logprobs=None if params.logprobs is None else self._chat_logprobs(answers.logprobs[i]),
                )
                for i in range(handle.choices)
            ],
            usage=Usage(prompt_tokens=len(prompt), completion_tokens=answers.tokens,
                        total_tokens=len(prompt) + answers.tokens),
        )

    def _chat_logprobs(self, sampled: list[Sampled]) -> dict[str, Any]:
        return {"content": chat_content(self.token_texts, sampled), "refusal": None}

    async def _collect(self, handle: RequestHandle, started: float, texts: list[str]) -> _Answers:
        """Whole answers of a non-streamed request: each choice's text (after `texts`), finish reason, tokens."""
        answers = _Answers(texts, [None] * handle.choices, [0] * handle.choices, [[] for _ in range(handle.choices)])
        async for event in self._events(handle, started):
            answers.texts[event.index] += event.text
            answers.counts[event.index] = event.completion_tokens
            answers.reasons[event.index] = event.finish_reason or answers.reasons[event.index]
            answers.logprobs[event.index].extend(event.logprobs)
        return answers

    async def _chat_stream(
        self, handle: RequestHandle, response_id: str, model: str, prompt_tokens: int, include_usage: bool, started: float
    ) -> AsyncIterator[str]:
        chunk = _chunk_writer(response_id, "chat.completion.chunk", model, include_usage)

        def choice(index: int, delta: dict[str, str], finish: str | None = None,
                   logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

        for index in range(handle.choices):
            yield chunk([choice(index, {"role": "assistant", "content": ""})])
        completion = [0] * handle.choices
        try:
            async for event in self._events(handle, started):
                completion[event.index] = event.completion_tokens
                if event.text or event.logprobs:
                    logprobs = self._chat_logprobs(list(event.logprobs)) if event.logprobs else None
                    yield chunk([choice(event.index, {"content": event.text}, logprobs=logprobs)])
                if event.finish_reason is not None:
                    yield chunk([choice(event.index, {}, event.finish_reason)])
        except ApiError as error:
            yield sse(error.body())
            return
        if include_usage:
            yield chunk([], _usage(prompt_tokens, sum(completion)))
        yield "data: [DONE]\n\n"

    # -- completions ----------------------------------------------------------------------

    async def completions(self, request: CompletionRequest, request_id: str) -> Completion | AsyncIterator[str]:
        started = time.perf_counter()
        adapter = self._check_model(request.model)
        texts = request.prompts()
        prompts = await asyncio.to_thread(lambda: [encode(t, self.loaded.tokenizer, chat=False) for t in texts])
        grammar = await asyncio.to_thread(self._compile_format, request)
        params = self._params(request, max(len(p) for p in prompts), "prompt", grammar)
        handle = self._submit(prompts, params, request.n, adapter)
        prompt_tokens = sum(len(p) for p in prompts) * request.n
        echoes = [texts[i // request.n] if request.echo else "" for i in range(handle.choices)]
        response_id = f"cmpl-{request_id}"
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._completion_stream(handle, response_id, request.model, prompt_tokens, echoes, include_usage,
                                           started, params.logprobs)
        answers = await self._collect(handle, started, list(echoes))
        return Completion(
            id=response_id,
            model=request.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=answers.texts[i],
                    finish_reason=answers.reasons[i],
                    logprobs=None if params.logprobs is None
                    else completion_logprobs(self.token_texts, answers.logprobs[i], 0, params.logprobs > 0),
                )
                for i in range(handle.choices)
            ],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=answers.tokens,
                        total_tokens=prompt_tokens + answers.tokens),
        )

    async def _completion_stream(
        self,
        handle: RequestHandle,
        response_id: str,
        model: str,
        prompt_tokens: int,
        echoes: list[str],
        include_usage: bool,
        started: float,
        top_logprobs: int | None = None,
    ) -> AsyncIterator[str]:
        chunk = _chunk_writer(response_id, "text_completion", model, include_usage)

        def choice(index: int, text: str, finish: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}

        for index, echo in enumerate(echoes):
            if echo:
                yield chunk([choice(index, echo)])
        completion = [0] * handle.choices
        offsets = [0] * handle.choices  # characters of token text sent so far, for text_offset
        try:
            async for event in self._events(handle, started):
                completion[event.index] = event.completion_tokens
                if event.text or event.logprobs or event.finish_reason is not None:
                    logprobs = None
                    if top_logprobs is not None:
                        logprobs = completion_logprobs(self.token_texts, event.logprobs, offsets[event.index],
                                                       top_logprobs > 0)
                        offsets[event.index] += sum(len(t) for t in logprobs["tokens"])
                    yield chunk([choice(event.index, event.text, event.finish_reason, logprobs)])
        except ApiError as error:
            yield sse(error.body())
            return
        if include_usage:
            yield chunk([], _usage(prompt_tokens, sum(completion)))
        yield "data: [DONE]\n\n"


@dataclass
class _Answers:
    """What a non-streamed request collected, per choice."""

    texts: list[str]
    reasons: list[str | None]
    counts: list[int]
    logprobs: list[list[Sampled]]

    @property
    def tokens(self) -> int:
        return sum(self.counts)


def _chunk_writer(
    response_id: str, object_name: str, model: str, include_usage: bool
) -> Callable[..., str]:
    """One stream's chunk encoder: the envelope every chunk of a response shares."""
    created = now()

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": response_id, "object": object_name, "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return sse(body)

    return chunk


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
