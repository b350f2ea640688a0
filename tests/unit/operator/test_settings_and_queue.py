from __future__ import annotations

import threading
from pathlib import Path

import pytest

from alpaca_operator.settings import SettingsError, load_settings
from alpaca_operator.workqueue import WorkQueue


def test_settings_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("gpuHourUSD: {nvidia-a100-80gb: 1.8}\nnamespaces: [team-a]\nimages: {train: my/train:1}\n")
    settings = load_settings(path)
    assert settings.gpu_price("nvidia-a100-80gb") == 1.8
    assert settings.namespaces == ["team-a"]
    assert settings.images.train == "my/train:1"
    assert load_settings(None).metrics_port == 9090


def test_bad_settings_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("gpuHourUSD: {a100: -1}\nimagez: {}\n")
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert str(path) in str(error.value)
    assert "gpuHourUSD.a100" in str(error.value) and "imagez: unknown field" in str(error.value)


def test_queue_collapses_duplicates_and_reruns_a_key_changed_while_processed() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert queue.get(0) == "a"
    queue.add("a")  # changed while being processed: once more, after done()
    assert queue.get(0) == "b"
    assert queue.get(0) is None
    queue.done("a")
    assert queue.get(0) == "a"


def test_queue_delays_and_closes() -> None:
    queue = WorkQueue()
    queue.add_after("later", 0.05)
    assert queue.get(0) is None
    assert queue.get(1) == "later"
    waiter = threading.Thread(target=lambda: queue.get())
    waiter.start()
    queue.close()
    waiter.join(1)
    assert not waiter.is_alive()
