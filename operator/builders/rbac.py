"""The identity workload pods run as, per namespace: allowed to report on our resources, nothing else."""

from __future__ import annotations

from ..api.base import GROUP
from ..api.kinds import KINDS
from ..naming import MANAGED_BY, MANAGED_BY_LABEL, NAME, PART_OF, PART_OF_LABEL, WORKLOAD
from .common import Manifest


def _meta(name: str, namespace: str) -> Manifest:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {NAME: "alpaca-workload", MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: PART_OF, "app.kubernetes.io/component": WORKLOAD},
    }


def workload_rbac(namespace: str, name: str) -> list[Manifest]:
    """ServiceAccount, Role and RoleBinding, all called `name`.

    Shared by every resource in the namespace, so none of them owns it: deleting one resource must
    not take the others' identity away.
    """
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace), "automountServiceAccountToken": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, namespace),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{kind.plural}/status" for kind in KINDS],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]
