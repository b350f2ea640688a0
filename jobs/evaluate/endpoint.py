"""One chat completion from an OpenAI-compatible endpoint (a contestant or the judge), with retries.

The same policy as the generation's teacher client: the openai client's own retries are off, and
429, 5xx, timeouts and dropped connections are retried per `RetryPolicy` (Retry-After honoured);
a request that still fails is given up with its reason. A refusal that retrying cannot fix (401,
403, 404, 400...) raises `EndpointRejected` naming the endpoint's role, which stops the run.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai

from alpaca_jobs.api_keys import ApiKeyError, resolve_api_key  # noqa: F401 - the endpoints' keys
from alpaca_jobs.generate.retry import RetryPolicy, parse_retry_after
from alpaca_jobs.generate.teacher import MALFORMED_RESPONSE, Answer, GaveUp, read_completion

_RETRYABLE_STATUS = {408, 409, 429}


class EndpointRejected(RuntimeError):
    """An endpoint refused a request in a way that retrying cannot fix."""


def _retryable(exc: Exception) -> tuple[str, float | None] | None:
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", None
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error", None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in _RETRYABLE_STATUS or status >= 500:
            reason = "rate_limited" if status == 429 else "server_error" if status >= 500 else f"http_{status}"
            return reason, parse_retry_after(exc.response.headers)
    return None


class Endpoint:
    def __init__(
        self,
        *,
        role: str,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_s: float,
        retry: RetryPolicy,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.role = role
        self.model = model
        self._retry = retry
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unused",  # local servers need none, the client insists on one
            max_retries=0,
            timeout=timeout_s,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=512)),
        )

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> Answer:
        """One chat completion; `params` are the request's other fields (temperature, response_format...)."""
        retries: Counter[str] = Counter()
        attempt = 0
        while True:
            try:
                completion = await self._client.chat.completions.create(
                    model=self.model, messages=messages, n=1, **params  # type: ignore[arg-type]
                )
            except openai.APIResponseValidationError:
                return Answer(None, None, 0, 0, problem=MALFORMED_RESPONSE, retries=dict(retries))
            except openai.APIError as exc:
                classified = _retryable(exc)
                if classified is None:
                    status = getattr(exc, "status_code", None)
                    raise EndpointRejected(
                        f"the {self.role} endpoint refused the request{f' with HTTP {status}' if status else ''}: {exc.message}"
                    ) from None
                reason, retry_after = classified
                if attempt >= self._retry.max_retries:
                    raise GaveUp(reason, dict(retries), exc.message) from None
                retries[reason] += 1
                await self._sleep(self._retry.delay(attempt, retry_after, self._rng))
                attempt += 1
                continue
            except ValueError:  # a 200 whose body is not JSON
                return Answer(None, None, 0, 0, problem=MALFORMED_RESPONSE, retries=dict(retries))
            answer = read_completion(completion)
            return Answer(answer.content, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens,
                          answer.problem, dict(retries))
