"""ModelServer builder: the llama-cpp runtime (llama.cpp's llama-server) and /metrics on its own port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from alpaca_operator.api.modelserver import ModelServerSpec
from alpaca_operator.api.workloads import ResolvedModel
from alpaca_operator.builders import modelserver
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import model_source
from alpaca_operator.reconcile import modelserver as reconcile_modelserver
from alpaca_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
BUILTIN = {"source": {"builtin": "smollm2-135m-instruct"}}
KEY_REF = {"apiKeySecretRef": {"name": "server-key", "key": "token"}}


def build(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    parsed = ModelServerSpec.model_validate(spec)
    model, mounts = model_source(parsed.model.source)
    return modelserver.build(Parent("chat", "ns", "modelservers", 1), parsed, SETTINGS, model, mounts)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def ports(manifest: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in manifest}


# -- /metrics on a port of its own -----------------------------------------------------------


def test_alpaca_serve_gets_a_metrics_port_that_the_service_and_annotations_name() -> None:
    config_map, deployment, service = build({"model": BUILTIN})
    assert json.loads(config_map["data"]["config.json"])["metricsPort"] == modelserver.METRICS_PORT
    server = container(deployment)
    assert ports(server["ports"])["metrics"]["containerPort"] == modelserver.METRICS_PORT
    assert ports(server["ports"])["http"]["containerPort"] == modelserver.PORT
    # A ServiceMonitor selects the Service by label and scrapes its port named metrics.
    assert ports(service["spec"]["ports"])["metrics"]["targetPort"] == "metrics"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(modelserver.METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_network_policy_lets_scrapers_reach_the_metrics_port_only() -> None:
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    clients = [{"podSelector": {"matchLabels": {"role": "client"}}}]
    spec = ModelServerSpec.model_validate({"model": BUILTIN, "networkPolicy": {"from": clients, "metricsFrom": scrapers}})
    policy = modelserver.network_policy(Parent("chat", "ns", "modelservers", 1), spec)
    assert policy is not None
    assert policy["spec"]["ingress"] == [
        {"from": clients, "ports": [{"protocol": "TCP", "port": modelserver.PORT}]},
        {"from": scrapers, "ports": [{"protocol": "TCP", "port": modelserver.METRICS_PORT}]},
    ]
    unscraped = ModelServerSpec.model_validate({"model": BUILTIN, "networkPolicy": {"from": clients}})
    policy = modelserver.network_policy(Parent("chat", "ns", "modelservers", 1), unscraped)
    assert policy is not None and [rule["from"] for rule in policy["spec"]["ingress"]] == [clients]


def test_runtimes_with_metrics_on_the_api_port_point_the_metrics_service_port_there() -> None:
    config_map, deployment, service = build({"model": BUILTIN, "runtime": "llama-cpp"})
    assert json.loads(config_map["data"]["config.json"]).get("metricsPort") is None
    assert set(ports(container(deployment)["ports"])) == {"http"}
    assert ports(service["spec"]["ports"])["metrics"]["targetPort"] == "http"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(modelserver.PORT)
    spec = ModelServerSpec.model_validate({"model": BUILTIN, "runtime": "llama-cpp", "networkPolicy": {"metricsFrom": [{"podSelector": {}}]}})
    policy = modelserver.network_policy(Parent("chat", "ns", "modelservers", 1), spec)
    assert policy is not None and policy["spec"]["ingress"][1]["ports"] == [{"protocol": "TCP", "port": modelserver.PORT}]


# -- runtime: llama-cpp ---------------------------------------------------------------------


def test_llama_cpp_serves_the_builtin_gguf_from_its_image_with_the_key_from_the_secret() -> None:
    _, deployment, _ = build({"model": BUILTIN, "runtime": "llama-cpp", "auth": KEY_REF, "servedModelName": "smol",
                              "batching": {"maxBatchSize": 4, "maxNewTokens": 300}})
    server = container(deployment)
    command = server["command"]
    assert server["image"] == SETTINGS.images.llama_cpp
    assert command[0] == "llama-server"
    assert flag(command, "--model") == f"{modelserver.LLAMA_CPP_MODELS}/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (flag(command, "--host"), flag(command, "--port")) == ("0.0.0.0", str(modelserver.PORT))
    assert (flag(command, "--alias"), flag(command, "--parallel"), flag(command, "--n-predict")) == ("smol", "4", "300")
    assert "--metrics" in command
    # The key reaches llama-server through its env var, never the command line.
    assert "--api-key" not in command and "token" not in " ".join(command)
    assert server["env"] == [{"name": modelserver.LLAMA_API_KEY_ENV,
                              "valueFrom": {"secretKeyRef": {"name": "server-key", "key": "token"}}}]
    assert {server[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"/health"}
    assert "volumeMounts" not in server or all(m["mountPath"] != "/etc/alpaca" for m in server["volumeMounts"])


def test_llama_cpp_reads_a_gguf_file_from_a_claim() -> None:
    _, deployment, _ = build({"model": {"source": {"pvc": {"claimName": "models", "subPath": "smol"}, "ggufFile": "m.Q8_0.gguf"}},
                              "runtime": "llama-cpp"})
    server = container(deployment)
    mount = next(m for m in server["volumeMounts"] if m["name"] == "model")
    assert flag(server["command"], "--model") == f"{mount['mountPath']}/m.Q8_0.gguf"


@pytest.mark.parametrize(("source", "field"), [
    ({"uri": "s3://bucket/models"}, "ggufFile"),
    ({"uri": "s3://bucket/models", "ggufFile": "m.gguf"}, "s3://"),
    ({"pvc": {"claimName": "models"}}, "ggufFile"),
])
def test_llama_cpp_refuses_what_llama_server_cannot_load(source: dict[str, Any], field: str) -> None:
    with pytest.raises(modelserver.UnsupportedModel, match=field):
        build({"model": {"source": source}, "runtime": "llama-cpp"})


def test_llama_cpp_cannot_serve_a_fine_tunes_transformers_folder() -> None:
    with pytest.raises(modelserver.UnsupportedModel, match="GGUF"):
        modelserver.gguf_path(ResolvedModel(location="/models/tuned"))


def test_an_unloadable_model_becomes_a_condition_naming_it() -> None:
    body = {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "status": {},
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"model": {"source": {"uri": "s3://bucket/models"}}, "runtime": "llama-cpp"}}
    plan = reconcile_modelserver.reconcile(body, None, {}, SETTINGS, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert plan.children == []
    assert any("ggufFile" in (c.message or "") for c in plan.status.conditions)


@pytest.mark.parametrize(("cpu", "threads"), [("500m", "1"), ("1500m", "1"), ("4", "4"), ("2.5", "2")])
def test_llama_cpp_threads_follow_the_cpu_limit(cpu: str, threads: str) -> None:
    _, deployment, _ = build({"model": BUILTIN, "runtime": "llama-cpp", "resources": {"cpu": cpu}})
    command = container(deployment)["command"]
    assert flag(command, "--threads") == threads and flag(command, "--threads-batch") == threads


@pytest.mark.parametrize(("memory", "cache"), [("4Gi", "1024"), ("2G", "476"), ("512Mi", "128"), ("1Mi", "0")])
def test_llama_cpp_prompt_cache_stays_within_a_quarter_of_the_memory_limit(memory: str, cache: str) -> None:
    _, deployment, _ = build({"model": BUILTIN, "runtime": "llama-cpp", "resources": {"memory": memory}})
    assert flag(container(deployment)["command"], "--cache-ram") == cache
    _, unbounded, _ = build({"model": BUILTIN, "runtime": "llama-cpp"})
    assert "--cache-ram" not in container(unbounded)["command"]


def test_the_builtin_gguf_names_agree_with_the_workloads() -> None:
    from alpaca_jobs.models import builtin_files

    for name, file_name in modelserver.BUILTIN_GGUF.items():
        assert builtin_files(name).gguf_file == file_name


def llama_server_binary() -> Path | None:
    found = os.environ.get("ALPACA_LLAMA_SERVER") or shutil.which("llama-server")
    cached = Path.home() / ".cache" / "alpaca-operator" / "bin" / "llama-server"
    if found:
        return Path(found)
    return cached if cached.exists() else None


def test_every_flag_the_builder_passes_is_one_llama_server_knows() -> None:
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("no llama-server binary (PATH, ALPACA_LLAMA_SERVER or bench/build_llama_server.sh's cache)")
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    _, deployment, _ = build({"model": BUILTIN, "runtime": "llama-cpp", "resources": {"cpu": "2", "memory": "1Gi"}})
    for word in container(deployment)["command"][1:]:
        if word.startswith("--"):
            assert f"{word} " in help_text or f"{word}," in help_text, f"llama-server --help has no {word}"
