"""Local mode's launch of a ModelServer with runtime llama-cpp: this machine's `llama-server` with the
flags the cluster's pod gets (builders.modelserver.llama_server_args), on the GGUF file local mode resolved."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..api.workloads import ServeConfig
from ..builders.modelserver import LLAMA_API_KEY_ENV, gguf_path, llama_server_args

BINARY_ENV = "ALPACA_LLAMA_SERVER"
# Where bench/build_llama_server.sh leaves the binary it builds from the llama-cpp-python sdist.
CACHED_BINARY = Path.home() / ".cache" / "alpaca-operator" / "bin" / "llama-server"
READY_PATH = "/health"  # 503 while the model loads, 200 once it serves


class RuntimeUnavailable(RuntimeError):
    """What this machine lacks to run a runtime, said so that a user can fix it."""


def find_binary() -> Path:
    """$ALPACA_LLAMA_SERVER, else `llama-server` on PATH, else the one bench/build_llama_server.sh built."""
    named = os.environ.get(BINARY_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise RuntimeUnavailable(f"runtime llama-cpp: {BINARY_ENV}={named} is not an executable file")
        return Path(named)
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    if os.access(CACHED_BINARY, os.X_OK):
        return CACHED_BINARY
    raise RuntimeUnavailable(
        "runtime llama-cpp needs llama.cpp's llama-server: none on PATH, in $" + BINARY_ENV + " or at "
        f"{CACHED_BINARY} (bench/build_llama_server.sh builds it there from the llama-cpp-python sdist)"
    )


def _builtin_folder(name: str) -> str:
    from alpaca_jobs.models import builtin_files

    return str(builtin_files(name).folder)


def command(config: ServeConfig, binary: Path) -> list[str]:
    model = config.model
    if model.builtin is not None:
        return [str(binary), *llama_server_args(config, gguf_path(model, builtin_folder=_builtin_folder(model.builtin)))]
    return [str(binary), *llama_server_args(config, gguf_path(model))]


def environment(config: ServeConfig, base: dict[str, str]) -> dict[str, str]:
    """The child's environment: the API key moves from the env var local mode named to the one llama-server reads."""
    env = {k: v for k, v in base.items() if k != LLAMA_API_KEY_ENV}
    if config.api_key_env is not None:
        key = base.get(config.api_key_env, "").strip()
        if not key:
            raise RuntimeUnavailable(f"runtime llama-cpp: environment variable {config.api_key_env} (the API key) is not set or empty")
        env[LLAMA_API_KEY_ENV] = key
    return env
