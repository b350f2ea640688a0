"""Local mode's plan: references decide the order; missing or circular ones are errors."""

from __future__ import annotations

import copy

import pytest
from support.manifests import VALID

from alpaca_operator.local.plan import plan
from alpaca_operator.manifests import Manifest, ManifestError, parse


def _parse(document: dict) -> Manifest:
    return parse(f"{document['kind']}.yaml", document)


def _chain() -> list[dict]:
    teacher = VALID["ModelServer"]("teacher")
    teacher["spec"] = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}}
    data = VALID["InstructDataset"]("alpaca-data")
    data["spec"]["teacher"] = {"modelServerRef": {"name": "teacher"}}
    data["spec"].pop("budgetUSD", None)  # no budget holds for an in-cluster teacher
    tune = VALID["FineTune"]("alpaca-7b")
    chat = VALID["ModelServer"]("alpaca-chat")
    return [teacher, data, tune, chat]


def test_references_come_first_whatever_the_file_order() -> None:
    teacher, data, tune, chat = _chain()
    steps = plan([_parse(d) for d in (chat, tune, data, teacher)])
    assert [s.title for s in steps] == [
        "ModelServer teacher", "InstructDataset alpaca-data", "FineTune alpaca-7b", "ModelServer alpaca-chat",
    ]
    assert steps[2].needs == (("InstructDataset", "alpaca-data"),)


def test_independent_resources_keep_their_given_order() -> None:
    first = VALID["InstructDataset"]("b-data")
    second = VALID["InstructDataset"]("a-data")
    assert [s.manifest.name for s in plan([_parse(first), _parse(second)])] == ["b-data", "a-data"]


def test_missing_reference_names_file_resource_and_field() -> None:
    tune = VALID["FineTune"]("alpaca-7b")
    with pytest.raises(ManifestError) as raised:
        plan([_parse(tune)])
    message = str(raised.value)
    assert "FineTune.yaml" in message and "'alpaca-7b'" in message
    assert "spec.dataset.instructDatasetRef.name: no InstructDataset named 'alpaca-data'" in message


def test_cycles_are_reported() -> None:
    teacher, data, tune, _ = _chain()
    # A teacher that serves the model being trained from the data it teaches: a cycle.
    looped = copy.deepcopy(teacher)
    looped["spec"] = {"model": {"fineTuneRef": {"name": "alpaca-7b"}}}
    with pytest.raises(ManifestError, match="cycle"):
        plan([_parse(d) for d in (looped, data, tune)])
