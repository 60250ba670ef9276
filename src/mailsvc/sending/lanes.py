"""Lane policy: which lane a message takes, which queue and task its send jobs go as, and the
one way send jobs are made (`enqueue_sends`)."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from itertools import zip_longest
from typing import Final, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.outbox import Job, enqueue
from mailsvc.models import MessageStatus
from mailsvc.templates.builtin import is_builtin


class Lane(enum.StrEnum):
    """Where a message's first attempt goes: each lane is the queue of the same name."""

    transactional = "transactional"
    bulk = "bulk"
    scheduled = "scheduled"


# Retries from every lane share one queue, so a provider's bad hour never holds up first attempts.
RETRY_QUEUE: Final = "retry"

# Every queue a send job can be on: the lanes' own and the retry queue.
SEND_QUEUES: Final = (*(lane.value for lane in Lane), RETRY_QUEUE)

SEND_TASK: Final = "messages.send"

# Ids per send job when the dispatcher hands rows over: small for the latency lanes.
DISPATCH_BATCH: Final[Mapping[str, int]] = {
    Lane.transactional: 10,
    RETRY_QUEUE: 25,
    Lane.scheduled: 50,
    Lane.bulk: 100,
}


def lane_for(priority: str, *, batch: bool = False) -> Lane:
    """High priority single sends are transactional; normal, low and batch sends are bulk."""
    return Lane.transactional if priority == "high" and not batch else Lane.bulk


def published_at_once(lane: str) -> bool:
    """Bulk waits parked for the bulk feeder, which takes tenants in turn; the rest go now."""
    return lane != Lane.bulk


def queue_for(lane: str, status: str) -> str:
    """The queue a send job for a message goes on."""
    return RETRY_QUEUE if status == MessageStatus.retrying else lane


def email_task(template: str) -> str:
    """The task name a built-in email type is sent as (Flower shows work by task name)."""
    return f"emails.{template}"


def send_task_for(template: str | None, queue: str) -> str:
    """The task a send job goes as: each built-in email type has its own name on the lanes that
    send one message kind at a time (Flower shows them apart); bulk batches mix kinds, and
    retries come from every lane, so both go as `messages.send`."""
    if queue in (Lane.bulk, RETRY_QUEUE) or template is None or not is_builtin(template):
        return SEND_TASK
    return email_task(template)


class Sendable(Protocol):
    """What a send job is made from: a message row, or a row the dispatcher parked."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def lane(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def template(self) -> str | None: ...


S = TypeVar("S", bound=Sendable)
T = TypeVar("T")


def batches(items: list[T], size: int) -> Iterator[list[T]]:
    """`items` in runs of `size`, the last one shorter."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_turn(groups: Iterable[list[T]], size: int) -> Iterator[list[T]]:
    """Runs of `size` from each group in turn (A, B, C, A, B, C…), so no group gets ahead."""
    for round_of_runs in zip_longest(*(batches(group, size) for group in groups)):
        yield from (run for run in round_of_runs if run is not None)


def send_jobs(
    entries: Iterable[tuple[str, str, Hashable, str]], ids_per_job: Callable[[str], int]
) -> list[Job]:
    """The send jobs for (task, queue, turn key, message id) entries: ids go by task and queue,
    `ids_per_job(queue)` to a job, each turn key's in turn (A, B, C, A, B, C…)."""
    pools: dict[tuple[str, str], dict[Hashable, list[str]]] = {}
    for task, queue, key, message_id in entries:
        pools.setdefault((task, queue), {}).setdefault(key, []).append(message_id)
    return [
        Job(task, queue, {"ids": ids})
        for (task, queue), groups in pools.items()
        for ids in in_turn(groups.values(), ids_per_job(queue))
    ]


def enqueue_sends(
    session: AsyncSession,
    messages: Iterable[S],
    *,
    ids_per_job: int | None = None,
    in_turn_by: Callable[[S], Hashable] | None = None,
) -> None:
    """Enqueue on the session the send jobs for these messages, published once it commits.

    Messages go by task and queue (`send_task_for`, `queue_for`), `ids_per_job` ids a job (by
    default the dispatcher's size for the queue). With `in_turn_by` (a tenant), the jobs of a
    queue take that key's groups in turn, so one group's backlog cannot get ahead of another's.
    """

    def entry(message: S) -> tuple[str, str, Hashable, str]:
        queue = queue_for(message.lane, message.status)
        key = in_turn_by(message) if in_turn_by is not None else None
        return send_task_for(message.template, queue), queue, key, str(message.id)

    def size(queue: str) -> int:
        return ids_per_job or DISPATCH_BATCH[queue]

    for job in send_jobs(map(entry, messages), size):
        enqueue(session, job.task, queue=job.queue, **job.kwargs)
