"""The async bridge: one event loop, one engine and one set of transports per worker process.

Tasks are thin sync functions that run one coroutine on that loop. Everything is created at
`worker_process_init` (or on first use in a solo/threads pool) and closed at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.config import RateLimitSpec, Settings, settings
from mailsvc.db import Database
from mailsvc.delivery.breaker import RedisCircuitBreaker, breaker_redis
from mailsvc.delivery.chain import ProviderChain, configured_transports
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.kit.outbox import outbox_of
from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits
from mailsvc.ratelimit.repository import RateLimitRepository
from mailsvc.ratelimit.throttle import Throttle
from mailsvc.worker.publish import publish_jobs

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Runtime:
    loop: asyncio.AbstractEventLoop
    database: Database
    redis: aioredis.Redis
    chain: ProviderChain
    policy: RetryPolicy
    throttle: Throttle

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def in_transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs `work` in one transaction, then publishes the jobs it enqueued."""
        async with self.database.transaction() as session:
            result = await work(session)
        jobs = outbox_of(session).take_released()
        if jobs:
            publish_jobs(jobs)
        return result

    async def close(self) -> None:
        await self.chain.close()
        await self.redis.aclose()
        await self.database.dispose()


_runtime: Runtime | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (uvicorn[standard] brings it): a worker's time is mostly socket
    reads and writes to providers, which uvloop does for a fraction of asyncio's cost."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def retry_policy(config: Settings) -> RetryPolicy:
    return RetryPolicy(
        base_seconds=config.retry_base_seconds,
        cap_seconds=config.retry_cap_seconds,
        max_attempts=config.retry_max_attempts,
    )


def start() -> Runtime:
    global _runtime
    if _runtime is None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        redis = breaker_redis(settings.redis_url or settings.effective_broker_url)
        breaker = RedisCircuitBreaker(
            redis,
            threshold=settings.breaker_failure_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
            cache_seconds=settings.breaker_cache_seconds,
        )
        # Workers commit without waiting for the WAL flush: a PostgreSQL crash could lose the
        # last few hundred milliseconds of claims and outcomes, which can only send a message
        # twice (the documented window), never lose one. The API's accepts stay synchronous.
        database = Database.from_url(
            settings.async_database_url, pool_size=4, synchronous_commit=False
        )

        async def load_limits() -> dict[str, RateLimitSpec]:
            async with database.sessionmaker() as session:
                return await RateLimitRepository(session).all()

        _runtime = Runtime(
            loop=loop,
            database=database,
            redis=redis,
            chain=ProviderChain(configured_transports(settings), breaker),
            policy=retry_policy(settings),
            throttle=Throttle(
                RateLimiter(redis),
                RateLimits(
                    settings.rate_limits,
                    load_limits,
                    refresh_seconds=settings.rate_limit_refresh_seconds,
                ),
            ),
        )
    return _runtime


def runtime() -> Runtime:
    return _runtime or start()


def stop() -> None:
    global _runtime
    current, _runtime = _runtime, None
    if current is None:
        return
    try:
        current.run(current.close())
    except Exception:
        log.exception("worker runtime did not close cleanly")
    finally:
        current.loop.close()


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    start()


@worker_process_shutdown.connect
def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    stop()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
