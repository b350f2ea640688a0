"""An ASGI app served over real HTTP by uvicorn on 127.0.0.1, from a daemon thread, for tests.

A free port is picked by the OS when it starts; `base_url` is the OpenAI-style `/v1` root on it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

import uvicorn


class ThreadedServer:
    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name  # the thread's, and named when it fails to start
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 20) -> Self:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the test server {self.name!r} did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
