"""Local validation: the same models and CEL rules the API server applies."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.manifests import INVALID, VALID, Invalid

from alpaca_operator.manifests import ManifestError, load, parse


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_manifest_parses(kind: str) -> None:
    manifest = parse("test.yaml", VALID[kind]())
    assert manifest.kind == kind
    assert manifest.resource.spec is not None


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_names_the_field(case: Invalid) -> None:
    with pytest.raises(ManifestError) as raised:
        parse("bad.yaml", case.manifest())
    message = str(raised.value)
    assert "bad.yaml" in message
    assert case.field.removeprefix("spec.") in message


def test_unknown_field_is_named() -> None:
    document = VALID["FineTune"]()
    document["spec"]["hyperparameters"]["learningrate"] = 1e-4
    with pytest.raises(ManifestError, match=r"spec\.hyperparameters\.learningrate: unknown field"):
        parse("typo.yaml", document)


def test_wrong_kind_and_api_version_are_named() -> None:
    with pytest.raises(ManifestError, match="kind: must be one of"):
        parse("x.yaml", {**VALID["FineTune"](), "kind": "FineTuning"})
    with pytest.raises(ManifestError, match="apiVersion: must be alpaca.dev/v1alpha1"):
        parse("x.yaml", {**VALID["FineTune"](), "apiVersion": "alpaca.dev/v1"})


def test_load_reads_folders_and_multi_document_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([VALID["InstructDataset"](), VALID["FineTune"]()]))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(VALID["ModelServer"]()))
    (tmp_path / "notes.txt").write_text("not a manifest")
    kinds = [m.kind for m in load([tmp_path])]
    assert kinds == ["InstructDataset", "FineTune", "ModelServer"]


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(VALID["FineTune"]()))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(VALID["FineTune"]()))
    with pytest.raises(ManifestError, match="also defined in"):
        load([tmp_path])


@pytest.mark.parametrize("sub_path", ["..", "../../etc", "data/../../etc", "data/.."])
def test_a_sub_path_leaving_the_volume_is_refused_by_model_and_cel(sub_path: str) -> None:
    from alpaca_operator.crd.cel import violations
    from alpaca_operator.crd.generate import render_all

    document = VALID["InstructDataset"]()
    document["spec"]["output"] = {"pvc": {"claimName": "data", "subPath": sub_path}}
    with pytest.raises(ManifestError, match=r"output\.pvc\.subPath: .*must stay inside the volume"):
        parse("escape.yaml", document)
    # The API server's rule, from the CRD this repo ships.
    crd = yaml.safe_load(render_all()["alpaca.dev_instructdatasets.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = spec["properties"]["output"]["properties"]["pvc"]["properties"]["subPath"]
    (broken,) = violations(field, sub_path, "spec.output.pvc.subPath")
    assert "must stay inside the volume" in broken.message
    assert not violations(field, "data/run-1", "spec.output.pvc.subPath")


@pytest.mark.parametrize("sub_path", ["", "data", "a/..b/c", "runs/2026..01"])
def test_sub_paths_inside_the_volume_pass(sub_path: str) -> None:
    document = VALID["InstructDataset"]()
    document["spec"]["output"] = {"pvc": {"claimName": "data", "subPath": sub_path}}
    parse("inside.yaml", document)
