"""What a task works with in a worker thread: its event loop, database, providers and limits.

The worker makes one per thread that runs tasks, from the settings it was started with
(worker/bridge.py), and hands it to each task as `task.runtime`: a domain's tasks ask for it
with `runtime_of(self)`, and never import the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from celery import Task
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.config import Settings
from mailsvc.db import Database
from mailsvc.delivery.chain import ProviderChain
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.kit.outbox import Job, outbox_of
from mailsvc.ratelimit.throttle import Throttle

T = TypeVar("T")


@dataclass
class Runtime:
    loop: asyncio.AbstractEventLoop
    settings: Settings  # the worker's, read once at its start
    database: Database
    redis: aioredis.Redis
    chain: ProviderChain
    policy: RetryPolicy
    throttle: Throttle
    publish: Callable[[Sequence[Job]], object]  # to the broker, after the commit
    queue_depths: Callable[[Iterable[str]], dict[str, int]]  # messages waiting in each queue

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def in_transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs `work` in one transaction, then publishes the jobs it enqueued."""
        async with self.database.transaction() as session:
            result = await work(session)
        jobs = outbox_of(session).take_released()
        if jobs:
            self.publish(jobs)
        return result

    async def close(self) -> None:
        await self.chain.close()
        await self.redis.aclose()
        await self.database.dispose()


def runtime_of(task: Task) -> Runtime:
    """The runtime of the worker thread running `task` (the worker's task class provides it)."""
    runtime = getattr(task, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError(f"{task.name} runs only in a mailsvc worker (`mailsvc worker`)")
    return runtime
