"""`--log-format json`: every line the generation and training workloads write to stderr is one
JSON object, their closing words included, so a log pipeline never meets a plain line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.teacher import TeacherServer

ENV = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # fails on the first line that is not JSON


def _alpaca(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alpaca_operator.cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_generate_logs_only_json_from_start_to_finish(tmp_path: Path) -> None:
    with TeacherServer(bait_every=5) as teacher:
        done = _alpaca("generate", "--output", str(tmp_path / "out"), "--teacher-url", teacher.base_url,
                       "--model", "teacher", "--num-examples", "20", "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = _json_lines(done.stderr)
    assert "completed: kept 20 examples" in records[-1]["message"] and records[-1]["level"] == "info"

    refused = _alpaca("generate", "--output", str(tmp_path / "x"), "--log-format", "json", cwd=tmp_path)
    assert refused.returncode == 2
    (record,) = _json_lines(refused.stderr)
    assert record["level"] == "error" and "--teacher-url" in record["message"]


def test_train_refusing_its_data_says_so_in_json(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "Say hi.", "output": "hi"}, {"instruction": "", "output": "x"}]')
    failed = _alpaca("train", "--dataset", str(data), "--output", str(tmp_path / "model"), "--max-steps", "1",
                     "--log-format", "json", cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr  # a bad dataset: a restart cannot help
    messages = [r["message"] for r in _json_lines(failed.stderr)]
    assert any("[1]: field 'instruction' must be a non-empty string" in m for m in messages)
