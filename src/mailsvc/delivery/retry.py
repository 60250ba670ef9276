"""When to try a message again: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

_MAX_RETRY_AFTER = 24 * 3600.0  # a provider asking for more than a day is asking for never


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 30.0
    cap_seconds: float = 3600.0
    max_attempts: int = 8

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number `attempt` (1-based)."""
        return min(self.cap_seconds, self.base_seconds * 2.0 ** (attempt - 1))

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rng: Callable[[], float] = random.random,
    ) -> float:
        """Full jitter (a uniform draw below the ceiling), but never sooner than Retry-After."""
        delay = rng() * self.ceiling(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER))
        return delay

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
