"""Evaluation -> ConfigMap (the EvaluateConfig) + Job running `alpaca evaluate`.

The three endpoints are resolved here (a Ready ModelServer, or a base URL with its key Secret and
prices); files of tasks or of answers written beforehand come from a ConfigMap key (mounted) or a
URI (passed as is). Keys reach the pod only as env vars from their Secrets.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.common import LocalObjectReference
from ..api.evaluation import Contestant, EvaluationSpec, JSONLFile, Judge
from ..api.workloads import EvaluateConfig, ResolvedContestant, ResolvedEndpoint
from ..naming import EVALUATE, child_name
from ..settings import OperatorSettings
from .common import (
    CONFIG_FILE,
    IN_CLUSTER,
    Manifest,
    Mounts,
    Parent,
    Where,
    batch_job,
    compute_resources,
    container,
    pod_spec,
    public_uri,
    secret_env,
    stamp,
    workload_files,
)
from .inputs import EndpointTarget, TeacherServer, config_map_file, resolve_endpoint

BACKOFF_LIMIT = 3
ROLES = ("candidate", "baseline", "judge")
# The env var each endpoint's key arrives in, in the pod (part of the workload contract).
API_KEY_ENV = {role: f"ALPACA_{role.upper()}_API_KEY" for role in ROLES}
# ConfigMap files are mounted one folder each, beside the config (which is mounted at /etc/alpaca).
INPUTS_DIR = "/etc/alpaca/inputs"
TASKS_FILE = "tasks.jsonl"
OUTPUTS_FILE = "outputs.jsonl"


def job_name(parent: str) -> str:
    return child_name(parent, EVALUATE)


def config_map_name(parent: str) -> str:
    return child_name(parent, f"{EVALUATE}-config")


@dataclass(frozen=True)
class Side:
    """A resolved contestant: an endpoint to ask, or a file of answers written beforehand."""

    label: str
    endpoint: EndpointTarget | None = None
    outputs: JSONLFile | None = None


@dataclass(frozen=True)
class Resolved:
    candidate: Side
    baseline: Side
    judge: EndpointTarget

    def endpoints(self) -> list[tuple[str, EndpointTarget]]:
        sides = (("candidate", self.candidate.endpoint), ("baseline", self.baseline.endpoint), ("judge", self.judge))
        return [(role, endpoint) for role, endpoint in sides if endpoint is not None]


class Unresolved(ValueError):
    """A spec the workload could not run with (a spec problem, not a wait)."""


def server_refs(spec: EvaluationSpec) -> list[tuple[str, LocalObjectReference]]:
    """(role, ModelServer reference) of every side that is a ModelServer."""
    sides: tuple[tuple[str, Contestant | Judge], ...] = (("candidate", spec.candidate), ("baseline", spec.baseline), ("judge", spec.judge))
    return [(role, side.model_server_ref) for role, side in sides if side.model_server_ref is not None]


def _endpoint(
    role: str, side: Contestant | Judge, settings: OperatorSettings, servers: dict[str, TeacherServer]
) -> EndpointTarget:
    server = servers.get(side.model_server_ref.name) if side.model_server_ref is not None else None
    return resolve_endpoint(role, side, settings, server, Unresolved)


def _side(role: str, side: Contestant, settings: OperatorSettings, servers: dict[str, TeacherServer]) -> Side:
    if side.outputs is not None:
        source = side.outputs
        label = f"ConfigMap/{source.config_map_ref.name}:{source.config_map_ref.key}" if source.config_map_ref else str(source.uri)
        return Side(label, outputs=source)
    endpoint = _endpoint(role, side, settings, servers)
    label = f"ModelServer/{endpoint.server}" if endpoint.server else endpoint.model
    return Side(label, endpoint=endpoint)


def resolve(spec: EvaluationSpec, settings: OperatorSettings, servers: dict[str, TeacherServer]) -> Resolved:
    """Every endpoint's URL, model, prices and key; `servers` holds the Ready ModelServers by name."""
    return Resolved(
        candidate=_side("candidate", spec.candidate, settings, servers),
        baseline=_side("baseline", spec.baseline, settings, servers),
        judge=_endpoint("judge", spec.judge, settings, servers),
    )


