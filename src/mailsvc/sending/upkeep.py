"""Beat's outbox jobs: the dispatcher hands due rows to the broker, the sweeper finds lost ones.

A row is either *in the broker* (enqueued_at set) or *parked* (enqueued_at NULL, waiting for
not_before). The dispatcher publishes parked rows that are due. The sweeper parks again the rows
that cannot still be in the broker: claims whose lease expired (the worker died), and enqueued
rows older than a threshold while their queue is empty (the broker lost them, or a publish failed).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import MessageStatus
from mailsvc.sending.lanes import RETRY_QUEUE, Lane, enqueue_sends
from mailsvc.sending.repository import UpkeepRepository


async def dispatch_due(session: AsyncSession, *, limit: int) -> int:
    """Publish parked rows whose not_before has come (after this transaction commits)."""
    parked = await UpkeepRepository(session).mark_due_enqueued(limit=limit)
    enqueue_sends(session, parked)
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
    repo = UpkeepRepository(session)
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
    taken = await repo.take_bulk(quotas)
    enqueue_sends(session, taken, ids_per_job=batch_size, in_turn_by=lambda row: row.tenant_id)
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
    repo = UpkeepRepository(session)
    expired = await repo.release_expired_leases(limit=limit, max_attempts=max_attempts)
    empty_lanes = [lane.value for lane in Lane if depths.get(lane, 0) == 0]
    lost = await repo.unpark_lost(
        lanes=empty_lanes,
        include_retrying=depths.get(RETRY_QUEUE, 0) == 0,
        older_than_seconds=older_than_seconds,
        limit=limit,
    )
    return SweepReport(
        expired_leases=len(expired),
        failed=sum(1 for row in expired if row.status == MessageStatus.failed),
        lost=len(lost),
    )


async def expire_idempotency_keys(session: AsyncSession, *, ttl_hours: int, limit: int) -> int:
    """Forget Idempotency-Keys older than their TTL, so that a key may be used again."""
    return await UpkeepRepository(session).expire_idempotency_keys(
        older_than=timedelta(hours=ttl_hours), limit=limit
    )
