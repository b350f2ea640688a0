"""`alpaca serve`: the OpenAI-compatible server and chat page for one model.

    alpaca serve                                   # SmolLM2-135M-Instruct on http://127.0.0.1:8000
    alpaca serve --model ./out/model --port 9000   # a fine-tuned model folder
    alpaca serve --config serve.json               # what a ModelServer's Deployment runs

Flags given beside --config override its fields.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from alpaca_operator.api.common import BuiltinModel, ModelSource
from alpaca_operator.api.modelserver import Batching, ModelServerSpec, ServedModel
from alpaca_operator.api.workloads import ResolvedModel, ServeAdapter, ServeConfig

from alpaca_jobs import logs

if TYPE_CHECKING:
    from collections.abc import Callable

    from .engine import Engine
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

log = logging.getLogger("alpaca_jobs.serve")
BUILTINS = {m.value for m in BuiltinModel}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a ServeConfig JSON file (what the operator hands the pod)")
    parser.add_argument("--model", help=f"a builtin model ({', '.join(sorted(BUILTINS))}), a model folder or a URI")
    parser.add_argument("--gguf-file", help="a GGUF file inside the --model folder")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the model's name)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="a LoRA adapter folder (peft) served on the model as NAME; repeat for more")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; a config defaults to 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--api-key-env", help="name of the env var holding the Bearer token /v1 requires")
    parser.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 16)")
    parser.add_argument("--max-queue", type=int, help="sequences waiting before requests get 429 (default 64)")
    parser.add_argument("--max-new-tokens", type=int, help="upper bound on max_tokens per request (default 512)")
    parser.add_argument("--max-prefill-tokens", type=int, default=2048,
                        help="prompt tokens prefilled per step; bounds how long new arrivals stall running streams")
    parser.add_argument("--max-prefill-tokens-while-decoding", type=int, default=256,
                        help="the same budget while answers are streaming (at least one prompt joins per step)")
    parser.add_argument("--prefix-cache-tokens", type=int, default=4096,
                        help="tokens of recent prompts whose keys and values are kept, so that a prompt starting the "
                             "same way prefills only the rest (0: off); each token costs layers x 2 x kv heads x head "
                             "dim x dtype bytes (46 KB for SmolLM2-135M in float32)")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20,
                        help="larger request bodies get 413 before they are read (default 1 MiB)")
    parser.add_argument("--metrics-port", type=int,
                        help="serve /metrics on this port of its own, without the API key (a NetworkPolicy decides who "
                             "reaches it), and not on the API port (default: the API port)")
    parser.add_argument("--metrics-auth", action="store_true",
                        help="/metrics needs the API key too (by default it is open, like the probes)")
    parser.add_argument(
        "--prompt-format", choices=["auto", "chat", "alpaca"], default="auto",
        help="how chat messages become a prompt; auto: Alpaca's for models tuned with it, else the chat template",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
        help="auto: float32 on CPU (answers equal transformers' generate), bfloat16 on GPU; bfloat16 on a CPU with "
             "bf16 instructions (AVX512-BF16, AMX) decodes about 1.2x (one client) to 1.8x (16) faster",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--shutdown-timeout", type=float, default=120.0, help="seconds to finish in-flight requests on SIGTERM"
    )


def _model_from_flag(value: str, gguf_file: str | None) -> ResolvedModel:
    if value in BUILTINS:
        return ResolvedModel(builtin=value)
    return ResolvedModel(location=value, gguf_file=gguf_file)


def build_config(args: argparse.Namespace) -> ServeConfig:
    """The config file (if any) with the flags laid over it."""
    if args.config is not None:
        try:
            config = ServeConfig.model_validate_json(args.config.read_text())
        except OSError as error:
            raise SystemExit(f"--config: cannot read {args.config}: {error.strerror}") from error
        except ValidationError as error:
            raise SystemExit(f"--config {args.config}: invalid ServeConfig:\n{error}") from error
    else:
        name = args.model or BuiltinModel.SMOLLM2_135M_INSTRUCT.value
        if name in BUILTINS:
            source = ModelSource(builtin=BuiltinModel(name))
        else:
            source = ModelSource(uri=name if "://" in name else f"file://{Path(name).resolve()}", gguf_file=args.gguf_file)
        config = ServeConfig(
            name="local",
            spec=ModelServerSpec(model=ServedModel(source=source)),
            model=_model_from_flag(name, args.gguf_file),
            served_model_name=name if name in BUILTINS else Path(name.rstrip("/")).name,
            host="127.0.0.1",
        )
    updates: dict[str, object] = {}
    if args.config is not None and args.model:
        updates["model"] = _model_from_flag(args.model, args.gguf_file)
    for field in ("served_model_name", "host", "port", "api_key_env", "metrics_port"):
        if getattr(args, field) is not None:
            updates[field] = getattr(args, field)
    batching = config.spec.batching.model_dump()
    for field in ("max_batch_size", "max_queue", "max_new_tokens"):
        if getattr(args, field) is not None:
            batching[field] = getattr(args, field)
    try:
        spec = config.spec.model_copy(update={"batching": Batching.model_validate(batching)})
        if args.adapter:
            updates["adapters"] = [*config.adapters, *(_adapter_from_flag(value) for value in args.adapter)]
        return ServeConfig.model_validate({**config.model_dump(), **updates, "spec": spec.model_dump()})
    except ValidationError as error:
        raise SystemExit(f"alpaca serve: {_flag_errors(error)}") from None


def _flag_errors(error: ValidationError) -> str:
    """Pydantic's errors named by the flag that set the field (--max-batch-size, --metrics-port)."""
    return "; ".join(f"--{str(e['loc'][-1]).replace('_', '-')}: {e['msg']}" for e in error.errors() if e["loc"])


