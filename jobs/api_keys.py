"""API keys as the workloads receive them: an env var, or a file a mounted Secret provides."""

from __future__ import annotations

import os
from pathlib import Path


class ApiKeyError(ValueError):
    """The key an endpoint needs is missing or unreadable."""


def resolve_api_key(env_name: str | None, role: str, environ: dict[str, str] | None = None) -> str | None:
    """The key from the named env var, or from the file named by `<NAME>_FILE` (a mounted Secret).

    `role` names whose key it is in the error (teacher, candidate, judge...); never the key itself.
    """
    if env_name is None:
        return None
    env = os.environ if environ is None else environ
    if value := env.get(env_name, "").strip():
        return value
    if file := env.get(f"{env_name}_FILE"):
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiKeyError(f"cannot read the {role} API key file {file} (from {env_name}_FILE): {exc.strerror}") from None
        if value:
            return value
        raise ApiKeyError(f"the {role} API key file {file} (from {env_name}_FILE) is empty")
    raise ApiKeyError(f"the {role} API key is expected in the environment variable {env_name}, which is not set")
