"""`alpaca train`: fine-tune a model on Alpaca-format data, alone or under torchrun.

    alpaca train --config train.json                 # what a FineTune's PyTorchJob runs
    torchrun --nproc-per-node 2 -m alpaca_operator.cli train --config train.json
    alpaca train --dataset data.jsonl --output out/ --max-steps 20   # local, built-in SmolLM2

Flags given with --config override the file's values.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alpaca_jobs import logs
from alpaca_operator.api.common import BuiltinModel
from alpaca_operator.api.workloads import ResolvedModel, TrainConfig

# flag -> field of spec.hyperparameters
_HYPERPARAMETERS = {
    "epochs": "epochs",
    "learning_rate": "learning_rate",
    "global_batch_size": "global_batch_size",
    "micro_batch_size": "micro_batch_size",
    "max_seq_length": "max_seq_length",
    "max_steps": "max_steps",
    "checkpoint_every": "checkpoint_every_steps",
    "seed": "seed",
    "lr_scheduler": "lr_scheduler",
    "warmup_ratio": "warmup_ratio",
    "validation_fraction": "validation_fraction",
    "eval_every": "eval_every_steps",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TrainConfig JSON, as the operator writes it")
    parser.add_argument("--name", help="run name (default: from the config, or 'local')")
    parser.add_argument("--dataset", help="Alpaca JSONL file (path or URI)")
    parser.add_argument("--dataset-sha256", help="refuse the dataset unless its sha256 is this")
    parser.add_argument("--output", help="folder or URI for the model, metrics, loss curve and checkpoints")
    parser.add_argument(
        "--base-model",
        help=f"'builtin' ({BuiltinModel.SMOLLM2_135M_INSTRUCT.value}), a builtin name, a model folder, or a .gguf file",
    )
    parser.add_argument("--method", choices=["full", "lora"])
    parser.add_argument("--gpus", type=int, help="GPUs per node; 0 trains on CPU")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--global-batch-size", type=int)
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--max-seq-length", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N steps")
    parser.add_argument("--lr-scheduler", choices=["cosine", "linear", "constant"])
    parser.add_argument("--warmup-ratio", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--validation-fraction", type=float, help="fraction of rows held out for the validation loss (0: none)")
    parser.add_argument("--eval-every", type=int, help="measure the validation loss every N steps (and after the last)")
    parser.add_argument("--gguf", choices=["f32", "f16", "q8_0"], help="also write model.gguf for llama.cpp (spec.export.gguf)")
    parser.add_argument("--no-packing", action="store_true", help="length-grouped padded batches instead of packing")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the last checkpoint after success")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per stderr line")


def base_model_from_flag(value: str) -> ResolvedModel:
    if value == "builtin":
        return ResolvedModel(builtin=BuiltinModel.SMOLLM2_135M_INSTRUCT.value)
    if value in {m.value for m in BuiltinModel}:
        return ResolvedModel(builtin=value)
    if value.endswith(".gguf"):
        path = Path(value)
        return ResolvedModel(location=str(path.parent), gguf_file=path.name)
    return ResolvedModel(location=value)


def _as_uri(location: str) -> str:
    return location if "://" in location else f"file://{Path(location).resolve()}"


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The config file (if any) with the flags laid over it."""
    data: dict[str, Any]
    if args.config is not None:
        try:
            data = TrainConfig.model_validate_json(args.config.read_text()).model_dump(exclude_none=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{args.config}: config file not found") from None
    else:
        if not args.dataset or not args.output:
            raise ValueError("give --config FILE, or at least --dataset and --output")
        data = {
            "name": args.name or "local",
            "spec": {
                "dataset": {"uri": _as_uri(args.dataset)},
                "output": {"uri": _as_uri(args.output)},
                "gpus": {"per_node": 0},
            },
            "base_model": {"builtin": BuiltinModel.SMOLLM2_135M_INSTRUCT.value},
        }
    spec = data["spec"]
    hyper = spec.setdefault("hyperparameters", {})
    for flag, field in _HYPERPARAMETERS.items():
        if (value := getattr(args, flag)) is not None:
            hyper[field] = value
    if args.no_packing:
        hyper["packing"] = False
    if args.name:
        data["name"] = args.name
    if args.dataset:
        data["dataset"] = args.dataset
    if args.dataset_sha256:
        data["dataset_sha256"] = args.dataset_sha256
    if args.output:
        data["output"] = args.output
        data.pop("output_uri", None)  # the config's public name was its own output's
    if args.base_model:
        data["base_model"] = base_model_from_flag(args.base_model).model_dump(exclude_none=True)
    if args.method:
        spec["method"] = args.method
    if args.gguf:
        spec["export"] = {"gguf": args.gguf}
    if args.gpus is not None:
        spec.setdefault("gpus", {})["per_node"] = args.gpus
    return TrainConfig.model_validate(data)


def run(args: argparse.Namespace) -> int:
    """Train; the exit code says whether a restart could help (see `exit_codes`)."""
    from . import exit_codes
    from .data import DatasetError
    from .model import ModelError

    logs.configure(args.log_format)
    log = logging.getLogger(__name__)
    try:
        config = build_config(args)
    except ValidationError as exc:  # before ValueError, which it subclasses
        logs.say(log, f"alpaca train: invalid config: {exc}")
        return exit_codes.INVALID_CONFIG
    except (FileNotFoundError, ValueError) as exc:
        logs.say(log, f"alpaca train: error: {exc}")
        return exit_codes.INVALID_CONFIG
    try:
        from .trainer import RunOptions, train

        bar = not (args.no_progress or logs.json_mode())
        manifest = train(config, RunOptions(progress_bar=bar, keep_checkpoints=args.keep_checkpoints))
    except DatasetError as exc:
        logs.say(log, f"alpaca train: error: {exc}")
        return exit_codes.BAD_DATASET
    except (ModelError, FileNotFoundError) as exc:
        logs.say(log, f"alpaca train: error: {exc}")
        return exit_codes.BAD_MODEL
    except Exception:  # a crash, a lost peer, storage down: a new pod resumes from the last checkpoint
        log.exception("alpaca train failed; a restart resumes from the last checkpoint")
        return exit_codes.RETRYABLE
    if manifest:
        print(json.dumps({k: manifest[k] for k in ("name", "steps", "finalLoss", "tokens")} | {"sha256": manifest["model"]["sha256"]}))
    return exit_codes.OK
