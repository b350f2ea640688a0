from __future__ import annotations

from pathlib import Path

from alpaca_jobs.storage import Store
from alpaca_jobs.train import checkpoint
from alpaca_jobs.train.distributed import Topology


def test_only_checkpoints_with_their_marker_count(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "checkpoints"))
    store.write_text("step-00000002/trainer_state.json", "{}")
    store.write_bytes("step-00000002/__0_0.distcp", b"shard")
    store.write_bytes("step-00000004/__0_0.distcp", b"half-written: its writer died before the marker")
    store.write_text("step-00000003.tmp/trainer_state.json", "{}")
    store.write_text("notes/trainer_state.json", "{}")
    assert checkpoint.complete(store) == ["step-00000002"]
    assert checkpoint.resume_point(store, Topology()) == "step-00000002"


def test_no_checkpoint_folder_means_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoint.resume_point(Store(str(tmp_path / "none")), Topology()) is None
