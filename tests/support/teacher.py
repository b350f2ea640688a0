"""An OpenAI-compatible teacher for tests and benchmarks: scripted answers over real HTTP.

It serves `POST /v1/chat/completions` on 127.0.0.1 from a background thread (uvicorn), answering the
generator's numbered-list prompt with synthetic tasks, and can be told to misbehave: rate limits with
Retry-After, server errors, malformed bodies, garbled text, answers cut by the token limit, slow
answers. It counts what it received and what it answered, so tests can prove what was (not) asked.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .synthetic import SyntheticTasks
from .threaded_server import ThreadedServer

# Faults, consumed one per request in order (then answers are normal again).
RATE_LIMIT = "429"  # HTTP 429 with Retry-After
SERVER_ERROR = "500"  # HTTP 500 with Retry-After (so tests stay fast)
BAD_JSON = "bad_json"  # HTTP 200, body is not JSON
NO_CHOICES = "no_choices"  # HTTP 200, a JSON object without choices
GARBLED = "garbled"  # HTTP 200, a completion whose text has no numbered items
CUT = "cut"  # HTTP 200, finish_reason "length" and the last item cut short
EMPTY = "empty"  # HTTP 200, empty completion text
UNAUTHORIZED = "401"  # HTTP 401

_SLOT_RE = re.compile(r"(\d+)\. Instruction:\s*$")
_TOTAL_RE = re.compile(r"Tasks 1 to (\d+):")

# Items that each trip one filter, cycled through when `bait_every` is set.
BAIT = (
    "Summarize.",  # too short
    "Draw a picture of a lighthouse standing on a rocky shore at dusk.",  # blacklisted
    "Write a program that prints the first ten square numbers in order.",  # write a program
    '"Quoted" instructions should not start with punctuation marks at all.',  # punctuation
    "Évaluez la phrase suivante et corrigez les fautes de grammaire trouvées.",  # non-ASCII start
)


@dataclass
class Stats:
    received: int = 0
    answered: int = 0  # 200 responses with a usable completion (what a paid API bills)
    by_status: Counter[int] = field(default_factory=Counter)
    prompts: list[str] = field(default_factory=list)
    endpoints: Counter[str] = field(default_factory=Counter)  # "chat" / "completions" requests
    stops: Counter[str] = field(default_factory=Counter)  # the stop sequences requests carried
    formats: Counter[str] = field(default_factory=Counter)  # response_format types requests carried
    # The usage of every answer sent back, whether or not the client lived to read it.
    billed_answers: int = 0
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    # The Batch API: batches created (by their metadata's key) and what their answers billed.
    batches_created: Counter[str] = field(default_factory=Counter)
    batch_billed_prompt_tokens: int = 0
    batch_billed_completion_tokens: int = 0
    # Requests whose client closed the connection before their delayed answer was sent.
    disconnected: int = 0


class TeacherServer(ThreadedServer):
    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        seed: int = 0,
        bait_every: int = 0,
        repeat_first_header: bool = False,
        duplicate: str | None = None,
        retry_after_s: float = 0.05,
        reply: Callable[[int, str], str] | None = None,
        keep_prompts: bool = False,
        batch_delay_s: float = 0.2,
        delay_for: Callable[[int], float] | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.delay_for = delay_for  # the delay of the Nth request (from 1), instead of delay_s
        self.seed = seed
        self.bait_every = bait_every
        self.repeat_first_header = repeat_first_header
        self.duplicate = duplicate  # an instruction put first in every answer (ROUGE-L bait)
        self.retry_after_s = retry_after_s
        self.reply = reply
        self.keep_prompts = keep_prompts
        self.batch_delay_s = batch_delay_s  # how long a batch takes to run, once created
        self.stats = Stats()
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        super().__init__(self._build_app(), "test-teacher")

    # -- control ----------------------------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        with self._lock:
            self._faults.extend(faults)

    # -- answers ----------------------------------------------------------------------------------

    def _next_fault(self) -> str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def completion_text(self, number: int, prompt: str) -> str:
        """The default answer: tasks for the open slots, continuing the prompt's list."""
        if self.reply is not None:
            return self.reply(number, prompt)
        slot_match = _SLOT_RE.search(prompt)
        first = int(slot_match.group(1)) if slot_match else 1
        total_match = _TOTAL_RE.search(prompt)
        total = int(total_match.group(1)) if total_match else 20
        items = []
        for slot, instruction, task in self._tasks(number, first, total):
            header = "" if slot == first and not self.repeat_first_header else f"{slot}. Instruction:"
            items.append(
                f"{header} {instruction}\n{slot}. Input:\n{task.input or '<noinput>'}\n{slot}. Output:\n{task.output}\n"
            )
        return "###\n".join(items)

    def structured_text(self, number: int, count: int) -> str:
        """The answer to a request whose response_format asks for `{"tasks": [...]}`: `count` tasks as JSON."""
        tasks = [{"instruction": instruction, "input": task.input, "output": task.output}
                 for _, instruction, task in self._tasks(number, 1, count)]
        return json.dumps({"tasks": tasks})

    def _tasks(self, number: int, first: int, total: int) -> list[tuple[int, str, Any]]:
        """(slot, instruction, task) for the slots first..total, with the configured duplicates and bait."""
        tasks = SyntheticTasks(seed=self.seed * 1_000_003 + number)
        out = []
        for slot in range(first, total + 1):
            task = tasks.task()
            instruction = task.instruction
            if self.duplicate is not None and slot == first:
                instruction = self.duplicate
            elif self.bait_every and slot % self.bait_every == 0:
                instruction = BAIT[(number + slot // self.bait_every) % len(BAIT)]
            out.append((slot, instruction, task))
        return out

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/stats")
        async def stats() -> dict[str, Any]:
            return {"received": self.stats.received, "answered": self.stats.answered}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await handle(request, chat=False)

        self._add_batch_api(app)

        async def handle(request: Request, *, chat: bool) -> Response:
            body = await request.json()
            with self._lock:
                self.stats.received += 1
                number = self.stats.received
            fault = self._next_fault()
            # Answered (and billed) on arrival, sent back after the delay: a client that dies
            # while waiting has still been charged, as by a paid API.
            response = self._answer(number, body, fault, chat=chat)
            delay = self.delay_for(number) if self.delay_for is not None else self.delay_s
            if delay and await _left_within(request, delay):
                with self._lock:
                    self.stats.disconnected += 1
            with self._lock:
                self.stats.by_status[response.status_code] += 1
                if response.status_code == 200 and fault not in (BAD_JSON, NO_CHOICES):
                    self.stats.answered += 1
            return response

        return app

    # -- the Batch API (/v1/files, /v1/batches), as OpenAI's behaves for a client --------------------

    def _add_batch_api(self, app: FastAPI) -> None:
        @app.post("/v1/files")
        async def upload(request: Request) -> dict[str, Any]:
            parts = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + await request.body()
            )
            content = next(p.get_payload(decode=True) for p in parts.iter_parts() if p.get_param("name", header="content-disposition") == "file")
            with self._lock:
                file_id = f"file-{len(self._files) + 1}"
                self._files[file_id] = content
            return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                    "filename": f"{file_id}.jsonl", "purpose": "batch", "status": "processed"}

        @app.get("/v1/files/{file_id}/content")
        async def download(file_id: str) -> Response:
            return Response(self._files[file_id], media_type="application/octet-stream")

        @app.post("/v1/batches")
        async def create(request: Request) -> dict[str, Any]:
            body = await request.json()
            with self._lock:
                batch_id = f"batch-{len(self._batches) + 1}"
                batch = {
                    "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                    "completion_window": body["completion_window"], "status": "in_progress", "created_at": int(time.time()),
                    "metadata": body.get("metadata") or {}, "output_file_id": None, "error_file_id": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                }
                self._batches[batch_id] = batch
                self.stats.batches_created[batch["metadata"].get("alpaca_batch_key", "")] += 1
            asyncio.get_running_loop().create_task(self._run_batch(batch))
            return batch

        @app.get("/v1/batches/{batch_id}")
        async def retrieve(batch_id: str) -> dict[str, Any]:
            return self._batches[batch_id]

        @app.get("/v1/batches")
        async def listing(limit: int = 20) -> dict[str, Any]:
            data = list(reversed(self._batches.values()))[:limit]
            return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": False}

    async def _run_batch(self, batch: dict[str, Any]) -> None:
        await asyncio.sleep(self.batch_delay_s)
        lines = [json.loads(raw) for raw in self._files[batch["input_file_id"]].decode().splitlines() if raw.strip()]
        out = []
        for line in lines:
            with self._lock:
                self.stats.received += 1
                number = self.stats.received
            response = self._answer(number, line["body"], self._next_fault(), chat=line["url"].endswith("/chat/completions"), batch=True)
            out.append({"id": f"req-{number}", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": response.status_code, "request_id": f"r-{number}", "body": json.loads(response.body)}})
        with self._lock:
            file_id = f"file-{len(self._files) + 1}"
            self._files[file_id] = "".join(json.dumps(o) + "\n" for o in out).encode()
            ok = sum(1 for o in out if o["response"]["status_code"] == 200)
            batch.update(status="completed", output_file_id=file_id, completed_at=int(time.time()),
                         request_counts={"total": len(out), "completed": ok, "failed": len(out) - ok})

    def _answer(self, number: int, body: dict[str, Any], fault: str | None, *, chat: bool = True, batch: bool = False) -> Response:
        retry_after = {"retry-after": f"{self.retry_after_s:g}"}
        if fault == RATE_LIMIT:
            return _error(429, "rate limit reached", "rate_limit_exceeded", retry_after)
        if fault == SERVER_ERROR:
            return _error(500, "the server had an error", "server_error", retry_after)
        if fault == UNAUTHORIZED:
            return _error(401, "incorrect API key provided", "invalid_api_key")
        if fault == BAD_JSON:
            return Response(b"<html>upstream hiccup</html>", status_code=200, media_type="application/json")
        if fault == NO_CHOICES:
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model")})
        # /v1/completions takes a list of prompts too (as Alpaca's generator sent them): a choice each.
        prompts = [body["messages"][-1]["content"]] if chat else body["prompt"]
        prompts = [prompts] if isinstance(prompts, str) else prompts
        with self._lock:
            self.stats.endpoints[("chat" if chat else "completions")] += 1
            self.stats.stops.update(body.get("stop") or [])
            self.stats.formats[(body.get("response_format") or {}).get("type", "text")] += 1
            if self.keep_prompts:
                self.stats.prompts.extend(prompts)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            text, finish_reason = self._text(number if len(prompts) == 1 else number * 1000 + index, prompt, fault,
                                             body.get("max_tokens"), _structured_count(body))
            prompt_tokens += len(prompt.split())
            completion_tokens += len(text.split())
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason})
        with self._lock:
            if batch:
                self.stats.batch_billed_prompt_tokens += prompt_tokens
                self.stats.batch_billed_completion_tokens += completion_tokens
            else:
                self.stats.billed_answers += 1
                self.stats.billed_prompt_tokens += prompt_tokens
                self.stats.billed_completion_tokens += completion_tokens
        return JSONResponse(
            {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{number}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": body.get("model", "teacher"),
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def _text(self, number: int, prompt: str, fault: str | None, max_tokens: int | None,
              structured: int | None = None) -> tuple[str, str]:
        """One completion's text and finish reason; `structured`: the tasks a JSON answer must hold."""
        finish_reason = "stop"
        if fault == GARBLED:
            text = "I am sorry, but I would rather talk about the weather today."
        elif fault == EMPTY:
            text = ""
        else:
            text = self.completion_text(number, prompt) if structured is None else self.structured_text(number, structured)
            if fault == CUT:
                text = text[: len(text) - 25]
                finish_reason = "length"
        # A "token" here is a word; like any API, the answer stops at max_tokens.
        if max_tokens is not None and len(text.split()) > max_tokens:
            # Cut after the max_tokens-th word, keeping the text's own lines.
            text = text[: list(re.finditer(r"\S+", text))[max_tokens - 1].end()]
            finish_reason = "length"
        return text, finish_reason


async def _left_within(request: Request, seconds: float) -> bool:
    """Waits `seconds`, or less if the client closes the connection first; True if it did."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(gone(), seconds)
    except TimeoutError:
        return False
    return True


def _structured_count(body: dict[str, Any]) -> int | None:
    """How many tasks a json_schema response_format asks for (its "tasks" maxItems); None for text."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("json_schema", {}).get("schema", {})
    return int(schema.get("properties", {}).get("tasks", {}).get("maxItems", 1))


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)

