"""InstructDataset: self-instruct generation of Alpaca-format data from seed tasks and a teacher."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from .base import API_VERSION, ApiModel, ShortStr, StatusModel, cel
from .common import (
    USD,
    Artifact,
    ComputeResources,
    ConfigMapKeyRef,
    Phase,
    Queue,
    StatusBase,
    Storage,
    URI_PATTERN,
)
from .endpoint import MODEL_WITH_BASE_URL, Endpoint, RequestLimits, TokenPricing  # noqa: F401  (TokenPricing: imported from here too)
from .finetune import PVCFile
from .resource import Resource
from .results import WorkloadResult

# The words Alpaca's generator drops instructions for: tasks a text model cannot do.
DEFAULT_BLACKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)


class TeacherAPI(str, Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"


class TeacherFormat(str, Enum):
    NUMBERED = "numbered"
    STRUCTURED = "structured"


class TeacherBatch(ApiModel):
    """Requests sent as files through the Batch API (/v1/files + /v1/batches): half the price at
    OpenAI, answers within the completion window instead of at once."""

    requests_per_batch: int = Field(default=500, ge=1, le=50_000, description="Requests in one batch file.")
    poll_interval_seconds: float = Field(default=30.0, ge=0.1, le=3600, description="How often a batch's status is read.")


class Teacher(Endpoint, RequestLimits):
    """The model that writes new tasks: any OpenAI-compatible API, or a ModelServer in the cluster."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.baseURL) != has(self.modelServerRef)", "exactly one of baseURL or modelServerRef must be set"),
                cel(
                    "!has(self.modelServerRef) || !has(self.apiKeySecretRef)",
                    "apiKeySecretRef is not used with modelServerRef (in-cluster servers need no key)",
                ),
                MODEL_WITH_BASE_URL,
                cel("!has(self.batch) || has(self.baseURL)", "batch needs an API teacher (baseURL); in-cluster servers answer at once"),
            ]
        }
    )

    api: TeacherAPI = Field(
        default=TeacherAPI.CHAT,
        description=(
            "chat: the prompt is one user message to /v1/chat/completions. completions: the prompt is "
            "continued as plain text by /v1/completions, as Alpaca did; small teachers follow the format far better."
        ),
    )
    format: TeacherFormat = Field(
        default=TeacherFormat.NUMBERED,
        description=(
            "numbered: the teacher continues a numbered list of tasks as text, as Alpaca did. structured: the "
            "teacher is asked for the open slots as a JSON array of {instruction, input, output} under a "
            "json_schema response_format (OpenAI, vLLM and alpaca serve enforce it), so no answer is lost to format."
        ),
    )
    batch: TeacherBatch | None = Field(
        default=None,
        description="Send requests through the Batch API in files of requestsPerBatch, priced at the pricing's batch prices; resumable (a batch is never submitted twice).",
    )


class SeedTasks(ApiModel):
    """Where the human-written seed tasks come from. Empty means the project's own 175 seed tasks."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.configMapRef) && has(self.uri))", "at most one of configMapRef or uri may be set"),
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap key holding seed tasks as JSONL."
    )
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        default=None, description="A JSONL file of seed tasks at an fsspec URI."
    )


# What a prompt template may name, per teacher format (jobs/generate/prompt.py fills them in).
NUMBERED_PLACEHOLDERS: tuple[str, ...] = ("total", "shown", "open", "no_input", "separator")
STRUCTURED_PLACEHOLDERS: tuple[str, ...] = ("total", "shown", "open", "examples")


class PromptTemplate(ApiModel):
    """The generation prompt of your choice (what Alpaca keeps in prompt.txt) instead of the built-in one.

    The file is the text shown before the example tasks. Placeholders in braces are filled in for each
    request: {total} (tasks in a request, instructionsPerRequest), {shown} (example tasks shown),
    {open} (new tasks wanted, total - shown); numbered format also {no_input} (the empty-input marker) and {separator} (the line
    between tasks), structured format also {examples} (the example tasks as JSON, appended after the
    text when the template does not place them). Any other {word} is refused when the job starts.
    In numbered format the numbered example tasks and the open slot always follow the text, so the
    teacher continues the list; Alpaca's own prompt.txt works there unchanged.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.configMapRef) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                    "exactly one of configMapRef, pvc or uri must be set",
                ),
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(default=None, description="A ConfigMap key holding the prompt text.")
    pvc: PVCFile | None = Field(default=None, description="A text file on a PersistentVolumeClaim.")
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        default=None, description="A text file at an fsspec URI."
    )


