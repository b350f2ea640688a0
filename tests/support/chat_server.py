"""A scripted OpenAI-compatible chat server for tests: real HTTP, one reply function per model name.

It serves `POST /v1/chat/completions` on 127.0.0.1 from a background thread (uvicorn). Each request
is answered by the script registered for its `model`, which sees the whole request body; usage
is counted in words, as any API bills. It records every request it answered, so tests can prove
what was (not) asked twice, and what it billed, whether or not the client lived to read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .threaded_server import ThreadedServer

# A script returns the reply text, or a (status code, error message) pair for an error response.
Script = Callable[[dict[str, Any]], "str | tuple[int, str]"]


def fingerprint(body: dict[str, Any]) -> str:
    """What a request asked, independent of when: its model and messages."""
    return hashlib.sha256(json.dumps([body.get("model"), body.get("messages")], sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Stats:
    received: Counter[str] = field(default_factory=Counter)  # by model
    answered: Counter[str] = field(default_factory=Counter)  # 200s by model
    asked: Counter[str] = field(default_factory=Counter)  # 200s by request fingerprint
    # 200s by the bearer token they came with, then by fingerprint: which client asked what.
    asked_with_key: dict[str, Counter[str]] = field(default_factory=dict)
    billed_prompt_tokens: Counter[str] = field(default_factory=Counter)  # by model
    billed_completion_tokens: Counter[str] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    held: int = 0  # answers billed and now waiting for `release`


class ChatServer(ThreadedServer):
    def __init__(self, scripts: dict[str, Script], *, delay_s: float = 0.0) -> None:
        self.scripts = scripts
        self.delay_s = delay_s
        self.stats = Stats()
        # Cleared, every answer is billed and then held until it is set again: a test can kill its
        # client while answers it paid for are certainly still on their way.
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()
        super().__init__(self._build_app(), "test-chat-server")

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            model = str(body.get("model"))
            with self._lock:
                self.stats.received[model] += 1
                self.stats.bodies.append(body)
            script = self.scripts.get(model)
            if script is None:
                return _error(404, f"the model {model!r} does not exist", "model_not_found")
            reply = script(body)
            if isinstance(reply, tuple):
                return _error(reply[0], reply[1], "scripted_error")
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            completion_tokens = len(reply.split())
            finish_reason = "stop"
            if (limit := body.get("max_tokens")) is not None and completion_tokens > limit:
                reply, completion_tokens, finish_reason = " ".join(reply.split()[:limit]), limit, "length"
            # Billed on arrival, sent after the delay: a client that dies waiting has still paid.
            with self._lock:
                self.stats.answered[model] += 1
                self.stats.asked[fingerprint(body)] += 1
                key = request.headers.get("authorization", "").removeprefix("Bearer ")
                self.stats.asked_with_key.setdefault(key, Counter())[fingerprint(body)] += 1
                self.stats.billed_prompt_tokens[model] += prompt_tokens
                self.stats.billed_completion_tokens[model] += completion_tokens
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if not self.release.is_set():
                with self._lock:
                    self.stats.held += 1
                while not self.release.is_set():
                    await asyncio.sleep(0.01)
                with self._lock:
                    self.stats.held -= 1
            return JSONResponse({
                "id": f"chatcmpl-{sum(self.stats.received.values())}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            })

        return app


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": code, "param": None, "code": code}}, status_code=status)