def _file(source: JSONLFile | None, folder: str, file_name: str, where: Where, field_name: str) -> str | None:
    """What the workload opens for a file given by ConfigMap key (mounted) or URI."""
    if source is None:
        return None
    if source.config_map_ref is not None:
        # Only a cluster mounts ConfigMaps: an applier that has no seed-task mount has none at all.
        if where.seeds_config_map is None:
            raise Unresolved(f"{field_name}.configMapRef: ConfigMaps exist only in a cluster; use {field_name}.uri (file://...) locally")
        return f"{INPUTS_DIR}/{folder}/{file_name}"
    assert source.uri is not None  # the CRD's CEL rule: exactly one source
    return where.seeds_uri(source.uri)


def _resolved_endpoint(role: str, endpoint: EndpointTarget, where: Where) -> ResolvedEndpoint:
    return ResolvedEndpoint(
        url=endpoint.url,
        model=endpoint.model,
        api_key_env=where.secret_env(endpoint.api_key, API_KEY_ENV[role]) if endpoint.api_key is not None else None,
        pricing=endpoint.pricing,
    )


def _contestant(role: str, side: Side, where: Where) -> ResolvedContestant:
    if side.endpoint is not None:
        return ResolvedContestant(label=side.label, endpoint=_resolved_endpoint(role, side.endpoint, where))
    return ResolvedContestant(label=side.label, outputs=_file(side.outputs, role, OUTPUTS_FILE, where, f"{role}.outputs"))


def evaluate_config(parent: Parent, spec: EvaluationSpec, resolved: Resolved, where: Where = IN_CLUSTER) -> EvaluateConfig:
    """The one derivation of an evaluation workload's config, for the cluster and for local mode."""
    tasks = spec.tasks
    tasks_file = JSONLFile(config_map_ref=tasks.config_map_ref, uri=tasks.uri) if (tasks.config_map_ref or tasks.uri) else None
    return EvaluateConfig(
        name=parent.name,
        spec=spec,
        output=where.output(spec.output),
        output_uri=public_uri(spec.output),
        candidate=_contestant("candidate", resolved.candidate, where),
        baseline=_contestant("baseline", resolved.baseline, where),
        judge=_resolved_endpoint("judge", resolved.judge, where),
        tasks=_file(tasks_file, "tasks", TASKS_FILE, where, "tasks"),
        status_target=parent.status_target() if where.reports else None,
    )


def _config_map_file(volume: str, source: JSONLFile | None, folder: str, file_name: str) -> Mounts:
    if source is None or source.config_map_ref is None:
        return Mounts()
    return config_map_file(volume, source.config_map_ref, f"{INPUTS_DIR}/{folder}", file_name)


def build(parent: Parent, spec: EvaluationSpec, settings: OperatorSettings, resolved: Resolved) -> tuple[Manifest, Manifest]:
    """(ConfigMap, Job) for one Evaluation."""
    cm_name = config_map_name(parent.name)
    cm, mounts = workload_files(parent, cm_name, EVALUATE, evaluate_config(parent, spec, resolved), spec.output)
    tasks = spec.tasks
    mounts.extend(_config_map_file("tasks", JSONLFile(config_map_ref=tasks.config_map_ref) if tasks.config_map_ref else None, "tasks", TASKS_FILE))
    for role, side in (("candidate", resolved.candidate), ("baseline", resolved.baseline)):
        mounts.extend(_config_map_file(f"{role}-outputs", side.outputs, role, OUTPUTS_FILE))
    env = [
        secret_env(API_KEY_ENV[role], endpoint.api_key.name, endpoint.api_key.key)
        for role, endpoint in resolved.endpoints()
        if endpoint.api_key is not None
    ]
    evaluator = container(
        EVALUATE, spec.image or settings.images.evaluate, ["alpaca", "evaluate", "--config", CONFIG_FILE], mounts,
        compute_resources(spec.resources), pull_policy=settings.images.pull_policy, env=env,
    )
    pod = pod_spec(settings.workload_service_account, [evaluator], mounts)
    # The evaluator journals every verdict, so a retried pod resumes: nothing is judged (or paid) twice.
    job = batch_job(parent, job_name(parent.name), EVALUATE, pod, backoff_limit=BACKOFF_LIMIT)
    return cm, stamp(job, parent, {"job": job["spec"], "config": cm["data"]})
