"""The e2e tier's handle on the cluster: kubectl and helm as a person would run them."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class KubectlError(AssertionError):
    """kubectl or helm exited non-zero (while waiting, a transient answer: try again)."""


@dataclass
class Cluster:
    """The running cluster, driven through kubectl and helm like a person would."""

    kubeconfig: Path
    bin_dir: Path
    images: dict[str, str] = field(default_factory=dict)

    @property
    def busybox(self) -> str:
        """The busybox image hack/cluster.sh loaded into the node (Debian's busybox-static)."""
        return (self.kubeconfig.parent / "busybox-image").read_text().strip()

    def _env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def helm(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "helm"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            check=False,
        )
        if result.returncode != 0:
            raise KubectlError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def apply(self, manifest: str, namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
        """Poll until check() returns something truthy; fail naming what was awaited. An
        AssertionError from check() (a Failed phase) ends the wait at once."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (KubectlError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
                last = err
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
