"""Where resources keep their outputs in local mode: PVCs and file:// URIs become folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..api.common import ModelSource, Storage
from ..api.common import SecretKeyRef
from ..api.workloads import ResolvedModel


@dataclass(frozen=True)
class Layout:
    """Local mode's folders, all under one root (by default .alpaca/ beside the manifests)."""

    root: Path

    def pvc_path(self, claim: str, sub_path: str = "") -> Path:
        return self.root / "pvc" / claim / sub_path

    def location(self, storage: Storage) -> str:
        """A folder path for PVCs and file:// URIs; other URIs stay URIs (fsspec reaches them)."""
        if storage.pvc is not None:
            return str(self.pvc_path(storage.pvc.claim_name, storage.pvc.sub_path))
        assert storage.uri is not None
        return storage.uri.removeprefix("file://") if storage.uri.startswith("file://") else storage.uri

    def resolve(self, uri: str) -> str:
        """A location a workload reported, as this machine reaches it: pvc://claim/path is that
        path in the claim's folder, file:// a path; other URIs stay URIs (fsspec reaches them)."""
        if uri.startswith("pvc://"):
            claim, _, path = uri.removeprefix("pvc://").partition("/")
            return str(self.pvc_path(claim, path))
        return uri.removeprefix("file://")

    def model(self, source: ModelSource) -> ResolvedModel:
        if source.builtin is not None:
            return ResolvedModel(builtin=source.builtin.value, gguf_file=source.gguf_file)
        location = self.location(Storage(pvc=source.pvc, uri=source.uri))
        return ResolvedModel(location=location, gguf_file=source.gguf_file)

    def state_dir(self) -> Path:
        return self.root / "state"

    def logs_dir(self) -> Path:
        return self.root / "logs"


def secret_env_var(ref: SecretKeyRef) -> str:
    """The environment variable that stands in for a Secret key locally, e.g. TEACHER_KEY_API_KEY."""
    return re.sub(r"[^A-Z0-9]+", "_", f"{ref.name}_{ref.key}".upper()).strip("_")
