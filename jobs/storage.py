"""One storage layer for every workload: local folders, mounted volumes and object-store URIs alike.

A location is a folder named by a path or an fsspec URI (`s3://bucket/prefix`, `gs://...`,
`memory://...`, `file:///...`); `Store` reads and writes relative names under it through fsspec,
so a workload has one code path whatever the storage. Object-store credentials and endpoints
come from the usual environment (AWS_ACCESS_KEY_ID..., or fsspec's `FSSPEC_S3_ENDPOINT_URL`).

What it guarantees:
- a file appears whole or not at all: locally it is written under a temporary name and renamed;
  on an object store it is one PUT (a multipart upload is visible only once completed);
- a folder is published files first and its marker file (a manifest) last, so a reader that
  keys on the marker never sees half a folder;
- reads into the local cache are resumable (a `.partial` file continues from its length with a
  ranged read) and checked against a sha256 when one is known.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CHUNK = 8 << 20


def cache_root() -> Path:
    return Path(os.environ.get("ALPACA_CACHE_DIR", Path.home() / ".cache" / "alpaca-operator"))


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> Path:
    """A local path for a location; a remote file or folder is fetched into the cache first."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if not is_remote(location):
        return Path(location)
    target = cache_root() / "fetched" / hashlib.sha256(location.encode()).hexdigest()[:16]
    store = Store(location)
    if store.fs.isdir(store.root):
        store.fetch_tree("", target)
    else:
        store.fetch("", target)
    return target


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class DigestMismatch(OSError):
    """A fetched file is not the one its digest names."""


class Store:
    """A folder at a path or URI, read and written by relative names ('a/b.json')."""

    def __init__(self, location: str, **storage_options: Any) -> None:
        import fsspec

        self.location = location.rstrip("/")
        self.remote = is_remote(location)
        self.fs, root = fsspec.core.url_to_fs(location, **storage_options)
        self.root = root.rstrip("/")

    def path(self, name: str = "") -> str:
        """The filesystem path of `name` (no protocol), for the fsspec calls."""
        return f"{self.root}/{name}".rstrip("/") if name else self.root

    def url(self, name: str = "") -> str:
        """`name` as a location string, protocol included: for libraries that take a URI."""
        return f"{self.location}/{name}".rstrip("/") if name else self.location

    def child(self, name: str) -> Store:
        return Store(self.url(name))

    # Reading

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def read_bytes(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(name)))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def list(self, name: str = "") -> list[str]:
        """Names directly under `name` (files and folders), sorted; none when it does not exist."""
        try:
            entries = self.fs.ls(self.path(name), detail=False)
        except FileNotFoundError:
            return []
        base = self.path(name).rstrip("/") + "/"
        return sorted({str(e).rstrip("/").removeprefix(base).split("/")[0] for e in entries if str(e).rstrip("/") != base.rstrip("/")})

    def fetch(self, name: str, dest: Path, sha256: str | None = None) -> Path:
        """Copy one file to `dest`, continuing an interrupted copy where it stopped.

        Processes that share the cache (the ranks of a pod) take turns through a lock file: the
        first copies, the others find the finished file.
        """
        if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(dest.with_name(dest.name + ".lock")):
            if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
                return dest
            return self._fetch_unlocked(name, dest, sha256)

    def _fetch_unlocked(self, name: str, dest: Path, sha256: str | None) -> Path:
        partial = dest.with_name(dest.name + ".partial")
        size = self.fs.size(self.path(name))
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        if have < size:
            with self.fs.open(self.path(name), "rb") as source, partial.open("ab") as out:
                source.seek(have)
                while block := source.read(_CHUNK):
                    out.write(block)
        else:
            partial.touch()
        if sha256 is not None and (found := sha256_file(partial)) != sha256:
            partial.unlink()
            raise DigestMismatch(f"{self.url(name)}: sha256 is {found}, expected {sha256}")
        os.replace(partial, dest)
        return dest

    def fetch_tree(self, name: str, dest: Path, digests: dict[str, str] | None = None) -> Path:
        """Copy a folder to `dest` file by file (each resumable); `digests` by relative name."""
        base = self.path(name).rstrip("/") + "/"
        for found in sorted(self.fs.find(self.path(name))):
            relative = str(found).removeprefix(base)
            self.fetch(f"{name}/{relative}" if name else relative, dest / relative, (digests or {}).get(relative))
        dest.mkdir(parents=True, exist_ok=True)
        return dest

    # Writing

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write `data` under `name` atomically; returns its sha256."""
        target = self.path(name)
        if self.remote:
            self.fs.pipe_file(target, data)
        else:
            self.fs.makedirs(self.path(name).rsplit("/", 1)[0], exist_ok=True)
            temporary = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        return hashlib.sha256(data).hexdigest()

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode("utf-8"))

    def upload(self, source: Path, name: str) -> str:
        """Copy a local file to `name` atomically; returns its sha256."""
        digest = sha256_file(source)
        target = self.path(name)
        if self.remote:
            self.fs.put_file(str(source), target)
        else:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            if os.path.abspath(source) != os.path.abspath(target):
                temporary = f"{target}.tmp-{uuid.uuid4().hex}"
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)
        return digest

    def publish_folder(self, folder: Path, name: str = "", *, last: Iterable[str] = ()) -> dict[str, str]:
        """Upload every file of `folder` under `name`, the files named in `last` after all others.

        Returns the sha256 of each file by relative name. With a manifest in `last`, a reader
        that waits for the manifest sees the folder complete or not at all.
        """
        final = set(last)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".partial", ".lock")))
        ordered = [p for p in files if str(p.relative_to(folder)) not in final] + [
            p for p in files if str(p.relative_to(folder)) in final
        ]
        digests: dict[str, str] = {}
        for path in ordered:
            relative = str(path.relative_to(folder))
            digests[relative] = self.upload(path, f"{name}/{relative}" if name else relative)
        return digests

    def remove(self, name: str) -> None:
        """Delete a file or a folder and everything under it; nothing if it does not exist."""
        try:
            self.fs.rm(self.path(name), recursive=True)
        except FileNotFoundError:
            pass


def publish(folder: Path, location: str, *, last: Iterable[str] = ()) -> dict[str, str]:
    """Copy a finished local folder to `location` (no copy when it already is that folder)."""
    if not is_remote(location) and local_path(location).resolve() == folder.resolve():
        return {}
    return Store(location).publish_folder(folder, last=last)
