"""Beat's outbox jobs: the dispatcher hands due rows to the broker, the sweeper finds lost ones.

A row is either *in the broker* (enqueued_at set) or *parked* (enqueued_at NULL, waiting for
not_before). The dispatcher publishes parked rows that are due. The sweeper parks again the rows
that cannot still be in the broker: claims whose lease expired (the worker died), and enqueued
rows older than a threshold while their queue is empty (the broker lost them, or a publish failed).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from itertools import zip_longest

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.outbox import enqueue
from mailsvc.messages.repository import MessageRepository
from mailsvc.messages.service import send_task_for
from mailsvc.worker import queues

# Ids per send job when the dispatcher hands rows over: small for the latency lanes.
DISPATCH_BATCH = {
    queues.TRANSACTIONAL: 10,
    queues.RETRY: 25,
    queues.SCHEDULED: 50,
    queues.BULK: 100,
}


async def dispatch_due(session: AsyncSession, *, limit: int) -> int:
    """Publish parked rows whose not_before has come (after this transaction commits)."""
    parked = await MessageRepository(session).mark_due_enqueued(limit=limit)
    by_queue: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in parked:
        queue = queues.queue_for(row.lane, row.status)
        by_queue[queue, send_task_for(row.template, queue)].append(str(row.id))
    for (queue, task), ids in by_queue.items():
        size = DISPATCH_BATCH.get(queue, 50)
        for start in range(0, len(ids), size):
            enqueue(session, task, queue=queue, ids=ids[start : start + size])
    return len(parked)


TenantBudget = Callable[[uuid.UUID], Awaitable[int | None]]


async def feed_bulk(
    session: AsyncSession,
    *,
    room: int,
    batch_size: int,
    tenant_budget: TenantBudget | None = None,
) -> int:
    """Hand up to `room` parked bulk messages to the bulk queue, in turn across tenants.

    Every tenant with rows waiting gets an equal share of the room (less, when its own rate
    limit allows less), and the jobs are published interleaved (A, B, C, A, B, C…): one
    tenant's million messages cannot get ahead of another tenant's hundred, and the queue holds
    a few seconds of work, never the whole backlog.
    """
    if room <= 0:
        return 0
    repo = MessageRepository(session)
    tenants = await repo.bulk_tenants_waiting()
    if not tenants:
        return 0
    share = max(batch_size, room // len(tenants))
    quotas = {}
    for tenant_id in tenants:
        budget = await tenant_budget(tenant_id) if tenant_budget is not None else None
        quotas[tenant_id] = share if budget is None else min(share, budget)
    quotas = {tenant_id: quota for tenant_id, quota in quotas.items() if quota > 0}
    if not quotas:
        return 0
    per_tenant_ids: dict[uuid.UUID, list[str]] = defaultdict(list)
    taken = await repo.take_bulk(quotas)
    for message_id, tenant_id in taken:
        per_tenant_ids[tenant_id].append(str(message_id))
    batches = [
        [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]
        for ids in per_tenant_ids.values()
    ]
    for round_of_batches in zip_longest(*batches):
        for ids in round_of_batches:
            if ids:
                enqueue(session, send_task_for(None, queues.BULK), queue=queues.BULK, ids=ids)
    return len(taken)


@dataclass(frozen=True)
class SweepReport:
    expired_leases: int
    failed: int  # of the expired: given up on after max_attempts
    lost: int


async def sweep(
    session: AsyncSession,
    *,
    depths: Mapping[str, int],
    older_than_seconds: int,
    limit: int,
    max_attempts: int,
) -> SweepReport:
    """Park again what the broker cannot be holding; the dispatcher publishes it next."""
    repo = MessageRepository(session)
    expired = await repo.release_expired_leases(limit=limit, max_attempts=max_attempts)
    empty_lanes = [lane for lane in queues.LANES if depths.get(lane, 0) == 0]
    lost = await repo.unpark_lost(
        lanes=empty_lanes,
        include_retrying=depths.get(queues.RETRY, 0) == 0,
        older_than_seconds=older_than_seconds,
        limit=limit,
    )
    return SweepReport(
        expired_leases=len(expired),
        failed=sum(1 for row in expired if row.status == "failed"),
        lost=len(lost),
    )


async def expire_idempotency_keys(session: AsyncSession, *, ttl_hours: int, limit: int) -> int:
    """Forget Idempotency-Keys older than their TTL, so that a key may be used again."""
    return await MessageRepository(session).expire_idempotency_keys(
        older_than=timedelta(hours=ttl_hours), limit=limit
    )
