"""A PVC output's public name: every kind's config carries it, and consumers map what an upstream
reported under it (or, from workloads of earlier releases, under its pod's mount) onto their mount."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alpaca_operator.api.common import Artifact, PVCLocation, Storage
from alpaca_operator.api.evaluation import EvaluationSpec
from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.api.instructdataset import InstructDatasetSpec
from alpaca_operator.api.workloads import EvaluateConfig, GenerateConfig, TrainConfig
from alpaca_operator.builders import evaluation, finetune, instructdataset
from alpaca_operator.builders.common import Parent, public_uri, pvc_uri
from alpaca_operator.builders.inputs import (
    Input,
    UnreachableArtifact,
    dataset_from_upstream,
    model_from_upstream,
)
from alpaca_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
PARENT = Parent("demo", "ns", "plural", 1)
QUICKSTART_DATA = Storage(pvc=PVCLocation(claim_name="alpaca", sub_path="quickstart/dataset"))
QUICKSTART_MODEL = Storage(pvc=PVCLocation(claim_name="alpaca", sub_path="quickstart/model"))
ROOT = Storage(pvc=PVCLocation(claim_name="alpaca"))
DIGEST = "c" * 64


def _config(kind: str, output: dict[str, Any]) -> dict[str, Any]:
    """The config.json the operator puts in the ConfigMap of a `kind` writing to `output`."""
    if kind == "InstructDataset":
        spec = InstructDatasetSpec.model_validate({"teacher": {"baseURL": "https://api.x/v1", "model": "m"}, "output": output})
        cm, _ = instructdataset.build(PARENT, spec, SETTINGS, instructdataset.resolve_teacher(spec, SETTINGS, None))
        model: type[Any] = GenerateConfig
    elif kind == "FineTune":
        spec = FineTuneSpec.model_validate({"dataset": {"uri": "s3://b/d.jsonl"}, "gpus": {"perNode": 0}, "output": output})
        cm, _ = finetune.build(PARENT, spec, SETTINGS, Input("s3://b/d.jsonl"))
        model = TrainConfig
    else:
        spec = EvaluationSpec.model_validate({
            "candidate": {"baseURL": "https://c.x/v1", "model": "c"}, "baseline": {"baseURL": "https://b.x/v1", "model": "b"},
            "judge": {"baseURL": "https://j.x/v1", "model": "j"}, "output": output,
        })
        cm, _ = evaluation.build(PARENT, spec, SETTINGS, evaluation.resolve(spec, SETTINGS, {}))
        model = EvaluateConfig
    config = json.loads(cm["data"]["config.json"])
    model.model_validate(config)  # what the workload reads back
    return config


@pytest.mark.parametrize("kind", ["InstructDataset", "FineTune", "Evaluation"])
def test_every_kind_names_its_pvc_output_publicly_and_leaves_a_uri_alone(kind: str) -> None:
    on_claim = _config(kind, {"pvc": {"claimName": "alpaca", "subPath": "quickstart/x"}})
    assert (on_claim["output"], on_claim["outputURI"]) == ("/var/lib/alpaca/output", "pvc://alpaca/quickstart/x")
    at_root = _config(kind, {"pvc": {"claimName": "alpaca"}})
    assert at_root["outputURI"] == "pvc://alpaca"
    by_uri = _config(kind, {"uri": "s3://bucket/prefix"})
    assert by_uri["output"] == "s3://bucket/prefix" and "outputURI" not in by_uri


def test_a_config_written_before_the_public_name_still_validates() -> None:
    old = {"name": "ft", "dataset": "/d", "baseModel": {"builtin": "smollm2-135m-instruct"}, "output": "/var/lib/alpaca/output",
           "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}, "gpus": {"perNode": 0}}}
    assert TrainConfig.model_validate(old).output_uri is None


@pytest.mark.parametrize(("parts", "expected"), [
    (("quickstart/dataset", "dataset.jsonl"), "pvc://alpaca/quickstart/dataset/dataset.jsonl"),
    (("quickstart/model", ""), "pvc://alpaca/quickstart/model"),
    (("", "dataset.jsonl"), "pvc://alpaca/dataset.jsonl"),
    (("", ""), "pvc://alpaca"),
    (("quickstart/model/", "/adapter"), "pvc://alpaca/quickstart/model/adapter"),
])
def test_pvc_uris_have_no_empty_segment(parts: tuple[str, str], expected: str) -> None:
    assert pvc_uri("alpaca", *parts) == expected


def test_public_uri_of_storage() -> None:
    assert public_uri(QUICKSTART_MODEL) == "pvc://alpaca/quickstart/model"
    assert public_uri(Storage(uri="s3://b/m")) is None


@pytest.mark.parametrize(("storage", "reported", "location", "pinned"), [
    # What workloads report now: the public name.
    (QUICKSTART_DATA, "pvc://alpaca/quickstart/dataset/dataset.jsonl", "/var/lib/alpaca/dataset/dataset.jsonl",
     "pvc://alpaca/quickstart/dataset/dataset.jsonl"),
    (QUICKSTART_DATA, "pvc://alpaca/quickstart/dataset/round-2/data.jsonl", "/var/lib/alpaca/dataset/round-2/data.jsonl",
     "pvc://alpaca/quickstart/dataset/round-2/data.jsonl"),
    (ROOT, "pvc://alpaca/dataset.jsonl", "/var/lib/alpaca/dataset/dataset.jsonl", "pvc://alpaca/dataset.jsonl"),
    # What workloads of an earlier release reported: the path in their pod. Pinned by the public name.
    (QUICKSTART_DATA, "/var/lib/alpaca/output/dataset.jsonl", "/var/lib/alpaca/dataset/dataset.jsonl",
     "pvc://alpaca/quickstart/dataset/dataset.jsonl"),
    # Neither form (nothing reported yet, another path): the file where the workload writes it.
    (QUICKSTART_DATA, None, "/var/lib/alpaca/dataset/dataset.jsonl", "pvc://alpaca/quickstart/dataset/dataset.jsonl"),
    (QUICKSTART_DATA, "/var/lib/alpaca/outputs/x.jsonl", "/var/lib/alpaca/dataset/dataset.jsonl",
     "pvc://alpaca/quickstart/dataset/dataset.jsonl"),
])
def test_a_dataset_on_a_claim_is_read_through_the_consumers_mount(
    storage: Storage, reported: str | None, location: str, pinned: str
) -> None:
    upstream = dataset_from_upstream(storage, Artifact(uri=reported, sha256=DIGEST) if reported else None)
    assert upstream.location == location
    assert upstream.pinned == Artifact(uri=pinned, sha256=DIGEST if reported else None)
    (mount,) = upstream.mounts.mounts
    assert mount["mountPath"] == "/var/lib/alpaca/dataset" and mount["readOnly"] is True
    assert mount.get("subPath", "") == (storage.pvc.sub_path if storage.pvc else "")


@pytest.mark.parametrize("reported", ["pvc://alpaca/quickstart/model", "pvc://alpaca/quickstart/model/", "/var/lib/alpaca/output"])
def test_a_model_folder_on_a_claim_is_the_consumers_mount(reported: str) -> None:
    upstream = model_from_upstream(QUICKSTART_MODEL, Artifact(uri=reported, sha256=DIGEST))
    assert upstream.location == "/var/lib/alpaca/model"
    assert upstream.pinned == Artifact(uri="pvc://alpaca/quickstart/model", sha256=DIGEST)


def test_uri_outputs_are_passed_as_reported() -> None:
    upstream = dataset_from_upstream(Storage(uri="s3://b/d"), Artifact(uri="s3://b/d/dataset.jsonl", sha256=DIGEST))
    assert (upstream.location, upstream.mounts.volumes) == ("s3://b/d/dataset.jsonl", [])
    assert upstream.pinned == Artifact(uri="s3://b/d/dataset.jsonl", sha256=DIGEST)


@pytest.mark.parametrize(("storage", "reported", "words"), [
    (QUICKSTART_DATA, "pvc://other/quickstart/dataset/dataset.jsonl", "not inside its output pvc://alpaca/quickstart/dataset"),
    (QUICKSTART_DATA, "pvc://alpaca/elsewhere/dataset.jsonl", "not inside its output pvc://alpaca/quickstart/dataset"),
    # A sibling folder whose name starts like the output's is another folder.
    (QUICKSTART_DATA, "pvc://alpaca/quickstart/dataset-2/dataset.jsonl", "not inside its output"),
    (ROOT, "pvc://alpaca-2/dataset.jsonl", "not inside its output pvc://alpaca"),
    (QUICKSTART_DATA, "pvc://alpaca/quickstart/dataset/../model/x", "leaves its output"),
    (QUICKSTART_DATA, "/var/lib/alpaca/output/../../etc/passwd", "leaves its output"),
    (Storage(uri="s3://b/d"), "pvc://alpaca/quickstart/dataset/dataset.jsonl", "its output is s3://b/d, not a claim"),
])
def test_an_artifact_reported_outside_the_output_is_refused(storage: Storage, reported: str, words: str) -> None:
    with pytest.raises(UnreachableArtifact, match=words.replace(".", r"\.")):
        dataset_from_upstream(storage, Artifact(uri=reported, sha256=DIGEST))
