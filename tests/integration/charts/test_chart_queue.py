"""The chart's default Kueue queue reaches the operator's settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alpaca_operator.settings import OperatorSettings, load_settings
from chart_helpers import Documents, find


def settings_of(documents: Documents, folder: Path) -> OperatorSettings:
    (config_map,) = find(documents, "ConfigMap")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.yaml").write_text(config_map["data"]["settings.yaml"])
    return load_settings(folder / "settings.yaml")


def test_no_queue_by_default(render: Callable[..., Documents], tmp_path: Path) -> None:
    assert settings_of(render(), tmp_path).queue is None


def test_the_default_queue_and_priority_class_reach_the_settings(render: Callable[..., Documents], tmp_path: Path) -> None:
    settings = settings_of(render("--set", "queue.name=team-a", "--set", "queue.priorityClass=batch-low"), tmp_path)
    assert settings.queue is not None and (settings.queue.name, settings.queue.priority_class) == ("team-a", "batch-low")
    only_name = settings_of(render("--set", "queue.name=team-a"), tmp_path / "b")
    assert only_name.queue is not None and only_name.queue.priority_class is None
