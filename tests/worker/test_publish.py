"""The API's publisher: jobs handed over close together reach the broker as one merged job."""

from __future__ import annotations

from typing import Any

import anyio
from kombu import Queue

from mailsvc.kit.outbox import Job
from mailsvc.worker.app import celery_app
from mailsvc.worker.publish import CoalescingPublisher
from tests.support.processes import eventually
from tests.support.servers import TestServers

QUEUE = "transactional"


def take_waiting(queue: str) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of each job waiting in `queue`, taken off it with kombu's own
    consumer API, which reads whichever broker Celery is configured with."""
    taken = []
    with celery_app.connection_for_read() as connection, connection.channel() as channel:
        while (message := Queue(queue, channel=channel).get(no_ack=True)) is not None:
            _args, kwargs, _embed = message.decode()
            taken.append((message.headers["task"], kwargs))
    return taken


async def test_jobs_close_together_go_out_as_one_merged_job(servers: TestServers) -> None:
    await anyio.to_thread.run_sync(take_waiting, QUEUE)  # whatever an earlier test left
    # A window wide enough that a slow machine still merges the three.
    publisher = CoalescingPublisher(window=1.0, max_ids=100)
    await publisher.start()
    try:
        for i in range(3):
            await publisher([Job("messages.send", QUEUE, {"ids": [f"id-{i}"]})])

        async def published() -> list[tuple[str, dict[str, Any]]]:
            return await anyio.to_thread.run_sync(take_waiting, QUEUE)

        jobs = await eventually(published, what="the merged send job")
    finally:
        await publisher.stop()
    assert jobs == [("messages.send", {"ids": ["id-0", "id-1", "id-2"]})]
    assert await anyio.to_thread.run_sync(take_waiting, QUEUE) == []
