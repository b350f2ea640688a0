"""JSON log mode: every line a workload writes to stderr is one JSON object, whoever wrote it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Run in a child process: configure() changes process-wide state (root handler, warning capture, hooks).
SCRIPT = textwrap.dedent(
    """
    import logging, threading, warnings
    from alpaca_jobs import logs
    logs.configure(sys.argv[1], "info")
    logging.getLogger("alpaca_jobs.test").info("plain record", extra={"request_id": "r-1"})
    warnings.warn("a library's deprecation", FutureWarning)
    from transformers.utils import logging as hf_logging
    hf_logging.get_logger("transformers.modeling_utils").warning("a transformers warning")
    logging.getLogger("uvicorn.error").info("uvicorn says hello")
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start(); thread.join()
    raise RuntimeError("the main thread dies")
    """
)


def run(log_format: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, "-c", "import sys\n" + SCRIPT, log_format],
                          capture_output=True, text=True, env=env, timeout=120)


def test_json_mode_writes_only_json_lines_warnings_and_crashes_included() -> None:
    result = run("json")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on the first line that is not JSON
    by_message = {r["message"]: r for r in records}
    assert by_message["plain record"]["request_id"] == "r-1"
    assert any("a library's deprecation" in r["message"] and r["logger"] == "py.warnings" for r in records)
    assert by_message["a transformers warning"]["level"] == "warning"
    assert "uvicorn says hello" in by_message
    assert "ZeroDivisionError" in by_message["uncaught exception in thread worker"]["exception"]
    assert "the main thread dies" in by_message["uncaught exception"]["exception"]


def test_text_mode_stays_readable_and_still_captures_warnings() -> None:
    result = run("text")
    assert "WARNING py.warnings:" in result.stderr
    assert "a transformers warning" in result.stderr
    assert not result.stderr.lstrip().startswith("{")
