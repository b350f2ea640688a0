"""`alpaca generate` end to end: the real openai client against a real local teacher over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from support.teacher import (
    BAD_JSON,
    CUT,
    EMPTY,
    GARBLED,
    NO_CHOICES,
    RATE_LIMIT,
    SERVER_ERROR,
    UNAUTHORIZED,
    TeacherServer,
)

from alpaca_jobs.generate.checkpoint import Journal
from alpaca_jobs.generate.manifest import CHECKPOINT_FILE, Manifest, StopReason
from alpaca_jobs.generate.prompt import Task
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.runner import RunOptions, generate
from alpaca_jobs.generate.seeds import load_seed_tasks
from alpaca_jobs.generate.state import GenerationState
from alpaca_jobs.storage import sha256_file
from alpaca_operator.api.instructdataset import TeacherAPI, TeacherBatch
from alpaca_operator.api.workloads import GenerateConfig, StatusTarget
from alpaca_operator.cli import main as alpaca_main

FAST_RETRIES = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.05)
QUIET = RunOptions(retry=FAST_RETRIES, progress_bar=False)


@pytest.fixture
def teacher() -> Iterator[TeacherServer]:
    with TeacherServer(bait_every=5, keep_prompts=True) as server:
        yield server


def _config(server: TeacherServer, output: str, *, target: int, concurrency: int = 4, **spec: Any) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "name": "demo",
            "spec": {
                "teacher": {"baseURL": server.base_url, "model": "teacher", "maxConcurrency": concurrency},
                "generation": {"numExamples": target},
                "output": {"uri": "file:///unused"},
                **spec,
            },
            "output": output,
            "teacherURL": server.base_url,
            "teacherModel": "teacher",
            "pricing": {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 4.0},
        }
    )


def _dataset(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]


def _manifest(folder: Path) -> Manifest:
    return Manifest.model_validate_json((folder / "manifest.json").read_text())


def _check_outputs(folder: Path, manifest: Manifest) -> list[dict[str, str]]:
    rows = _dataset(folder)
    assert len(rows) == manifest.kept
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    assert len({row["instruction"] for row in rows}) == len(rows)
    assert manifest.generated == manifest.kept + sum(manifest.filtered.values())
    assert manifest.dataset_sha256 == sha256_file(folder / "dataset.jsonl")
    assert _manifest(folder) == manifest
    return rows


def test_generates_counts_every_drop_and_survives_every_kind_of_bad_answer(teacher: TeacherServer, tmp_path: Path) -> None:
    teacher.inject(RATE_LIMIT, SERVER_ERROR, BAD_JSON, NO_CHOICES, GARBLED, CUT, EMPTY)
    manifest = generate(_config(teacher, str(tmp_path), target=60), options=QUIET)

    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 60
    _check_outputs(tmp_path, manifest)
    # One of each filter's bait, the cut item, the garbled answer: each under its own reason.
    for reason in ("too_short", "blacklisted", "write_a_program", "starts_with_punctuation", "starts_non_ascii", "truncated", "malformed"):
        assert manifest.filtered.get(reason, 0) >= 1, reason
    assert manifest.failed_requests == {"empty_completion": 1, "malformed_response": 2}
    assert manifest.retries == {"rate_limited": 1, "server_error": 1}
    # Every 200 the teacher sent is a billed request; the two 5xx/429 were retried, not counted.
    assert manifest.requests == teacher.stats.by_status[200]
    assert teacher.stats.by_status[429] == teacher.stats.by_status[500] == 1
    records = Journal(tmp_path / CHECKPOINT_FILE).load()
    # Each request on record twice: sent (with its worst case), then answered.
    sent = [r.request for r in records if r.outcome == "sent"]
    assert sorted(sent) == sorted(r.request for r in records if r.outcome != "sent")
    assert len(sent) == manifest.requests + sum(manifest.failed_requests.values()) - manifest.failed_requests.get("malformed_response", 0) - manifest.failed_requests.get("empty_completion", 0)
    assert manifest.unrecorded_requests == 0 and manifest.unrecorded_cost_usd == 0
    assert manifest.cost_usd == pytest.approx((manifest.prompt_tokens + 4 * manifest.completion_tokens) / 1e6)
    # Alpaca's prompt: three seed tasks shown, the teacher continues at slot 4 of 20 and stops there.
    assert teacher.stats.stops == {"\n21. Instruction": sum(teacher.stats.endpoints.values())}
    seeds = {s.instruction for s in load_seed_tasks()}
    for prompt in teacher.stats.prompts:
        assert prompt.endswith("###\n4. Instruction:") and "Tasks 1 to 20:" in prompt
        shown = [line.split(": ", 1)[1] for line in prompt.splitlines() if ". Instruction: " in line]
        assert len(shown) == 3 and set(shown) <= seeds


def test_generated_tasks_join_the_prompt_when_asked(teacher: TeacherServer, tmp_path: Path) -> None:
    config = _config(teacher, str(tmp_path), target=40, concurrency=1, generation={"numExamples": 40, "generatedTasksPerPrompt": 2})
    generate(config, options=QUIET)
    kept = {row["instruction"] for row in _dataset(tmp_path)}
    later = teacher.stats.prompts[-1]
    shown = [line.split(": ", 1)[1] for line in later.splitlines() if ". Instruction: " in line]
    assert len(shown) == 5 and len(set(shown) & kept) == 2
    assert later.endswith("###\n6. Instruction:")


def test_completions_api_continues_the_prompt_as_plain_text(teacher: TeacherServer, tmp_path: Path) -> None:
    config = _config(teacher, str(tmp_path), target=20)
    config.spec.teacher.api = TeacherAPI.COMPLETIONS
    manifest = generate(config, options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 20
    _check_outputs(tmp_path, manifest)
    assert teacher.stats.endpoints == {"completions": manifest.requests}
    assert all(prompt.endswith("###\n4. Instruction:") for prompt in teacher.stats.prompts)


def test_items_past_the_last_slot_are_dropped_when_a_teacher_ignores_the_stop(tmp_path: Path) -> None:
    plain = TeacherServer()

    def overrun(number: int, prompt: str) -> str:
        # Continue the list three items past its last slot, as a teacher without stop support would.
        return plain.completion_text(number, prompt.replace("Tasks 1 to 20:", "Tasks 1 to 23:"))

    with TeacherServer(reply=overrun) as server:
        manifest = generate(_config(server, str(tmp_path), target=30, concurrency=2), options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED
    # Every answer but the last one (read only until the target was met) overran by three.
    assert manifest.filtered["past_last_slot"] >= 3 * (manifest.requests - 1)
    _check_outputs(tmp_path, manifest)


def test_near_duplicates_of_seeds_are_dropped_by_rouge(tmp_path: Path) -> None:
    seed = load_seed_tasks()[0].instruction
    with TeacherServer(duplicate=seed.replace("Tell me", "Tell us")) as server:
        manifest = generate(_config(server, str(tmp_path), target=30, concurrency=2), options=QUIET)
    assert manifest.filtered["rouge_l_similar"] == manifest.requests
    assert seed.replace("Tell me", "Tell us") not in {row["instruction"] for row in _dataset(tmp_path)}


def test_budget_stops_cleanly_keeps_what_was_paid_for_and_a_rerun_asks_nothing(teacher: TeacherServer, tmp_path: Path) -> None:
    # About 1,250 completion tokens an answer at $4/M: roughly $0.005 a request.
    config = _config(teacher, str(tmp_path), target=10_000, concurrency=4, budgetUSD=0.03)
    manifest = generate(config, options=QUIET)
    assert manifest.stop_reason is StopReason.BUDGET_EXHAUSTED and "budget" in manifest.message
    rows = _check_outputs(tmp_path, manifest)
    assert 0 < len(rows) < 10_000 and manifest.budget_usd == 0.03
    per_request = manifest.cost_usd / manifest.requests
    assert manifest.cost_usd <= 0.03 + per_request  # what was in flight when it stopped, at most
    assert manifest.requests == teacher.stats.answered
    asked = teacher.stats.received

    again = generate(config, options=QUIET)
    assert teacher.stats.received == asked
    assert again.stop_reason is StopReason.BUDGET_EXHAUSTED
    assert again.dataset_sha256 == manifest.dataset_sha256 and again.kept == manifest.kept


def test_a_teacher_that_keeps_failing_stops_the_run(teacher: TeacherServer, tmp_path: Path) -> None:
    teacher.inject(*[RATE_LIMIT] * 40)
    options = RunOptions(retry=RetryPolicy(max_retries=1, base_delay_s=0.01), progress_bar=False, fail_after=3)
    manifest = generate(_config(teacher, str(tmp_path), target=50, concurrency=1), options=options)
    assert manifest.stop_reason is StopReason.TEACHER_UNAVAILABLE
    assert manifest.failed_requests == {"rate_limited": 3} and manifest.retries == {"rate_limited": 3}
    assert manifest.requests == 0 and manifest.kept == 0 and _dataset(tmp_path) == []
    # Once the teacher is back, running again picks up where the outage stopped it.
    with TeacherServer() as healthy:
        config = _config(healthy, str(tmp_path), target=50, concurrency=1)
        recovered = generate(config, options=options)
    assert recovered.stop_reason is StopReason.COMPLETED and recovered.kept == 50
    assert recovered.failed_requests == {"rate_limited": 3}  # history is kept


def test_a_refused_key_ends_the_run_with_a_clear_error_and_never_prints_the_key(
    teacher: TeacherServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-very-secret-value")
    config = _config(teacher, str(tmp_path / "out"), target=10, concurrency=1).model_copy(update={"api_key_env": "TEACHER_KEY"})
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    teacher.inject(UNAUTHORIZED)

    assert alpaca_main(["generate", "--config", str(path), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "teacher_rejected" in captured.err and "401" in captured.err
    manifest = _manifest(tmp_path / "out")
    assert manifest.stop_reason is StopReason.TEACHER_REJECTED
    everything = captured.out + captured.err + caplog.text + (tmp_path / "out" / "manifest.json").read_text()
    assert "sk-very-secret-value" not in everything


def test_missing_key_variable_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    code = alpaca_main(
        ["generate", "--output", str(tmp_path), "--teacher-url", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NO_SUCH_KEY"]
    )
    assert code == 2 and "NO_SUCH_KEY" in capsys.readouterr().err


def test_object_store_output_is_published_and_resumed_from(teacher: TeacherServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "cache-1"))
    location = "memory://alpaca-tests/generate-run"
    first = generate(_config(teacher, location, target=20), options=QUIET)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/alpaca-tests/generate-run/dataset.jsonl") and fs.exists(f"/alpaca-tests/generate-run/{CHECKPOINT_FILE}")
    asked = teacher.stats.received
    # A new pod: empty local staging, the checkpoint comes back from the store.
    monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "cache-2"))
    second = generate(_config(teacher, location, target=20), options=QUIET)
    assert teacher.stats.received == asked and second.dataset_sha256 == first.dataset_sha256
    fs.rm("/alpaca-tests", recursive=True)


def _generate_command(folder: Path, config: GenerateConfig) -> tuple[list[str], dict[str, str]]:
    """`alpaca generate --config` as a pod runs it (config.json written into `folder`), and its env."""
    (folder / "config.json").write_text(config.model_dump_json(by_alias=True))
    command = [sys.executable, "-m", "alpaca_operator.cli", "generate", "--config", str(folder / "config.json"), "--no-progress"]
    return command, {**os.environ, "PYTHONSAFEPATH": "1"}


def _replay(folder: Path, journal_copy: Path, target: int) -> list[Task]:
    config = GenerateConfig.model_validate_json((folder.parent / "config.json").read_text())
    state = GenerationState([s.as_task() for s in load_seed_tasks()], config.spec, config.pricing)
    for record in Journal(journal_copy).load():
        state.apply(record)
    return state.kept


def test_killed_at_any_moment_it_resumes_without_losing_or_repaying(tmp_path: Path) -> None:
    concurrency, target = 4, 500
    with TeacherServer(delay_s=0.15, bait_every=5) as server:
        out = tmp_path / "out"
        config = _config(server, str(out), target=target, concurrency=concurrency)
        command, env = _generate_command(tmp_path, config)
        journal = out / CHECKPOINT_FILE

        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 6):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        journal_at_kill = tmp_path / "journal-at-kill.jsonl"
        journal_at_kill.write_bytes(journal.read_bytes())
        answered_before = server.stats.answered
        kept_before = _replay(out, journal_at_kill, target)
        assert 0 < len(kept_before) < target
        assert not (out / "manifest.json").exists()

        resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr

    manifest = _manifest(out)
    rows = _check_outputs(out, manifest)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == target
    # Nothing kept before the kill was lost: the resumed dataset starts with exactly it.
    assert [Task(**row) for row in rows[: len(kept_before)]] == kept_before
    # Every answer in the journal was paid once; those in flight at the kill were charged, not asked again.
    records = [r for r in Journal(journal).load() if r.outcome != "sent"]
    assert manifest.requests == len(records) == len({r.request for r in records})
    answered_at_kill = [r for r in Journal(journal_at_kill).load() if r.outcome != "sent"]
    assert answered_before - len(answered_at_kill) <= concurrency
    assert server.stats.answered - manifest.requests <= manifest.unrecorded_requests <= concurrency


def test_kills_never_hide_spend_and_never_let_it_pass_the_budget(tmp_path: Path) -> None:
    """A teacher that bills every answer it sends, killed runs resumed until the budget stops them:
    what the teacher billed is at most what the manifest counts (recorded answers plus the worst
    case of those lost in flight), and that never passes the budget."""
    budget, concurrency = 0.5, 4
    with TeacherServer(delay_s=0.2, bait_every=5) as server:
        server.inject(*[RATE_LIMIT] * 3)
        out = tmp_path / "out"
        config = _config(server, str(out), target=10_000, concurrency=concurrency, budgetUSD=budget)
        config.spec.generation.max_tokens = 900
        command, env = _generate_command(tmp_path, config)
        journal = out / CHECKPOINT_FILE
        for kill in range(4):
            before = journal.read_bytes().count(b"\n") if journal.exists() else 0
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            # Kill while billed answers are on their way back: a few more journal lines each time,
            # and the teacher has billed more answers than the journal has recorded.
            while not (
                journal.exists()
                and journal.read_bytes().count(b"\n") >= before + 3 + kill
                and server.stats.billed_answers > journal.read_bytes().count(b'"outcome":"answered"')
            ):
                assert process.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
        at_kills = Journal(journal).load()
        # Sent and never answered: what the four killed processes had in flight.
        lost_at_kills = len({r.request for r in at_kills if r.outcome == "sent"} - {r.request for r in at_kills if r.outcome != "sent"})
        final = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr

    manifest = _manifest(out)
    _check_outputs(out, manifest)
    assert manifest.stop_reason is StopReason.BUDGET_EXHAUSTED, manifest
    assert manifest.kept > 0
    assert manifest.unrecorded_requests == lost_at_kills > 0
    billed = (server.stats.billed_prompt_tokens * 1.0 + server.stats.billed_completion_tokens * 4.0) / 1e6
    recorded = (manifest.prompt_tokens * 1.0 + manifest.completion_tokens * 4.0) / 1e6
    assert manifest.cost_usd == pytest.approx(recorded)
    assert billed > recorded, "some answers were billed but lost with the killed processes"
    assert billed <= manifest.cost_usd + manifest.unrecorded_cost_usd + 1e-12
    assert manifest.cost_usd + manifest.unrecorded_cost_usd <= budget + 1e-12


class _RecordingStatusApi:
    """Stands in for the Kubernetes API's status subresource: records each patch it is sent."""

    def __init__(self) -> None:
        self.patches: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append(((group, version, namespace, plural, name), body))


