"""One request to the teacher through the official openai client, with retries, as a plain answer.

Transient failures (429, 5xx, timeouts, dropped connections) are retried per `RetryPolicy`; a request
that still fails is reported as given up, with the reason. A request the server refuses outright
(400, 401, 403, 404, 422...) would be refused every time, so it stops the run. A 200 whose body is
not a usable chat completion is an answer with a problem, never an exception.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from alpaca_operator.api.instructdataset import Generation, TeacherAPI, TeacherFormat

from .parse import stop_sequence
from .prompt import STRUCTURED_SCHEMA_NAME, open_slots, task_schema
from .retry import RetryPolicy, parse_retry_after

RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
MALFORMED_RESPONSE = "malformed_response"
EMPTY_COMPLETION = "empty_completion"

# Conflicts and request timeouts are worth another try, as the openai client itself treats them.
_RETRYABLE_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class Answer:
    """What came back for one request. `problem` is set when the body was unusable."""

    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    problem: str | None = None
    retries: dict[str, int] = field(default_factory=dict)


class GaveUp(Exception):
    """A request failed on every allowed attempt."""

    def __init__(self, reason: str, retries: dict[str, int], detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.retries = retries


class TeacherRejected(RuntimeError):
    """The teacher refused the request in a way retrying cannot fix (auth, bad model, bad request)."""


def _classify(exc: Exception) -> tuple[str, float | None] | None:
    """(reason, Retry-After) for a retryable failure; None when it is not retryable."""
    if isinstance(exc, openai.APITimeoutError):
        return TIMEOUT, None
    if isinstance(exc, openai.APIConnectionError):
        return CONNECTION_ERROR, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in _RETRYABLE_STATUS or status >= 500:
            reason = RATE_LIMITED if status == 429 else SERVER_ERROR if status >= 500 else f"http_{status}"
            return reason, parse_retry_after(exc.response.headers)
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def read_completion(completion: Any) -> Answer:
    """Fields of a chat completion, read defensively: the client does not validate response bodies."""
    usage = getattr(completion, "usage", None)
    prompt_tokens = _int(getattr(usage, "prompt_tokens", 0))
    completion_tokens = _int(getattr(usage, "completion_tokens", 0))
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        return Answer(None, None, prompt_tokens, completion_tokens, problem=MALFORMED_RESPONSE)
    choice = choices[0]
    # A chat completion carries a message; a text completion carries its text directly.
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
    finish_reason = getattr(choice, "finish_reason", None)
    if not isinstance(finish_reason, str):
        finish_reason = None
    if not isinstance(content, str):
        return Answer(None, finish_reason, prompt_tokens, completion_tokens, problem=MALFORMED_RESPONSE)
    if not content.strip():
        return Answer(content, finish_reason, prompt_tokens, completion_tokens, problem=EMPTY_COMPLETION)
    return Answer(content, finish_reason, prompt_tokens, completion_tokens)


class Teacher:
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        generation: Generation,
        timeout_s: float,
        api: TeacherAPI = TeacherAPI.CHAT,
        format: TeacherFormat = TeacherFormat.NUMBERED,
        retry: RetryPolicy,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.model = model
        self._api = api
        self._format = format
        self._generation = generation
        self._retry = retry
        self._rng = rng or random.Random()
        self._sleep = sleep
        # Local OpenAI-compatible servers need no key, but the client insists on one.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            max_retries=0,
            timeout=timeout_s,
            # Enough pooled connections for any allowed concurrency.
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=512)),
        )

    async def close(self) -> None:
        await self._client.close()

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self._client

    @property
    def endpoint(self) -> str:
        """The API path a request goes to (what a Batch API file names for each line)."""
        return "/v1/completions" if self._api is TeacherAPI.COMPLETIONS else "/v1/chat/completions"

    def request_body(self, prompt: str) -> dict[str, Any]:
        """The JSON body of one request, the same whether it is sent at once or in a batch file."""
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": self._generation.temperature,
            "top_p": self._generation.top_p,
            "max_tokens": self._generation.max_tokens,
            "n": 1,
        }
        if self._format is TeacherFormat.STRUCTURED:
            generation = self._generation
            wanted = open_slots(generation.instructions_per_request, generation.seed_tasks_per_prompt,
                                generation.generated_tasks_per_prompt)
            # The schema bounds the answer (maxItems), as the stop sequence bounds a numbered list.
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": STRUCTURED_SCHEMA_NAME, "schema": task_schema(wanted), "strict": True},
            }
        else:
            # The list is full at its last slot: no tokens paid for items nobody asked for.
            body["stop"] = [stop_sequence(self._generation.instructions_per_request)]
        if self._api is TeacherAPI.COMPLETIONS:
            return {**body, "prompt": prompt}
        return {**body, "messages": [{"role": "user", "content": prompt}]}

    async def _create(self, prompt: str) -> Any:
        body = self.request_body(prompt)
        if self._api is TeacherAPI.COMPLETIONS:
            # The legacy completions call has no response_format parameter; servers that take it
            # there (vLLM, alpaca serve) read it from the body.
            extra = {"response_format": body.pop("response_format")} if "response_format" in body else None
            return await self._client.completions.create(**body, extra_body=extra)
        return await self._client.chat.completions.create(**body)

    async def complete(self, prompt: str) -> Answer:
        retries: Counter[str] = Counter()
        attempt = 0
        while True:
            try:
                completion = await self._create(prompt)
            except openai.APIResponseValidationError:
                return Answer(None, None, 0, 0, problem=MALFORMED_RESPONSE, retries=dict(retries))
            except openai.APIError as exc:
                classified = _classify(exc)
                if classified is None:
                    status = getattr(exc, "status_code", None)
                    raise TeacherRejected(
                        f"the teacher refused the request{f' with HTTP {status}' if status else ''}: {exc.message}"
                    ) from None
                reason, retry_after = classified
                if attempt >= self._retry.max_retries:
                    raise GaveUp(reason, dict(retries), exc.message) from None
                retries[reason] += 1
                await self._sleep(self._retry.delay(attempt, retry_after, self._rng))
                attempt += 1
                continue
            except ValueError:
                # A 200 whose body is not JSON.
                return Answer(None, None, 0, 0, problem=MALFORMED_RESPONSE, retries=dict(retries))
            answer = read_completion(completion)
            return Answer(
                answer.content,
                answer.finish_reason,
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.problem,
                dict(retries),
            )
