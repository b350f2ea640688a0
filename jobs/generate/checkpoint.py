"""The checkpoint: an append-only journal of the teacher's answers, written before they are used.

Every request is journaled twice: once as `sent` before it goes out, with the most it can cost
(its prompt's token bound and max_tokens), and once when it is answered (or given up, or cancelled
once the run has all it needs from a teacher that charges nothing), before its tasks are
filtered. A killed process loses nothing that it used, and a request that was in flight when it
died (sent, never answered) is known: the teacher may have billed it, so it counts as spent at its
worst case. The dataset is a pure function of the
journal and the configuration, so a restarted run replays the journal to get back exactly what it had
kept, and never asks again for what was already answered. A kill in the middle of a write leaves at
most a torn last line, which is dropped (that request was not yet used, so nothing depends on it).

`sync` (fsync) is separate from `append` so that the run can sync in the background, batching many
answers per disk flush: only a crash of the whole machine can lose the last unsynced answers, and
those are then simply asked again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

# sent: on its way (worst case in the token fields); answered / failed: its end; cancelled: its end
# when the run stopped waiting for it (worst case in the token fields: its answer never came back);
# submitted: a Batch API batch created (content = its id); withdrawn: planned for a batch that was
# never submitted.
Outcome = Literal["sent", "answered", "failed", "cancelled", "submitted", "withdrawn"]
VERSION = 3
# Version 1 journals (no `sent` records) read the same way: nothing of theirs is in flight. Version 3
# added `cancelled`; every other record is still written as version 2, so that a reader of version 2
# reads any journal without cancellations, and refuses (rather than misreads) one with them.
_WITHOUT_CANCELLED = 2
_READABLE = {1, _WITHOUT_CANCELLED, VERSION}


@dataclass(frozen=True)
class Record:
    request: int
    first_slot: int
    outcome: Outcome
    content: str | None = None
    finish_reason: str | None = None
    # Billed usage of an answer; for `sent` and `cancelled`, the most the request can bill (prompt
    # bound, max_tokens).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    problem: str | None = None  # why an answered request was unusable, or why a request failed
    retries: dict[str, int] = field(default_factory=dict)
    batch: str | None = None  # the key of the Batch API batch the request went in

    def to_json(self) -> str:
        version = VERSION if self.outcome == "cancelled" else _WITHOUT_CANCELLED
        return json.dumps({"v": version, **asdict(self)}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        data: dict[str, Any] = json.loads(line)
        version = data.pop("v", None)
        if version not in _READABLE:
            raise ValueError(f"unknown checkpoint record version {version!r}")
        return cls(**data)


class CheckpointError(RuntimeError):
    """The journal is damaged somewhere other than its last line."""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None

    def load(self) -> list[Record]:
        """All complete records; a torn tail is cut off the file so that appends start clean."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        # Everything after the last newline was never completed (a kill mid-write).
        complete = data.split(b"\n")[:-1]
        records: list[Record] = []
        good_end = 0
        for number, raw in enumerate(complete, start=1):
            try:
                records.append(Record.from_json(raw.decode("utf-8")))
            except (ValueError, TypeError) as exc:
                # A crash of the machine (not just the process) can leave junk in the last line.
                if number == len(complete):
                    break
                raise CheckpointError(f"{self.path}:{number}: damaged checkpoint record: {exc}") from None
            good_end += len(raw) + 1
        if good_end != len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
        return records

    def append(self, record: Record) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        self._handle.write((record.to_json() + "\n").encode("utf-8"))
        self._handle.flush()  # in the kernel now: survives the process being killed

    def sync(self) -> None:
        """Make every appended record durable (it survives a machine crash)."""
        if self._handle is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None
