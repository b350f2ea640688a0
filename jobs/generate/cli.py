"""`alpaca generate`: self-instruct data generation against an OpenAI-compatible teacher.

In a pod:   alpaca generate --config /etc/alpaca/generate.json
Locally:    alpaca generate --output ./data --teacher-url http://127.0.0.1:8000/v1 --model teacher \\
                --num-examples 200

Rerunning the same command resumes from the checkpoint in the output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from alpaca_jobs import logs
from alpaca_operator.api.instructdataset import InstructDatasetSpec, TokenPricing
from alpaca_operator.api.workloads import GenerateConfig

from .checkpoint import CheckpointError
from .manifest import StopReason
from .runner import ConfigError, generate
from .seeds import SeedTasksError

log = logging.getLogger("alpaca.generate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="GenerateConfig as JSON (what the operator hands the Job)")
    local = parser.add_argument_group("local use (without --config, or to override it)")
    local.add_argument("--output", help="output folder or URI")
    local.add_argument("--teacher-url", help="base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    local.add_argument("--model", help="teacher model name")
    local.add_argument("--num-examples", type=int, help="examples to keep")
    local.add_argument("--concurrency", type=int, help="requests in flight at once")
    local.add_argument("--budget-usd", type=float, help="stop before spending more than this")
    local.add_argument("--api-key-env", help="name of the env var holding the API key")
    local.add_argument("--seed-tasks", help="seed tasks JSONL (default: the built-in 175)")
    local.add_argument("--prompt-template", help="prompt text file or URI with placeholders (default: the built-in prompt)")
    local.add_argument("--name", help="run name (default: the output folder's name)")
    local.add_argument("--input-price", type=float, help="USD per million prompt tokens")
    local.add_argument("--output-price", type=float, help="USD per million completion tokens")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even in a terminal")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per stderr line")


def _from_flags(args: argparse.Namespace) -> GenerateConfig:
    missing = [flag for flag, value in (("--output", args.output), ("--teacher-url", args.teacher_url), ("--model", args.model)) if not value]
    if missing:
        raise ConfigError(f"without --config, {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    spec = {
        "teacher": {"baseURL": args.teacher_url, "model": args.model},
        "output": {"uri": args.output if "://" in args.output else f"file://{Path(args.output).resolve()}"},
    }
    return GenerateConfig(
        name=args.name or Path(args.output.rstrip("/")).name or "dataset",
        spec=InstructDatasetSpec.model_validate(spec),
        output=args.output,
        teacher_url=args.teacher_url,
        teacher_model=args.model,
    )


def load_config(args: argparse.Namespace) -> GenerateConfig:
    if args.config is None:
        config = _from_flags(args)
    else:
        try:
            config = GenerateConfig.model_validate(json.loads(args.config.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"cannot read {args.config}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{args.config}:{exc.lineno}: not JSON: {exc.msg}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{args.config}: field {where!r}: {first['msg']} ({exc.error_count()} error(s))") from None
    # Flags override the file: handy for a quick local variation of an operator's config.
    spec = config.spec.model_copy(deep=True)
    updates: dict[str, object] = {}
    if args.num_examples is not None:
        spec.generation = spec.generation.model_copy(update={"num_examples": args.num_examples})
    if args.concurrency is not None:
        spec.teacher = spec.teacher.model_copy(update={"max_concurrency": args.concurrency})
    if args.budget_usd is not None:
        spec.budget_usd = args.budget_usd
    if args.output and args.config is not None:
        # The config's public name was its own output's; another folder has none.
        updates["output"], updates["output_uri"] = args.output, None
    if args.api_key_env:
        updates["api_key_env"] = args.api_key_env
    if args.seed_tasks:
        updates["seed_tasks"] = args.seed_tasks
    if args.prompt_template:
        updates["prompt_template"] = args.prompt_template
    if args.input_price is not None or args.output_price is not None:
        updates["pricing"] = TokenPricing(
            input_usd_per_million_tokens=args.input_price if args.input_price is not None else config.pricing.input_usd_per_million_tokens,
            output_usd_per_million_tokens=args.output_price if args.output_price is not None else config.pricing.output_usd_per_million_tokens,
        )
    # Re-validate so that overrides meet the same rules as the file.
    data = config.model_copy(update={"spec": spec, **updates}).model_dump(by_alias=True, exclude_none=True)
    try:
        return GenerateConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"field {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']}") from None


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
    from .runner import RunOptions

    try:
        config = load_config(args)
        bar = False if args.no_progress or logs.json_mode() else None
        manifest = generate(config, options=RunOptions(progress_bar=bar))
    except (ConfigError, SeedTasksError, CheckpointError) as exc:
        logs.say(log, f"alpaca generate: {exc}")
        return 2
    except OSError as exc:  # an output folder that cannot be created or written, a full disk...
        logs.say(log, f"alpaca generate: {exc.filename or config.output}: {exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        logs.say(log, "alpaca generate: interrupted; run the same command again to resume")
        return 130
    logs.say(
        log,
        f"{manifest.stop_reason.value}: {manifest.message}. "
        f"{manifest.requests} requests, {manifest.prompt_tokens}+{manifest.completion_tokens} tokens, "
        f"${manifest.cost_usd:.4f}. Output: {config.output}",
        logging.INFO,
    )
    # A budget stop is a clean, expected end; the teacher failing is not.
    return 1 if manifest.stop_reason in (StopReason.TEACHER_REJECTED, StopReason.TEACHER_UNAVAILABLE) else 0
