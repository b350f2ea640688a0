"""When to try a failed teacher request again, and after how long.

The openai client has retries of its own, but they cannot be tuned where it matters here: its
backoff tops out at a few seconds and it ignores a Retry-After above a minute, so a rate-limited run
would hammer the API. The client is built with its retries off and this policy decides instead:
exponential backoff with jitter, a server's Retry-After honoured (up to a cap), and a bound.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 600.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        if retry_after_s is not None:
            wait = min(max(retry_after_s, 0.0), self.max_retry_after_s)
            # A little extra so that requests told the same instant do not all return at once.
            return wait + rng.uniform(0.0, 0.1 * wait)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0**attempt)
        # Half fixed, half random: never a retry storm, never a near-zero wait.
        return rng.uniform(ceiling / 2, ceiling)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a server asked us to wait: `retry-after-ms`, or `retry-after` in seconds or as a date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (value := lowered.get("retry-after-ms")) is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)
