"""LoRA adapters on a shared base: one server answers as the base and as each adapter, chosen by
the request's `model`, through the real openai client; requests of different adapters share batches.

The adapters are built with peft on the tiny random Llama, with random (not zero) LoRA weights, so
each one changes what the model says; the references are peft models run through plain `generate`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from conftest import MODEL_NAME

PROMPTS = ["Give three tips for staying healthy.", "What is the capital of France?", "1 2 3 4"]
ADAPTERS = ("french", "german")
TOKENS = 12


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = {}
    for seed, name in enumerate(ADAPTERS, start=1):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                            init_lora_weights=False, task_type="CAUSAL_LM")
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        get_peft_model(base, config).save_pretrained(str(folder))
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def adapter_loaded(tiny_model_dir: Path, adapter_dirs: dict[str, Path]):
    from alpaca_jobs.serve.loading import load
    from alpaca_operator.api.workloads import ResolvedModel, ServeAdapter

    adapters = [ServeAdapter(name=name, location=str(folder)) for name, folder in adapter_dirs.items()]
    return load(ResolvedModel(location=str(tiny_model_dir)), device="cpu", adapters=adapters)


@pytest.fixture(scope="module")
def adapter_server(adapter_loaded, server_runner):
    with server_runner(adapter_loaded, max_new_tokens=64) as running:
        yield running


@pytest.fixture(scope="module")
def adapter_client(adapter_server):
    return openai.OpenAI(base_url=adapter_server.v1, api_key="unused", max_retries=0, timeout=120)


def shared_decode_steps(server) -> float:
    """Decode forward passes that carried more than one sequence so far."""
    registry = server.app.state.server.metrics.registry
    labels = {"phase": "decode"}
    total = registry.get_sample_value("alpaca_serve_batch_size_count", labels) or 0.0
    single = registry.get_sample_value("alpaca_serve_batch_size_bucket", {**labels, "le": "1.0"}) or 0.0
    return total - single


def reference(tiny_model_dir: Path, adapter: Path | None, tokenizer, content: str) -> str:
    """Greedy `generate` of a fresh base model, with the adapter applied by peft when given."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), local_files_only=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def ask(client: openai.OpenAI, model: str, content: str) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                           max_tokens=TOKENS, temperature=0)
    assert reply.model == model
    return reply.choices[0].message.content or ""


def test_models_lists_the_base_then_each_adapter(adapter_client: openai.OpenAI) -> None:
    listed = adapter_client.models.list().data
    assert [m.id for m in listed] == [MODEL_NAME, *ADAPTERS]
    assert adapter_client.models.retrieve("german").model_extra["parent"] == MODEL_NAME
    with pytest.raises(openai.NotFoundError, match="french"):
        adapter_client.chat.completions.create(model="spanish", messages=[{"role": "user", "content": "hola"}], max_tokens=2)


def test_each_name_answers_as_its_own_model(adapter_client: openai.OpenAI, adapter_loaded, adapter_dirs, tiny_model_dir: Path) -> None:
    tokenizer = adapter_loaded.tokenizer
    for content in PROMPTS:
        answers = {name: ask(adapter_client, name, content) for name in (MODEL_NAME, *ADAPTERS)}
        assert answers[MODEL_NAME] == reference(tiny_model_dir, None, tokenizer, content)
        for name in ADAPTERS:
            assert answers[name] == reference(tiny_model_dir, adapter_dirs[name], tokenizer, content)
    # The adapters really change the model: on these prompts the three answer differently.
    differing = [content for content in PROMPTS
                 if len({ask(adapter_client, name, content) for name in (MODEL_NAME, *ADAPTERS)}) == 3]
    assert differing, "every prompt got the same answer from the base and both adapters"


def test_requests_of_different_adapters_share_batches_and_stay_apart(adapter_client: openai.OpenAI, adapter_server) -> None:
    jobs = [(name, content) for content in PROMPTS for name in (MODEL_NAME, *ADAPTERS)]
    alone = {job: ask(adapter_client, *job) for job in jobs}
    before = shared_decode_steps(adapter_server)
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(zip(jobs, pool.map(lambda job: ask(adapter_client, *job), jobs), strict=True))
    assert together == alone
    # Not a string of single-sequence passes: rows of several adapters went through forwards together.
    assert shared_decode_steps(adapter_server) > before


def test_an_adapter_folder_is_not_a_model(adapter_dirs: dict[str, Path]) -> None:
    from alpaca_jobs.serve.loading import AdapterError, load
    from alpaca_operator.api.workloads import ResolvedModel

    with pytest.raises(AdapterError, match="is a LoRA adapter, not a model"):
        load(ResolvedModel(location=str(adapter_dirs["french"])), device="cpu")


def models(client: openai.OpenAI) -> list[str]:
    return [m.id for m in client.models.list().data]


