"""Read manifests from files and validate them exactly as the cluster would (schema + CEL rules)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .api.base import API_VERSION
from .api.kinds import BY_KIND, Kind
from .api.resource import Resource
from .crd.cel import violations
from .crd.schema import JsonSchema, model_schema


class ManifestError(ValueError):
    """A manifest that cannot be used, with where it came from and every field at fault."""

    def __init__(self, source: str, what: str, problems: list[str]) -> None:
        self.source, self.what, self.problems = source, what, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {what} is invalid:\n{lines}")


@dataclass(frozen=True)
class Manifest:
    source: str
    resource: Resource[Any, Any]

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def name(self) -> str:
        return self.resource.metadata.name


def read_documents(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """(source, document) for every YAML document in the files, and in the *.yaml of folders, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    documents: list[tuple[str, dict[str, Any]]] = []
    for file in files:
        try:
            loaded = list(yaml.safe_load_all(file.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(str(file), "the file", [f"not valid YAML: {exc}"]) from exc
        for index, document in enumerate(d for d in loaded if d is not None):
            source = f"{file}" if len(loaded) == 1 else f"{file} (document {index + 1})"
            if not isinstance(document, dict):
                raise ManifestError(source, "the document", ["is not a mapping"])
            documents.append((source, document))
    return documents


@lru_cache(maxsize=8)
def _spec_schema(kind: Kind) -> JsonSchema:
    return model_schema(kind.spec)


def parse(source: str, document: dict[str, Any]) -> Manifest:
    """Validate one document: kind, pydantic model, then the CRD's CEL rules."""
    kind_name = document.get("kind")
    name = (document.get("metadata") or {}).get("name", "<no name>")
    what = f"{kind_name} {name!r}"
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(source, what, [f"apiVersion: must be {API_VERSION}, got {document.get('apiVersion')!r}"])
    kind = BY_KIND.get(str(kind_name))
    if kind is None:
        allowed = ", ".join(BY_KIND)
        raise ManifestError(source, what, [f"kind: must be one of {allowed}, got {kind_name!r}"])
    try:
        resource = kind.resource.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(source, what, [_describe(error) for error in exc.errors()]) from None
    broken = violations(_spec_schema(kind), resource.spec.to_wire())
    if broken:
        raise ManifestError(source, what, [str(v) for v in broken])
    return Manifest(source, resource)  # type: ignore[arg-type]


def load(paths: list[Path]) -> list[Manifest]:
    """Every manifest in the paths, validated; names must be unique per kind."""
    manifests = [parse(source, document) for source, document in read_documents(paths)]
    seen: dict[tuple[str, str], str] = {}
    for manifest in manifests:
        key = (manifest.kind, manifest.name)
        if key in seen:
            raise ManifestError(manifest.source, f"{manifest.kind} {manifest.name!r}", [f"metadata.name: also defined in {seen[key]}"])
        seen[key] = manifest.source
    return manifests


def _describe(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{path}: {message}"
