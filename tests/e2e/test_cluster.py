"""The test node itself: what the chain relies on works before the chain runs on it."""

from __future__ import annotations

import pytest

from e2e_cluster import Cluster

# The first test also waits for the cluster: a cold build of its binaries takes many minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

def _job(cluster: Cluster, name: str, script: str, **extra: object) -> str:
    volumes = extra.get("volumes", "")
    mounts = extra.get("mounts", "")
    return f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: {cluster.busybox}
          imagePullPolicy: Never
          command: ["/bin/sh", "-c", {script!r}]
{mounts}
{volumes}
"""


def _wait_complete(cluster: Cluster, namespace: str, job: str, timeout: float = 180) -> str:
    def complete() -> bool:
        status = cluster.get("job", job, "-n", namespace).get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        assert conditions.get("Failed") != "True", f"job {job} failed: {status}"
        return conditions.get("Complete") == "True"

    cluster.wait_for(f"job {job} to complete", complete, timeout)
    return cluster.kubectl("logs", "-n", namespace, f"job/{job}")


def test_node_is_ready_and_system_pods_run(cluster: Cluster) -> None:
    node = cluster.get("node", "alpaca-node")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == "203.0.113.10"
    print(cluster.kubectl("get", "nodes", "-o", "wide"))
    print(cluster.kubectl("get", "pods", "-A", "-o", "wide"))
    for namespace, deployment in (
        ("kube-system", "coredns"),
        ("local-path-storage", "local-path-provisioner"),
        ("kubeflow", "training-operator"),
    ):
        status = cluster.get("deployment", deployment, "-n", namespace)["status"]
        assert status.get("readyReplicas") == 1, f"{namespace}/{deployment}: {status}"


def test_job_runs_to_completion_and_resolves_services(cluster: Cluster, namespace: str) -> None:
    # Through the controller-manager (Job -> Pod), the scheduler, the kubelet and containerd;
    # then CoreDNS (a Service name) and kube-proxy (its ClusterIP, to the API server's endpoint).
    script = (
        "nslookup kubernetes.default.svc.cluster.local && "
        "nc -w 5 kubernetes.default.svc 443 </dev/null && echo reached the API server"
    )
    cluster.apply(_job(cluster, "probe", script), namespace)
    logs = _wait_complete(cluster, namespace, "probe")
    print(logs)
    assert "203.0.113.129" in logs  # the kubernetes Service's ClusterIP, resolved by name
    # A TCP connection through the ClusterIP to the API server's endpoint on the node.
    assert "reached the API server" in logs


def test_volume_claim_is_provisioned_and_kept_between_pods(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
""",
        namespace,
    )
    mounts = "          volumeMounts: [{name: data, mountPath: /data}]"
    volumes = "      volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]"
    cluster.apply(_job(cluster, "write", "echo kept > /data/file", mounts=mounts, volumes=volumes), namespace)
    _wait_complete(cluster, namespace, "write")
    cluster.apply(_job(cluster, "read", "cat /data/file", mounts=mounts, volumes=volumes), namespace)
    assert _wait_complete(cluster, namespace, "read").strip() == "kept"
    claim = cluster.get("pvc", "data", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "local-path"


def test_pytorchjob_kind_is_served(cluster: Cluster) -> None:
    crd = cluster.get("crd", "pytorchjobs.kubeflow.org")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"]
    assert established == "True"
    assert any(v["name"] == "v1" and v["served"] for v in crd["spec"]["versions"])