class Generation(ApiModel):
    """How the teacher is prompted (Alpaca's defaults)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.seedTasksPerPrompt + self.generatedTasksPerPrompt < self.instructionsPerRequest",
                    "instructionsPerRequest must leave at least one slot after the example tasks",
                    field_path=".instructionsPerRequest",
                ),
            ]
        }
    )

    num_examples: int = Field(default=52000, ge=1, le=10_000_000, description="Examples to keep.")
    seed_tasks_per_prompt: int = Field(default=3, ge=1, le=20, description="Seed tasks shown in each request.")
    generated_tasks_per_prompt: int = Field(
        default=0, ge=0, le=20, description="Already generated tasks shown in each request, beside the seed tasks."
    )
    instructions_per_request: int = Field(
        default=20, ge=2, le=100, description="Numbered task slots in each request, example tasks included."
    )
    temperature: float = Field(default=1.0, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(default=3072, ge=16, le=131072, description="Completion token limit of one request.")
    random_seed: int = Field(default=0, ge=0, description="Seed for choosing example tasks (reproducible prompts).")


class Filters(ApiModel):
    """Which generated tasks are kept. Every drop is counted by reason in the manifest and status."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minInstructionWords <= self.maxInstructionWords",
                    "minInstructionWords must not exceed maxInstructionWords",
                    field_path=".minInstructionWords",
                ),
            ]
        }
    )

    rouge_l_threshold: float = Field(
        default=0.7,
        gt=0,
        le=1,
        alias="rougeLThreshold",
        description="Drop an instruction whose ROUGE-L F-measure against any seed or kept instruction is above this.",
    )
    min_instruction_words: int = Field(default=4, ge=1, le=1000, description="Fewest words an instruction may have.")
    max_instruction_words: int = Field(default=150, ge=1, le=1000, description="Most words an instruction may have.")
    blacklist: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=256)] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST),
        description="Words and phrases that drop an instruction (tasks a text model cannot do).",
    )


_BUDGET_NEEDS_PRICED_TEACHER = (
    "budgetUSD cannot be enforced with teacher.modelServerRef: an in-cluster teacher's tokens are free "
    "and its GPU time is billed to the ModelServer; omit budgetUSD"
)


class InstructDatasetSpec(ApiModel):
    """Generate Alpaca-format instruction data (instruction / input / output) from seed tasks."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.teacher.modelServerRef) && has(self.budgetUSD))", _BUDGET_NEEDS_PRICED_TEACHER, field_path=".budgetUSD"),
            ]
        }
    )

    teacher: Teacher = Field(description="The model that writes the new tasks.")
    seed_tasks: SeedTasks = Field(default_factory=SeedTasks, description="The human-written seed tasks.")
    prompt_template: PromptTemplate | None = Field(
        default=None,
        description=(
            "Your own prompt text (ConfigMap key, PVC file or URI; Alpaca's prompt.txt works as is) instead of the "
            "built-in one: the text shown before the example tasks. Placeholders filled in per request: {total} "
            "(tasks in a request), {shown} (example tasks), {open} (new tasks wanted); numbered format also "
            "{no_input} and {separator}, whose numbered examples and open slot always follow the text; structured "
            "format also {examples} (the examples as JSON, placed after the text when not named). Any other "
            "{word} fails the job at its start."
        ),
    )
    generation: Generation = Field(default_factory=Generation, description="How the teacher is prompted.")
    filters: Filters = Field(default_factory=Filters, description="Which generated tasks are kept.")
    budget_usd: USD | None = Field(
        default=None,
        alias="budgetUSD",
        description="Stop generating when the cost reaches this many US dollars; what was paid for is kept.",
    )
    output: Storage = Field(description="Where dataset.jsonl and manifest.json are written.")
    image: ShortStr | None = Field(default=None, description="Overrides the operator's generate image.")
    queue: Queue | None = Field(
        default=None, description="A Kueue queue for the top-level child; falls back to the operator's default queue.",
    )
    resources: ComputeResources | None = Field(default=None, description="CPU and memory of the generation pod.")


class GenerationProgress(StatusModel):
    """Live counts from the generation job."""

    kept: int = Field(default=0, ge=0, description="Examples kept so far.")
    target: int | None = Field(default=None, ge=0, description="Examples asked for.")
    generated: int = Field(default=0, ge=0, description="Instructions parsed from the teacher's answers.")
    filtered: dict[str, int] = Field(default_factory=dict, description="Dropped instructions by reason.")
    requests: int = Field(default=0, ge=0, description="Requests answered by the teacher.")
    prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens billed.")
    completion_tokens: int = Field(default=0, ge=0, description="Completion tokens billed.")
    cost_usd: USD = Field(default=0.0, alias="costUSD", description="Teacher cost so far in US dollars.")
    unrecorded_requests: int = Field(
        default=0, ge=0,
        description="Requests in flight when an earlier pod of the job was killed: the teacher may have billed them, their answers were never recorded.",
    )
    unrecorded_cost_usd: USD = Field(
        default=0.0, alias="unrecordedCostUSD",
        description="The most those requests can have cost (prompt bound + maxTokens at the prices): counted against the budget, apart from costUSD.",
    )


class InstructDatasetStatus(StatusBase):
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed, or Blocked (a child the API server refused for now).")
    progress: GenerationProgress | None = Field(default=None, description="Live counts from the generation job.")
    dataset: Artifact | None = Field(default=None, description="The finished dataset.jsonl and its sha256.")
    job_name: ShortStr | None = Field(default=None, description="The generation Job.")
    result: WorkloadResult | None = Field(
        default=None, description="What the workload produced, written by the workload when it succeeded."
    )
    teacher_cost_usd: USD | None = Field(
        default=None, alias="teacherCostUSD",
        description="An in-cluster teacher's GPU time while generation ran, in US dollars (part of costUSD).",
    )
    teacher_url: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, alias="teacherURL", description="The teacher endpoint in use."
    )
    start_time: Annotated[str, Field(max_length=64)] | None = Field(default=None, description="When the Job started.")
    completion_time: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="When the Job finished."
    )


class InstructDataset(Resource[InstructDatasetSpec, InstructDatasetStatus]):
    api_version: Literal["alpaca.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["InstructDataset"] = "InstructDataset"
