"""A ModelServer with runtime llama-cpp in local mode: this machine's llama.cpp `llama-server`, started
with the flags the cluster's pod gets, on the builtin SmolLM2 GGUF, answering the real openai client.

The serving test needs a llama-server binary ($ALPACA_LLAMA_SERVER, `llama-server` on PATH, or the one
bench/build_llama_server.sh builds into ~/.cache/alpaca-operator/bin, 30-60 minutes on 2 cores); without
one it is skipped, saying so. The refusals need no binary and run everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from alpaca_operator.local import llama_cpp
from alpaca_operator.local.layout import Layout
from alpaca_operator.local.plan import plan
from alpaca_operator.local.runner import LocalRunner
from alpaca_operator.manifests import load

KEY = "local-llama-key"


def server_manifest(name: str, spec: dict) -> dict:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": name}, "spec": spec}


def alpaca_run(tmp_path: Path, manifest: dict, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(manifest))
    return subprocess.run(
        [sys.executable, "-P", "-m", "alpaca_operator.cli", "run", "--exit", "--quiet", str(tmp_path / "server.yaml"),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONSAFEPATH": "1", **env},
    )


@pytest.fixture(scope="module")
def llama_server() -> Path:
    try:
        return llama_cpp.find_binary()
    except llama_cpp.RuntimeUnavailable as exc:
        pytest.skip(f"no llama-server binary: {exc}")


def test_a_llama_cpp_model_server_answers_the_openai_client(llama_server: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {
        "model": {"source": {"builtin": "smollm2-135m-instruct"}},
        "runtime": "llama-cpp",
        "servedModelName": "smol",
        "auth": {"apiKeySecretRef": {"name": "chat-key", "key": "token"}},
        "batching": {"maxBatchSize": 2, "maxNewTokens": 24},
        "resources": {"cpu": "1"},  # one compute thread: the machine is shared
    }
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(server_manifest("chat", spec)))
    monkeypatch.setenv("CHAT_KEY_TOKEN", KEY)  # local mode's stand-in for the Secret key chat-key/token
    runner = LocalRunner(Layout(tmp_path / "state"), echo=False, say=lambda _: None)
    try:
        (report,) = runner.run(plan(load([tmp_path / "server.yaml"])), keep_serving=True)
        assert report.phase == "Ready"
        base_url = report.outputs.url
        assert base_url is not None and report.outputs.served_model_name == "smol"
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["smol"]
        question = [{"role": "user", "content": "Name one primary color."}]
        first = client.chat.completions.create(model="smol", messages=question, max_tokens=200, temperature=0)
        again = client.chat.completions.create(model="smol", messages=question, max_tokens=200, temperature=0)
        unbounded = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Write a long story."}],
                                                   temperature=0)
        stream = client.completions.create(model="smol", prompt="The sky is", max_tokens=8, temperature=0, stream=True)
        streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        scraped = httpx.get(base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    finally:
        runner.stop_all()
    answer = first.choices[0].message.content
    assert answer and answer.strip()
    assert answer == again.choices[0].message.content, "greedy answers repeat"
    assert first.usage.completion_tokens <= 200 and first.choices[0].finish_reason in ("length", "stop")
    # maxNewTokens is what a request without max_tokens gets (--n-predict).
    assert unbounded.usage.completion_tokens == 24 and unbounded.choices[0].finish_reason == "length"
    assert streamed.strip()
    assert scraped.status_code == 200 and "llamacpp:tokens_predicted_total" in scraped.text
    assert not any(p.poll() is None for p in runner.servers.values())


def test_a_missing_llama_server_fails_the_step_naming_the_runtime(tmp_path: Path) -> None:
    manifest = server_manifest("chat", {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "runtime": "llama-cpp"})
    result = alpaca_run(tmp_path, manifest, ALPACA_LLAMA_SERVER=str(tmp_path / "no-such-llama-server"))
    assert result.returncode == 1
    assert "ModelServer chat failed" in result.stderr
    assert "runtime llama-cpp" in result.stderr and "ALPACA_LLAMA_SERVER" in result.stderr


def test_a_model_llama_server_cannot_load_fails_the_step_naming_the_field(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    manifest = server_manifest("chat", {"model": {"source": {"uri": f"file://{folder}"}}, "runtime": "llama-cpp"})
    # The binary is looked up first: an executable stand-in path is enough to reach the model check.
    result = alpaca_run(tmp_path, manifest, ALPACA_LLAMA_SERVER="/bin/true")
    assert result.returncode == 1
    assert "ggufFile" in result.stderr
