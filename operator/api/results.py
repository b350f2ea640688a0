"""What a workload produced: the one contract by which results flow back to the operator.

A workload that succeeds writes a `WorkloadResult` onto its resource's `status.result` (status
subresource, with the workload ServiceAccount) and into its `manifest.json` under `result`. The
operator reads only this to pin an artifact downstream and to enforce a consumer's expected sha256;
local mode reads the same model from manifest.json.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import StatusModel
from .common import USD, Artifact

RESULT_KEY = "result"  # in status and in manifest.json


class WorkloadResult(StatusModel):
    """An artifact and what it took to make it, as measured by the workload that made it."""

    artifact: Artifact = Field(description="What was produced, where it is, and its sha256.")
    size_bytes: int = Field(ge=0, description="Size of the artifact in bytes (of all its files for a model folder).")
    records: int | None = Field(default=None, ge=0, description="Examples in a dataset, or examples trained on.")
    counts: Annotated[dict[str, int], Field(max_length=64)] = Field(
        default_factory=dict, description="Workload-specific counts: generated, filtered by reason, steps..."
    )
    prompt_tokens: int = Field(default=0, ge=0, description="Teacher prompt tokens billed.")
    completion_tokens: int = Field(default=0, ge=0, description="Teacher completion tokens billed.")
    tokens: int = Field(default=0, ge=0, description="Tokens trained on.")
    cost_usd: USD = Field(default=0.0, alias="costUSD", description="What the workload itself paid for (tokens x price).")
    finished_at: Annotated[str, Field(max_length=64)] = Field(
        description="When the workload finished (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
