"""Jobs that wait for the transaction: enqueued during it, published only after it commits.

A service calls `enqueue(session, "messages.send", queue=…, ids=[…])`. The job waits on the
session; the owner of the transaction (the request dependency or the task wrapper) publishes it
after COMMIT and drops it on ROLLBACK, so a worker never looks for a row that is not there yet.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

_KEY = "mailsvc.outbox"


@dataclass(frozen=True)
class Job:
    task: str
    queue: str
    kwargs: dict[str, Any]


Publisher = Callable[[Sequence[Job]], Awaitable[None]]


@dataclass
class Outbox:
    pending: list[Job] = field(default_factory=list)
    released: list[Job] = field(default_factory=list)

    def release(self) -> None:
        """The transaction committed: its jobs may go."""
        self.released.extend(self.pending)
        self.pending.clear()

    def discard(self) -> None:
        self.pending.clear()

    def take_released(self) -> list[Job]:
        jobs, self.released = self.released, []
        return jobs


def outbox_of(session: AsyncSession) -> Outbox:
    box: Outbox | None = session.info.get(_KEY)
    if box is None:
        box = session.info[_KEY] = Outbox()
    return box


def enqueue(session: AsyncSession, task: str, *, queue: str, **kwargs: Any) -> None:
    outbox_of(session).pending.append(Job(task=task, queue=queue, kwargs=kwargs))
