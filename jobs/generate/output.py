"""The run's output folder: local (a folder or a mounted volume) or an object store via fsspec.

Work always happens in a local folder. For a remote location that folder is a staging copy: the
checkpoint is fetched from the store on start and everything is pushed back when the run ends (and
the checkpoint now and then while it runs), so a rescheduled pod resumes from the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from alpaca_jobs import storage

from .manifest import CHECKPOINT_FILE

log = logging.getLogger(__name__)


class OutputFolder:
    def __init__(self, location: str, staging_root: Path | None = None) -> None:
        self.location = location
        self.remote = storage.is_remote(location)
        if self.remote:
            root = staging_root or Path(os.environ.get("ALPACA_CACHE_DIR", Path.home() / ".cache" / "alpaca-operator"))
            self.path = root / "staging" / hashlib.sha256(location.encode()).hexdigest()[:16]
        else:
            self.path = storage.local_path(location)
        self.path.mkdir(parents=True, exist_ok=True)

    def fetch_checkpoint(self) -> None:
        if not self.remote:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.location)
        remote = f"{root.rstrip('/')}/{CHECKPOINT_FILE}"
        if fs.exists(remote):
            local = self.path / CHECKPOINT_FILE
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get(remote, str(local))

    def push(self, *relative: str) -> None:
        """Copy the named files (all when none are named) to the remote location."""
        if not self.remote:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.location)
        names = relative or tuple(
            str(p.relative_to(self.path)) for p in sorted(self.path.rglob("*")) if p.is_file()
        )
        for name in names:
            target = f"{root.rstrip('/')}/{name}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.put(str(self.path / name), target)

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
