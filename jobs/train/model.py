"""Loading the base model for training, the pad-token fix, LoRA, and saving the result."""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator
from contextlib import contextmanager
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from alpaca_jobs.models import ModelFiles, load_causal_lm, load_tokenizer
from alpaca_operator.api.finetune import LoRA

from .distributed import Topology, broadcast_object, decoder_layers, shard
from .prompts import DEFAULT, PromptTemplates, adds_bos, chat_template

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

PAD_TOKEN = "<|pad|>"


class ModelError(ValueError):
    """The base model cannot be trained with the requested settings."""


@dataclass
class Built:
    model: Any  # the model to train: sharded across ranks when there are several
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig  # of the base model with the final vocabulary, for saving


def build(
    files: ModelFiles,
    attn_implementation: str,
    topology: Topology,
    device: torch.device,
    *,
    max_seq_length: int,
    lora: LoRA | None,
    gradient_checkpointing: bool,
    bf16: bool,
    compile_layers: bool = False,
) -> Built:
    """The model ready to train, with at most one full copy of the weights per node.

    One process loads the weights and moves them to its device. Several ranks would otherwise each
    load the whole model in fp32 before sharding (8 x 28 GB on a node for a 7B model), so instead
    rank 0 alone reads the weights, every rank builds the model on the meta device and shards it,
    allocates only its own shard, and receives its part tensor by tensor from rank 0.
    """
    with _reading(files):
        tokenizer = load_tokenizer(files)
    if not topology.distributed:
        with _reading(files):
            model = load_causal_lm(files, dtype=torch.float32, attn_implementation=attn_implementation)
        check_max_length(model.config, max_seq_length)
        ensure_pad_token(model, tokenizer)
        config = model.config
        model = _prepare(model, lora, gradient_checkpointing, compile_layers)
        return Built(model.to(device), tokenizer, config)

    from transformers import AutoModelForCausalLM

    # Rank 0 reads the weights; the others learn the outcome from it, the error included, so
    # that a bad model fails every rank at once instead of leaving them waiting.
    source = None
    outcome: PretrainedConfig | ModelError
    if topology.is_main:
        try:
            with _reading(files):
                # In the dtype the weights are stored in (bf16 for most checkpoints): half the
                # memory of fp32, and each shard is upcast as it is copied into the fp32 model.
                stored = torch.float32 if files.gguf_file else "auto"
                source = load_causal_lm(files, dtype=stored, attn_implementation=attn_implementation)
            check_max_length(source.config, max_seq_length)
            ensure_pad_token(source, tokenizer)  # the new row's value (a mean) comes from the real weights
            outcome = source.config
        except ModelError as exc:
            outcome = exc
    outcome = broadcast_object(outcome if topology.is_main else None)
    if isinstance(outcome, ModelError):
        raise outcome
    if source is None:
        tokenizer_grew_pad(tokenizer)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(outcome, dtype=torch.float32, attn_implementation=attn_implementation)
    if source is not None:
        source = _prepare(source, lora, gradient_checkpointing=False)
    config = model.config
    model = _prepare(model, lora, gradient_checkpointing, compile_layers)
    try:
        shard(model, bf16=bf16)
    except ValueError as exc:
        raise ModelError(f"base model: {exc}") from None
    model.to_empty(device=device)
    _receive_weights(model, source)
    del source
    gc.collect()
    return Built(model, tokenizer, config)


@contextmanager
def _reading(files: ModelFiles) -> Iterator[None]:
    """Files that are missing or unreadable as a model are the same on every retry: a ModelError."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise ModelError(f"base model at {files.folder}: {exc}") from None


def tokenizer_grew_pad(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer the pad token `ensure_pad_token` would, without a model to resize."""
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def _prepare(model: PreTrainedModel, lora: LoRA | None, gradient_checkpointing: bool, compile_layers: bool = False) -> Any:
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prepared = apply_lora(model, lora) if lora is not None else model
    if compile_layers:
        # Per decoder layer and before sharding, as torchtitan does: FSDP's hooks stay outside the
        # compiled code, and one compiled graph serves every layer. Row lengths vary with packing,
        # so shapes are dynamic from the start (one recompile otherwise, at the first change).
        for layer in decoder_layers(prepared):
            layer.compile(dynamic=True)
    return prepared


def _receive_weights(model: nn.Module, source: nn.Module | None) -> None:
    """Fill every rank's shards from rank 0's full model, one tensor at a time, then the buffers.

    Buffers that are not saved with the model (rotary frequencies) are still meta-built garbage
    after `to_empty`; they are small and taken from rank 0's model too.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = source.state_dict() if source is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    theirs = dict(source.named_buffers()) if source is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if source is not None:
                buffer.copy_(theirs[name])
            dist.broadcast(buffer, src=0)


def check_max_length(config: PretrainedConfig, max_seq_length: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_seq_length > limit:
        raise ModelError(
            f"spec.hyperparameters.maxSeqLength is {max_seq_length} but the base model takes at most {limit} tokens"
        )


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a pad token if it has none. True when the vocabulary grew.

    The new embedding row is the mean of the existing ones: a random row would make the model's
    first outputs after a pad token noise, the mean keeps it an average token.
    """
    if tokenizer.pad_token_id is not None:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for embeddings in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
            weight = embeddings.weight
            weight[old:] = weight[:old].float().mean(dim=0, keepdim=True).to(weight.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return True


def apply_lora(model: PreTrainedModel, lora: LoRA) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"spec.lora.targetModules: {exc}") from None


def save(
    state: dict[str, torch.Tensor],
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    *,
    lora: LoRA | None = None,
    templates: PromptTemplates = DEFAULT,
) -> None:
    """Write a plain Hugging Face model folder (safetensors + tokenizer) from a full state dict.

    The model is rebuilt on the meta device and takes the gathered tensors as they are, so saving
    never needs a second copy of the weights nor touches the sharded training model. LoRA runs
    also keep their adapter under `adapter/`, and the saved model has the adapters merged in, so
    it serves like any other model. The tokenizer is saved with a chat template that renders the
    instruction templates the model was trained with (the base model's own chat template would
    prompt it in a format it was not tuned on).
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if lora is not None:
        peft_model = apply_lora(model, lora)
        peft_model.load_state_dict(state, assign=True, strict=True)
        peft_model.save_pretrained(str(folder / "adapter"))
        model = peft_model.merge_and_unload()
    else:
        model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.chat_template = chat_template(templates, bos=adds_bos(tokenizer))
    tokenizer.save_pretrained(str(folder))


def weights_digest(folder: Path) -> tuple[str, dict[str, str]]:
    """sha256 of the model: of the one safetensors file, or of the sorted list of shard digests."""
    from alpaca_jobs.storage import sha256_file

    files = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors files were written")
    if len(files) == 1:
        return next(iter(files.values())), files
    listing = "".join(f"{digest}  {name}\n" for name, digest in files.items())
    return hashlib.sha256(listing.encode()).hexdigest(), files
