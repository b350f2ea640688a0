"""The GGUF export read back with gguf's own reader: llama.cpp's metadata keys and tensor names, the
tokenizer, the chat template training wrote, each storage type; the rotary interleave keeps attention
scores; what the converter cannot write faithfully is refused. Runs everywhere (no llama.cpp needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import pytest
import torch

from alpaca_jobs.train import gguf_export
from alpaca_jobs.train import model as model_io
from alpaca_jobs.train.prompts import PromptTemplates
from alpaca_operator.api.finetune import GGUF_FILE, GGUFType

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 64, 4, 2, 96
TEXTS = ["Repeat the word twice.", "apple apple", "Count from one to 4.", "1 2 3 4", "river stone cloud"] * 4


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(TEXTS, trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tuned_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a FineTune writes it (model_io.save: weights, tokenizer, the instruction chat template)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer) + 3, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_theta=5000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tuned")
    model_io.save({k: v.clone() for k, v in model.state_dict().items()}, config, tokenizer, folder, templates=PromptTemplates())
    return folder


def read(path: Path) -> tuple[dict[str, object], dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("kind", list(GGUFType))
def test_the_file_carries_llama_cpps_keys_tensors_and_the_tokenizer(tuned_folder: Path, tmp_path: Path, kind: GGUFType) -> None:
    target = gguf_export.export(tuned_folder, tmp_path / GGUF_FILE, kind, name="tuned")
    assert not (tmp_path / (GGUF_FILE + ".partial")).exists()
    fields, tensors = read(target)
    config = json.loads((tuned_folder / "config.json").read_text())
    tokenizer = json.loads((tuned_folder / "tokenizer.json").read_text())
    arch = "llama"
    assert fields["general.architecture"] == arch and fields["general.name"] == "tuned"
    assert fields[f"{arch}.block_count"] == LAYERS
    assert fields[f"{arch}.embedding_length"] == HIDDEN
    assert fields[f"{arch}.feed_forward_length"] == FFN
    assert fields[f"{arch}.attention.head_count"] == HEADS
    assert fields[f"{arch}.attention.head_count_kv"] == KV_HEADS
    assert fields[f"{arch}.context_length"] == 128
    assert fields[f"{arch}.rope.dimension_count"] == HIDDEN // HEADS
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(5000.0)
    assert fields[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields[f"{arch}.vocab_size"] == config["vocab_size"]
    assert fields["general.file_type"] == {GGUFType.F32: 0, GGUFType.F16: 1, GGUFType.Q8_0: 7}[kind]

    # The names llama.cpp looks up; tied embeddings: no output.weight, llama.cpp reuses token_embd.
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(LAYERS)
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(tensors) == expected
    head_dim = HIDDEN // HEADS
    # GGUF lists dimensions innermost first: (in, out) for a Hugging Face (out, in) weight.
    assert list(tensors["blk.0.attn_k.weight"].shape) == [HIDDEN, KV_HEADS * head_dim]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [FFN, HIDDEN]
    assert list(tensors["token_embd.weight"].shape) == [HIDDEN, config["vocab_size"]]
    matrix = {GGUFType.F32: gguf.GGMLQuantizationType.F32, GGUFType.F16: gguf.GGMLQuantizationType.F16,
              GGUFType.Q8_0: gguf.GGMLQuantizationType.Q8_0}[kind]
    assert tensors["blk.0.ffn_up.weight"].tensor_type == matrix
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    # Byte-level BPE: every token at its id (rows past the vocabulary are unused placeholders), the merges.
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(tokens) == config["vocab_size"]
    for text, index in tokenizer["model"]["vocab"].items():
        assert tokens[index] == text
    types = fields["tokenizer.ggml.token_type"]
    assert types[1] == gguf.TokenType.CONTROL and types[5] == gguf.TokenType.NORMAL and types[-1] == gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    assert fields["tokenizer.ggml.merges"] == merges
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["tokenizer.ggml.add_bos_token"] is True  # the post-processor puts <s> first
    assert fields["tokenizer.chat_template"] == (tuned_folder / "chat_template.jinja").read_text()


def test_weights_survive_each_type_within_its_rounding(tuned_folder: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(str(tuned_folder), dtype=torch.float32).state_dict()
    up = state["model.layers.0.mlp.up_proj.weight"]
    q = gguf_export.interleave_rotary(state["model.layers.1.self_attn.q_proj.weight"], HEADS)
    # Relative step of each format: f32 exact, f16 2^-11, q8_0 half a step of max|block|/127.
    for kind, tolerance in ((GGUFType.F32, 0.0), (GGUFType.F16, 2.0**-11), (GGUFType.Q8_0, 0.5 / 127)):
        _, tensors = read(gguf_export.export(tuned_folder, tmp_path / f"{kind.value}.gguf", kind))
        for name, original in (("blk.0.ffn_up.weight", up), ("blk.1.attn_q.weight", q)):
            tensor = tensors[name]
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(original.shape)
            error = (torch.from_numpy(values.astype("float32")) - original).abs().max().item()
            assert error <= tolerance * original.abs().max().item() + 1e-12, (kind, name, error)


def _rope(x: torch.Tensor, theta: float, *, pairs_adjacent: bool) -> torch.Tensor:
    """Rotary embedding of (positions, dim) vectors: Hugging Face's half split, or llama.cpp's adjacent pairs."""
    positions, dim = x.shape
    freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * freqs[None, :]
    cos, sin = angles.cos(), angles.sin()
    if pairs_adjacent:
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).reshape(positions, dim)
    a, b = x[:, : dim // 2], x[:, dim // 2:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def test_interleaved_query_and_key_rows_give_llama_cpp_the_same_attention_scores() -> None:
    torch.manual_seed(1)
    heads, head_dim, hidden, positions = 3, 8, 16, 5
    wq = torch.randn(heads * head_dim, hidden, dtype=torch.float64)
    wk = torch.randn(heads * head_dim, hidden, dtype=torch.float64)
    x = torch.randn(positions, hidden, dtype=torch.float64)

    def scores(q_weight: torch.Tensor, k_weight: torch.Tensor, adjacent: bool) -> torch.Tensor:
        out = []
        for h in range(heads):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            q = _rope(x @ q_weight[rows].T, 10000.0, pairs_adjacent=adjacent)
            k = _rope(x @ k_weight[rows].T, 10000.0, pairs_adjacent=adjacent)
            out.append(q @ k.T)
        return torch.stack(out)

    hf = scores(wq, wk, adjacent=False)
    converted = scores(gguf_export.interleave_rotary(wq, heads), gguf_export.interleave_rotary(wk, heads), adjacent=True)
    assert torch.allclose(hf, converted, atol=1e-9)
    # Without the interleave the scores differ: the test would catch a missing permutation.
    assert not torch.allclose(hf, scores(wq, wk, adjacent=True), atol=1e-3)


def test_tensor_names_come_from_ggufs_table() -> None:
    assert gguf_export.gguf_tensor_name("model.layers.12.self_attn.o_proj.weight") == "blk.12.attn_output.weight"
    assert gguf_export.gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_export.gguf_tensor_name("lm_head.weight") == "output.weight"
    assert gguf_export.gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    with pytest.raises(gguf_export.UnsupportedModel, match="model.layers.0.self_attn.q_norm.weight"):
        gguf_export.gguf_tensor_name("model.layers.0.self_attn.q_norm.weight")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "model_type 'mistral'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "rope type 'llama3'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_what_llama_cpp_would_compute_differently_is_refused(change: dict, named: str) -> None:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 1, "intermediate_size": 96, "vocab_size": 10} | change
    with pytest.raises(gguf_export.UnsupportedModel, match=named):
        gguf_export.hyperparameters(config)


def test_linear_rope_scaling_and_older_config_keys_are_read() -> None:
    config = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
              "intermediate_size": 96, "vocab_size": 10, "rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    hp = gguf_export.hyperparameters(config)
    assert hp.rope_theta == 500.0 and hp.rope_linear_factor == 2.0 and hp.kv_heads == 4 and hp.head_dim == 16


def test_a_tokenizer_split_llama_cpp_has_no_name_for_is_refused(tuned_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tuned_folder.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(gguf_export.UnsupportedModel, match="pre_tokenizer"):
        gguf_export.export(folder, tmp_path / GGUF_FILE, GGUFType.F16)
    assert not (tmp_path / GGUF_FILE).exists()