def test_progress_is_patched_onto_the_owning_resource(teacher: TeacherServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alpaca_jobs.report import StatusReporter
    from alpaca_operator.api.instructdataset import GenerationProgress

    api = _RecordingStatusApi()
    monkeypatch.setattr(StatusReporter, "_client", lambda self: api)
    config = _config(teacher, str(tmp_path), target=40).model_copy(
        update={"status_target": StatusTarget(plural="instructdatasets", namespace="team-a", name="demo")}
    )
    manifest = generate(config, options=RunOptions(retry=FAST_RETRIES, progress_bar=False, status_interval_s=3600))
    # Throttled: the first update, then only the final one (forced) within the interval.
    progress_patches = [p for p in api.patches if "progress" in p[1]["status"]]
    assert len(progress_patches) == 2
    target, body = progress_patches[-1]
    assert target == ("alpaca.dev", "v1alpha1", "team-a", "instructdatasets", "demo")
    progress = GenerationProgress.model_validate(body["status"]["progress"])
    assert progress == manifest.progress()
    # Then the result, last: the artifact and its sha256, as in manifest.json.
    from alpaca_operator.api.results import WorkloadResult

    _, last = api.patches[-1]
    result = WorkloadResult.model_validate(last["status"]["result"])
    assert result.artifact.sha256 == manifest.dataset_sha256 and result.records == manifest.kept
    assert json.loads((tmp_path / "manifest.json").read_text())["result"] == last["status"]["result"]


def test_an_output_on_a_claim_is_reported_by_its_public_name(teacher: TeacherServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod writes to its mount of the claim (here tmp_path); status and manifest.json name the
    dataset as pvc://claim/subPath/dataset.jsonl, which a reader outside the pod can place."""
    from alpaca_jobs.report import StatusReporter
    from alpaca_operator.api.results import WorkloadResult

    api = _RecordingStatusApi()
    monkeypatch.setattr(StatusReporter, "_client", lambda self: api)
    config = _config(teacher, str(tmp_path), target=10).model_copy(update={
        "output_uri": "pvc://alpaca/quickstart/dataset",
        "status_target": StatusTarget(plural="instructdatasets", namespace="team-a", name="demo"),
    })
    manifest = generate(config, options=QUIET)
    _, last = api.patches[-1]
    result = WorkloadResult.model_validate(last["status"]["result"])
    assert result.artifact.uri == "pvc://alpaca/quickstart/dataset/dataset.jsonl"
    assert result.artifact.sha256 == manifest.dataset_sha256 == sha256_file(tmp_path / "dataset.jsonl")
    assert json.loads((tmp_path / "manifest.json").read_text())["result"] == last["status"]["result"]


def test_an_output_flag_over_a_config_drops_the_configs_public_name(tmp_path: Path) -> None:
    """The public name was the config's own output's: a folder given by flag is reported as itself."""
    import argparse

    from alpaca_jobs.generate.cli import add_arguments, load_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "name": "demo", "output": "/var/lib/alpaca/output", "outputURI": "pvc://alpaca/quickstart/dataset",
        "teacherURL": "http://127.0.0.1:9/v1", "teacherModel": "m",
        "spec": {"teacher": {"baseURL": "http://127.0.0.1:9/v1", "model": "m"}, "output": {"pvc": {"claimName": "alpaca"}}},
    }))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert load_config(parser.parse_args(["--config", str(path)])).output_uri == "pvc://alpaca/quickstart/dataset"
    moved = load_config(parser.parse_args(["--config", str(path), "--output", str(tmp_path / "here")]))
    assert (moved.output, moved.output_uri) == (str(tmp_path / "here"), None)


