"""examples/alpaca-7b, created for real: the API server's schema and CEL rules accept every manifest,
and nothing is pruned (what the user wrote is what the operator reads)."""

from __future__ import annotations

from pathlib import Path

import kubernetes.client
import pytest
import yaml

from alpaca_operator.api.kinds import BY_KIND

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "alpaca-7b"


def _documents(folder: Path) -> list[dict]:
    return [d for f in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.mark.usefixtures("crds")
def test_example_is_accepted_by_the_api_server(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    for claim in _documents(EXAMPLE / "prerequisites"):
        core.create_namespaced_persistent_volume_claim(namespace, claim)

    custom = kubernetes.client.CustomObjectsApi(api_client)
    documents = _documents(EXAMPLE)
    assert sorted(d["kind"] for d in documents) == ["FineTune", "InstructDataset", "ModelServer"]
    for document in documents:
        group, version = document["apiVersion"].split("/")
        plural = BY_KIND[document["kind"]].plural
        created = custom.create_namespaced_custom_object(group, version, namespace, plural, document)
        # The stored spec holds every field the manifest set, with the values it set.
        _assert_contains(created["spec"], document["spec"], f"{document['kind']} {document['metadata']['name']}: spec")


def _assert_contains(stored: object, written: object, where: str) -> None:
    if isinstance(written, dict):
        assert isinstance(stored, dict), where
        for key, value in written.items():
            assert key in stored, f"{where}.{key} was pruned by the API server"
            _assert_contains(stored[key], value, f"{where}.{key}")
    else:
        assert stored == written, f"{where}: stored {stored!r}, wrote {written!r}"
