"""The journal: every request, answer and verdict of an evaluation, appended as it happens.

Each request is written twice: `sent` before it leaves, with the most it can bill (its prompt's
token bound and max_tokens), and then `answer`, `verdict` or `failed` when it ends. A restarted job
replays the journal (state.py) and asks only what has no answer yet, so nothing is asked or judged
twice; a request that was in flight when the process died is charged at its worst case, because
the endpoint may have billed it. A kill in the middle of a write leaves at most a torn last line,
which is cut off (nothing was built on it).

Every entry carries the fingerprint of the request it belongs to: the endpoint (url, model) and
the exact messages and parameters sent. An answer's fingerprint so covers the contestant and the
generation settings; a verdict's covers the judge, its max_tokens and structured output, the
rubric's text and both answers. A resumed job reuses only entries whose fingerprint is that of the
request it would send now: after the spec changed, what the new settings would ask differently is
asked again. Entries of other fingerprints stay in the file, never moved aside: the journal stays
one append-only file (the one the store keeps), it records what was paid, and going back to an
earlier spec reuses what that spec already got.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

Kind = Literal["sent", "answer", "verdict", "failed"]
Role = Literal["candidate", "baseline", "judge"]
# The judge sees each pair twice: the candidate's answer shown as A, then as B.
Order = Literal["candidate_first", "baseline_first"]
VERSION = 1
JOURNAL_FILE = "journal.jsonl"


@dataclass(frozen=True)
class Entry:
    kind: Kind
    task: str  # the task's key (tasks.EvalTask.key)
    role: Role
    order: Order | None = None  # judge requests only
    content: str | None = None  # the answer, or the judge's reply as it came
    winner: str | None = None  # the verdict read from the reply; None: none could be read
    finish_reason: str | None = None
    # Billed usage; for `sent`, the most the request can bill (prompt bound, max_tokens).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    problem: str | None = None
    retries: dict[str, int] = field(default_factory=dict)
    fp: str | None = None  # fingerprint(...) of the request; None (older journals): never reused

    @property
    def request(self) -> tuple[str, str, str | None]:
        """What was asked: the same key for a request's `sent` and its end."""
        return (self.task, self.role, self.order)

    def to_json(self) -> str:
        return json.dumps({"v": VERSION, **asdict(self)}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Entry:
        data: dict[str, Any] = json.loads(line)
        if data.pop("v", None) != VERSION:
            raise ValueError("unknown journal version")
        return cls(**data)


def fingerprint(url: str, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """What produced an entry, as the sha256 of a canonical JSON of the request to the endpoint."""
    canonical = json.dumps({"url": url, "model": model, "messages": messages, "params": params},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class JournalError(RuntimeError):
    """The journal is damaged somewhere other than its last line."""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: BinaryIO | None = None

    def load(self) -> list[Entry]:
        """All complete entries; a torn tail is cut off the file so that appends start clean."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data.split(b"\n")[:-1]  # after the last newline: a write that never finished
        entries: list[Entry] = []
        good_end = 0
        for number, raw in enumerate(complete, start=1):
            try:
                entries.append(Entry.from_json(raw.decode("utf-8")))
            except (ValueError, TypeError) as exc:
                if number == len(complete):  # a machine crash can leave junk in the last line
                    break
                raise JournalError(f"{self.path}:{number}: damaged journal entry: {exc}") from None
            good_end += len(raw) + 1
        if good_end != len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
        return entries

    def append(self, entry: Entry) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        self._handle.write((entry.to_json() + "\n").encode("utf-8"))
        self._handle.flush()  # in the kernel now: survives the process being killed

    def sync(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None
