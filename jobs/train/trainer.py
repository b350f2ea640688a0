"""The training run: from a TrainConfig to a saved model, resumable at every checkpoint."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alpaca_jobs import models as model_files
from alpaca_jobs.report import StatusReporter
from alpaca_jobs.results import add_to_manifest, model_result, report
from alpaca_jobs.storage import Store, cache_root, is_remote, local_path, publish, sha256_file
from alpaca_operator.api.finetune import FineTuneSpec, LoRA, Method, Precision, TrainingProgress
from alpaca_operator.api.workloads import TrainConfig

from . import attention, checkpoint, collate, distributed, gguf_export, plan, reporting, split, validation
from . import model as model_io
from .data import DatasetError, Example, Record, read_records, tokenize
from .prompts import MARKER_FILE, PromptTemplates, marker
from .schedule import learning_rate
from .step import loss_sum

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RunOptions:
    progress_bar: bool = True
    keep_checkpoints: bool = False


def output_folder(location: str, name: str) -> Path:
    """Where the run writes: the output itself, or a local staging folder mirrored to a remote URI."""
    if is_remote(location):
        return cache_root() / "train-output" / name
    return local_path(location)


def read_dataset(config: TrainConfig) -> tuple[Path, list[Record], str]:
    """The dataset's rows, checked against the pinned digest, before any model is loaded."""
    path = local_path(config.dataset)
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found (dataset: {config.dataset})")
    digest = sha256_file(path)
    if config.dataset_sha256 and digest != config.dataset_sha256:
        raise DatasetError(f"{path}: sha256 is {digest} but datasetSha256 pins {config.dataset_sha256}")
    return path, read_records(path), digest


def tokenize_dataset(path: Path, records: list[Record], tokenizer: Any, max_len: int,
                     templates: PromptTemplates = PromptTemplates(), *, held_out: bool = False) -> tuple[list[Example], list[int]]:
    examples, skipped = tokenize(records, tokenizer, max_len, templates)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        which = "held-out " if held_out else ""
        log.warning("%s: %d %sexamples skipped, their prompt alone fills maxSeqLength=%d (lines %s)", path, len(skipped), which, max_len, shown)
    if not examples and not held_out:
        raise DatasetError(f"{path}: no example fits maxSeqLength={max_len} with room for a response")
    return examples, skipped


def _use_bf16(spec: FineTuneSpec, device: torch.device) -> bool:
    return device.type == "cuda" and spec.hyperparameters.precision is Precision.BF16


def train(config: TrainConfig, options: RunOptions = RunOptions()) -> dict[str, Any]:
    """Run (or resume) the fine-tune described by `config`; returns the manifest."""
    spec = config.spec
    hp = spec.hyperparameters
    topology = distributed.topology_from_env()
    device = distributed.choose_device(topology, want_gpu=spec.gpus.per_node > 0)
    distributed.start(topology, device)
    try:
        return _train(config, spec, hp, topology, device, options)
    finally:
        distributed.stop()


