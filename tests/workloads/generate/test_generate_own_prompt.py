"""`alpaca generate` with the user's own prompt template, against a real local teacher over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.teacher import TeacherServer

from alpaca_jobs.generate.manifest import StopReason
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.runner import RunOptions, generate
from alpaca_operator.api.workloads import GenerateConfig
from alpaca_operator.cli import main as alpaca_main

QUIET = RunOptions(retry=RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05), progress_bar=False)


@pytest.fixture
def teacher() -> Iterator[TeacherServer]:
    with TeacherServer(keep_prompts=True) as server:
        yield server


def _config(server: TeacherServer, output: Path, template: Path, teacher_format: str) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "name": "own-prompt",
        "spec": {
            "teacher": {"baseURL": server.base_url, "model": "teacher", "maxConcurrency": 2, "format": teacher_format},
            "generation": {"numExamples": 12, "instructionsPerRequest": 8},
            "output": {"uri": "file:///unused"},
        },
        "output": str(output),
        "teacherURL": server.base_url,
        "teacherModel": "teacher",
        "promptTemplate": str(template),
    })


def test_every_numbered_request_starts_with_the_users_text_and_ends_with_the_open_slot(teacher: TeacherServer, tmp_path: Path) -> None:
    template = tmp_path / "prompt.txt"
    template.write_text("Our house style: short and concrete. {shown} tasks shown, {open} to write.\nTasks 1 to {total}:\n")
    manifest = generate(_config(teacher, tmp_path / "out", template, "numbered"), options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 12
    assert teacher.stats.prompts
    for prompt in teacher.stats.prompts:
        assert prompt.startswith("Our house style: short and concrete. 3 tasks shown, 5 to write.\nTasks 1 to 8:\n###\n1. Instruction: ")
        assert prompt.endswith("###\n4. Instruction:")
        assert "Guidelines for the new tasks" not in prompt


def test_a_structured_template_places_the_examples(teacher: TeacherServer, tmp_path: Path) -> None:
    template = tmp_path / "prompt.txt"
    template.write_text("Examples:\n{examples}\nWrite {open} more as JSON.")
    manifest = generate(_config(teacher, tmp_path / "out", template, "structured"), options=QUIET)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == 12
    for prompt in teacher.stats.prompts:
        head, rest = prompt.split("\n", 1)
        shown, tail = rest.rsplit("\n", 1)
        assert head == "Examples:" and tail == "Write 5 more as JSON."
        assert len(json.loads(shown)["tasks"]) == 3


def test_a_bad_template_stops_the_job_before_any_request_naming_the_field(
    teacher: TeacherServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "prompt.txt"
    template.write_text("Write {how_many} tasks.")
    config = tmp_path / "config.json"
    config.write_text(_config(teacher, tmp_path / "out", template, "numbered").model_dump_json(by_alias=True))
    assert alpaca_main(["generate", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "spec.promptTemplate" in err and "{how_many}" in err and "{total}, {shown}, {open}, {no_input}, {separator}" in err
    assert teacher.stats.received == 0
