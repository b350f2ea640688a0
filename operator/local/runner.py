"""Run a plan of steps as local processes, with the same entrypoints and configs as the cluster."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..api import EvaluationSpec, FineTuneSpec, InstructDatasetSpec
from ..api.modelserver import Runtime
from ..builders.modelserver import UnsupportedModel, dtype_flags
from ..api.workloads import MANIFEST_FILE, ServeConfig
from ..manifests import Manifest
from ..api.results import RESULT_KEY, WorkloadResult
from . import llama_cpp
from .evaluation import REPORT_FILE, evaluate_config
from .inputs import Outputs, generate_config, serve_config, train_config
from .layout import Layout
from .plan import Step
from .state import StepRecords, fingerprint

COMMAND_OF_KIND = {"InstructDataset": "generate", "FineTune": "train", "ModelServer": "serve", "Evaluation": "evaluate"}


class StepFailed(RuntimeError):
    def __init__(self, step: Step, reason: str, log: Path) -> None:
        self.step, self.reason, self.log = step, reason, log
        super().__init__(f"{step.title} failed: {reason}\n(full log: {log})")


@dataclass
class StepReport:
    step: Step
    phase: str
    outputs: Outputs = field(default_factory=Outputs)
    skipped: bool = False
    seconds: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alpaca_command(subcommand: str, config: Path, *, nproc: int = 1) -> list[str]:
    """The command line a pod would run, for this machine's Python."""
    # -P keeps the current folder off sys.path: a checkout's operator/ folder must not shadow the stdlib.
    if nproc > 1:
        return [sys.executable, "-P", "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "-m", "alpaca_operator.cli", subcommand, "--config", str(config)]
    return [sys.executable, "-P", "-m", "alpaca_operator.cli", subcommand, "--config", str(config)]


def serve_command(config: ServeConfig, config_path: Path) -> list[str]:
    """`alpaca serve` with the flags the cluster's pod gets beside its config file."""
    return [*alpaca_command("serve", config_path), *dtype_flags(config.spec)]


def _tee(fd: int, log: IO[bytes], echo: IO[bytes] | None) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pseudo-terminal's other side closed when the child exited
            break
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(chunk)
            echo.flush()


class LocalRunner:
    def __init__(self, layout: Layout, *, force: bool = False, echo: bool = True,
                 say: Callable[[str], None] = print) -> None:
        self.layout = layout
        self.force = force
        self.echo = echo
        self.say = say
        self.records = StepRecords(layout.state_dir())
        self.outputs: dict[tuple[str, str], Outputs] = {}
        self.servers: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.reports: list[StepReport] = []
        self._steps: dict[tuple[str, str], Step] = {}

    # -- the plan ---------------------------------------------------------------------------
    def run(self, steps: list[Step], keep_serving: bool) -> list[StepReport]:
        self._steps = {step.key: step for step in steps}
        remaining_users = {s.key: sum(s.key in t.needs for t in steps) for s in steps}
        # A server that only Evaluations ask is what is being evaluated, not a helper: it starts in
        # its turn and serves on afterwards, as a server nothing needs does.
        evaluated = {s.key for s in steps if all(t.manifest.kind == "Evaluation" for t in steps if s.key in t.needs)}
        for index, step in enumerate(steps, 1):
            if step.manifest.kind == "ModelServer" and remaining_users[step.key] and step.key not in evaluated:
                # A server others need (a teacher) starts only when a step that needs it runs:
                # a re-run whose steps are all unchanged never loads it.
                continue
            self.say(f"[{index}/{len(steps)}] {step.title}")
            self._timed(step, self._run_step)
            for need in step.needs:
                remaining_users[need] -= 1
                if remaining_users[need] == 0 and need not in evaluated:
                    self.stop_server(need)
        if not keep_serving:
            self.stop_all()
        return self.reports

    def _timed(self, step: Step, action: Callable[[Step], StepReport]) -> StepReport:
        started = time.monotonic()
        report = action(step)
        report.seconds = time.monotonic() - started
        self.reports.append(report)
        return report

    def _upstream_digest(self, key: tuple[str, str]) -> str | None:
        if key[0] == "ModelServer":
            # What a server teaches with is its spec, not the port it happens to listen on; and the
            # model it serves, when an earlier step made it (an evaluation of a retrained model re-runs).
            spec = self._steps[key].manifest.resource.spec.to_wire()
            made = [self.outputs[need].sha256 for need in self._steps[key].needs if need in self.outputs]
            payload = {"spec": spec, "evaluatedModel": made} if made else spec
            return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return self.outputs[key].sha256

    def _run_step(self, step: Step) -> StepReport:
        if step.manifest.kind == "ModelServer":
            return self._start_server(step)
        upstream_digests = [self._upstream_digest(need) for need in step.needs]
        value = fingerprint(step.manifest.kind, step.manifest.resource.spec.to_wire(), upstream_digests)
        if not self.force:
            cached = self.records.load(step.manifest.kind, step.manifest.name, value)
            if cached is not None:
                self.say("    unchanged since the last run: skipped (--force redoes it)")
                self.outputs[step.key] = cached
                return StepReport(step, "Succeeded", cached, skipped=True)
        for need in step.needs:
            if need[0] == "ModelServer" and need not in self.servers:
                self.say(f"    needs {self._steps[need].title}")
                self._timed(self._steps[need], self._start_server)
        outputs = self._run_batch(step)
        self.outputs[step.key] = outputs
        self.records.save(step.manifest.kind, step.manifest.name, value, outputs)
        return StepReport(step, "Succeeded", outputs)

    def _config_path(self, step: Step) -> Path:
        folder = self.layout.state_dir() / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{step.manifest.kind}-{step.manifest.name}.json"

    def _log_path(self, step: Step) -> Path:
        self.layout.logs_dir().mkdir(parents=True, exist_ok=True)
        return self.layout.logs_dir() / f"{step.manifest.kind}-{step.manifest.name}.log"

    def _run_batch(self, step: Step) -> Outputs:
        manifest = step.manifest
        nproc = 1
        if manifest.kind == "InstructDataset":
            config: Any = generate_config(manifest, self.layout, self.outputs)
        elif manifest.kind == "Evaluation":
            config = evaluate_config(manifest, self.layout, self.outputs)
        else:
            config = train_config(manifest, self.layout, self.outputs)
            assert isinstance(manifest.resource.spec, FineTuneSpec)
            gpus = manifest.resource.spec.gpus
            nproc = max(1, gpus.per_node) if _cuda_devices() >= gpus.per_node > 1 else 1
        config_path = self._config_path(step)
        config_path.write_text(json.dumps(config.to_wire(), indent=2))
        if "://" not in config.output:
            Path(config.output).mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(step)
        command = alpaca_command(COMMAND_OF_KIND[manifest.kind], config_path, nproc=nproc)
        echo = sys.stderr.buffer if self.echo else None
        # On a terminal the workload gets one too, so it draws its own progress bar as it would
        # when run by hand; otherwise it logs progress lines, which go to the log file as well.
        reader, writer = _terminal() if echo is not None and sys.stderr.isatty() else os.pipe()
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=writer, stderr=writer, env=_child_env())
            os.close(writer)
            try:
                _tee(reader, log, echo)
                code = process.wait()
            except KeyboardInterrupt:
                process.send_signal(signal.SIGINT)
                process.wait()
                raise
            finally:
                os.close(reader)
        if code != 0:
            raise StepFailed(step, _last_error(log_path) or f"exit code {code}", log_path)
        return _read_outputs(manifest, config.output, self.layout)

    # -- servers --------------------------------------------------------------------------
    def _start_server(self, step: Step, ready_timeout_s: float = 600) -> StepReport:
        port = free_port()
        config = serve_config(step.manifest, self.layout, self.outputs, port)
        config_path = self._config_path(step)
        config_path.write_text(json.dumps(config.to_wire(), indent=2))
        log_path = self._log_path(step)
        command, env, ready_path = serve_command(config, config_path), _child_env(), "/readyz"
        if config.spec.runtime is Runtime.LLAMA_CPP:
            # The same flags as the cluster's pod, on this machine's llama-server.
            try:
                command = llama_cpp.command(config, llama_cpp.find_binary())
                env = llama_cpp.environment(config, env)
            except (llama_cpp.RuntimeUnavailable, UnsupportedModel, FileNotFoundError) as exc:
                raise StepFailed(step, str(exc), log_path) from None
            ready_path = llama_cpp.READY_PATH
        log = log_path.open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.servers[step.key] = process
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + ready_timeout_s
        self.say(f"    starting {base} (loading the model; log: {log_path})")
        while True:
            if process.poll() is not None:
                raise StepFailed(step, _last_error(log_path) or f"server exited with {process.returncode}", log_path)
            if _ready(f"{base}{ready_path}"):
                break
            if time.monotonic() > deadline:
                self.stop_server(step.key)
                raise StepFailed(step, f"not ready after {ready_timeout_s:.0f}s", log_path)
            time.sleep(0.5)
        auth = config.spec.auth.api_key_secret_ref if config.spec.auth else None
        page = config.spec.runtime is not Runtime.LLAMA_CPP  # llama-server built from the sdist has no web UI
        outputs = Outputs(
            location=config.model.location, url=f"{base}/v1", served_model_name=config.served_model_name,
            summary={"page": f"{base}/"} if page else {}, api_key_secret=[auth.name, auth.key] if auth else None,
        )
        self.outputs[step.key] = outputs
        self.say(f"    ready: {base}/ (chat page), {base}/v1 (OpenAI API)" if page else f"    ready: {base}/v1 (OpenAI API, llama.cpp)")
        return StepReport(step, "Ready", outputs)

    def stop_server(self, key: tuple[str, str], timeout_s: float = 30) -> None:
        process = self.servers.pop(key, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for report in self.reports:
            if report.step.key == key:
                report.phase = "Stopped"

    def stop_all(self) -> None:
        for key in list(self.servers):
            self.stop_server(key)

    def wait_for_servers(self) -> None:
        """Block while the servers run (Ctrl-C stops them)."""
        try:
            while any(p.poll() is None for p in self.servers.values()):
                time.sleep(1)
        finally:
            self.stop_all()


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal as wide as ours: progress bars draw nothing in one of zero columns."""
    reader, writer = pty.openpty()
    size = shutil.get_terminal_size()
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))
    return reader, writer


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a localhost URL we built
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _last_error(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    meaningful = [line for line in text if line.strip() and "\r" not in line]
    return "\n".join(meaningful[-lines:])


def _read_outputs(manifest: Manifest, location: str, layout: Layout) -> Outputs:
    folder = Path(location)
    summary: dict[str, Any] = {}
    manifest_file = folder / MANIFEST_FILE
    if manifest_file.exists():
        summary = json.loads(manifest_file.read_text())
    # The results contract (operator/api/results.py), as the operator reads it from status; its
    # artifact by its public name (pvc://claim/...) is a folder under the layout's claims here.
    result = WorkloadResult.model_validate(summary[RESULT_KEY]) if summary.get(RESULT_KEY) else None
    digest = result.artifact.sha256 if result is not None else None
    artifact = layout.resolve(result.artifact.uri) if result is not None else None
    if isinstance(manifest.resource.spec, InstructDatasetSpec):
        return Outputs(location=location, sha256=digest, artifact=artifact, summary=summary)
    if isinstance(manifest.resource.spec, EvaluationSpec):
        # The report's summary carries the headline figures (score, judged, tokens, cost).
        report = folder / REPORT_FILE
        evaluation_summary = json.loads(report.read_text()) if report.exists() else {}
        return Outputs(location=location, sha256=digest, artifact=artifact,
                       summary=summary | evaluation_summary | {"report": str(report)})
    # The summary table shows this path: one to open on this machine, never a pvc:// name.
    return Outputs(location=location, sha256=digest, artifact=artifact, summary=summary | {"modelPath": artifact or location})