def _adapter_from_flag(value: str) -> ServeAdapter:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"--adapter: expected NAME=PATH, got {value!r}")
    return ServeAdapter(name=name, location=path if "://" in path else str(Path(path).resolve()))


def read_api_key(env_name: str | None) -> str | None:
    """The Bearer token from the named env var. A named but empty variable is an error: a server
    meant to be protected must not start open."""
    if env_name is None:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise SystemExit(f"--api-key-env: environment variable {env_name} is not set or empty")
    return value.strip()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .api import create_app
    from .loading import load
    from .serving import ServeOptions

    logs.configure(args.log_format, args.log_level)
    config = build_config(args)
    api_key = read_api_key(config.api_key_env)
    batching = config.spec.batching
    options = ServeOptions(
        served_model_name=config.served_model_name,
        max_batch_size=batching.max_batch_size,
        max_queue=batching.max_queue,
        max_new_tokens=batching.max_new_tokens,
        max_prefill_tokens=args.max_prefill_tokens,
        max_prefill_tokens_while_decoding=args.max_prefill_tokens_while_decoding,
        prefix_cache_tokens=args.prefix_cache_tokens,
        max_request_bytes=args.max_request_bytes,
        metrics_auth=args.metrics_auth,
        metrics_on_api_port=config.metrics_port is None,
    )
    names = [config.served_model_name, *(a.name for a in config.adapters)]
    if len(set(names)) != len(names):
        raise SystemExit(f"adapters: every model name must differ, got {names}")
    loader = functools.partial(load, config.model, device=args.device, dtype=args.dtype, prompt_format=args.prompt_format,
                               adapters=config.adapters)
    server: uvicorn.Server | None = None

    def stop_on_failure() -> None:
        if server is not None:
            server.should_exit = True

    config_file: Path | None = args.config if not args.adapter else None

    def follow_adapters(engine: Engine) -> Callable[[], None]:
        # The operator adds and removes adapters by rewriting the mounted config: follow it.
        from .adapters import AdapterSync

        assert config_file is not None
        return AdapterSync(engine, config_file).start(config.adapters).stop

    app = create_app(loader, options, api_key=api_key, on_fatal=stop_on_failure,
                     watch=follow_adapters if config_file is not None else None)
    log.info(
        "starting %s on http://%s:%d (auth %s)",
        config.served_model_name, config.host, config.port, "on" if api_key else "off",
        extra={"config": json.loads(config.model_dump_json(exclude={"api_key_env"}))},
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
    )
    metrics_server = _start_metrics_server(app.state.server.metrics.registry, config.host, config.metrics_port)
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    return 1 if app.state.server.load_error else 0


def _start_metrics_server(registry: CollectorRegistry, host: str, port: int | None) -> WSGIServer | None:
    """prometheus_client's own HTTP server on a thread, for /metrics on a port of its own."""
    if port is None:
        return None
    from prometheus_client import start_http_server

    try:
        metrics_server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise SystemExit(f"--metrics-port: cannot listen on {host}:{port}: {error.strerror}") from error
    log.info("metrics on http://%s:%d/metrics", host, port)
    return metrics_server
