"""Structured teacher mode: the open slots asked for as JSON under a json_schema response_format,
against the real openai client and a real local teacher over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.teacher import CUT, GARBLED, TeacherServer

from alpaca_jobs.generate.checkpoint import Journal
from alpaca_jobs.generate.manifest import CHECKPOINT_FILE, Manifest, StopReason
from alpaca_jobs.generate.prompt import STRUCTURED_SCHEMA_NAME
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.runner import RunOptions, generate
from alpaca_jobs.generate.seeds import load_seed_tasks
from alpaca_jobs.generate.state import GenerationState
from alpaca_jobs.storage import sha256_file
from alpaca_operator.api.instructdataset import TeacherAPI
from alpaca_operator.api.workloads import GenerateConfig

QUIET = RunOptions(retry=RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.05), progress_bar=False)


@pytest.fixture
def teacher() -> Iterator[TeacherServer]:
    with TeacherServer(bait_every=5, keep_prompts=True) as server:
        yield server


def _config(server: TeacherServer, output: str, *, target: int, api: str = "chat", **spec: Any) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "name": "demo",
            "spec": {
                "teacher": {"baseURL": server.base_url, "model": "teacher", "maxConcurrency": 4,
                            "format": "structured", "api": api},
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


def _rows(folder: Path, manifest: Manifest) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in (folder / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == manifest.kept
    assert all(set(row) == {"instruction", "input", "output"} and row["instruction"] for row in rows)
    assert len({row["instruction"] for row in rows}) == len(rows)
    assert manifest.generated == manifest.kept + sum(manifest.filtered.values())
    assert manifest.dataset_sha256 == sha256_file(folder / "dataset.jsonl")
    return rows


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_structured_mode_asks_for_json_and_filters_as_numbered_mode_does(teacher: TeacherServer, tmp_path: Path, api: str) -> None:
    manifest = generate(_config(teacher, str(tmp_path), target=40, api=api), options=QUIET)

    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 40
    _rows(tmp_path, manifest)
    requests = sum(teacher.stats.endpoints.values())
    assert teacher.stats.endpoints == {api: requests}
    # Every request carried the schema and no numbered-list stop sequence.
    assert teacher.stats.formats == {"json_schema": requests} and not teacher.stats.stops
    for prompt in teacher.stats.prompts:
        assert "Write 17 new tasks." in prompt and "Instruction:" not in prompt
    # The same filters as numbered mode: the teacher's bait (every 5th slot) is dropped by them.
    bait = {"too_short", "blacklisted", "write_a_program", "starts_with_punctuation", "starts_non_ascii"}
    assert len(set(manifest.filtered) & bait) >= 3
    assert sum(manifest.filtered[reason] for reason in bait if reason in manifest.filtered) >= requests * 3 - 3
    assert "malformed" not in manifest.filtered


def test_request_body_carries_a_strict_schema_bounded_by_the_open_slots(teacher: TeacherServer, tmp_path: Path) -> None:
    from alpaca_jobs.generate.teacher import Teacher

    config = _config(teacher, str(tmp_path), target=10, generation={"numExamples": 10, "instructionsPerRequest": 8,
                                                                      "seedTasksPerPrompt": 2, "generatedTasksPerPrompt": 1})
    body = Teacher(base_url=teacher.base_url, model="teacher", api_key=None, generation=config.spec.generation,
                   timeout_s=5, retry=QUIET.retry, format=config.spec.teacher.format).request_body("p")
    spec = body["response_format"]["json_schema"]
    assert spec["name"] == STRUCTURED_SCHEMA_NAME and spec["strict"] is True
    assert spec["schema"]["properties"]["tasks"]["maxItems"] == 5
    assert "stop" not in body


def test_a_cut_answer_keeps_its_whole_tasks_and_a_garbled_one_is_malformed(teacher: TeacherServer, tmp_path: Path) -> None:
    teacher.inject(CUT, GARBLED)
    manifest = generate(_config(teacher, str(tmp_path), target=40), options=QUIET)
    assert manifest.kept == 40
    assert manifest.filtered["truncated"] == 1 and manifest.filtered["malformed"] == 1
    # The cut answer's other 16 tasks were read: items generated = 17 per answer except the garbled one.
    assert manifest.generated >= 16


def test_resume_reads_structured_answers_from_the_journal(teacher: TeacherServer, tmp_path: Path) -> None:
    config = _config(teacher, str(tmp_path), target=30)
    first = generate(config, options=QUIET)
    asked = teacher.stats.received
    again = generate(_config(teacher, str(tmp_path), target=30), options=QUIET)
    assert teacher.stats.received == asked and again.dataset_sha256 == first.dataset_sha256
    state = GenerationState([s.as_task() for s in load_seed_tasks()], config.spec, config.pricing)
    for record in Journal(tmp_path / CHECKPOINT_FILE).load():
        state.apply(record)
    assert [t.as_record() for t in state.kept] == _rows(tmp_path, first)
