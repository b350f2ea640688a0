"""Reporting from a workload to its resource's status: progress (throttled) and the result.

In a pod the workload patches `status.progress` of the resource that owns it, with the pod's
ServiceAccount; locally (no target) progress goes to the terminal only. A failed progress patch is
logged and never stops the work: progress is a view of the work, not part of it.

The result (operator/api/results.py) is different: it is how the operator learns what was made and
its sha256, so it is retried, and a result that could not be written fails the workload (the Job
retries it, and a rerun finds its output done and writes the result again).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from alpaca_operator.api.results import RESULT_KEY, WorkloadResult
from alpaca_operator.api.workloads import StatusTarget

log = logging.getLogger(__name__)


class StatusReporter:
    def __init__(self, target: StatusTarget | None, min_interval_s: float = 5.0) -> None:
        self._target = target
        self._min_interval_s = min_interval_s
        self._last_sent = float("-inf")
        self._api: Any = None

    def report(self, progress: dict[str, Any], *, force: bool = False) -> bool:
        """Patch `status.progress` unless the last patch is younger than the interval. True if sent."""
        if self._target is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_sent < self._min_interval_s:
            return False
        self._last_sent = now
        try:
            self._client().patch_namespaced_custom_object_status(
                self._target.group,
                self._target.version,
                self._target.namespace,
                self._target.plural,
                self._target.name,
                {"status": {"progress": progress}},
            )
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the work
            log.warning("could not patch %s/%s status: %s", self._target.plural, self._target.name, exc)
            return False
        return True

    def report_result(self, result: WorkloadResult, *, attempts: int = 5, first_delay_s: float = 0.5,
                      extra: dict[str, Any] | None = None) -> bool:
        """Write `status.result` (and `extra` status fields in the same patch, so they land together);
        retried with doubling waits. False locally (no target); raises when it never got through."""
        if self._target is None:
            return False
        delay = first_delay_s
        for attempt in range(1, attempts + 1):
            try:
                self._client().patch_namespaced_custom_object_status(
                    self._target.group, self._target.version, self._target.namespace, self._target.plural,
                    self._target.name, {"status": {**(extra or {}), RESULT_KEY: result.to_wire()}},
                )
                return True
            except Exception as exc:  # noqa: BLE001 - retried, then raised
                if attempt == attempts:
                    raise
                log.warning("could not write the result to %s/%s (attempt %d): %s", self._target.plural, self._target.name, attempt, exc)
                time.sleep(delay)
                delay *= 2
        return False

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CustomObjectsApi()
        return self._api
