"""A publisher for the app under test that keeps the jobs instead of sending them to a broker."""

from __future__ import annotations

from collections.abc import Sequence

from mailsvc.kit.outbox import Job


class RecordingPublisher:
    """What `create_app(publish=…)` takes: API tests assert on the jobs a request released
    after its commit (task, queue, ids), not on how a broker transport encodes them."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def __call__(self, jobs: Sequence[Job]) -> None:
        self.jobs.extend(jobs)