def _train(config: TrainConfig, spec: FineTuneSpec, hp: Any, topology: distributed.Topology, device: torch.device, options: RunOptions) -> dict[str, Any]:
    out = output_folder(config.output, config.name)
    store = Store(config.output)
    if store.exists(reporting.MANIFEST):  # published last: the model is complete
        log.info("%s already holds a finished model (manifest.json); nothing to do", config.output)
        return json.loads(store.read_text(reporting.MANIFEST))
    if topology.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(hp.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = hp.tf32
        torch.backends.cudnn.allow_tf32 = hp.tf32
    bf16 = _use_bf16(spec, device)

    dataset_path, records, dataset_sha = read_dataset(config)
    try:
        files = model_files.resolve(config.base_model)
    except (OSError, ValueError) as exc:
        raise model_io.ModelError(f"baseModel: {exc}") from None
    lora = (spec.lora or LoRA()) if spec.method is Method.LORA else None
    rss_before = _peak_rss_bytes()
    built = model_io.build(files, attention.choose(device), topology, device, max_seq_length=hp.max_seq_length, lora=lora,
                           gradient_checkpointing=hp.gradient_checkpointing, bf16=bf16,
                           # torch.compile of each decoder layer: 35% -> 41% MFU for a 7B shape on one
                           # H200 (bench/train_gpu.md); on when the spec asks for it, never on CPU.
                           compile_layers=hp.compile and device.type == "cuda")
    model, tokenizer, base_config = built.model, built.tokenizer, built.config
    del built
    templates = PromptTemplates.from_spec(spec.prompt_template)
    # Split before tokenizing: which rows are held out depends on the data and the seed only.
    parts = split.split(records, hp.validation_fraction, hp.seed)
    if hp.validation_fraction > 0 and not parts.validation:
        log.warning("%s: no rows held out for validation (%d rows: fewer than %d, or one task fills more than half)",
                    dataset_path, len(records), 2 * split.MIN_VALIDATION_ROWS)
    examples, skipped = tokenize_dataset(dataset_path, parts.train, tokenizer, hp.max_seq_length, templates)
    held_out, held_skipped = tokenize_dataset(dataset_path, parts.validation, tokenizer, hp.max_seq_length, templates, held_out=True)
    skipped = sorted(skipped + held_skipped)
    model.train()
    # Host memory the model took on each rank: the figure that bounds a node's memory request.
    memory = {"peakRssBeforeModelBytes": rss_before, "peakRssWithModelBytes": _peak_rss_bytes()}
    sharding = distributed.gather_objects(distributed.sharding_summary(model) | memory)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay, betas=(0.9, 0.999), fused=device.type == "cuda"
    )
    stop = plan.total_examples(len(examples), hp.epochs, hp.global_batch_size, hp.max_steps)
    steps = plan.total_steps(len(examples), hp.epochs, hp.global_batch_size, hp.max_steps)

    checkpoints = store.child(checkpoint.FOLDER)
    state = checkpoint.TrainerState(step=0, tokens=0, examples=0, world_size=topology.world_size)
    if (found := checkpoint.resume_point(checkpoints, topology)) is not None:
        state = checkpoint.load(checkpoints, found, model, optimizer, topology)
        log.info("resuming from %s (step %d of %d)", checkpoints.url(found), state.step, steps)
        if store.remote and topology.is_main and (copy := checkpoint.metrics_copy(checkpoints, found)) is not None:
            (out / reporting.METRICS).write_bytes(copy)  # a new pod's staging starts empty
    else:
        distributed.barrier()

    metrics = reporting.MetricsLog(out / reporting.METRICS, state.step) if topology.is_main else None
    reporter = StatusReporter(config.status_target) if topology.is_main else None
    bar = _progress_bar(options, topology, steps, state.step)
    pad_id = tokenizer.pad_token_id
    lengths = [len(e) for e in examples]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not topology.distributed else _NoAutocast()
    start = time.monotonic()
    last_loss = math.nan
    last_validation = _last_validation(metrics.read() if metrics is not None else [])
    batching = validation.Batching(hp.packing, hp.micro_batch_size, hp.max_seq_length, pad_id)

    for step in range(state.step, steps):
        began = time.monotonic()
        lr = learning_rate(step, total_steps=steps, peak=hp.learning_rate, warmup_ratio=hp.warmup_ratio, kind=hp.lr_scheduler)
        for group in optimizer.param_groups:
            group["lr"] = lr
        chosen = plan.step_indices(step, len(examples), hp.global_batch_size, hp.seed, stop)
        mine, micro_steps = plan.rank_plan(
            [lengths[i] for i in chosen],
            rank=topology.rank,
            world_size=topology.world_size,
            packing=hp.packing,
            micro_batch_size=hp.micro_batch_size,
            max_seq_length=hp.max_seq_length,
        )
        step_targets = sum(examples[i].num_targets for i in chosen)
        step_tokens = sum(lengths[i] for i in chosen)
        summed = torch.zeros((), device=device)
        for micro in range(micro_steps):
            distributed.set_gradient_sync(model, distributed.sync_this_micro_step(topology.world_size, micro, micro_steps))
            if micro < len(mine):
                group = [examples[chosen[p]] for p in mine[micro]]
                batch = collate.packed(group) if hp.packing else collate.padded(group, pad_id)
            else:
                batch = collate.empty(pad_id)
            with autocast:
                loss, _ = loss_sum(model, batch.to(device))
            # FSDP averages gradients over ranks; scaling by the world size turns that into the
            # sum, and dividing by the step's targets makes it the mean over every response token.
            (loss * (topology.world_size / step_targets)).backward()
            summed += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = float(distributed.sum_across_ranks(summed)) / step_targets
        state.step, state.tokens, state.examples = step + 1, state.tokens + step_tokens, state.examples + len(chosen)
        elapsed = time.monotonic() - began
        if held_out and (state.step % hp.eval_every_steps == 0 or state.step == steps):
            last_validation = (validation.validation_loss(model, held_out, topology, batching, device, autocast), state.step)
        record = {
            "step": state.step,
            "epoch": round(state.examples / len(examples), 4),
            "loss": round(last_loss, 6),
            "learning_rate": lr,
            "grad_norm": round(float(_full(grad_norm)), 6),
            "tokens": state.tokens,
            "tokens_per_second": round(step_tokens / max(elapsed, 1e-9), 1),
        }
        if last_validation is not None and last_validation[1] == state.step:
            record["validation_loss"] = round(last_validation[0], 6)
        if metrics is not None:
            metrics.append(record)
        if reporter is not None:
            reporter.report(_progress(record, steps, last_validation), force=state.step == steps or "validation_loss" in record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_second']:.0f}")
        elif topology.is_main and (state.step % 10 == 0 or state.step == steps):
            log.info("step %d/%d epoch %.2f loss %.4f lr %.3g %.0f tokens/s", state.step, steps, record["epoch"], last_loss, lr, record["tokens_per_second"])
        if topology.is_main and "validation_loss" in record:
            log.info("step %d/%d validation loss %.4f (%d held-out examples)", state.step, steps, record["validation_loss"], len(held_out))
        if state.step % hp.checkpoint_every_steps == 0 and state.step < steps:
            so_far = metrics.path.read_bytes() if metrics is not None and store.remote else None
            checkpoint.save(checkpoints, state, model, optimizer, topology, metrics=so_far)
    if bar is not None:
        bar.close()

    full = distributed.full_state_dict(model)
    manifest: dict[str, Any] = {}
    if topology.is_main:
        model_io.save(full, base_config, tokenizer, out, lora=lora, templates=templates)
        (out / MARKER_FILE).write_text(json.dumps(marker(templates), indent=2) + "\n")
        digest, shards = model_io.weights_digest(out)
        exported = _export_gguf(spec, out, config.name)
        records = metrics.read() if metrics is not None else []
        if records:
            reporting.plot_loss(records, out / reporting.LOSS_CURVE, f"{config.name}: loss")
        manifest = {
            "name": config.name,
            "model": {"sha256": digest, "files": shards},
            "baseModel": config.base_model.to_wire(),
            "dataset": {"location": config.dataset, "sha256": dataset_sha, "examples": len(examples), "skippedLines": skipped,
                        "validationExamples": len(held_out), "validationLines": [e.line for e in held_out]},
            "method": spec.method.value,
            "steps": state.step,
            "epochs": round(state.examples / len(examples), 4),
            "finalLoss": last_loss,
            "finalValidationLoss": last_validation[0] if last_validation is not None else None,
            "tokens": state.tokens,
            "examples": state.examples,
            "worldSize": topology.world_size,
            "device": device.type,
            "precision": "bf16" if bf16 else "fp32",
            "sharding": sharding,
            "durationSeconds": round(time.monotonic() - start, 3),
            "prompts": {"withInput": templates.with_input, "noInput": templates.no_input},
            **({"gguf": exported} if exported else {}),
        }
        reporting.write_manifest(out, manifest)
        result = model_result(manifest, config, out)
        add_to_manifest(result, out / reporting.MANIFEST)
        publish(out, config.output, last=(reporting.MANIFEST,))
        if not options.keep_checkpoints:  # only now: a kill before this point resumes or finds the manifest
            checkpoints.remove("")
        report(result, reporter)
    distributed.barrier()
    return manifest


def _export_gguf(spec: FineTuneSpec, out: Path, name: str) -> dict[str, str] | None:
    """model.gguf beside the saved folder when spec.export.gguf asks for it (what runtime llama-cpp serves)."""
    kind = spec.export.gguf if spec.export is not None else None
    if kind is None:
        return None
    target = gguf_export.export(out, out / gguf_export.GGUF_FILE, kind, name=name)
    log.info("wrote %s (%s, %d bytes)", target.name, kind.value, target.stat().st_size)
    return {"file": target.name, "type": kind.value, "sha256": sha256_file(target)}


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class _NoAutocast:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _last_validation(records: list[dict[str, Any]]) -> tuple[float, int] | None:
    """The latest validation loss and its step among the metrics kept from before a resume."""
    found = [(r["validation_loss"], r["step"]) for r in records if "validation_loss" in r]
    return found[-1] if found else None


def _progress(record: dict[str, Any], total_steps: int, last_validation: tuple[float, int] | None = None) -> dict[str, Any]:
    return TrainingProgress(
        step=record["step"],
        total_steps=total_steps,
        epoch=record["epoch"],
        loss=record["loss"],
        learning_rate=record["learning_rate"],
        tokens_per_second=record["tokens_per_second"],
        validation_loss=round(last_validation[0], 6) if last_validation is not None else None,
        validation_step=last_validation[1] if last_validation is not None else None,
    ).to_wire()


def _progress_bar(options: RunOptions, topology: distributed.Topology, total: int, initial: int) -> Any:
    if not (options.progress_bar and topology.is_main):
        return None
    import sys

    if not sys.stderr.isatty():
        return None  # pods and CI get one log line per ten steps instead
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
