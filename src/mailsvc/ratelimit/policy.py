"""Which limits apply: Settings defaults, overridden by the rate_limits table at run time."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from mailsvc.config import RateLimitSpec
from mailsvc.db import database_unavailable, describe_outage
from mailsvc.ratelimit.limiter import Bucket, Rate

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[Mapping[str, RateLimitSpec]]]


def _slowest(found: list[Bucket]) -> float | None:
    return min((b.rate.per_second for b in found), default=None)


def buckets(name: str, spec: RateLimitSpec | None) -> list[Bucket]:
    found: list[Bucket] = []
    if spec is None:
        return found
    if spec.per_minute:
        found.append(Bucket(f"{name}:minute", Rate(spec.per_minute, 60.0, spec.burst)))
    if spec.per_second:
        found.append(Bucket(f"{name}:second", Rate(spec.per_second, 1.0, spec.burst)))
    return found


class RateLimits:
    """The limits in force, re-read from the database at most every `refresh_seconds`."""

    def __init__(
        self, defaults: Mapping[str, RateLimitSpec], load: Loader, *, refresh_seconds: float = 5.0
    ) -> None:
        self.defaults = dict(defaults)
        self.load = load
        self.refresh_seconds = refresh_seconds
        self._specs: dict[str, RateLimitSpec] = dict(defaults)
        self._fresh_until = 0.0

    async def specs(self) -> Mapping[str, RateLimitSpec]:
        if time.monotonic() >= self._fresh_until:
            try:
                self._specs = {**self.defaults, **await self.load()}
            except Exception as exc:  # a send must not fail because limits cannot be re-read
                if not database_unavailable(exc):
                    log.exception("rate limits could not be re-read; keeping the last ones")
                else:  # an outage: a line, not a traceback per process every few seconds
                    log.warning(
                        "rate limits could not be re-read (PostgreSQL unavailable: %s); "
                        "keeping the last ones",
                        describe_outage(exc),
                    )
            self._fresh_until = time.monotonic() + self.refresh_seconds
        return self._specs

    def _tenant_spec(
        self, specs: Mapping[str, RateLimitSpec], tenant_id: uuid.UUID, lane: str
    ) -> RateLimitSpec | None:
        """The tenant's own limit in the lane, else the lane's limit for every tenant."""
        return specs.get(f"tenant:{tenant_id}:{lane}") or specs.get(f"lane:{lane}")

    async def provider_rate(self, provider: str) -> float | None:
        """Tokens a second the provider's limits let through, or None when it has none."""
        return _slowest(buckets("provider", (await self.specs()).get(f"provider:{provider}")))

    async def tenant_rate(self, tenant_id: uuid.UUID, lane: str) -> float | None:
        spec = self._tenant_spec(await self.specs(), tenant_id, lane)
        return _slowest(buckets("tenant", spec))

    async def api_limit(self, tenant_id: uuid.UUID) -> RateLimitSpec | None:
        """The tenant's API request limit: its own, else the one every tenant has."""
        specs = await self.specs()
        return specs.get(f"api:tenant:{tenant_id}") or specs.get("api")

    async def buckets_for(
        self, *, provider: str | None, tenant_id: uuid.UUID, lane: str
    ) -> list[Bucket]:
        """The tenant's bucket in the lane, and the provider's shared bucket."""
        specs = await self.specs()
        found: list[Bucket] = []
        tenant_spec = self._tenant_spec(specs, tenant_id, lane)
        if tenant_spec is not None:
            found += buckets(f"tenant:{tenant_id}:{lane}", tenant_spec)
        if provider is not None and (provider_spec := specs.get(f"provider:{provider}")):
            found += buckets(f"provider:{provider}", provider_spec)
        return found
