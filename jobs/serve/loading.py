"""Loading the model to serve: builtin, folder, URI or GGUF, on CPU or GPU."""

from __future__ import annotations

import logging
import time

import torch

from alpaca_jobs.models import load_causal_lm, load_tokenizer, resolve
from alpaca_operator.api.workloads import ResolvedModel

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


def load(model: ResolvedModel, *, device: str = "auto", dtype: str = "auto", prompt_format: str = "auto") -> LoadedModel:
    started = time.perf_counter()
    files = resolve(model)
    target = pick_device(device)
    tokenizer = load_tokenizer(files)
    lm = load_causal_lm(files, dtype=pick_dtype(dtype, target)).to(target).eval()
    style = detect_style(files.folder, tokenizer, prompt_format)
    context = int(getattr(lm.config, "max_position_embeddings", 0) or 2048)
    log.info(
        "loaded %s in %.1fs on %s (%s, context %d, %s prompts)",
        files.gguf_file or files.folder.name, time.perf_counter() - started, target, lm.dtype, context, style.format.value,
    )
    return LoadedModel(model=lm, tokenizer=tokenizer, prompt_style=style, context_length=context, folder=files.folder)
