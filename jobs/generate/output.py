"""The run's output folder: local (a folder or a mounted volume) or an object store via fsspec.

Work always happens in a local folder. For a remote location that folder is a staging copy: the
checkpoint is fetched from the store on start and everything is pushed back when the run ends (and
the checkpoint now and then while it runs), so a rescheduled pod resumes from the store. Copies go
through `alpaca_jobs.storage`: each file lands whole, and the manifest is published last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from alpaca_jobs import storage

from .manifest import CHECKPOINT_FILE, MANIFEST_FILE

log = logging.getLogger(__name__)


class OutputFolder:
    def __init__(self, location: str, staging_root: Path | None = None) -> None:
        self.location = location
        self.remote = storage.is_remote(location)
        if self.remote:
            root = staging_root or storage.cache_root()
            self.path = root / "staging" / hashlib.sha256(location.encode()).hexdigest()[:16]
            self.store: storage.Store | None = storage.Store(location)
        else:
            self.path = storage.local_path(location)
            self.store = None
        self.path.mkdir(parents=True, exist_ok=True)

    def fetch_checkpoint(self) -> None:
        """The store's journal replaces the local one: the store is what survives a lost pod."""
        if self.store is None or not self.store.exists(CHECKPOINT_FILE):
            return
        local = self.path / CHECKPOINT_FILE
        local.unlink(missing_ok=True)
        self.store.fetch(CHECKPOINT_FILE, local)

    def push(self, *relative: str) -> None:
        """Copy the named files (all when none are named, the manifest last) to the remote location."""
        if self.store is None:
            return
        if not relative:
            self.store.publish_folder(self.path, last=(MANIFEST_FILE,))
            return
        for name in relative:
            self.store.upload(self.path / name, name)

    def write_text(self, name: str, text: str) -> Path:
        """Atomically: readers see the old file or the new one, never half of one."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def write_jsonl(self, name: str, rows: list[dict[str, str]]) -> Path:
        return self.write_text(name, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
