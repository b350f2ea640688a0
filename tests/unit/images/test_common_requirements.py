"""images/common_requirements.py: the requirements every lock pins identically, for the layer the
train and serve images share."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("common_requirements", ROOT / "images" / "common_requirements.py")
assert SPEC is not None and SPEC.loader is not None
common_requirements = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(common_requirements)

TRAIN = """\
# header
torch==2.0 \\
    --hash=sha256:aaa \\
    --hash=sha256:bbb
    # via accelerate, peft
numpy==2.0 \\
    --hash=sha256:ccc
    # via torch
anyio==4.0 ; sys_platform != 'emscripten' \\
    --hash=sha256:ddd
"""
SERVE = """\
torch==2.0 \\
    --hash=sha256:aaa \\
    --hash=sha256:bbb
    # via alpaca-operator (pyproject.toml)
numpy==2.1 \\
    --hash=sha256:eee
anyio==4.0 \\
    --hash=sha256:ddd
"""


def test_only_identical_pins_with_their_hashes_are_common(tmp_path: Path, capsys) -> None:
    (tmp_path / "train.txt").write_text(TRAIN)
    (tmp_path / "serve.txt").write_text(SERVE)
    common_requirements.main([str(tmp_path / "train.txt"), str(tmp_path / "serve.txt")])
    # Comments differ and do not matter; another version or another marker is not common.
    assert capsys.readouterr().out == "torch==2.0 \\\n    --hash=sha256:aaa \\\n    --hash=sha256:bbb\n"


def test_the_real_locks_share_torch() -> None:
    blocks = [
        common_requirements.requirement_blocks((ROOT / "requirements" / f"{name}.txt").read_text())
        for name in ("train", "serve")
    ]
    common = set.intersection(*blocks)
    assert any(block.startswith("torch==") for block in common)
    assert all("--hash=sha256:" in block for block in common)
