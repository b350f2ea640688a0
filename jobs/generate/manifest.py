"""manifest.json: what a generation run produced and what it cost. The operator reads it back."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from alpaca_operator.api.base import StatusModel
from alpaca_operator.api.instructdataset import GenerationProgress, TokenPricing
from alpaca_operator.api.workloads import DATASET_FILE, MANIFEST_FILE

__all__ = ["CHECKPOINT_FILE", "DATASET_FILE", "MANIFEST_FILE", "Manifest", "StopReason"]

CHECKPOINT_FILE = "checkpoint/responses.jsonl"


class StopReason(str, Enum):
    COMPLETED = "completed"  # the target number of examples was reached
    BUDGET_EXHAUSTED = "budget_exhausted"  # the next request would have gone over budget
    TEACHER_UNAVAILABLE = "teacher_unavailable"  # requests kept failing after their retries
    TEACHER_REJECTED = "teacher_rejected"  # the teacher refused a request (auth, model, parameters)
    STALLED = "stalled"  # many answers in a row yielded nothing new


class Manifest(StatusModel):
    """Counts, tokens, cost and the dataset digest of one run (cumulative across resumes)."""

    name: str = Field(description="The InstructDataset this run belongs to.")
    teacher_url: str = Field(alias="teacherURL", description="The teacher's base URL.")
    model: str = Field(description="The teacher model.")
    stop_reason: StopReason = Field(description="Why generation stopped.")
    message: str = Field(default="", description="A human-readable summary of the outcome.")
    target: int = Field(ge=0, description="Examples asked for.")
    kept: int = Field(ge=0, description="Examples in dataset.jsonl.")
    generated: int = Field(ge=0, description="Tasks read from the answers (kept + every filtered one).")
    filtered: dict[str, int] = Field(default_factory=dict, description="Dropped tasks by reason.")
    requests: int = Field(ge=0, description="Requests the teacher answered (billed).")
    failed_requests: dict[str, int] = Field(
        default_factory=dict, description="Requests given up after their retries, or unusable answers, by reason."
    )
    retries: dict[str, int] = Field(default_factory=dict, description="Retried attempts by reason.")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cost_usd: float = Field(ge=0, alias="costUSD", description="Tokens times prices, in US dollars.")
    unrecorded_requests: int = Field(
        default=0, ge=0, description="Requests in flight when an earlier process was killed (answers never recorded)."
    )
    unrecorded_prompt_tokens: int = Field(default=0, ge=0, description="Their prompt tokens, at most.")
    unrecorded_completion_tokens: int = Field(default=0, ge=0, description="Their completion tokens, at most (maxTokens each).")
    unrecorded_cost_usd: float = Field(
        default=0, ge=0, alias="unrecordedCostUSD",
        description="The most they can have cost; the budget counts it on top of costUSD.",
    )
    cancelled_requests: int = Field(
        default=0, ge=0,
        description="Requests cancelled in flight once the target was reached (only at an in-cluster teacher, whose tokens are free).",
    )
    cancelled_cost_usd: float = Field(
        default=0, ge=0, alias="cancelledCostUSD",
        description="The most they can have cost (prompt bound + maxTokens at the prices), counted like unrecordedCostUSD.",
    )
    budget_usd: float | None = Field(default=None, alias="budgetUSD")
    pricing: TokenPricing = Field(default_factory=TokenPricing)
    seed_tasks: int = Field(ge=0, description="Seed tasks the run started from.")
    dataset: str = Field(default=DATASET_FILE, description="The dataset file, relative to the output folder.")
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of dataset.jsonl.")
    finished_at: str = Field(description="When this manifest was written (RFC 3339).")

    def progress(self) -> GenerationProgress:
        return GenerationProgress(
            kept=self.kept,
            target=self.target,
            generated=self.generated,
            filtered=dict(self.filtered),
            requests=self.requests,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            unrecorded_requests=self.unrecorded_requests,
            unrecorded_cost_usd=self.unrecorded_cost_usd,
        )