def test_an_unusable_output_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = alpaca_main(["generate", "--output", str(blocker / "out"), "--teacher-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert code == 2 and f"{blocker / 'out'}: Not a directory" in capsys.readouterr().err


def _batch_config(server: TeacherServer, output: Path, target: int) -> GenerateConfig:
    config = _config(server, str(output), target=target, concurrency=4)
    config.spec.teacher.batch = TeacherBatch(requests_per_batch=3, poll_interval_seconds=0.1)
    config.pricing.batch_input_usd_per_million_tokens = 0.5
    config.pricing.batch_output_usd_per_million_tokens = 2.0
    return config


def test_the_batch_api_sends_files_of_requests_and_bills_at_the_batch_price(tmp_path: Path) -> None:
    with TeacherServer(bait_every=5, batch_delay_s=0.05) as server:
        manifest = generate(_batch_config(server, tmp_path, target=40), options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 40
    _check_outputs(tmp_path, manifest)
    assert not server.stats.by_status, "nothing went to the real-time endpoints"
    assert set(server.stats.batches_created.values()) == {1} and len(server.stats.batches_created) >= 2
    records = Journal(tmp_path / CHECKPOINT_FILE).load()
    assert {r.content for r in records if r.outcome == "submitted"} == {f"batch-{n}" for n in range(1, len(server.stats.batches_created) + 1)}
    assert (manifest.prompt_tokens, manifest.completion_tokens) == (server.stats.batch_billed_prompt_tokens, server.stats.batch_billed_completion_tokens)
    assert manifest.cost_usd == pytest.approx((manifest.prompt_tokens * 0.5 + manifest.completion_tokens * 2.0) / 1e6)


def test_a_batch_is_never_submitted_twice_across_a_kill(tmp_path: Path) -> None:
    with TeacherServer(bait_every=5, batch_delay_s=1.0) as server:
        out = tmp_path / "out"
        config = _batch_config(server, out, target=30)
        command, env = _generate_command(tmp_path, config)
        journal = out / CHECKPOINT_FILE
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        # Killed while its first batch runs on the teacher's side.
        while not (journal.exists() and b'"submitted"' in journal.read_bytes()):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert sum(server.stats.batches_created.values()) == 1
        resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    manifest = _manifest(out)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 30
    assert set(server.stats.batches_created.values()) == {1}, server.stats.batches_created
    assert manifest.unrecorded_requests == 0  # a batch goes on without us: collected, not lost
    assert manifest.completion_tokens == server.stats.batch_billed_completion_tokens


def _rewind_to_before_last_submission(folder: Path) -> tuple[str, list[int]]:
    """The journal as a crash would leave it between planning the last batch and journaling its
    id; returns that batch's key and its requests."""
    journal = folder / CHECKPOINT_FILE
    records = Journal(journal).load()
    last_key = [r.batch for r in records if r.outcome == "submitted"][-1]
    cut = next(i for i, r in enumerate(records) if r.outcome == "submitted" and r.batch == last_key)
    journal.write_text("".join(r.to_json() + "\n" for r in records[:cut]))
    (folder / "manifest.json").unlink()
    planned = [r.request for r in records[:cut] if r.batch == last_key and r.outcome == "sent"]
    assert last_key is not None and planned
    return last_key, planned


def test_a_batch_created_just_before_a_crash_is_found_by_its_key_not_submitted_again(tmp_path: Path) -> None:
    with TeacherServer(bait_every=5, batch_delay_s=0.05) as server:
        config = _batch_config(server, tmp_path, target=20)
        generate(config, options=QUIET)
        journal = tmp_path / CHECKPOINT_FILE
        last_key, _ = _rewind_to_before_last_submission(tmp_path)
        created = sum(server.stats.batches_created.values())
        manifest = generate(config, options=QUIET)
    assert sum(server.stats.batches_created.values()) == created
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 20
    resumed = Journal(journal).load()
    assert [r.content for r in resumed if r.outcome == "submitted" and r.batch == last_key] == [f"batch-{created}"]


def test_a_batch_planned_but_never_created_is_withdrawn_and_costs_nothing(tmp_path: Path) -> None:
    with TeacherServer(bait_every=5, batch_delay_s=0.05) as first:
        config = _batch_config(first, tmp_path, target=20)
        generate(config, options=QUIET)
    _, planned = _rewind_to_before_last_submission(tmp_path)
    journal = tmp_path / CHECKPOINT_FILE
    with TeacherServer(bait_every=5, batch_delay_s=0.05) as second:  # has never seen that batch
        config.teacher_url = second.base_url
        manifest = generate(config, options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.unrecorded_requests == 0
    resumed = Journal(journal).load()
    assert sorted(r.request for r in resumed if r.outcome == "withdrawn") == planned
    assert manifest.completion_tokens == sum(r.completion_tokens for r in resumed if r.outcome == "answered")
