"""The endpoints other kinds ask (a teacher, a contestant, a judge): a ModelServer, ready or not, and
its price; a base URL, and whether its key may be sent there."""

from __future__ import annotations

from collections.abc import Iterable

from ..api.common import SecretKeyRef
from ..api.modelserver import ModelServerSpec
from ..builders.inputs import EndpointTarget, TeacherServer
from ..builders.modelserver import replica_rate
from ..conditions import FALSE, TRUE, Desired
from ..settings import OperatorSettings
from ..teacher_hosts import refusal
from . import Body, References


def hourly_usd(body: Body, settings: OperatorSettings) -> float:
    """What a ModelServer costs per hour while it runs: every replica, at least one."""
    spec = ModelServerSpec.model_validate(body.get("spec") or {})
    return replica_rate(spec, settings) * max(spec.replicas, 1)


def servers_hourly_usd(names: Iterable[str], references: References, settings: OperatorSettings) -> float:
    """What the ModelServers named cost per hour together: one named twice counts once, one that
    does not exist nothing."""
    bodies = (references.get(("ModelServer", name)) for name in dict.fromkeys(names))
    return sum((hourly_usd(body, settings) for body in bodies if body is not None), 0.0)


def ready_server(
    name: str, references: References, settings: OperatorSettings, condition: str, prefix: str = ""
) -> tuple[TeacherServer | None, Desired]:
    """The ModelServer `name` as an endpoint once it is Ready, and the condition saying so or what
    it waits for (`prefix` says which side of the asking resource it is)."""
    body = references.get(("ModelServer", name))
    if body is None:
        return None, Desired(condition, FALSE, "NotFound", f"{prefix}ModelServer {name!r} does not exist; re-checked periodically")
    status = body.get("status") or {}
    if status.get("phase") != "Ready" or not status.get("url"):
        phase = status.get("phase") or "unknown"
        return None, Desired(condition, FALSE, "Waiting", f"{prefix}waiting for ModelServer {name!r} to be Ready (phase {phase})")
    spec = ModelServerSpec.model_validate(body.get("spec") or {})
    auth = spec.auth.api_key_secret_ref if spec.auth else None
    server = TeacherServer(
        name=name,
        url=status["url"],
        served_model_name=status.get("servedModelName") or name,
        api_key_secret_ref=SecretKeyRef(name=auth.name, key=auth.key) if auth else None,
        hourly_usd=hourly_usd(body, settings),
    )
    return server, Desired(condition, TRUE, "Ready", f"{prefix}ModelServer {name!r} at {status['url']}")


def key_refusal(endpoint: EndpointTarget, settings: OperatorSettings) -> str | None:
    """Why the endpoint's key must not be sent to its host, or None when it may (or there is none
    to send): a key goes only to the hosts the operator allows. In-cluster servers are trusted."""
    if endpoint.api_key is None or endpoint.server is not None:
        return None
    hosts = settings.teacher_hosts
    return refusal(endpoint.url, allowed=hosts.allowed, allow_link_local=hosts.allow_link_local)
