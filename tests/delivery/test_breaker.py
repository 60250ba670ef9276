"""The circuit breaker, against real Redis, shared by two instances as by two worker processes."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from mailsvc.delivery.breaker import RedisCircuitBreaker, breaker_redis
from tests.support.processes import eventually


def breaker(client: aioredis.Redis, cooldown: float = 0.3) -> RedisCircuitBreaker:
    return RedisCircuitBreaker(client, threshold=3, cooldown_seconds=cooldown, cache_seconds=0)


async def wait_until_half_open(b: RedisCircuitBreaker, provider: str) -> None:
    async def half_open() -> bool:
        return (await b.state(provider, fresh=True)).status(time.time()) == "half_open"

    await eventually(half_open, timeout=5, interval=0.02, what=f"{provider}'s circuit half open")


async def test_opens_after_consecutive_failures_and_is_shared(redis_client: aioredis.Redis) -> None:
    one, two = breaker(redis_client), breaker(redis_client)
    for _ in range(2):
        await one.record_failure("sendgrid")
    assert await two.allow("sendgrid")
    await two.record_failure("sendgrid")  # the third in a row, from another process
    assert not await one.allow("sendgrid")
    assert not await two.allow("sendgrid")
    assert await one.allow("mailgun")  # circuits are per provider


async def test_a_success_resets_the_count(redis_client: aioredis.Redis) -> None:
    b = breaker(redis_client)
    await b.record_failure("ses")
    await b.record_failure("ses")
    await b.record_success("ses")
    await b.record_failure("ses")
    await b.record_failure("ses")
    assert await b.allow("ses")


async def test_half_open_lets_one_probe_through_and_a_success_closes(
    redis_client: aioredis.Redis,
) -> None:
    one, two = breaker(redis_client), breaker(redis_client)
    for _ in range(3):
        await one.record_failure("sendgrid")
    await wait_until_half_open(one, "sendgrid")
    probes = [await one.allow("sendgrid"), await two.allow("sendgrid"), await one.allow("sendgrid")]
    assert probes == [True, False, False]
    await one.record_success("sendgrid")
    assert (await two.state("sendgrid", fresh=True)).status(time.time()) == "closed"
    assert await two.allow("sendgrid")


async def test_a_failed_probe_opens_the_circuit_again(redis_client: aioredis.Redis) -> None:
    b = breaker(redis_client)
    for _ in range(3):
        await b.record_failure("mailgun")
    await wait_until_half_open(b, "mailgun")
    assert await b.allow("mailgun")
    await b.record_failure("mailgun")
    assert (await b.state("mailgun", fresh=True)).status(time.time()) == "open"
    assert not await b.allow("mailgun")


async def test_without_redis_the_breaker_fails_open() -> None:
    unreachable = breaker_redis("redis://127.0.0.1:1/0")
    b = breaker(unreachable)
    assert b.reachable
    assert await b.allow("sendgrid")
    assert not b.reachable  # one failed round trip: the next calls do not wait on Redis
    await b.record_failure("sendgrid")  # neither asked nor raised
    assert await b.allow("sendgrid")
    await unreachable.aclose()
