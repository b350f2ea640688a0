"""Logging for every workload: text for people, or one JSON object per stderr line for log pipelines.

In JSON mode nothing may reach stderr around the formatter: Python warnings, the records of
libraries with handlers of their own (transformers, uvicorn) and uncaught exceptions (in the main
thread or any other) are all routed through the root logger, and library progress bars are off.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that install their own stderr handlers; their records go through ours instead.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_json_mode = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


def configure(log_format: str = "text", level: str = "info") -> None:
    """Route everything a workload logs through one stderr handler in the chosen format."""
    global _json_mode
    _json_mode = log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _OWN_HANDLERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # warnings.warn(...) becomes a record of the `py.warnings` logger instead of two raw lines.
    logging.captureWarnings(True)
    _route_transformers()
    if log_format == "json":
        _route_uncaught_exceptions()


def _route_transformers() -> None:
    """transformers logs through its own stderr handler and draws progress bars there."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def _route_uncaught_exceptions() -> None:
    crash = logging.getLogger("uncaught")

    def main_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash.critical("uncaught exception", exc_info=(kind, value, tb))

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        crash.critical("uncaught exception in thread %s", name,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def json_mode() -> bool:
    """Whether stderr is for log pipelines (one JSON object a line), not for a person."""
    return _json_mode


def say(logger: logging.Logger, message: str, level: int = logging.ERROR) -> None:
    """A command's last word to whoever ran it: a plain line on stderr for a person, a JSON record
    in JSON mode (where a plain line would break the log pipeline)."""
    if _json_mode:
        logger.log(level, message)
    else:
        print(message, file=sys.stderr)
