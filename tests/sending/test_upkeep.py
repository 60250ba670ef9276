"""The dispatcher and the sweeper, awaited directly against real PostgreSQL.

Inside the test's transaction now() stands still, so rows are aged by moving their timestamps
back rather than by waiting.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.outbox import Job, outbox_of
from mailsvc.models import Message, Tenant
from mailsvc.sending import upkeep
from mailsvc.sending.lanes import RETRY_QUEUE, Lane
from tests.factories import queue_messages
from tests.support.auth import TenantFactory


async def age(session: AsyncSession, ids: list[uuid.UUID], **columns: str) -> None:
    await session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values({name: text(expression) for name, expression in columns.items()})
    )


async def rows(session: AsyncSession, ids: list[uuid.UUID]) -> dict[uuid.UUID, Message]:
    result = await session.execute(
        select(Message).where(Message.id.in_(ids)).execution_options(populate_existing=True)
    )
    return {m.id: m for m in result.scalars()}


def jobs(session: AsyncSession) -> list[Job]:
    return outbox_of(session).pending


async def test_dispatcher_publishes_parked_rows_that_are_due(
    session: AsyncSession, tenant: Tenant
) -> None:
    ids = await queue_messages(session, tenant, 4)
    outbox_of(session).discard()
    due_queued, due_retry, due_scheduled, later = ids
    await age(session, [due_queued, due_retry, due_scheduled, later], enqueued_at="NULL")
    await age(session, [due_retry], status="'retrying'", not_before="now() - interval '1 s'")
    await age(session, [due_scheduled], status="'scheduled'", not_before="now()")
    await age(session, [later], not_before="now() + interval '1 hour'")

    dispatched = await upkeep.dispatch_due(session, limit=100)

    assert dispatched == 3
    found = await rows(session, ids)
    assert found[due_scheduled].status == "queued"
    assert found[due_retry].status == "retrying"
    assert all(found[i].enqueued_at is not None for i in (due_queued, due_retry, due_scheduled))
    assert found[later].enqueued_at is None
    by_queue = {job.queue: sorted(job.kwargs["ids"]) for job in jobs(session)}
    assert by_queue == {
        Lane.transactional: sorted([str(due_queued), str(due_scheduled)]),
        RETRY_QUEUE: [str(due_retry)],
    }
    assert {job.task for job in jobs(session)} == {"messages.send"}


async def test_dispatcher_leaves_rows_that_are_in_the_broker(
    session: AsyncSession, tenant: Tenant
) -> None:
    await queue_messages(session, tenant, 2)
    outbox_of(session).discard()
    assert await upkeep.dispatch_due(session, limit=100) == 0
    assert jobs(session) == []


async def test_dispatcher_leaves_bulk_to_the_bulk_feeder(
    session: AsyncSession, tenant: Tenant
) -> None:
    await queue_messages(session, tenant, 5, lane=Lane.bulk)
    assert await upkeep.dispatch_due(session, limit=100) == 0
    assert jobs(session) == []


async def test_the_bulk_feeder_hands_over_batches(session: AsyncSession, tenant: Tenant) -> None:
    await queue_messages(session, tenant, 250, lane=Lane.bulk)
    assert outbox_of(session).pending == []  # bulk waits parked
    assert await upkeep.feed_bulk(session, room=1000, batch_size=100) == 250
    assert [(job.queue, len(job.kwargs["ids"])) for job in jobs(session)] == [
        (Lane.bulk, 100),
        (Lane.bulk, 100),
        (Lane.bulk, 50),
    ]
    assert await upkeep.feed_bulk(session, room=1000, batch_size=100) == 0


async def test_the_bulk_feeder_takes_tenants_in_turn(
    session: AsyncSession, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    """A tenant with a big backlog does not get ahead of a small one: equal shares, interleaved."""
    big = await queue_messages(session, tenant, 600, lane=Lane.bulk)
    other = await make_tenant()
    small = await queue_messages(session, other, 150, lane=Lane.bulk)
    fed = await upkeep.feed_bulk(session, room=400, batch_size=100)
    assert fed == 200 + 150
    owner = {str(i): "big" for i in big} | {str(i): "small" for i in small}
    order = [owner[job.kwargs["ids"][0]] for job in jobs(session)]
    assert order in (["big", "small", "big", "small"], ["small", "big", "small", "big"])
    sizes = [len(job.kwargs["ids"]) for job in jobs(session)]
    assert sorted(sizes) == [50, 100, 100, 100]


async def test_the_bulk_feeder_respects_not_before(session: AsyncSession, tenant: Tenant) -> None:
    ids = await queue_messages(session, tenant, 3, lane=Lane.bulk)
    await age(session, ids[:2], not_before="now() + interval '1 minute'")
    assert await upkeep.feed_bulk(session, room=1000, batch_size=100) == 1


async def test_sweeper_releases_expired_leases(session: AsyncSession, tenant: Tenant) -> None:
    dead, alive = await queue_messages(session, tenant, 2)
    await age(session, [dead], status="'sending'", lease_until="now() - interval '1 s'")
    await age(session, [alive], status="'sending'", lease_until="now() + interval '60 s'")

    report = await upkeep.sweep(
        session, depths={}, older_than_seconds=60, limit=100, max_attempts=8
    )

    assert report.expired_leases == 1
    found = await rows(session, [dead, alive])
    assert (found[dead].status, found[dead].enqueued_at, found[dead].lease_until) == (
        "retrying",
        None,
        None,
    )
    assert found[alive].status == "sending"


async def test_sweeper_gives_up_on_a_message_whose_leases_keep_expiring(
    session: AsyncSession, tenant: Tenant
) -> None:
    """A message that kills every worker that touches it must not loop forever."""
    [poison] = await queue_messages(session, tenant, 1)
    await age(
        session,
        [poison],
        status="'sending'",
        attempt_count="8",
        lease_until="now() - interval '1 s'",
    )
    report = await upkeep.sweep(session, depths={}, older_than_seconds=60, limit=10, max_attempts=8)
    assert (report.expired_leases, report.failed) == (1, 1)
    row = (await rows(session, [poison]))[poison]
    assert (row.status, row.error_code) == ("failed", "lease_expired")
    assert row.error == "no worker recorded an outcome in 8 attempts; each lease expired"


async def test_sweeper_parks_enqueued_rows_the_broker_lost(
    session: AsyncSession, tenant: Tenant
) -> None:
    old, fresh = await queue_messages(session, tenant, 2)
    await age(session, [old], enqueued_at="now() - interval '120 s'")

    report = await upkeep.sweep(
        session, depths={Lane.transactional: 0}, older_than_seconds=60, limit=10, max_attempts=8
    )

    assert report.lost == 1
    found = await rows(session, [old, fresh])
    assert found[old].enqueued_at is None
    assert found[fresh].enqueued_at is not None


async def test_sweeper_trusts_a_queue_that_still_holds_messages(
    session: AsyncSession, tenant: Tenant
) -> None:
    """A long backlog is not a loss: rows waiting behind it are not published twice."""
    [old] = await queue_messages(session, tenant, 1)
    await age(session, [old], enqueued_at="now() - interval '120 s'")

    report = await upkeep.sweep(
        session,
        depths={Lane.transactional: 5000},
        older_than_seconds=60,
        limit=10,
        max_attempts=8,
    )

    assert report.lost == 0
    assert (await rows(session, [old]))[old].enqueued_at is not None
