"""Admitting a claimed batch under the limits: what may go now, and when the rest may.

Items are grouped by tenant and lane; each group asks the limiter for as many tokens as it has
items, in one round trip, and every item beyond the grant gets its own later slot (the limit's
pace), so parked items come back spread out rather than all at once. If Redis cannot be asked,
the batch goes: a provider's own 429 is the backstop, and nothing is held up by the limiter.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from redis.exceptions import RedisError

from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Admission(Generic[T]):
    admitted: list[T] = field(default_factory=list)
    deferred: list[tuple[T, float]] = field(default_factory=list)  # (item, seconds to wait)


class Throttle:
    def __init__(self, limiter: RateLimiter, limits: RateLimits) -> None:
        self.limiter = limiter
        self.limits = limits

    async def admit(
        self,
        items: Sequence[T],
        *,
        key: Callable[[T], tuple[uuid.UUID, str]],
        provider: str | None,
    ) -> Admission[T]:
        groups: dict[tuple[uuid.UUID, str], list[T]] = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        admission: Admission[T] = Admission()
        for (tenant_id, lane), group in groups.items():
            try:
                buckets = await self.limits.buckets_for(
                    provider=provider, tenant_id=tenant_id, lane=lane
                )
                grant = await self.limiter.take(buckets, len(group))
            except RedisError as exc:
                log.warning("rate limiter unreachable; sending without it: %s", exc)
                admission.admitted += group
                continue
            admission.admitted += group[: grant.granted]
            admission.deferred += [
                (item, grant.slot(index)) for index, item in enumerate(group[grant.granted :])
            ]
        return admission
