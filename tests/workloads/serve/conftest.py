"""A tiny random Llama with SmolLM2's real tokenizer (and chat template), served on 127.0.0.1.

The tokenizer is converted from the builtin GGUF once per session (the slow part); the model is
random, so tests compare the server with plain `generate` rather than with expected words.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_KEY = "test-key-not-secret"
MODEL_NAME = "tiny-llama"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpaca_jobs.models import builtin_files, load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer(builtin_files("smollm2-135m-instruct"))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,  # tied, a random model only repeats its input
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    from alpaca_jobs.serve.loading import load
    from alpaca_operator.api.workloads import ResolvedModel

    return load(ResolvedModel(location=str(tiny_model_dir)), device="cpu")


@dataclass
class RunningServer:
    base_url: str
    app: object

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def run_server(loaded, *, api_key: str | None = None, **options) -> Iterator[RunningServer]:
    """The real app under uvicorn in a thread, on a free port; stopped (gracefully) on exit."""
    import httpx
    import uvicorn

    from alpaca_jobs.serve.api import create_app
    from alpaca_jobs.serve.serving import ServeOptions

    app = create_app(lambda: loaded, ServeOptions(served_model_name=MODEL_NAME, **options), api_key=api_key)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not become ready")
        time.sleep(0.05)
    try:
        yield RunningServer(base, app)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def server(tiny_loaded) -> Iterator[RunningServer]:
    """The shared server: auth on, default batching."""
    with run_server(tiny_loaded, api_key=API_KEY, max_new_tokens=256) as running:
        yield running


@pytest.fixture
def client(server: RunningServer):
    import openai

    return openai.OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def serve_factory(tiny_loaded) -> Callable:
    def factory(**options):
        return run_server(tiny_loaded, **options)

    return factory


@pytest.fixture(scope="session")
def server_runner() -> Callable:
    """`run_server` for tests that serve a model of their own."""
    return run_server
