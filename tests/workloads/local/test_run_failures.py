"""`alpaca run` stops at a failing step with that step's reason and keeps what earlier steps made;
a bad manifest stops it before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from support.teacher import TeacherServer


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-P", "-m", "alpaca_operator.cli", "run", "--exit", "--quiet", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


def _dataset(base_url: str) -> dict:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "InstructDataset",
        "metadata": {"name": "data"},
        "spec": {
            "teacher": {"baseURL": base_url, "model": "teacher"},
            "generation": {"numExamples": 10},
            "output": {"pvc": {"claimName": "work", "subPath": "data"}},
        },
    }


def _finetune(base_model: dict) -> dict:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "tune"},
        "spec": {
            "baseModel": base_model,
            "dataset": {"instructDatasetRef": {"name": "data"}},
            "gpus": {"perNode": 0},
            "output": {"pvc": {"claimName": "work", "subPath": "model"}},
        },
    }


def test_failing_step_stops_the_run_with_its_reason_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with TeacherServer() as teacher:
        (tmp_path / "pipeline.yaml").write_text(
            yaml.safe_dump_all([_dataset(teacher.base_url), _finetune({"uri": f"file://{missing}"})])
        )
        result = _run(str(tmp_path / "pipeline.yaml"), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert "FineTune tune failed" in result.stderr
    assert str(missing) in result.stderr
    assert "outputs of the steps that finished are kept" in result.stderr
    dataset = tmp_path / "state" / "pvc" / "work" / "data" / "dataset.jsonl"
    assert len(dataset.read_text().splitlines()) == 10


def test_bad_manifest_is_named_before_anything_runs(tmp_path: Path) -> None:
    broken = _finetune({"builtin": "smollm2-135m-instruct"})
    broken["spec"]["hyperparameters"] = {"learningRate": -1}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(broken))
    result = _run(str(tmp_path / "tune.yaml"), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "tune.yaml" in result.stderr and "FineTune 'tune'" in result.stderr
    assert "spec.hyperparameters.learningRate" in result.stderr
    assert not (tmp_path / "state").exists()


def _processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of the live processes that name `text` (Linux's /proc, as the README targets)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended while listed
        if text in line:
            found[int(cmdline.parent.name)] = line
    return found


def test_sigterm_stops_the_servers_and_the_step_in_progress(tmp_path: Path) -> None:
    """A service manager's SIGTERM reaches `alpaca run` alone; the model server it started (in a
    session of its own) and the generation step it is waiting on must not outlive it."""
    import signal
    import socket
    import time

    chat = {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "chat"},
        "spec": {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "gpusPerReplica": 0},
    }
    state, stderr_path = tmp_path / "state", tmp_path / "stderr.txt"
    with TeacherServer(delay_s=5.0) as teacher:
        dataset = _dataset(teacher.base_url)
        dataset["spec"]["generation"]["numExamples"] = 1000
        (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump_all([chat, dataset]))
        env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
        with stderr_path.open("w") as stderr:
            run = subprocess.Popen(
                [sys.executable, "-P", "-m", "alpaca_operator.cli", "run", "--quiet", str(tmp_path / "pipeline.yaml"),
                 "--state-dir", str(state)],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )
            try:
                deadline = time.monotonic() + 300
                while teacher.stats.received == 0:  # the server is up and generation has asked
                    assert run.poll() is None, stderr_path.read_text()
                    assert time.monotonic() < deadline, stderr_path.read_text()
                    time.sleep(0.2)
                assert len(_processes_mentioning(str(state))) >= 2  # the server and the step
                run.send_signal(signal.SIGTERM)
                code = run.wait(timeout=120)
            finally:
                if run.poll() is None:
                    run.kill()
    left = _processes_mentioning(str(state))
    for pid in left:  # not left behind for the rest of the suite when this fails
        os.kill(pid, signal.SIGKILL)
    log = stderr_path.read_text()
    assert code == 128 + signal.SIGTERM, log
    port = int(log.split("ready: http://127.0.0.1:", 1)[1].split("/", 1)[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the model server outlived `alpaca run`"
    assert left == {}
