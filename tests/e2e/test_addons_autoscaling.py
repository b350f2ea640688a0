"""A ModelServer with `spec.autoscaling` scales on CPU through the resource metrics API served by
metrics-server (built from sigs.k8s.io/metrics-server by hack/addons.sh): under load from a few
local clients its HorizontalPodAutoscaler takes it from 1 to 2 pods, the operator leaves the
Deployment's count to the HPA, and once the load stops it goes back to 1.

The evidence printed is the HPA's rescale events and a timeline of the HPA's measured CPU
utilisation and replica counts, with the load's start and stop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from e2e_addons import events, installed, release
from e2e_chain import resource, wait_phase
from e2e_cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.addons, pytest.mark.timeout(5400)]

NAME = "scaled"
CLIENTS = 3
# The load stops by this deadline even if the HPA never scaled (the assertion then says so).
LOAD_LIMIT_S = 900
SCALE_DOWN_LIMIT_S = 900


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[None]:
    yield from installed("metrics-server")


def _server() -> dict[str, Any]:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"source": {"builtin": "smollm2-135m-instruct"}},
            "gpusPerReplica": 0,
            # CPU request = limit: a busy pod measures about 100% of its request, an idle one a few. Small,
            # so that a second pod fits beside the other tests' pods on two cores.
            "resources": {"cpu": "300m", "memory": "2Gi"},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": 2, "targetCPUUtilizationPercentage": 50,
                "scaleDownStabilizationSeconds": 30,
            },
        },
    }


def _answers(cluster: Cluster, namespace: str, selector: str) -> dict[str, int]:
    """Chat answers logged by each server pod that has answered at least once."""
    counts = {}
    for pod in cluster.get("pods", "-n", namespace, "-l", selector)["items"]:
        name = pod["metadata"]["name"]
        log = cluster.kubectl("logs", "-n", namespace, name, check=False)
        if answered := log.count("POST /v1/chat/completions 200"):
            counts[name] = answered
    return counts


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _when(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or "")


class Load:
    """CLIENTS threads, each sending one chat request after another until stopped or past its limit."""

    def __init__(self, base_url: str, model: str) -> None:
        self.stop = threading.Event()
        self.answered = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + LOAD_LIMIT_S
        self._client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=120, max_retries=0)
        self._model = model
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self._deadline:
            try:
                self._client.chat.completions.create(
                    model=self._model, max_tokens=48, temperature=0.7,
                    messages=[{"role": "user", "content": "Write a short poem about autumn."}],
                )
            except openai.OpenAIError:
                with self._lock:
                    self.errors += 1
                time.sleep(1)
            else:
                with self._lock:
                    self.answered += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def test_hpa_scales_a_modelserver_up_and_back(
    cluster: Cluster, metrics_server: None, request: pytest.FixtureRequest, namespace: str
) -> None:
    release(cluster, request)
    cluster.apply(json.dumps(_server()), namespace)
    wait_phase(cluster, namespace, "modelserver", NAME, "Ready", 1200)
    status = resource(cluster, namespace, "modelserver", NAME)["status"]
    hpa_name = status["autoscalerName"]
    deployment_name = cluster.get("hpa", hpa_name, "-n", namespace)["spec"]["scaleTargetRef"]["name"]
    timeline: list[str] = []

    def sample(note: str = "") -> tuple[int, int]:
        hpa = cluster.get("hpa", hpa_name, "-n", namespace)
        hpa_status = hpa.get("status") or {}
        cpu = next((m["resource"]["current"].get("averageUtilization") for m in hpa_status.get("currentMetrics") or []
                    if m.get("type") == "Resource"), None)
        server = resource(cluster, namespace, "modelserver", NAME)["status"]
        row = (f"{time.strftime('%H:%M:%S', time.gmtime())} cpu={cpu}% hpa current={hpa_status.get('currentReplicas')} "
               f"desired={hpa_status.get('desiredReplicas')} modelserver replicas={server.get('replicas')} "
               f"ready={server.get('readyReplicas')} {note}")
        if not timeline or timeline[-1].split(" ", 1)[1] != row.split(" ", 1)[1]:
            timeline.append(row)
        return int(hpa_status.get("desiredReplicas") or 0), int(server.get("replicas") or 0)

    # Metrics flow before any load: the HPA has measured the idle pod and wants 1.
    cluster.wait_for("the HPA measuring CPU at 1 replica", lambda: sample() == (1, 1), 600, 5)

    service = cluster.get("service", status["url"].split("//", 1)[1].split(".", 1)[0], "-n", namespace)
    base_url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}/v1"
    load_started = _utc_now()
    with Load(base_url, status.get("servedModelName") or NAME) as load:
        sample(f"load started ({load_started} UTC)")
        cluster.wait_for("the HPA scaling to 2", lambda: sample() == (2, 2), LOAD_LIMIT_S, 5)
        # The Deployment's count is the HPA's: the operator does not write it back to 1.
        scaled = cluster.get("deployment", deployment_name, "-n", namespace)
        # The load goes on until the new pod is ready and answers its share through the Service.
        cluster.wait_for(
            "both pods answering", lambda: sample() and len(_answers(cluster, namespace, status["selector"])) >= 2,
            LOAD_LIMIT_S, 5,
        )
        load_stopped = _utc_now()
        sample(f"load stopping ({load_stopped} UTC)")
    sample(f"load stopped: {load.answered} answers, {load.errors} errors")
    per_pod = _answers(cluster, namespace, status["selector"])
    print("answers per server pod:", per_pod)
    assert scaled["spec"]["replicas"] == 2
    scale = json.loads(cluster.kubectl(
        "get", "--raw", f"/apis/alpaca.dev/v1alpha1/namespaces/{namespace}/modelservers/{NAME}/scale"))
    print("ModelServer scale subresource at 2:", json.dumps(scale["spec"]), json.dumps(scale["status"]))
    assert scale["status"]["replicas"] == 2

    cluster.wait_for("the HPA scaling back to 1", lambda: sample() == (1, 1), SCALE_DOWN_LIMIT_S, 5)
    sample("back at 1")

    print("HPA / ModelServer timeline (UTC):")
    for row in timeline:
        print("  ", row)
    rescales = [e for e in events(cluster, namespace, "HorizontalPodAutoscaler", hpa_name) if e["reason"] == "SuccessfulRescale"]
    print("HPA events:")
    for event in rescales:
        print("  ", _when(event), event["message"])
    print(cluster.kubectl("get", "modelserver,hpa,deployment", "-n", namespace, "-o", "wide"))
    print(f"load: {CLIENTS} clients from {load_started} to {load_stopped} UTC, {load.answered} answers")
    # Event times have a resolution of a second; RFC 3339 UTC strings of one clock compare as text.
    up = [_when(e) for e in rescales if "New size: 2" in e["message"]]
    down = [_when(e) for e in rescales if "New size: 1" in e["message"]]
    assert up and down, [e["message"] for e in rescales]
    assert load_started[:19] <= up[-1][:19] <= load_stopped, (load_started, up, load_stopped)
    assert down[-1][:19] >= load_stopped[:19], (load_stopped, down)
    assert load.answered > 0
