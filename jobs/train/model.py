"""Loading the base model for training, the pad-token fix, LoRA, and saving the result."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alpaca_jobs.models import ModelFiles, load_causal_lm, load_tokenizer
from alpaca_operator.api.finetune import LoRA

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

PAD_TOKEN = "<|pad|>"


class ModelError(ValueError):
    """The base model cannot be trained with the requested settings."""


def load(files: ModelFiles, attn_implementation: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base model in fp32 (mixed precision casts per layer later) and its tokenizer."""
    tokenizer = load_tokenizer(files)
    model = load_causal_lm(files, dtype=torch.float32, attn_implementation=attn_implementation)
    return model, tokenizer


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
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
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
) -> None:
    """Write a plain Hugging Face model folder (safetensors + tokenizer) from a full state dict.

    The model is rebuilt on the meta device and takes the gathered tensors as they are, so saving
    never needs a second copy of the weights nor touches the sharded training model. LoRA runs
    also keep their adapter under `adapter/`, and the saved model has the adapters merged in, so
    it serves like any other model.
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
