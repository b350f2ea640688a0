"""Write a GGUF file (what llama.cpp's `llama-server` loads) from a Hugging Face Llama model folder.

Only the Llama architecture (SmolLM2's) with a byte-level BPE tokenizer is converted; anything else is
refused with the reason, never written half-right. The GGUF keys and tensor names come from the `gguf`
package's tables, so they are the ones llama.cpp reads.

Two layouts differ between the formats. Hugging Face's rotary embedding rotates the first half of each
head against the second half, while llama.cpp's `llama` architecture rotates adjacent pairs: the query
and key rows of each head are interleaved here (row i -> 2i, row i + d/2 -> 2i + 1), which makes both
compute the same attention scores. And a tied output projection is simply left out: llama.cpp reuses
the token embedding when the file has no `output.weight`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch

from alpaca_operator.api.finetune import GGUF_FILE, GGUFType

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]

# Hugging Face parameter names (inside `model.`) -> llama.cpp tensors of the llama architecture.
_GLOBAL = {
    "model.embed_tokens.weight": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "model.norm.weight": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head.weight": gguf.MODEL_TENSOR.OUTPUT,
}
_LAYER = {
    "input_layernorm.weight": gguf.MODEL_TENSOR.ATTN_NORM,
    "self_attn.q_proj.weight": gguf.MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj.weight": gguf.MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj.weight": gguf.MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj.weight": gguf.MODEL_TENSOR.ATTN_OUT,
    "post_attention_layernorm.weight": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.gate_proj.weight": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj.weight": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj.weight": gguf.MODEL_TENSOR.FFN_DOWN,
}
# Rotary-embedding bookkeeping a checkpoint may carry; llama.cpp computes it.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


_FILE_TYPES = {GGUFType.F32: gguf.LlamaFileType.ALL_F32, GGUFType.F16: gguf.LlamaFileType.MOSTLY_F16,
               GGUFType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}


class UnsupportedModel(ValueError):
    """A model folder this converter cannot write faithfully."""


@dataclass(frozen=True)
class Hyper:
    """The architecture numbers llama.cpp needs, read from config.json."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    rope_linear_factor: float | None
    vocab: int
    tied: bool


def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for a Hugging Face parameter, None for one that has no tensor in the file."""
    if hf_name.endswith(_IGNORED_SUFFIXES):
        return None
    if hf_name in _GLOBAL:
        return gguf.TENSOR_NAMES[_GLOBAL[hf_name]] + ".weight"
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in _LAYER:
        return gguf.TENSOR_NAMES[_LAYER[parts[3]]].format(bid=int(parts[2])) + ".weight"
    raise UnsupportedModel(f"{hf_name}: a parameter the llama architecture has no tensor for")


def hyperparameters(config: dict[str, Any]) -> Hyper:
    """Refuses what llama.cpp's llama architecture would compute differently (biases, other rotary scalings)."""
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        raise UnsupportedModel(f"model_type {config.get('model_type')!r}: only Llama models (SmolLM2's architecture) are converted")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise UnsupportedModel(f"config.{flag}: biases are not converted")
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"config.hidden_act {config['hidden_act']!r}: llama.cpp's llama uses silu")
    # transformers 5 writes rope_parameters; older folders carry rope_theta and rope_scaling.
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in ("default", "linear"):
        raise UnsupportedModel(f"rope type {kind!r}: only the default and linear rotary scalings are converted")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return Hyper(
        layers=int(config["num_hidden_layers"]), hidden=hidden, ffn=int(config["intermediate_size"]),
        heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        context=int(config.get("max_position_embeddings") or 2048), rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        rope_linear_factor=float(rope["factor"]) if kind == "linear" else None,
        vocab=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)),
    )


def interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Query/key rows from Hugging Face's half-split rotary layout to llama.cpp's adjacent pairs, per head."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def _pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (how text is split before the merges)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True)) for s in steps or []]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, True), ("ByteLevel", None, True)]:
        return "smollm"  # digits one by one, then GPT-2's split
    raise UnsupportedModel(f"tokenizer.json pre_tokenizer {pre}: only GPT-2's byte-level split (optionally with single digits) is converted")


def _special_id(config: dict[str, Any], vocab: dict[str, int], name: str) -> int | None:
    token = config.get(name)
    if isinstance(token, dict):
        token = token.get("content")
    return vocab.get(token) if isinstance(token, str) else None


