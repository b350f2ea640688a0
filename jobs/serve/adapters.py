"""Adapters that follow the config file: added and removed while the server runs, no restart.

A ModelServer's ConfigMap is mounted as a file that the kubelet rewrites when the adapters change
(the operator leaves them out of what rolls the pods). A thread reads the file every few seconds;
a changed adapter set is loaded or dropped between two engine steps, never under a forward pass.
An adapter still answering a request is dropped once it has finished.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alpaca_operator.api.workloads import ServeAdapter, ServeConfig

from .engine import Engine
from .loading import AdapterError, attach_adapters

log = logging.getLogger(__name__)


class AdapterSync:
    """Keeps the engine's adapters equal to the config file's `adapters`."""

    def __init__(self, engine: Engine, config_file: Path, *, interval: float = 5.0, timeout: float = 600.0) -> None:
        self.engine, self.config_file, self.interval, self.timeout = engine, config_file, interval, timeout
        self._digest = self._read_digest()
        self._locations: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, serving: Sequence[ServeAdapter]) -> AdapterSync:
        """Watch from now on; `serving` is what the engine was loaded with."""
        self._locations = {a.name: a.location for a in serving}
        self._thread = threading.Thread(target=self._watch, name="alpaca-adapters", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.config_file.read_bytes()).hexdigest()
        except OSError:
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            digest = self._read_digest()
            if digest is None or (digest == self._digest and self._in_sync()):
                continue
            self._digest = digest
            try:
                wanted = ServeConfig.model_validate_json(self.config_file.read_text()).adapters
            except (OSError, ValidationError) as error:
                log.warning("config %s unreadable, adapters left as they are: %s", self.config_file, error)
                continue
            self.sync(wanted)

    def _in_sync(self) -> bool:
        # An adapter whose removal waited for a request to finish is retried on the next look.
        return set(self._locations) == set(self.engine.adapter_order)

    def sync(self, wanted: Sequence[ServeAdapter]) -> None:
        """Load what is new or moved, drop what is gone. A failure leaves that adapter as it was."""
        target = {a.name: a.location for a in wanted}
        for name in [n for n in self.engine.adapter_order if target.get(n) != self._locations.get(n)]:
            done = self.engine.remove_adapter(name, _unload(name)).result(self.timeout)
            if done:
                log.info("adapter %s removed", name)
                self._locations.pop(name, None)
            else:
                log.info("adapter %s still answers a request; removed on a later look", name)
        for adapter in wanted:
            if adapter.name in self.engine.adapters:
                continue
            try:
                self.engine.add_adapter(adapter.name, _load(adapter)).result(self.timeout)
            except AdapterError as error:
                log.error("adapter %s not served: %s", adapter.name, error)
                continue
            self._locations[adapter.name] = adapter.location
            log.info("adapter %s added from %s", adapter.name, adapter.location)


def _load(adapter: ServeAdapter) -> Any:
    def load(model: Any) -> Any:
        device = next(model.parameters()).device
        return attach_adapters(model, [adapter]).to(device).eval()

    return load


def _unload(name: str) -> Any:
    def unload(model: Any) -> None:
        if name in (getattr(model, "peft_config", None) or {}):
            model.delete_adapter(name)

    return unload
