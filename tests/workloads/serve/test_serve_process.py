"""`alpaca serve --config` as the pod runs it: JSON logs, auth from an env var, and SIGTERM
finishing the answer in flight before the process exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight_then_exits(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({
        "name": "demo",
        "servedModelName": "demo",
        "host": "127.0.0.1",
        "port": port,
        "apiKeyEnv": "DEMO_KEY",
        "model": {"location": str(tiny_model_dir)},
        "spec": {"model": {"source": {"uri": f"file://{tiny_model_dir}"}}, "batching": {"maxNewTokens": 400}},
    }))
    secret = "pod-secret-value"
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "DEMO_KEY": secret}
    process = subprocess.Popen(
        [sys.executable, "-m", "alpaca_operator.cli", "serve", "--config", str(config), "--log-format", "json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alpaca serve never became ready"
            time.sleep(0.2)

        client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=400,
            temperature=0, stream=True, stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        received = [next(chunks), next(chunks)]
        process.send_signal(signal.SIGTERM)
        rest: list = []
        reader = threading.Thread(target=lambda: rest.extend(chunks))
        reader.start()
        reader.join(120)
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    received += rest
    assert received[-1].usage is not None and received[-1].usage.completion_tokens == 400
    assert [c.choices[0].finish_reason for c in received if c.choices][-1] == "length"
    # uvicorn re-raises the signal once it has shut down, as a process ended by SIGTERM should.
    assert code in (0, -signal.SIGTERM)
    logs = process.stderr.read().splitlines()
    records = [json.loads(line) for line in logs if line.startswith("{")]
    assert records and len(records) == len([line for line in logs if line.strip()]), "every log line is JSON"
    assert any(r["message"] == "POST /v1/chat/completions 200" for r in records)
    assert all(r.get("request_id") for r in records if r["message"].startswith("POST "))
    assert secret not in "\n".join(logs)
