"""How fast the operator turns N InstructDatasets into their Jobs on a real control plane.

    python bench/operator_scale.py            # N = 1000
    python bench/operator_scale.py --n 200

It starts etcd + kube-apiserver (the test control plane), installs the CRDs, then for each
operator in turn applies N InstructDatasets at once (kubectl create of one multi-document file)
and measures the seconds until every one has its Job, the operator's requests per resource, and
the process's peak RSS while it works. The operators run in this process, one after the other,
each on its own namespace:

- ours: `alpaca operator`'s wiring (watch events -> work queue -> worker threads), with leader
  election on as the chart deploys it (the writes wait for the Lease, then pass its gate);
- baseline: the textbook kopf operator: an `@kopf.on.create` handler that builds the same
  ConfigMap and Job and creates them with the kubernetes client, one handler call per resource.

The last line is the JSON of the project's benchmarks; ratio = baseline seconds / our seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import psutil
import yaml

from alpaca_operator.api.instructdataset import InstructDatasetSpec
from alpaca_operator.builders import instructdataset as build
from alpaca_operator.builders.common import Parent
from alpaca_operator.kube import Cluster
from alpaca_operator.runner import OperatorThread, wire
from alpaca_operator.settings import OperatorSettings
from alpaca_operator.testing.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
SPEC = {"teacher": {"baseURL": "https://api.example.com/v1", "model": "gpt-teacher"}, "output": {"uri": "s3://bucket/data"}}


class PeakRSS:
    """Samples this process's RSS every 50 ms; the peak while a block runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.peak = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def install_crds(cp: ControlPlane) -> None:
    with cp.api_client() as client:
        ext = kubernetes.client.ApiextensionsV1Api(client)
        for file in sorted((REPO / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(file.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    ext.create_custom_resource_definition(doc)
        time.sleep(2)  # let them become Established


def apply_all(cp: ControlPlane, namespace: str, n: int) -> None:
    docs = [
        {"apiVersion": "alpaca.dev/v1alpha1", "kind": "InstructDataset", "metadata": {"name": f"ds-{i:05d}", "namespace": namespace}, "spec": SPEC}
        for i in range(n)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump_all(docs, handle)
    assert cp.assets_dir is not None
    kubectl = cp.assets_dir / "kubectl"
    if kubectl.exists():
        subprocess.run([str(kubectl), "--kubeconfig", cp.kubeconfig, "create", "-f", handle.name], check=True, stdout=subprocess.DEVNULL)
    else:  # no kubectl: the same requests from a client in this process
        with cp.api_client() as client:
            api = kubernetes.client.CustomObjectsApi(client)
            for doc in docs:
                api.create_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "instructdatasets", doc)
    os.unlink(handle.name)


def wait_for_jobs(cp: ControlPlane, namespace: str, n: int, timeout: float) -> int:
    with cp.api_client() as client:
        batch = kubernetes.client.BatchV1Api(client)
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            # Metadata only would be lighter; a list of names every half second is cheap enough.
            count = len(batch.list_namespaced_job(namespace, _preload_content=False).json()["items"])
            if count >= n:
                return count
            time.sleep(0.5)
        return count


def new_namespace(cp: ControlPlane, name: str) -> str:
    with cp.api_client() as client:
        kubernetes.client.CoreV1Api(client).create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    return name


def measure(cp: ControlPlane, namespace: str, n: int, start: Callable[[], Callable[[], int]], timeout: float) -> dict[str, Any]:
    with PeakRSS() as rss:
        stop = start()
        began = time.monotonic()
        apply_all(cp, namespace, n)
        applied = time.monotonic() - began
        made = wait_for_jobs(cp, namespace, n, timeout)
        seconds = time.monotonic() - began
        requests = stop()
    return {
        "n": n, "jobs": made, "seconds": round(seconds, 2), "apply_seconds": round(applied, 2),
        "requests_per_resource": round(requests / n, 2), "rss_mb": round(rss.peak / 2**20, 1),
    }


def start_ours(cp: ControlPlane, namespace: str) -> Callable[[], Callable[[], int]]:
    def start() -> Callable[[], int]:
        settings = OperatorSettings(metrics_port=0)
        # As deployed: leader election on, so every write also passes the lease gate.
        op = OperatorThread(wire(settings, kubeconfig=cp.kubeconfig, namespaces=[namespace], lease_namespace=namespace, identity="bench")).start()

        def stop() -> int:
            requests = sum(op.wiring.cluster.requests.values())
            op.stop()
            return requests

        return stop

    return start


def start_baseline(cp: ControlPlane, namespace: str) -> Callable[[], Callable[[], int]]:
    def start() -> Callable[[], int]:
        settings = OperatorSettings(metrics_port=0)
        cluster = Cluster.from_kubeconfig(cp.kubeconfig)
        registry = kopf.OperatorRegistry()

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            configuration = cluster.api_client.configuration
            return kopf.ConnectionInfo(server=configuration.host, ca_path=configuration.ssl_ca_cert, scheme="Bearer",
                                       token=configuration.api_key["BearerToken"].removeprefix("Bearer "))

        @kopf.on.create("alpaca.dev", "v1alpha1", "instructdatasets", registry=registry)
        def create_job(spec: kopf.Spec, name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
            parsed = InstructDatasetSpec.model_validate(dict(spec))
            teacher = build.resolve_teacher(parsed, settings, None)
            config_map, job = build.build(Parent(name, namespace, "instructdatasets"), parsed, settings, teacher)
            kopf.adopt([config_map, job], owner=body)
            cluster.create(config_map)
            cluster.create(job)

        kopf_settings = kopf.OperatorSettings()
        kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="alpaca.dev")
        kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="alpaca.dev")
        stop_flag, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
            registry=registry, settings=kopf_settings, standalone=True, namespaces=[namespace], clusterwide=False,
            stop_flag=stop_flag, ready_flag=ready)), daemon=True)
        thread.start()
        ready.wait(60)

        def stop() -> int:
            # kopf's own patches (progress annotations, handler bookkeeping) are not counted here.
            requests = sum(cluster.requests.values())
            stop_flag.set()
            thread.join(30)
            cluster.close()
            return requests

        return stop

    return start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="InstructDatasets applied at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up waiting for the Jobs after this long")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.ERROR)
    with ControlPlane() as cp:
        install_crds(cp)
        print(f"control plane up at {cp.server}; applying {args.n} InstructDatasets per operator", file=sys.stderr)
        ours = measure(cp, new_namespace(cp, "bench-ours"), args.n, start_ours(cp, "bench-ours"), args.timeout)
        print(f"ours:     {ours['jobs']}/{args.n} Jobs in {ours['seconds']} s "
              f"(apply took {ours['apply_seconds']} s), {ours['requests_per_resource']} requests/resource, "
              f"peak RSS {ours['rss_mb']} MB")
        baseline: dict[str, Any] = {}
        if not args.skip_baseline:
            baseline = measure(cp, new_namespace(cp, "bench-baseline"), args.n, start_baseline(cp, "bench-baseline"), args.timeout)
            print(f"baseline: {baseline['jobs']}/{args.n} Jobs in {baseline['seconds']} s "
                  f"(apply took {baseline['apply_seconds']} s), {baseline['requests_per_resource']} requests/resource "
                  f"(not counting kopf's own patches), peak RSS {baseline['rss_mb']} MB (includes what ours left allocated)")
    ratio = round(baseline["seconds"] / ours["seconds"], 2) if baseline else None
    goal = {"seconds_under_60": ours["seconds"] < 60, "rss_under_300_mb": ours["rss_mb"] < 300}
    print(json.dumps({"bench": "operator_scale", "ours": ours, "baseline": baseline, "ratio": ratio,
                      "seconds": ours["seconds"], "requests_per_resource": ours["requests_per_resource"],
                      "rss_mb": ours["rss_mb"], "goal": goal, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
