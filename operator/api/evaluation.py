"""Evaluation: a pairwise win rate of a candidate model against a baseline, decided by a judge.

Alpaca was judged this way against its teacher: both answer the same held-out instructions, a
judge picks the better answer blind. The judge sees each pair in both orders, so a judge that
always prefers the first (or second) answer produces ties, not wins.
"""

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
    StatusBase,
    Storage,
    URI_PATTERN,
)
from .endpoint import KEY_WITH_BASE_URL, MODEL_WITH_BASE_URL, Endpoint, RequestLimits
from .resource import Resource
from .results import WorkloadResult

_URI = Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)]


class JSONLFile(ApiModel):
    """A JSONL file from a ConfigMap key or an fsspec URI."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.configMapRef) != has(self.uri)", "exactly one of configMapRef or uri must be set"),
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(default=None, description="A ConfigMap key holding the JSONL.")
    uri: _URI | None = Field(default=None, description="A JSONL file at an fsspec URI (s3:// or file://).")


class Contestant(Endpoint):
    """One side of the comparison: a ModelServer, any OpenAI-compatible endpoint, or answers written
    beforehand (JSONL of instruction, input, output: the teacher's outputs in Alpaca's case)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.modelServerRef) ? 1 : 0) + (has(self.baseURL) ? 1 : 0) + (has(self.outputs) ? 1 : 0) == 1",
                    "exactly one of modelServerRef, baseURL or outputs must be set",
                ),
                MODEL_WITH_BASE_URL,
                KEY_WITH_BASE_URL,
                cel("!has(self.pricing) || has(self.baseURL)", "pricing is only used with baseURL (in-cluster servers bill their GPU time)"),
            ]
        }
    )

    outputs: JSONLFile | None = Field(
        default=None,
        description="Answers written beforehand: JSONL objects with instruction, input and output; matched to the tasks by instruction and input.",
    )


class Judge(Endpoint):
    """The model that compares the two answers: a ModelServer or an OpenAI-compatible chat endpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.modelServerRef) != has(self.baseURL)", "exactly one of modelServerRef or baseURL must be set"),
                MODEL_WITH_BASE_URL,
                KEY_WITH_BASE_URL,
            ]
        }
    )

    structured_output: bool = Field(
        default=True,
        description="Ask for the verdict under a json_schema response_format (OpenAI, vLLM and alpaca serve enforce it); "
        "the verdict is also read from plain text, so a judge that ignores it still counts.",
    )
    max_tokens: int = Field(default=256, ge=1, le=16384, description="Completion token limit of one verdict.")


class Tasks(ApiModel):
    """The instructions both models answer. Empty: the project's held-out evaluation tasks."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.configMapRef) && has(self.uri))", "at most one of configMapRef or uri may be set"),
            ]
        }
    )

    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap key holding tasks as JSONL (instruction, input; or the seed-task shape)."
    )
    uri: _URI | None = Field(default=None, description="A JSONL file of tasks at an fsspec URI.")
    sample_size: int | None = Field(
        default=None, ge=1, le=100_000, description="Tasks drawn (reproducibly, by randomSeed); unset: all of them."
    )
    random_seed: int = Field(default=0, ge=0, description="Seed for drawing the sample and for the bootstrap interval.")


class AnswerGeneration(ApiModel):
    """How the candidate and the baseline are asked (the same for both, so the comparison is fair)."""

    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature; 0 is greedy and reproducible.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(default=512, ge=1, le=131072, description="Completion token limit of one answer.")


class Requests(RequestLimits):
    """How requests are sent, to every endpoint of the evaluation."""


class EvaluationSpec(ApiModel):
    """Compare a candidate model with a baseline on the same instructions, judged pairwise in both orders."""

    candidate: Contestant = Field(description="The model under test, usually a ModelServer serving a FineTune.")
    baseline: Contestant = Field(description="What it is compared with: the base model, the teacher, or their saved outputs.")
    judge: Judge = Field(description="The model that decides which answer is better.")
    tasks: Tasks = Field(default_factory=Tasks, description="The instructions both answer.")
    generation: AnswerGeneration = Field(default_factory=AnswerGeneration, description="How both are asked.")
    requests: Requests = Field(default_factory=Requests, description="Concurrency, timeouts and retries.")
    budget_usd: USD | None = Field(
        default=None, alias="budgetUSD",
        description="Stop when priced tokens (answers and verdicts) reach this many US dollars; what was judged is kept and reported.",
    )
    output: Storage = Field(description="Where the report (judgements.jsonl, summary.json, win_rate.png) is written.")
    image: ShortStr | None = Field(default=None, description="Overrides the operator's evaluate image.")
    resources: ComputeResources | None = Field(default=None, description="CPU and memory of the evaluation pod.")


class Verdict(str, Enum):
    """A task's outcome for the candidate, after both orders were judged."""

    WIN = "win"
    TIE = "tie"
    LOSS = "loss"


class EvaluationProgress(StatusModel):
    """Live counts from the evaluation job."""

    tasks: int = Field(default=0, ge=0, description="Tasks to judge.")
    answered: int = Field(default=0, ge=0, description="Tasks with both answers.")
    judged: int = Field(default=0, ge=0, description="Tasks judged in both orders.")
    unparsed_verdicts: int = Field(default=0, ge=0, description="Judge replies no verdict could be read from (counted as ties).")
    prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens billed (answers and verdicts).")
    completion_tokens: int = Field(default=0, ge=0, description="Completion tokens billed.")
    cost_usd: USD = Field(default=0.0, alias="costUSD", description="Token cost so far in US dollars.")


class Score(StatusModel):
    """The headline figures: the candidate's win rate against the baseline (ties count half)."""

    win_rate: float = Field(ge=0, le=1, description="Wins plus half the ties, over judged tasks.")
    win_rate_low: float = Field(ge=0, le=1, description="Lower end of the 95% bootstrap interval.")
    win_rate_high: float = Field(ge=0, le=1, description="Upper end of the 95% bootstrap interval.")
    length_controlled_win_rate: float | None = Field(
        default=None, ge=0, le=1,
        description="The win rate with the answers' length difference regressed out (as alpaca_eval's length-controlled figure).",
    )
    wins: int = Field(ge=0, description="Tasks the candidate won in both orders (or one order and a tie in the other).")
    ties: int = Field(ge=0, description="Tasks with a split or tied verdict.")
    losses: int = Field(ge=0, description="Tasks the baseline won.")


class EvaluationStatus(StatusBase):
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed, or Blocked (a child the API server refused for now).")
    progress: EvaluationProgress | None = Field(default=None, description="Live counts from the evaluation job.")
    score: Score | None = Field(default=None, description="Win rate and counts, when judging is done.")
    report: Artifact | None = Field(default=None, description="The summary.json of the report and its sha256.")
    result: WorkloadResult | None = Field(
        default=None, description="What the workload produced, written by the workload when it succeeded."
    )
    server_cost_usd: USD | None = Field(
        default=None, alias="serverCostUSD",
        description="GPU time of the in-cluster ModelServers it asked (candidate, baseline, judge) while the Job ran, in US dollars (part of costUSD).",
    )
    job_name: ShortStr | None = Field(default=None, description="The evaluation Job.")
    start_time: Annotated[str, Field(max_length=64)] | None = Field(default=None, description="When the Job started.")
    completion_time: Annotated[str, Field(max_length=64)] | None = Field(default=None, description="When the Job finished.")


class Evaluation(Resource[EvaluationSpec, EvaluationStatus]):
    api_version: Literal["alpaca.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Evaluation"] = "Evaluation"
