"""Generation whose output is a bucket on a real S3-compatible server (moto's server mode)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.object_store import ObjectStore, object_store
from support.teacher import TeacherServer

from alpaca_jobs.generate.manifest import CHECKPOINT_FILE
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.runner import RunOptions, generate
from alpaca_operator.api.workloads import GenerateConfig

QUIET = RunOptions(retry=RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.05), progress_bar=False)


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStore]:
    with object_store() as store:
        yield store


def config(server: TeacherServer, output: str) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "name": "demo",
        "spec": {"teacher": {"baseURL": server.base_url, "model": "teacher", "maxConcurrency": 4},
                 "generation": {"numExamples": 20}, "output": {"uri": output}},
        "output": output, "teacherURL": server.base_url, "teacherModel": "teacher",
        "pricing": {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 4.0},
    })


def test_bucket_output_is_published_and_a_new_pod_resumes_from_it(
    s3: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.reach_from_here(monkeypatch)
    output = s3.uri("datasets", "demo")
    fs = s3.filesystem()
    with TeacherServer(bait_every=5) as server:
        monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "pod-1"))
        first = generate(config(server, output), options=QUIET)
        dataset = fs.cat_file(f"{s3.bucket}/datasets/demo/dataset.jsonl")
        manifest = json.loads(fs.cat_file(f"{s3.bucket}/datasets/demo/manifest.json"))
        assert hashlib.sha256(dataset).hexdigest() == first.dataset_sha256 == manifest["datasetSha256"]
        assert fs.exists(f"{s3.bucket}/datasets/demo/{CHECKPOINT_FILE}")
        asked = server.stats.received

        monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "pod-2"))  # a new pod: an empty disk
        second = generate(config(server, output), options=QUIET)
        assert server.stats.received == asked, "the journal came back from the bucket: nothing is asked twice"
        assert second.dataset_sha256 == first.dataset_sha256
