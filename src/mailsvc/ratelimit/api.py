"""Each tenant's API request limit: a token bucket per tenant in Redis, shared by every API process.

Answers what the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) need: the policy,
what is left, and when it refills. If Redis cannot be asked, the request goes unlimited:
accepting mail matters more than limiting it. After a failure the limiter is not asked again for
a few seconds, so a Redis that hangs adds its timeout to one request, not to every one.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

from redis.exceptions import RedisError

from mailsvc.config import RateLimitSpec
from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits, buckets

log = logging.getLogger(__name__)

POLICY_NAME = "tenant"


@dataclass(frozen=True)
class ApiDecision:
    allowed: bool
    headers: dict[str, str]  # RateLimit-Policy and RateLimit, and Retry-After when refused
    retry_after: int = 0


def _policy(spec: RateLimitSpec) -> str:
    if spec.per_second:
        quota, window = spec.per_second, 1
    else:
        quota, window = spec.per_minute or 0, 60
    burst = f";burst={spec.burst}" if spec.burst else ""
    return f'"{POLICY_NAME}";q={quota};w={window}{burst}'


class ApiRateLimit:
    def __init__(
        self, limiter: RateLimiter, limits: RateLimits, *, pause_after_failure: float = 5.0
    ) -> None:
        self.limiter = limiter
        self.limits = limits
        self.pause_after_failure = pause_after_failure
        self._paused_until = 0.0

    async def check(self, tenant_id: uuid.UUID) -> ApiDecision | None:
        """Take one request from the tenant's bucket; None when no limit could be applied."""
        if time.monotonic() < self._paused_until:
            return None
        spec = await self.limits.api_limit(tenant_id)
        if spec is None:
            return None
        try:
            grant = await self.limiter.take(buckets(f"api:{tenant_id}", spec), 1)
        except (RedisError, OSError, TimeoutError) as exc:
            self._paused_until = time.monotonic() + self.pause_after_failure
            log.warning(
                "API rate limit not applied for %.0f s: Redis did not answer (%s)",
                self.pause_after_failure,
                type(exc).__name__,
            )
            return None
        remaining = grant.remaining or 0
        if grant.granted:
            reset = math.ceil(grant.full_in_seconds)
            return ApiDecision(
                allowed=True,
                headers={
                    "RateLimit-Policy": _policy(spec),
                    "RateLimit": f'"{POLICY_NAME}";r={remaining};t={reset}',
                },
            )
        retry_after = max(1, math.ceil(grant.wait_seconds))
        return ApiDecision(
            allowed=False,
            retry_after=retry_after,
            headers={
                "RateLimit-Policy": _policy(spec),
                "RateLimit": f'"{POLICY_NAME}";r=0;t={retry_after}',
                "Retry-After": str(retry_after),
            },
        )
