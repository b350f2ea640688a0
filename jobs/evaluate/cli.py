"""`alpaca evaluate`: a candidate model against a baseline, judged pairwise in both orders.

In a pod:   alpaca evaluate --config /etc/alpaca/evaluate.json --log-format json
Locally:    alpaca evaluate --output ./eval --candidate-url http://127.0.0.1:8001/v1 --candidate-model tuned \\
                --baseline-url http://127.0.0.1:8002/v1 --baseline-model base \\
                --judge-url http://127.0.0.1:8000/v1 --judge-model teacher --sample-size 20

Rerunning the same command resumes from the journal in the output folder; with other settings,
models or tasks it reuses only the answers and verdicts those would get the same. Exit status: 0 when
every task was judged or the budget stopped the run cleanly, 1 when an endpoint failed or refused,
2 when the configuration or an input file cannot be used, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alpaca_jobs import logs
from alpaca_operator.api.evaluation import EvaluationSpec
from alpaca_operator.api.workloads import EvaluateConfig, ResolvedContestant, ResolvedEndpoint

from .endpoint import ApiKeyError
from .journal import JournalError
from .runner import SUCCESSFUL, ConfigError, RunOptions
from .tasks import TasksError

log = logging.getLogger("alpaca.evaluate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="EvaluateConfig as JSON (what the operator hands the Job)")
    local = parser.add_argument_group("local use (without --config, or to override it)")
    local.add_argument("--output", help="output folder or URI for the report and the journal")
    for role in ("candidate", "baseline"):
        local.add_argument(f"--{role}-url", help=f"base URL of the {role}'s OpenAI-compatible API")
        local.add_argument(f"--{role}-model", help=f"the {role}'s model name")
        local.add_argument(f"--{role}-outputs", help=f"the {role}'s answers written beforehand (JSONL: instruction, input, output)")
    local.add_argument("--judge-url", help="base URL of the judge's OpenAI-compatible API")
    local.add_argument("--judge-model", help="the judge's model name")
    local.add_argument("--tasks", help="tasks JSONL (default: the built-in evaluation tasks)")
    local.add_argument("--sample-size", type=int, help="tasks drawn from the file")
    local.add_argument("--concurrency", type=int, help="requests in flight at once")
    local.add_argument("--budget-usd", type=float, help="stop before spending more than this")
    local.add_argument("--name", help="run name (default: the output folder's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even in a terminal")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per stderr line")


def _uri(location: str) -> str:
    return location if "://" in location else f"file://{Path(location).resolve()}"


def _contestant(args: argparse.Namespace, role: str) -> tuple[dict[str, Any], ResolvedContestant]:
    url, model, outputs = (getattr(args, f"{role}_{part}") for part in ("url", "model", "outputs"))
    if outputs and not url:
        return {"outputs": {"uri": _uri(outputs)}}, ResolvedContestant(label=Path(outputs).name, outputs=outputs)
    if url and model and not outputs:
        return {"baseURL": url, "model": model}, ResolvedContestant(label=model, endpoint=ResolvedEndpoint(url=url, model=model))
    raise ConfigError(f"without --config, give --{role}-url with --{role}-model, or --{role}-outputs")


def _from_flags(args: argparse.Namespace) -> EvaluateConfig:
    missing = [flag for flag, value in (("--output", args.output), ("--judge-url", args.judge_url),
                                        ("--judge-model", args.judge_model)) if not value]
    if missing:
        raise ConfigError(f"without --config, {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    candidate_spec, candidate = _contestant(args, "candidate")
    baseline_spec, baseline = _contestant(args, "baseline")
    spec = EvaluationSpec.model_validate({
        "candidate": candidate_spec, "baseline": baseline_spec,
        "judge": {"baseURL": args.judge_url, "model": args.judge_model},
        "output": {"uri": _uri(args.output)},
    })
    return EvaluateConfig(
        name=args.name or Path(args.output.rstrip("/")).name or "evaluation",
        spec=spec, output=args.output, candidate=candidate, baseline=baseline,
        judge=ResolvedEndpoint(url=args.judge_url, model=args.judge_model), tasks=args.tasks,
    )


def _first_error(exc: ValidationError, where: str = "") -> str:
    first = exc.errors()[0]
    return f"{where}field {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']} ({exc.error_count()} error(s))"


def load_config(args: argparse.Namespace) -> EvaluateConfig:
    if args.config is None:
        try:
            config = _from_flags(args)
        except ValidationError as exc:
            raise ConfigError(_first_error(exc)) from None
    else:
        try:
            config = EvaluateConfig.model_validate(json.loads(args.config.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"cannot read {args.config}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{args.config}:{exc.lineno}: not JSON: {exc.msg}") from None
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, f"{args.config}: ")) from None
    # Flags override the file: a quick local variation of an operator's config.
    spec = config.spec.model_copy(deep=True)
    updates: dict[str, Any] = {}
    if args.sample_size is not None:
        spec.tasks = spec.tasks.model_copy(update={"sample_size": args.sample_size})
    if args.concurrency is not None:
        spec.requests = spec.requests.model_copy(update={"max_concurrency": args.concurrency})
    if args.budget_usd is not None:
        spec.budget_usd = args.budget_usd
    if args.config is not None:
        if args.output:
            # The config's public name was its own output's; another folder has none.
            updates["output"], updates["output_uri"] = args.output, None
        if args.tasks:
            updates["tasks"] = args.tasks
    data = config.model_copy(update={"spec": spec, **updates}).model_dump(by_alias=True, exclude_none=True)
    try:
        return EvaluateConfig.model_validate(data)  # overrides meet the same rules as the file
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
    from .runner import evaluate

    config: EvaluateConfig | None = None
    try:
        config = load_config(args)
        bar = False if args.no_progress or logs.json_mode() else None
        outcome = evaluate(config, options=RunOptions(progress_bar=bar))
    except (ConfigError, TasksError, ApiKeyError, JournalError) as exc:
        logs.say(log, f"alpaca evaluate: {exc}")
        return 2
    except OSError as exc:  # an output folder that cannot be created or written, a full disk...
        where = exc.filename or (config.output if config else "")
        logs.say(log, f"alpaca evaluate: {where}: {exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        logs.say(log, "alpaca evaluate: interrupted; run the same command again to resume")
        return 130
    score = outcome.summary.get("score")
    figures = (
        f"win rate {score['winRate']:.3f} [{score['winRateLow']:.3f}, {score['winRateHigh']:.3f}], "
        f"length-controlled {score['lengthControlledWinRate']:.3f}, {score['wins']}/{score['ties']}/{score['losses']} W/T/L"
        if score else "nothing judged"
    )
    summary = outcome.summary
    logs.say(
        log,
        f"{outcome.stop_reason.value}: {outcome.message}. {figures}; {summary['unparsedVerdicts']} unparsed verdicts; "
        f"{summary['promptTokens']}+{summary['completionTokens']} tokens, ${summary['costUSD']:.4f}. Report: {config.output}",
        logging.INFO,
    )
    return 0 if outcome.stop_reason in SUCCESSFUL else 1