def test_adapters_follow_the_config_file_without_a_restart(tiny_model_dir: Path, adapter_dirs, server_runner, tmp_path: Path) -> None:
    """Added, served, then removed: the same process throughout."""
    import json
    import time

    from alpaca_jobs.serve.adapters import AdapterSync
    from alpaca_jobs.serve.loading import load
    from alpaca_operator.api.workloads import ResolvedModel, ServeAdapter

    french = ServeAdapter(name="french", location=str(adapter_dirs["french"]))
    german = ServeAdapter(name="german", location=str(adapter_dirs["german"]))
    loaded = load(ResolvedModel(location=str(tiny_model_dir)), device="cpu", adapters=[french])
    config_file = tmp_path / "config.json"

    def write(adapters: list[ServeAdapter]) -> None:
        config = {"name": "x", "servedModelName": MODEL_NAME, "model": {"location": str(tiny_model_dir)},
                  "spec": {"model": {"source": {"uri": "file:///base"}}}, "adapters": [a.model_dump() for a in adapters]}
        config_file.write_text(json.dumps(config))

    write([french])
    with server_runner(loaded, max_new_tokens=512) as running:
        client = openai.OpenAI(base_url=running.v1, api_key="unused", max_retries=0, timeout=120)
        engine = running.app.state.server.serving.engine
        sync = AdapterSync(engine, config_file, interval=0.05).start([french])
        try:
            assert models(client) == [MODEL_NAME, "french"]
            write([french, german])
            deadline = time.monotonic() + 60
            while "german" not in models(client):
                assert time.monotonic() < deadline, "the added adapter never appeared"
                time.sleep(0.05)
            content = PROMPTS[0]
            assert ask(client, "german", content) == reference(tiny_model_dir, adapter_dirs["german"], loaded.tokenizer, content)

            write([german])
            deadline = time.monotonic() + 60
            while "french" in models(client):
                assert time.monotonic() < deadline, "the removed adapter stayed"
                time.sleep(0.05)
            with pytest.raises(openai.NotFoundError):
                ask(client, "french", content)
            assert ask(client, "german", content) == reference(tiny_model_dir, adapter_dirs["german"], loaded.tokenizer, content)
        finally:
            sync.stop()


def test_an_adapter_still_answering_is_removed_only_after_its_last_sequence(tiny_model_dir: Path, adapter_dirs) -> None:
    """The engine driven step by step: removal waits for the sequence through the adapter, and a
    request for a removed adapter is refused rather than failing the batch it would join."""
    import asyncio

    from alpaca_jobs.serve.engine import Engine, UnknownAdapterError
    from alpaca_jobs.serve.loading import load
    from alpaca_jobs.serve.sampling import SamplingParams
    from alpaca_operator.api.workloads import ResolvedModel, ServeAdapter

    french = ServeAdapter(name="french", location=str(adapter_dirs["french"]))
    loaded = load(ResolvedModel(location=str(tiny_model_dir)), device="cpu", adapters=[french])
    engine = Engine(loaded.model, loaded.tokenizer)
    loop = asyncio.new_event_loop()
    try:
        engine.submit([[1, 2, 3]], SamplingParams(max_tokens=5, temperature=0.0), 1, loop, "french")
        removal = engine.remove_adapter("french", lambda model: model.delete_adapter("french"))
        engine.step()
        assert removal.result(0) is False and engine.adapter_order == ("french",)
        while engine.running or engine.waiting:
            engine.step()
        removal = engine.remove_adapter("french", lambda model: model.delete_adapter("french"))
        engine.step()
        assert removal.result(0) is True and engine.adapter_order == ()
        with pytest.raises(UnknownAdapterError):
            engine.submit([[1, 2, 3]], SamplingParams(max_tokens=5, temperature=0.0), 1, loop, "french")
    finally:
        loop.close()


def test_alpaca_serve_config_takes_an_added_adapter_in_the_same_process(tiny_model_dir: Path, adapter_dirs, tmp_path: Path) -> None:
    """What a ModelServer's pod runs: `alpaca serve --config`, the file rewritten as the kubelet would."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config_file = tmp_path / "config.json"

    def write(names: list[str]) -> None:
        config = {"name": "demo", "servedModelName": "demo", "host": "127.0.0.1", "port": port,
                  "model": {"location": str(tiny_model_dir)}, "spec": {"model": {"source": {"uri": f"file://{tiny_model_dir}"}}},
                  "adapters": [{"name": n, "location": str(adapter_dirs[n])} for n in names]}
        staged = tmp_path / "config.json.new"
        staged.write_text(json.dumps(config))
        staged.replace(config_file)  # one atomic swap, as the kubelet's symlink flip

    write(["french"])
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "alpaca_operator.cli", "serve", "--config", str(config_file)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alpaca serve never became ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert models(client) == ["demo", "french"]
        write(["french", "german"])
        deadline = time.monotonic() + 60
        while "german" not in models(client):
            assert process.poll() is None and time.monotonic() < deadline, "the added adapter never appeared"
            time.sleep(0.2)
        assert models(client) == ["demo", "french", "german"]
        assert ask(client, "german", PROMPTS[1])
        assert process.poll() is None  # never restarted
    finally:
        process.terminate()
        process.wait(timeout=60)
