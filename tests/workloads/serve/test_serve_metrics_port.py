"""`alpaca serve` with metricsPort, as a ModelServer's pod runs it: /metrics on its own port only,
so that a NetworkPolicy can let scrapers reach the metrics and nothing else."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_answer_on_their_own_port_and_not_on_the_api_port(tiny_model_dir: Path, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({
        "name": "demo", "servedModelName": "demo", "host": "127.0.0.1", "port": port, "metricsPort": metrics_port,
        "apiKeyEnv": "DEMO_KEY",
        "model": {"location": str(tiny_model_dir)},
        "spec": {"model": {"source": {"uri": f"file://{tiny_model_dir}"}}},
    }))
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "DEMO_KEY": "k"}
    process = subprocess.Popen(
        [sys.executable, "-m", "alpaca_operator.cli", "serve", "--config", str(config), "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
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

        client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=60)
        answer = client.completions.create(model="demo", prompt="Hello", max_tokens=3, temperature=0)
        # No key needed on the metrics port: who may scrape is the NetworkPolicy's business.
        scraped = httpx.get(metrics_url, timeout=10)
        on_api_port = httpx.get(base + "/metrics", timeout=10)
    finally:
        process.terminate()
        process.wait(60)
    assert answer.usage.completion_tokens == 3
    assert scraped.status_code == 200
    generated = [line for line in scraped.text.splitlines() if line.startswith("alpaca_serve_generation_tokens_total ")]
    assert generated and float(generated[0].split()[1]) == 3
    assert 'alpaca_serve_requests_total{path="/v1/completions",status="200"} 1.0' in scraped.text
    assert on_api_port.status_code == 404
    lines = [line for line in process.stderr.read().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), "every log line is JSON, the metrics server's included"
