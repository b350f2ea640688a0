"""A training run reports its validation loss onto its FineTune, through a real API server."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PYTHON, RECIPE, REPO, child_env, read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from support.cluster import PROJECT_CRDS, install_crds

    from alpaca_operator.testing.controlplane import ControlPlane

    with ControlPlane() as control_plane:
        with control_plane.api_client() as client:
            install_crds(client, PROJECT_CRDS)
        yield control_plane


def test_validation_loss_reaches_status_progress(cluster: Any, tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    import kubernetes.client
    from support.manifests import fine_tune

    namespace, name = f"train-{uuid.uuid4().hex[:8]}", "tiny"
    with cluster.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespace({"metadata": {"name": namespace}})
        api = kubernetes.client.CustomObjectsApi(client)
        api.create_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "finetunes", fine_tune(name))

        out = tmp_path / "out"
        config = tmp_path / "train.json"
        config.write_text(json.dumps({
            # `out` stands in for the pod's mount of the claim the FineTune's output names.
            "name": name, "dataset": str(dataset_file), "output": str(out), "outputURI": "pvc://models/tiny",
            "baseModel": {"location": str(tiny_model)},
            "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}, "gpus": {"perNode": 0}},
            "statusTarget": {"plural": "finetunes", "namespace": namespace, "name": name},
        }))
        # The flags of the shared recipe lie over the config; the output stays the config's, and so its public name.
        subprocess.run([PYTHON, "-m", "alpaca_operator.cli", "train", "--dataset", str(dataset_file), "--base-model", str(tiny_model),
                        *RECIPE, "--config", str(config)],
                       check=True, env=child_env(KUBECONFIG=cluster.kubeconfig), cwd=REPO, timeout=300)
        status = api.get_namespaced_custom_object_status("alpaca.dev", "v1alpha1", namespace, "finetunes", name)["status"]

    last = [m for m in read_metrics(out) if "validation_loss" in m][-1]
    assert last["step"] == 8
    progress = status["progress"]
    assert progress["validationLoss"] == pytest.approx(last["validation_loss"])
    assert progress["validationStep"] == 8 and progress["step"] == 8
    written = json.loads((out / "manifest.json").read_text())
    assert status["result"]["artifact"]["sha256"] == written["model"]["sha256"]
    # The model by the claim's public name, not by the folder the pod wrote it to.
    assert status["result"]["artifact"]["uri"] == "pvc://models/tiny"
    assert written["result"] == status["result"]
