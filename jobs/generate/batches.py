"""Requests through the Batch API: a JSONL file of requests uploaded to /v1/files, a batch created
on it (/v1/batches), polled until it ends, and its output file read back into answers.

A batch is named by a key that the journal holds before anything is uploaded, and the key rides
on the batch's metadata, so a process that died between creating a batch and journaling its id
finds the batch again by its key instead of submitting (and paying for) it twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import openai

from .teacher import MALFORMED_RESPONSE, Answer, Teacher, TeacherRejected, read_completion

log = logging.getLogger(__name__)

KEY = "alpaca_batch_key"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# The Batch API's own calls (upload, create, poll) retry on their own; the answers are in the file.
_CALL_RETRIES = 5


def _namespace(value: Any) -> Any:
    """A JSON body as attributes, the shape read_completion reads from the openai client's objects."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


def read_output_line(line: dict[str, Any]) -> tuple[int, Answer | str]:
    """(request, its answer) from one line of a batch's output or error file; a string is why it failed."""
    request = int(line["custom_id"])
    response = line.get("response") or {}
    if line.get("error") or response.get("status_code") != 200:
        error = line.get("error") or (response.get("body") or {}).get("error") or {}
        return request, f"batch_{error.get('code') or response.get('status_code') or 'error'}"
    body = response.get("body")
    if not isinstance(body, dict):
        return request, Answer(None, None, 0, 0, problem=MALFORMED_RESPONSE)
    return request, read_completion(_namespace(body))


def _refused(exc: openai.APIStatusError) -> TeacherRejected:
    return TeacherRejected(f"the teacher's Batch API refused the request with HTTP {exc.status_code}: {exc.message}")


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


class BatchClient:
    def __init__(
        self,
        teacher: Teacher,
        poll_interval_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._teacher = teacher
        self._client = teacher.client.with_options(max_retries=_CALL_RETRIES)
        self._poll_interval_s = poll_interval_s
        self._sleep = sleep

    async def find(self, key: str) -> str | None:
        """The id of a batch submitted under `key`, if the API has one."""
        try:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(KEY) == key:
                    return batch.id
        except openai.APIStatusError as exc:
            # Anything else (5xx, connection) ends the process: the next one resumes from the journal.
            if not _retryable(exc.status_code):
                raise _refused(exc) from None
            raise
        return None

    async def submit(self, key: str, prompts: dict[int, str]) -> str:
        try:
            return await self._submit(key, prompts)
        except openai.APIStatusError as exc:
            if not _retryable(exc.status_code):
                raise _refused(exc) from None
            raise

    async def _submit(self, key: str, prompts: dict[int, str]) -> str:
        """Upload the requests as one file and create a batch on it; returns the batch id."""
        endpoint = self._teacher.endpoint
        lines = [
            json.dumps({"custom_id": str(request), "method": "POST", "url": endpoint, "body": self._teacher.request_body(prompt)})
            for request, prompt in sorted(prompts.items())
        ]
        upload = await self._client.files.create(file=(f"{key}.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
        batch = await self._client.batches.create(
            input_file_id=upload.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata={KEY: key},
        )
        log.info("batch %s submitted: %d requests (%s)", batch.id, len(prompts), key)
        return batch.id

    async def results(self, batch_id: str) -> tuple[str, dict[int, Answer | str]]:
        """Wait for the batch to end; its status and what came back for each request in it."""
        while True:
            batch = await self._client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                break
            counts = batch.request_counts
            if counts is not None:
                log.info("batch %s %s: %d/%d done", batch_id, batch.status, counts.completed + counts.failed, counts.total)
            await self._sleep(self._poll_interval_s)
        answers: dict[int, Answer | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._client.files.content(file_id)
            for raw in content.text.splitlines():
                if raw.strip():
                    request, answer = read_output_line(json.loads(raw))
                    answers[request] = answer
        return batch.status, answers
