"""A rate-free work queue with the semantics of client-go's: a key is processed by one worker at a
time, adding a key already waiting is a no-op, and a key added while it is processed runs again
once after. Reconciles are level-based, so collapsing many events into one run loses nothing."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable


class WorkQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._waiting: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._tiebreak = itertools.count()
        self._closed = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            if self._closed:
                return
            if key in self._processing:
                self._dirty.add(key)
                return
            if key in self._waiting:
                return
            self._waiting.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._tiebreak), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key (now owned by the caller until done()), or None when closed or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._waiting.discard(key)
                    self._processing.add(key)
                    return key
                if self._closed:
                    return None
                wait = self._delayed[0][0] - time.monotonic() if self._delayed else None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._waiting.add(key)
                self._queue.append(key)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._processing)

    def _promote_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            if key not in self._processing and key not in self._waiting:
                self._waiting.add(key)
                self._queue.append(key)
            elif key in self._processing:
                self._dirty.add(key)
