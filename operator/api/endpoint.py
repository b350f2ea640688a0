"""An OpenAI-compatible model to ask: a ModelServer in the cluster, or a base URL with its key and prices.

A teacher, a contestant and a judge are each one of these, plus what their own job needs; which of
the fields may go together differs between them, so each keeps its own CEL rules (these are shared).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel, ShortStr, cel
from .common import USD, LocalObjectReference, SecretKeyRef

MODEL_WITH_BASE_URL = cel("!has(self.baseURL) || has(self.model)", "model is required with baseURL")
KEY_WITH_BASE_URL = cel("!has(self.apiKeySecretRef) || has(self.baseURL)", "apiKeySecretRef is only used with baseURL")


class TokenPricing(ApiModel):
    """What an API charges, in US dollars per million tokens."""

    input_usd_per_million_tokens: USD = Field(
        default=0.0, alias="inputUSDPerMillionTokens", description="Price of a million prompt tokens."
    )
    output_usd_per_million_tokens: USD = Field(
        default=0.0, alias="outputUSDPerMillionTokens", description="Price of a million completion tokens."
    )
    batch_input_usd_per_million_tokens: USD | None = Field(
        default=None, alias="batchInputUSDPerMillionTokens",
        description="Price of a million prompt tokens sent through the Batch API (teacher.batch); unset: the regular price.",
    )
    batch_output_usd_per_million_tokens: USD | None = Field(
        default=None, alias="batchOutputUSDPerMillionTokens",
        description="Price of a million completion tokens through the Batch API; unset: the regular price.",
    )

    def batch(self) -> TokenPricing:
        """The prices that apply to requests sent through the Batch API."""
        return TokenPricing(
            input_usd_per_million_tokens=self.input_usd_per_million_tokens
            if self.batch_input_usd_per_million_tokens is None else self.batch_input_usd_per_million_tokens,
            output_usd_per_million_tokens=self.output_usd_per_million_tokens
            if self.batch_output_usd_per_million_tokens is None else self.batch_output_usd_per_million_tokens,
        )


class Endpoint(ApiModel):
    """Where a model is asked: a ModelServer, or any OpenAI-compatible API."""

    model_server_ref: LocalObjectReference | None = Field(
        default=None, description="A ModelServer in this namespace; waits until it is Ready."
    )
    base_url: Annotated[str, Field(max_length=2048, pattern=r"^https?://.+$")] | None = Field(
        default=None, alias="baseURL", description="Base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1."
    )
    model: ShortStr | None = Field(
        default=None, description="Model name sent to the API. Defaults to the ModelServer's served model name."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key. Passed to the Job only as an environment variable."
    )
    pricing: TokenPricing | None = Field(
        default=None,
        description="Token prices. Falls back to the operator's price table for this model; cost is 0 when neither has one. "
        "A ModelServer is priced by its GPU time instead.",
    )


class RequestLimits(ApiModel):
    """How requests are sent: so many in flight at once, each with a timeout and retries."""

    max_concurrency: int = Field(default=8, ge=1, le=512, description="Requests in flight at once.")
    request_timeout_seconds: float = Field(default=300.0, gt=0, le=3600, description="Timeout of one request.")
    max_retries: int = Field(
        default=8, ge=0, le=50, description="Retries of a request on 429, 5xx and timeouts (exponential backoff)."
    )
