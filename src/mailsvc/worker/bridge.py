"""The async bridge: one event loop, one engine and one set of transports per thread that runs
tasks. A task runs one coroutine on its thread's loop; never `asyncio.run` per task.

The worker's entry point calls `use(settings)` once; every runtime is made from them, and each
task finds its thread's as `self.runtime` (`RuntimeTask`, the Celery app's task class).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown

from mailsvc.config import RateLimitSpec, Settings
from mailsvc.db import Database
from mailsvc.delivery.breaker import RedisCircuitBreaker, breaker_redis
from mailsvc.delivery.chain import ProviderChain, configured_transports
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits
from mailsvc.ratelimit.repository import RateLimitRepository
from mailsvc.ratelimit.throttle import Throttle
from mailsvc.sending.runtime import Runtime
from mailsvc.worker.publish import publish_jobs, queue_depths

log = logging.getLogger(__name__)

_config: Settings | None = None  # the worker's settings, given once by its entry point


def use(config: Settings) -> None:
    """The settings every runtime of this process is made from."""
    global _config
    _config = config


# A loop runs one thread's task at a time, and asyncpg connections, the Redis client and the
# providers' HTTP clients belong to the loop that made them: so each thread that runs tasks (a
# prefork process's main thread, each thread of `--pool threads`) has a runtime of its own.
_thread = threading.local()
_made: list[Runtime] = []  # every runtime of this process, for shutdown
_made_lock = threading.Lock()

# The pool is per runtime, so a `--pool threads` worker holds `concurrency` pools. A runtime runs
# one task at a time, and a task holds at most two connections at once (delivery's connection,
# and the rate-limit reload beside it); max_overflow adds as many again. `--concurrency 8`: at
# most 32 connections, where 4 per runtime would be 64.
RUNTIME_POOL_SIZE = 2


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


def make_runtime(config: Settings) -> Runtime:
    """A runtime on a new event loop, set as this thread's loop."""
    if not config.redis_url:
        raise RuntimeError("MAILSVC_REDIS_URL is not set: the limits and breakers live in Redis")
    loop = new_event_loop()
    asyncio.set_event_loop(loop)  # per thread: code that asks for the loop finds this one
    redis = breaker_redis(config.redis_url)  # Redis, whatever the broker is
    breaker = RedisCircuitBreaker(
        redis,
        threshold=config.breaker_failure_threshold,
        cooldown_seconds=config.breaker_cooldown_seconds,
        cache_seconds=config.breaker_cache_seconds,
    )
    # Claims and outcomes wait for their WAL flush (by default), as accepts do: with
    # synchronous_commit off, a PostgreSQL crash lost the last few hundred milliseconds of
    # them, and every message whose claim or outcome was lost went out twice.
    database = Database.from_url(
        config.async_database_url,
        pool_size=RUNTIME_POOL_SIZE,
        synchronous_commit=config.worker_synchronous_commit,
    )

    async def load_limits() -> dict[str, RateLimitSpec]:
        async with database.sessionmaker() as session:
            return await RateLimitRepository(session).all()

    limits = RateLimits(
        config.rate_limits, load_limits, refresh_seconds=config.rate_limit_refresh_seconds
    )
    return Runtime(
        loop=loop,
        settings=config,
        database=database,
        redis=redis,
        chain=ProviderChain(configured_transports(config), breaker),
        policy=retry_policy(config),
        throttle=Throttle(RateLimiter(redis), limits),
        publish=publish_jobs,
        queue_depths=queue_depths,
    )


def start() -> Runtime:
    """This thread's runtime, made unless it has an open one (stop() closes them all)."""
    current: Runtime | None = getattr(_thread, "runtime", None)
    if current is None or current.loop.is_closed():
        if _config is None:
            raise RuntimeError("the worker's entry point did not call bridge.use(settings)")
        current = _thread.runtime = make_runtime(_config)
        with _made_lock:
            _made.append(current)
    return current


def runtime() -> Runtime:
    """This thread's runtime: made at `worker_process_init` (prefork, solo) or on first use."""
    return start()


class RuntimeTask(Task):  # type: ignore[misc]  # celery's Task is untyped
    """The Celery app's task class: a task finds its thread's runtime as `self.runtime`."""

    @property
    def runtime(self) -> Runtime:
        return start()


def stop() -> None:
    """Closes every runtime this process made, each on its own loop. Safe to call twice."""
    with _made_lock:
        made = list(_made)
        _made.clear()
    for current in made:
        _close(current)
    if made:
        log.info("worker runtimes closed: %d", len(made))


def _close(current: Runtime) -> None:
    loop = current.loop
    if loop.is_closed():
        return
    if loop.is_running():  # closing it would break the task on it; the process is exiting
        log.warning("worker runtime still running a task at shutdown; not closed")
        return
    try:
        # From any thread: the loop is not running, and what it holds belongs to the loop.
        current.run(current.close())
    except Exception:
        log.exception("worker runtime did not close cleanly")
    finally:
        loop.close()


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    start()  # prefork: the pool process's main thread, which runs its tasks; solo: the worker's


@worker_process_shutdown.connect  # prefork only, in each pool process
def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    stop()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@worker_shutdown.connect  # the main process, after the pool stopped: the solo and threads pools
def _on_worker_shutdown(**_: Any) -> None:
    stop()
