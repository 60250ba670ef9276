"""Publishing jobs to the broker after their transaction committed, and reading queue depths.

A failed publish loses nothing: the row is committed, and the sweeper hands it to the
dispatcher again once the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import anyio

from mailsvc.kit.outbox import Job
from mailsvc.sending.lanes import send_jobs
from mailsvc.worker.app import celery_app, configured

log = logging.getLogger(__name__)

# One immediate retry covers a pooled connection that died with a restarted broker; more would
# hold the caller for seconds while the broker is down, and the sweeper covers that case anyway.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def publish_jobs(jobs: Sequence[Job]) -> list[Job]:
    """Sends every job; returns the ones that could not be sent."""
    sent = 0
    app = configured(celery_app)
    try:
        with app.producer_or_acquire() as producer:
            for job in jobs:
                app.send_task(
                    job.task,
                    kwargs=job.kwargs,
                    queue=job.queue,
                    producer=producer,
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                )
                sent += 1
    except Exception as exc:
        failed = list(jobs[sent:])
        log.warning(
            "broker publish failed; the sweeper will re-enqueue",
            extra={"fields": {"jobs": len(failed), "error": f"{type(exc).__name__}: {exc}"}},
        )
        return failed
    return []


def merge_jobs(jobs: Sequence[Job], *, max_ids: int) -> list[Job]:
    """Jobs for the same task and queue that carry only `ids` become jobs of up to max_ids ids.

    A batch of ids costs a worker one task's overhead instead of one per message, and the task
    claims and sends them together; nothing else about the work changes.
    """
    sends = [job for job in jobs if set(job.kwargs) == {"ids"}]
    entries = ((job.task, job.queue, None, i) for job in sends for i in job.kwargs["ids"])
    others = [job for job in jobs if set(job.kwargs) != {"ids"}]
    return others + send_jobs(entries, lambda _queue: max_ids)


class CoalescingPublisher:
    """The API's publisher: requests hand jobs over and return; one background task publishes.

    Jobs that arrive within `window` seconds of each other go out together, merged, so a busy
    API sends a worker a few ids per task rather than one, at the cost of at most `window`
    seconds of latency. Jobs still here when the process dies are not lost: their rows are
    committed, and the sweeper re-enqueues them.
    """

    def __init__(self, *, window: float, max_ids: int) -> None:
        self.window = window
        self.max_ids = max_ids
        self._pending: list[Job] = []
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, jobs: Sequence[Job]) -> None:
        self._pending.extend(jobs)
        self._wakeup.set()

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="mailsvc-publisher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        await self.flush()

    async def flush(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            await anyio.to_thread.run_sync(publish_jobs, merge_jobs(jobs, max_ids=self.max_ids))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self.window)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:  # never let the publisher die: the sweeper covers what it missed
                log.exception("publishing failed")


def queue_depths(names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue (not counting those a worker holds unacknowledged)."""
    depths: dict[str, int] = {}
    with configured(celery_app).connection_for_write() as connection:
        for name in names:
            # A channel per queue: a passive declare of a queue that does not exist (an empty
            # Redis list has no key) fails and, on AMQP, closes the channel.
            with connection.channel() as channel:
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except connection.channel_errors:
                    depths[name] = 0
    return depths
