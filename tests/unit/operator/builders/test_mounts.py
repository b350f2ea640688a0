"""Pods that read and write the same claim mount it through one volume.

The kubelet mounts a claim once per pod, with the readOnly of the last pod volume naming it: a
dataset read from the output's claim through a second, read-only volume left the output
read-only on a real node (the training pods failed writing metrics.jsonl)."""

from __future__ import annotations

from alpaca_operator.api.common import PVCLocation
from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.builders import trainjob
from alpaca_operator.builders.common import Mounts, Parent, output_location, pvc_mount
from alpaca_operator.builders.inputs import dataset_direct
from alpaca_operator.settings import OperatorSettings


def _claims(volumes: list[dict]) -> list[tuple[str, str, bool]]:
    return [(v["name"], v["persistentVolumeClaim"]["claimName"], v["persistentVolumeClaim"]["readOnly"])
            for v in volumes if "persistentVolumeClaim" in v]


def test_a_read_only_input_on_the_outputs_claim_shares_its_writable_volume() -> None:
    mounts = Mounts()
    mounts.extend(output_location(FineTuneSpec.model_validate({
        "baseModel": {"builtin": "smollm2-135m-instruct"}, "dataset": {"uri": "s3://b/d.jsonl"},
        "output": {"pvc": {"claimName": "data", "subPath": "out"}}}).output)[1])
    mounts.extend(pvc_mount("dataset", PVCLocation(claim_name="data", sub_path="in"), "/in", read_only=True))
    assert _claims(mounts.volumes) == [("output", "data", False)]
    assert [(m["name"], m["mountPath"], m["readOnly"], m.get("subPath")) for m in mounts.mounts] == [
        ("output", "/var/lib/alpaca/output", False, "out"), ("output", "/in", True, "in")]


def test_the_merged_volume_is_read_only_only_when_every_use_is() -> None:
    mounts = Mounts()
    mounts.extend(pvc_mount("dataset", PVCLocation(claim_name="data"), "/in", read_only=True))
    mounts.extend(pvc_mount("model", PVCLocation(claim_name="data", sub_path="m"), "/model", read_only=True))
    mounts.extend(pvc_mount("other", PVCLocation(claim_name="elsewhere"), "/other", read_only=True))
    assert _claims(mounts.volumes) == [("dataset", "data", True), ("other", "elsewhere", True)]
    mounts.extend(pvc_mount("output", PVCLocation(claim_name="data", sub_path="o"), "/out", read_only=False))
    assert _claims(mounts.volumes) == [("dataset", "data", False), ("other", "elsewhere", True)]
    assert [m["readOnly"] for m in mounts.mounts] == [True, True, True, False]


def test_a_trainjob_reading_its_dataset_from_the_output_claim_mounts_it_once() -> None:
    spec = FineTuneSpec.model_validate({
        "backend": "trainjob", "baseModel": {"builtin": "smollm2-135m-instruct"},
        "dataset": {"pvc": {"claimName": "alpaca", "path": "data/rows.jsonl"}},
        "gpus": {"nodes": 2, "perNode": 0}, "output": {"pvc": {"claimName": "alpaca", "subPath": "models/tune"}}})
    _, job = trainjob.build(Parent("tune", "ns", "finetunes", 1), spec, OperatorSettings(), dataset_direct(spec.dataset))
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert _claims(pod["volumes"]) == [("output", "alpaca", False)]
    mounts = {m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/var/lib/alpaca/output"] == ("output", False)
    assert mounts["/var/lib/alpaca/dataset"] == ("output", True)