def _chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The chat template as transformers saved it: its own file (transformers 5) or in tokenizer_config.json."""
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text()
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def _adds_bos(tokenizer: dict[str, Any], tokenizer_config: dict[str, Any], bos: int | None) -> bool:
    """Whether encoding puts BOS first: the post-processor's template (what transformers runs) decides."""
    if bos is None:
        return False
    post = tokenizer.get("post_processor") or {}
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    for step in steps or []:
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            return "SpecialToken" in first
    return bool(tokenizer_config.get("add_bos_token", False))


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> None:
    """The BPE vocabulary, its merges, special token ids and chat template, from tokenizer.json."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModel(f"{folder}: no tokenizer.json (a fast BPE tokenizer is needed)")
    tokenizer = json.loads(path.read_text())
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModel(f"tokenizer.json model type {model.get('type')!r}: only BPE is converted")
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text()) if config_path.is_file() else {}

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tokenizer.get("added_tokens") or []}
    for content, token in added.items():
        vocab[content] = token["id"]
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedModel(f"tokenizer has token id {max(vocab.values())} but the model's vocab_size is {vocab_size}")
    # Embedding rows no token uses (a vocabulary padded to a round size) get placeholder names.
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for content, index in vocab.items():
        tokens[index] = content
        extra = added.get(content)
        if extra is None:
            types[index] = gguf.TokenType.NORMAL
        else:
            types[index] = gguf.TokenType.CONTROL if extra.get("special") else gguf.TokenType.USER_DEFINED
    # tokenizers writes merges as "a b" strings, or as [a, b] pairs since 0.20.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    bos = _special_id(tokenizer_config, vocab, "bos_token")
    for name, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                      ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        if (index := _special_id(tokenizer_config, vocab, name)) is not None:
            add(index)
    writer.add_add_bos_token(_adds_bos(tokenizer, tokenizer_config, bos))
    writer.add_add_eos_token(False)
    if (template := _chat_template(folder, tokenizer_config)) is not None:
        writer.add_chat_template(template)


def _stored(tensor: torch.Tensor, kind: GGUFType) -> tuple[Any, gguf.GGMLQuantizationType | None]:
    """(array, raw type for quantized data) in the file's type; 1-D tensors stay float32 as llama.cpp expects."""
    values = tensor.detach().to(torch.float32).contiguous()
    if values.dim() == 1 or kind is GGUFType.F32:
        return values.numpy(), None
    if kind is GGUFType.F16:
        return values.to(torch.float16).numpy(), None
    if values.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return values.to(torch.float16).numpy(), None  # rows Q8_0 blocks do not divide stay f16
    return gguf.quants.quantize(values.numpy(), gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def _load_state(folder: Path) -> dict[str, torch.Tensor]:
    """The weights in the dtype they were saved in (each is widened to float32 only while it is written)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
    return dict(model.state_dict())


def export(folder: Path, target: Path, kind: GGUFType = GGUFType.F16, *, name: str | None = None) -> Path:
    """Write `target` (a GGUF file) from the Hugging Face Llama model in `folder`; returns target."""
    folder, target = Path(folder), Path(target)
    config = json.loads((folder / "config.json").read_text())
    hp = hyperparameters(config)
    state = _load_state(folder)

    partial = target.with_name(target.name + ".partial")  # a crash never leaves a truncated file under the real name
    writer = gguf.GGUFWriter(str(partial), ARCH_NAME)
    writer.add_name(name or folder.name)
    writer.add_context_length(hp.context)
    writer.add_embedding_length(hp.hidden)
    writer.add_feed_forward_length(hp.ffn)
    writer.add_block_count(hp.layers)
    writer.add_head_count(hp.heads)
    writer.add_head_count_kv(hp.kv_heads)
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim * hp.heads != hp.hidden:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    if hp.rope_linear_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_linear_factor)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.vocab)
    writer.add_file_type(_FILE_TYPES[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, folder, hp.vocab)

    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and hp.tied:
            continue  # llama.cpp falls back to the token embedding
        gguf_name = gguf_tensor_name(hf_name)
        if gguf_name is None:
            continue
        if hf_name.endswith("q_proj.weight"):
            tensor = interleave_rotary(tensor, hp.heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = interleave_rotary(tensor, hp.kv_heads)
        data, raw = _stored(tensor, kind)
        writer.add_tensor(gguf_name, data, raw_dtype=raw)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    partial.replace(target)
    return target
