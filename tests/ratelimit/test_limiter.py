"""The GCRA limiter against real Redis, on a clock the test drives."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest
import redis.asyncio as aioredis

from mailsvc.config import RateLimitSpec
from mailsvc.ratelimit.limiter import Bucket, Rate, RateLimiter
from mailsvc.ratelimit.policy import RateLimits

PER_MINUTE = Rate(6000, 60.0)


async def test_a_fresh_bucket_gives_its_burst_then_paces(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    bucket = Bucket("provider:smtp:minute", PER_MINUTE)
    assert PER_MINUTE.burst == 240
    grant = await limiter.take([bucket], 300, now=1000.0)
    assert grant.granted == 240
    interval = 60 / (6000 - 240)
    assert grant.interval_seconds == pytest.approx(interval)
    assert grant.wait_seconds == pytest.approx(interval)
    assert grant.slot(10) == pytest.approx(11 * interval)
    # One interval later exactly one more token is free.
    assert (await limiter.take([bucket], 5, now=1000.0 + interval)).granted == 1


async def test_every_bucket_grants_the_same_and_the_slowest_decides(
    redis_client: aioredis.Redis,
) -> None:
    limiter = RateLimiter(redis_client)
    tenant = Bucket("tenant:t:bulk:minute", Rate(600, 60.0))  # burst 24
    provider = Bucket("provider:smtp:second", Rate(30, 1.0))  # burst 15
    grant = await limiter.take([tenant, provider], 100, now=0.0)
    assert grant.granted == 15
    # The tenant bucket was charged the same 15 tokens: 9 of its burst remain.
    assert (await limiter.take([tenant], 100, now=0.0)).granted == 9


async def test_unrelated_buckets_do_not_share(redis_client: aioredis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    a = Bucket("tenant:a:bulk:minute", Rate(60, 60.0))
    b = Bucket("tenant:b:bulk:minute", Rate(60, 60.0))
    assert (await limiter.take([a], 10, now=0.0)).granted == 2
    assert (await limiter.take([b], 10, now=0.0)).granted == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_no_sliding_window_ever_exceeds_the_limit_and_a_backlog_gets_95_percent(
    redis_client: aioredis.Redis, seed: int
) -> None:
    """Batches of random size at random moments for three minutes of the limiter's clock."""
    rng = random.Random(seed)
    limiter = RateLimiter(redis_client)
    bucket = Bucket(f"provider:prop{seed}:minute", PER_MINUTE)
    granted_at: list[float] = []
    now = 0.0
    while now < 180.0:
        grant = await limiter.take([bucket], rng.randint(1, 400), now=now)
        granted_at += [now] * grant.granted
        now += rng.uniform(0.0, 0.2)
    starts = sorted(set(granted_at))
    busiest = max(
        bisect_left(granted_at, start + 60.0) - bisect_left(granted_at, start) for start in starts
    )
    assert busiest <= 6000
    assert len(granted_at) >= 0.95 * 6000 * 3


async def test_limits_that_cannot_be_re_read_keep_the_last_ones() -> None:
    """A send must not fail because the database answered nothing for a moment."""
    loads = 0

    async def load() -> dict[str, RateLimitSpec]:
        nonlocal loads
        loads += 1
        if loads > 1:
            raise ConnectionError("database gone")
        return {"provider:smtp": RateLimitSpec(per_minute=600)}

    limits = RateLimits({}, load, refresh_seconds=0.0)
    assert await limits.provider_rate("smtp") == 9.6  # 600/min less its 4% burst, a second
    assert await limits.provider_rate("smtp") == 9.6  # the second load failed: the same limit
    assert loads == 2
