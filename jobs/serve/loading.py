"""Loading the model to serve: builtin, folder, URI or GGUF, on CPU or GPU."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alpaca_jobs.models import load_causal_lm, load_tokenizer, resolve
from alpaca_jobs.storage import local_path
from alpaca_operator.api.workloads import ResolvedModel, ServeAdapter

from .prompts import detect_style
from .serving import LoadedModel

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return DTYPES[dtype]
    # CPUs without fast bf16 kernels run float32 fastest; GPUs halve memory traffic with bf16.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class AdapterError(ValueError):
    """An adapter folder that cannot be served on this base model."""


ADAPTER_CONFIG = "adapter_config.json"


def _refuse_adapter_as_model(folder: Path) -> None:
    # An adapter folder holds no model of its own: it needs the base it was trained on.
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        raise AdapterError(
            f"{folder} is a LoRA adapter, not a model: serve its base model and add the adapter "
            "(--adapter NAME=PATH, or a ModelServer's spec.adapters)"
        )


def attach_adapters(lm: Any, adapters: Sequence[ServeAdapter]) -> Any:
    """The base model with each adapter loaded under its name (a peft model), in inference mode."""
    if not adapters:
        return lm
    from peft import PeftModel

    # A model that already carries adapters (a peft model) takes more in place.
    peft_model: Any = lm if hasattr(lm, "peft_config") else None
    for adapter in adapters:
        folder = local_path(adapter.location)
        if not (folder / ADAPTER_CONFIG).is_file():
            raise AdapterError(f"adapter {adapter.name!r}: {folder} has no {ADAPTER_CONFIG} (a peft LoRA adapter folder)")
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(lm, str(folder), adapter_name=adapter.name, is_trainable=False)
            else:
                peft_model.load_adapter(str(folder), adapter_name=adapter.name, is_trainable=False)
        except (ValueError, RuntimeError, KeyError) as error:
            # Shapes or module names that do not fit: an adapter trained on another base.
            raise AdapterError(f"adapter {adapter.name!r} does not fit this base model: {error}") from error
    return peft_model.eval()


def load(
    model: ResolvedModel, *, device: str = "auto", dtype: str = "auto", prompt_format: str = "auto",
    adapters: Sequence[ServeAdapter] = (),
) -> LoadedModel:
    started = time.perf_counter()
    files = resolve(model)
    if not files.gguf_file:
        _refuse_adapter_as_model(files.folder)
    target = pick_device(device)
    tokenizer = load_tokenizer(files)
    base = load_causal_lm(files, dtype=pick_dtype(dtype, target))
    lm = attach_adapters(base, adapters).to(target).eval()
    style = detect_style(files.folder, tokenizer, prompt_format)
    context = int(getattr(lm.config, "max_position_embeddings", 0) or 2048)
    log.info(
        "loaded %s in %.1fs on %s (%s, context %d, %s prompts)",
        files.gguf_file or files.folder.name, time.perf_counter() - started, target, lm.dtype, context, style.format.value,
    )
    if adapters:
        log.info("adapters: %s", ", ".join(a.name for a in adapters))
    return LoadedModel(model=lm, tokenizer=tokenizer, prompt_style=style, context_length=context, folder=files.folder,
                       adapters=tuple(a.name for a in adapters))
