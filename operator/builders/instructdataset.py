"""InstructDataset -> ConfigMap (the GenerateConfig) + Job running `alpaca generate`."""

from __future__ import annotations

from ..api.instructdataset import InstructDatasetSpec
from ..api.workloads import GenerateConfig
from ..naming import GENERATE, child_name
from ..settings import OperatorSettings
from .queue import queue_labels
from .common import (
    CONFIG_FILE,
    IN_CLUSTER,
    SEEDS_DIR,
    TEACHER_API_KEY_ENV,
    Manifest,
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
from .inputs import EndpointTarget, Input, TeacherServer, config_map_file, prompt_template, resolve_endpoint

SEEDS_FILE = "seed_tasks.jsonl"
BACKOFF_LIMIT = 3


def job_name(parent: str) -> str:
    return child_name(parent, GENERATE)


def config_map_name(parent: str) -> str:
    return child_name(parent, f"{GENERATE}-config")


class TeacherUnresolved(ValueError):
    """The spec names no usable teacher model (a spec problem, not a wait)."""


def resolve_teacher(
    spec: InstructDatasetSpec, settings: OperatorSettings, server: TeacherServer | None
) -> EndpointTarget:
    """URL, model, prices and key of the teacher. A ModelServer teacher is free per token (its GPU time is priced)."""
    return resolve_endpoint("teacher", spec.teacher, settings, server, TeacherUnresolved)


def generate_config(
    parent: Parent, spec: InstructDatasetSpec, teacher: EndpointTarget, where: Where = IN_CLUSTER,
    prompt: Input | None = None,
) -> GenerateConfig:
    """The one derivation of a generation workload's config, for the cluster and for local mode.

    `prompt` is spec.promptTemplate as the workload reaches it (`inputs.prompt_template` in a pod).
    """
    if (spec.prompt_template is None) != (prompt is None):
        raise ValueError("the prompt template's location must be given exactly when spec.promptTemplate is set")
    seeds: str | None = None
    if spec.seed_tasks.config_map_ref is not None:
        seeds = where.seeds_config_map
        if seeds is None:
            raise TeacherUnresolved("seedTasks.configMapRef: ConfigMaps exist only in a cluster; use seedTasks.uri (file://...) locally")
    elif spec.seed_tasks.uri is not None:
        seeds = where.seeds_uri(spec.seed_tasks.uri)
    return GenerateConfig(
        name=parent.name,
        spec=spec,
        output=where.output(spec.output),
        output_uri=public_uri(spec.output),
        teacher_url=teacher.url,
        teacher_model=teacher.model,
        api_key_env=where.secret_env(teacher.api_key, TEACHER_API_KEY_ENV) if teacher.api_key is not None else None,
        pricing=teacher.pricing,
        seed_tasks=seeds,
        prompt_template=prompt.location if prompt is not None else None,
        status_target=parent.status_target() if where.reports else None,
    )


def build(
    parent: Parent, spec: InstructDatasetSpec, settings: OperatorSettings, teacher: EndpointTarget
) -> tuple[Manifest, Manifest]:
    """(ConfigMap, Job) for one InstructDataset."""
    prompt = prompt_template(spec.prompt_template) if spec.prompt_template is not None else None
    cm_name = config_map_name(parent.name)
    cm, mounts = workload_files(parent, cm_name, GENERATE, generate_config(parent, spec, teacher, prompt=prompt), spec.output)
    if prompt is not None:
        mounts.extend(prompt.mounts)
    if spec.seed_tasks.config_map_ref is not None:
        mounts.extend(config_map_file("seeds", spec.seed_tasks.config_map_ref, SEEDS_DIR, SEEDS_FILE))
    env: list[Manifest] = []
    if teacher.api_key is not None:
        env.append(secret_env(TEACHER_API_KEY_ENV, teacher.api_key.name, teacher.api_key.key))
    generator = container(
        GENERATE, spec.image or settings.images.generate, ["alpaca", "generate", "--config", CONFIG_FILE], mounts,
        compute_resources(spec.resources), pull_policy=settings.images.pull_policy, env=env,
    )
    pod = pod_spec(settings.workload_service_account, [generator], mounts)
    # The generator checkpoints as it goes, so a retried pod resumes rather than restarts.
    job = batch_job(parent, job_name(parent.name), GENERATE, pod, backoff_limit=BACKOFF_LIMIT, extra_labels=queue_labels(spec.queue, settings))
    return cm, stamp(job, parent, {"job": job["spec"], "config": cm["data"]})
