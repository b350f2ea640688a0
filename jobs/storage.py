"""Reading and writing outputs at a folder path or an fsspec URI.

Workloads write into a local folder (a mounted PVC, or local mode's folder) and, when the output
is an object-store URI, mirror it there. Reads of a URI are fetched once into a local cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CACHE = Path(os.environ.get("ALPACA_CACHE_DIR", Path.home() / ".cache" / "alpaca-operator" / "fetched"))


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> Path:
    """A local path for a location; a remote URI is downloaded (recursively) into the cache first."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if not is_remote(location):
        return Path(location)
    import fsspec

    target = _CACHE / hashlib.sha256(location.encode()).hexdigest()[:16]
    if not target.exists():
        fs, path = fsspec.core.url_to_fs(location)
        partial = target.with_suffix(".partial")
        fs.get(path, str(partial), recursive=fs.isdir(path))
        partial.rename(target)
    return target


def publish(folder: Path, location: str) -> None:
    """Copy a finished local folder to a remote location (no-op for local locations)."""
    if not is_remote(location):
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    fs.put(str(folder), path, recursive=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
