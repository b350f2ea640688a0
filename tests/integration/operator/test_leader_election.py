"""Two operators, one writer: the API server's audit log says who wrote what.

Each operator runs with its own ServiceAccount token, so every audited request names the replica
that sent it. The first holds the Lease and does all the writing; the second watches and sends no
write at all. Then the leader is killed (no release: the Lease must expire), the second takes over
once the lease duration has passed, creates no second child, and the money already counted is
neither counted again nor lost.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from alpaca_operator.runner import OperatorThread, wire
from alpaca_operator.settings import OperatorSettings
from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import FAST, create, now_minus, status_of
from support.cluster import PROJECT_CRDS, audited_control_plane, install_crds, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
LEASE = {"leaseDurationSeconds": 4.0, "renewDeadlineSeconds": 3.0, "retryPeriodSeconds": 0.5}
REQUEST_TIMEOUT = 5.0
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
GPU_PRICE = 3600.0  # a dollar per GPU-second: a few seconds of serving show in costUSD


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Path]]:
    with audited_control_plane(tmp_path_factory.mktemp("audit")) as (cp, log):
        with cp.api_client() as client:
            install_crds(client, [*PROJECT_CRDS, *sorted((REPO / "tests/integration/crds").glob("*.yaml"))])
        yield cp, log


def _replica(cp: ControlPlane, admin: kubernetes.client.ApiClient, namespace: str, name: str, folder: Path) -> str:
    """A ServiceAccount of its own for one replica (cluster-admin: this test is about who writes, not RBAC)."""
    kubernetes.client.CoreV1Api(admin).create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    kubernetes.client.RbacAuthorizationV1Api(admin).create_cluster_role_binding({
        "metadata": {"name": f"{namespace}-{name}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    })
    token = cp.token_for_service_account(namespace, name)
    return str(cp.kubeconfig_for_token(token, folder / f"{name}.kubeconfig"))


def _audit(log: Path, namespace: str) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete" and event["user"]["username"].startswith(f"system:serviceaccount:{namespace}:"):
            events.append(event)
    return events


def _writes(events: list[dict[str, Any]], replica: str, *, after: str = "") -> Counter[str]:
    """Writes a replica sent (lease renewals aside), by verb and resource, received after `after`."""
    counted: Counter[str] = Counter()
    for event in events:
        ref = event.get("objectRef") or {}
        if not event["user"]["username"].endswith(f":{replica}") or event["verb"] not in WRITES or ref.get("resource") == "leases":
            continue
        if event["requestReceivedTimestamp"] <= after:
            continue
        counted[f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"] += 1
    return counted


def _created(events: list[dict[str, Any]], resource: str) -> int:
    """Objects of a kind that came into being: a create, or a server-side apply that created (both 201)."""
    return sum(1 for e in events if e["verb"] in ("create", "patch") and (e.get("objectRef") or {}).get("resource") == resource
               and not (e.get("objectRef") or {}).get("subresource") and (e.get("responseStatus") or {}).get("code") == 201)


def _lease(admin: kubernetes.client.ApiClient, namespace: str) -> Any:
    return kubernetes.client.CoordinationV1Api(admin).read_namespaced_lease("alpaca-operator", namespace)


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def test_one_writer_then_a_takeover_without_duplicates_or_double_billing(audited: tuple[ControlPlane, Path], tmp_path: Path) -> None:
    cp, log = audited
    namespace = f"le-{uuid.uuid4().hex[:8]}"
    settings = OperatorSettings.model_validate({**FAST, "leaderElection": LEASE, "requestTimeoutSeconds": REQUEST_TIMEOUT})
    with cp.api_client() as admin:
        kubernetes.client.CoreV1Api(admin).create_namespace({"metadata": {"name": namespace}})
        configs = {name: _replica(cp, admin, namespace, name, tmp_path) for name in ("op-a", "op-b")}

        def operator(name: str) -> OperatorThread:
            return OperatorThread(wire(settings, kubeconfig=configs[name], namespaces=[namespace], lease_namespace=namespace, identity=name)).start()

        custom = kubernetes.client.CustomObjectsApi(admin)
        apps = kubernetes.client.AppsV1Api(admin)
        op_a = operator("op-a")
        op_b = None
        killed = False
        try:
            wait_for(lambda: _lease(admin, namespace).spec.holder_identity == "op-a", what="op-a holding the lease")
            op_b = operator("op-b")

            create(custom, namespace, "finetunes", "FineTune", "tuned", {
                "dataset": {"uri": "s3://bucket/data.jsonl"}, "gpus": {"nodes": 1, "perNode": 8},
                "output": {"uri": "s3://bucket/model"},
            })
            create(custom, namespace, "modelservers", "ModelServer", "chat", {
                "model": {"source": {"builtin": "smollm2-135m-instruct"}}, "gpusPerReplica": 1, "gpuHourUSD": GPU_PRICE,
            })
            wait_for(lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train"), what="the PyTorchJob")
            wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
            started = now_minus(600)
            custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train", {"status": {
                "startTime": started, "conditions": [{"type": "Running", "status": "True"}]}})
            serving_from = datetime.fromisoformat(now_minus(0).replace("Z", "+00:00"))
            apps.patch_namespaced_deployment_status("chat-serve", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}})
            wait_for(lambda: status_of(custom, namespace, "finetunes", "tuned").get("phase") == "Running", what="the FineTune Running")
            wait_for(lambda: (status_of(custom, namespace, "modelservers", "chat").get("costUSD") or 0) > 2, timeout=30, what="serving cost")

            # While both run: all the writing comes from the leader, none from the follower.
            events = _audit(log, namespace)
            assert sum(_writes(events, "op-a").values()) > 0
            assert _writes(events, "op-b") == Counter(), "the follower wrote"

            # Kill the leader: no release, its lease must run out.
            before = _lease(admin, namespace)
            op_a.kill()
            killed = True
            killed_at = now_minus(0)
            taken = wait_for(lambda: (lease := _lease(admin, namespace)).spec.holder_identity == "op-b" and lease,
                             timeout=3 * LEASE["leaseDurationSeconds"] + REQUEST_TIMEOUT, what="op-b taking over")
            # op-b waited out a whole lease duration after op-a's last renewal it could see, and no longer
            # than that plus one poll, one observation lag and one request.
            last_renewal = _lease_time(before.spec.renew_time)
            gap = _seconds(taken.spec.acquire_time, last_renewal)
            assert gap >= LEASE["leaseDurationSeconds"] - 0.001
            assert gap <= LEASE["leaseDurationSeconds"] + 2 * LEASE["retryPeriodSeconds"] + REQUEST_TIMEOUT + LEASE["renewDeadlineSeconds"]
            assert taken.spec.lease_transitions == (before.spec.lease_transitions or 0) + 1

            # The new leader works: the training finishes and is reported.
            finished = now_minus(0)
            custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train", {"status": {
                "completionTime": finished, "conditions": [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}]}})
            done = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tuned")).get("phase") == "Succeeded" and s, what="Succeeded")
            wait_for(lambda: _accrued_after(status_of(custom, namespace, "modelservers", "chat"), taken.spec.acquire_time, 2), timeout=30,
                     what="serving cost counted by the new leader")
            server = status_of(custom, namespace, "modelservers", "chat")
        finally:
            if op_b is not None:
                op_b.stop()
            if not killed:
                op_a.stop()

        events = _audit(log, namespace)
        assert _writes(events, "op-a", after=killed_at) == Counter(), "the killed leader wrote after it was killed"
        assert sum(_writes(events, "op-b", after=killed_at).values()) > 0
        # One child of each, created once, whoever was leader.
        assert _created(events, "pytorchjobs") == 1 and _created(events, "deployments") == 1
        # What the audit log says, for whoever reads the test's output (-s).
        b_before = _writes(events, "op-b") - _writes(events, "op-b", after=killed_at)
        print(f"audit: op-a wrote {dict(_writes(events, 'op-a'))} in all, {dict(_writes(events, 'op-a', after=killed_at))} after the kill; "
              f"op-b wrote {dict(b_before)} before it, {dict(_writes(events, 'op-b', after=killed_at))} after")
        print("lease: transitions", taken.spec.lease_transitions, "takeover gap s", round(gap, 3))
        assert len(custom.list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")["items"]) == 1
        assert len(apps.list_namespaced_deployment(namespace).items) == 1

    # Eight GPUs for the job's run at $2 per GPU-hour, counted once across the lease change. While
    # the job was seen Running, time was counted up to the last look (whole seconds of the cost
    # clock); a look in the second before the completion was reported may have counted up to one
    # interval plus one (second-truncated timestamps) past it. Counted twice it would be ~100% more.
    run_s = _seconds(_lease_time(finished), _lease_time(started))
    slack_s = FAST["costIntervalSeconds"] + 1
    assert 8 * run_s / 3600 - 1e-5 <= done["gpuHours"] <= 8 * (run_s + slack_s) / 3600 + 1e-5
    assert done["costUSD"] == pytest.approx(done["gpuHours"] * 2.0, abs=1e-4)
    # Serving: one GPU at $1 a second from when its pod appeared up to accruedUntil; the first
    # accrual after the pod appeared may reach back one cost interval, never more, never less.
    served_s = _seconds(_lease_time(server["accruedUntil"]), serving_from)
    interval = FAST["costIntervalSeconds"]
    assert served_s - interval - 1 <= server["costUSD"] <= served_s + interval + 1


def _lease_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _accrued_after(status: dict[str, Any], moment: datetime, seconds: float) -> bool:
    until = status.get("accruedUntil")
    return bool(until) and _seconds(_lease_time(until), moment) > seconds


def test_a_replica_that_loses_the_lease_stops_writing_at_once(control_plane, crds, custom, api_client, namespace: str) -> None:
    """Another holder appears in the Lease (a partition healed, a replica that raced us): this one
    stops writing on its next look, creates nothing while the other holds it, and resumes only after
    taking the lease back once the other's lease expired."""
    settings = OperatorSettings.model_validate({**FAST, "leaderElection": LEASE})
    coordination = kubernetes.client.CoordinationV1Api(api_client)
    op = OperatorThread(wire(settings, kubeconfig=control_plane.kubeconfig, namespaces=[namespace], lease_namespace=namespace, identity="op-a")).start()
    try:
        wait_for(lambda: op.wiring.cluster.may_write(), what="op-a leading")
        lease = coordination.read_namespaced_lease("alpaca-operator", namespace)
        lease.spec.holder_identity = "op-elsewhere"
        lease.spec.renew_time = datetime.now(timezone.utc)
        lease.spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
        coordination.replace_namespaced_lease("alpaca-operator", namespace, lease)
        wait_for(lambda: not op.wiring.cluster.may_write(), timeout=2 * LEASE["retryPeriodSeconds"] + REQUEST_TIMEOUT, what="op-a stopping")
        create(custom, namespace, "instructdatasets", "InstructDataset", "data", {
            "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/d"},
        })
        batch = kubernetes.client.BatchV1Api(api_client)
        job = wait_for(lambda: batch.read_namespaced_job("data-generate", namespace), timeout=3 * LEASE["leaseDurationSeconds"] + REQUEST_TIMEOUT,
                       what="the Job, once op-a holds the lease again")
        back = coordination.read_namespaced_lease("alpaca-operator", namespace)
        assert back.spec.holder_identity == "op-a"
        # Nothing was created while the other held the lease: the Job is younger than op-a's return.
        assert job.metadata.creation_timestamp >= back.spec.acquire_time.replace(microsecond=0)
    finally:
        op.stop()
