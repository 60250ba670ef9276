"""The worker's delivery service, awaited directly: claims, outcomes, fencing, build failures."""

from __future__ import annotations

import asyncio
import email
import email.policy
import uuid
from datetime import timedelta
from pathlib import Path

from aiosmtpd.controller import Controller
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import tenant_info
from mailsvc.db import Database
from mailsvc.delivery.chain import ProviderChain
from mailsvc.delivery.errors import PermanentDeliveryError
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.delivery.smtp import SmtpConfig, SmtpTransport
from mailsvc.delivery.transport import Accepted
from mailsvc.messages import schemas, sending
from mailsvc.messages.repository import DeliveryRepository, Outcome
from mailsvc.messages.service import accept_messages, templated_message
from mailsvc.models import Attempt, Message, MessageEvent, Template, Tenant
from tests.factories import queue_messages


def smtp(controller: Controller) -> ProviderChain:
    return ProviderChain([SmtpTransport(SmtpConfig(host="127.0.0.1", port=controller.port))])


POLICY = RetryPolicy()


async def test_delivers_a_batch_and_records_it_in_sets(
    database: Database,
    session: AsyncSession,
    tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
) -> None:
    controller, outbox = smtp_sink
    ids = await queue_messages(session, tenant, 5)
    transport = smtp(controller)

    report = await sending.deliver(database, transport, POLICY, ids, lease_seconds=60)
    await transport.close()

    assert (report.claimed, report.sent, report.failed, report.stale) == (5, 5, 0, 0)
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == 5
    headers = {
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["Message-ID"]
        for f in files
    }
    rows = (await session.execute(select(Message).where(Message.id.in_(ids)))).scalars().all()
    assert {r.message_id_header for r in rows} == headers
    assert {r.status for r in rows} == {"sent"}
    assert {r.attempt_count for r in rows} == {1}
    assert all(r.lease_until is None and r.sent_at is not None for r in rows)
    attempts = (await session.execute(select(Attempt).where(Attempt.message_id.in_(ids)))).scalars()
    assert sorted((a.number, a.provider, a.outcome) for a in attempts) == [(1, "smtp", "sent")] * 5
    events = (
        await session.execute(select(MessageEvent.type).where(MessageEvent.message_id.in_(ids)))
    ).scalars()
    assert sorted(events) == ["accepted"] * 5 + ["sent"] * 5


async def test_a_duplicate_task_claims_nothing(
    database: Database,
    session: AsyncSession,
    tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
) -> None:
    controller, outbox = smtp_sink
    ids = await queue_messages(session, tenant, 2)
    transport = smtp(controller)
    first = await sending.deliver(database, transport, POLICY, ids, lease_seconds=60)
    again = await sending.deliver(database, transport, POLICY, ids, lease_seconds=60)
    await transport.close()
    assert first.claimed == 2
    assert again.claimed == 0
    assert len(list(outbox.glob("*.eml"))) == 2


async def test_a_live_claim_is_not_taken_but_an_expired_one_is(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    [message_id] = await queue_messages(session, tenant, 1)
    async with database.transaction() as tx:
        [claimed] = await DeliveryRepository(tx).claim([message_id], lease_seconds=60)
    assert claimed.attempt == 1
    async with database.transaction() as tx:
        assert await DeliveryRepository(tx).claim([message_id], lease_seconds=60) == []
    await session.execute(
        update(Message)
        .where(Message.id == message_id)
        .values(lease_until=text("now() - interval '1 second'"))
    )
    await session.commit()
    async with database.transaction() as tx:
        [again] = await DeliveryRepository(tx).claim([message_id], lease_seconds=60)
    assert again.attempt == 2


async def test_a_stale_claim_cannot_record_its_outcome(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    """A worker whose lease expired and was re-claimed is fenced out by the attempt number."""
    [message_id] = await queue_messages(session, tenant, 1)
    async with database.transaction() as tx:
        await DeliveryRepository(tx).claim([message_id], lease_seconds=60)
    await session.execute(update(Message).where(Message.id == message_id).values(attempt_count=2))
    await session.commit()
    async with database.transaction() as tx:
        current = await DeliveryRepository(tx).record(
            [Outcome(message_id=message_id, attempt=1, status="sent", provider="smtp")], []
        )
    assert current == set()
    row = await session.get(Message, message_id, populate_existing=True)
    assert row is not None
    assert row.status == "sending"


class ExplodingTransport:
    name = "smtp"

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []

    async def send(self, message: OutgoingEmail) -> Accepted:
        raise PermanentDeliveryError("smtp_550", "5.1.1 mailbox unavailable")

    async def close(self) -> None:
        return None


async def test_a_permanent_refusal_fails_the_message_with_its_reason(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    [message_id] = await queue_messages(session, tenant, 1)
    report = await sending.deliver(
        database, ProviderChain([ExplodingTransport()]), POLICY, [message_id], lease_seconds=60
    )
    assert report.failed == 1
    row = await session.get(Message, message_id, populate_existing=True)
    assert row is not None
    assert (row.status, row.error_code, row.error) == (
        "failed",
        "smtp_550",
        "5.1.1 mailbox unavailable",
    )


async def test_a_message_that_cannot_be_built_fails_instead_of_crashing_the_task(
    database: Database, session: AsyncSession, tenant: Tenant, smtp_sink: tuple[Controller, Path]
) -> None:
    controller, outbox = smtp_sink
    ids = await queue_messages(session, tenant, 2)
    # A row written by an older version, with an address today's API refuses.
    await session.execute(
        update(Message).where(Message.id == ids[0]).values(to=[{"email": "zoë@example.net"}])
    )
    await session.commit()
    transport = smtp(controller)
    report = await sending.deliver(database, transport, POLICY, ids, lease_seconds=60)
    await transport.close()
    assert (report.sent, report.failed) == (1, 1)
    broken = await session.get(Message, ids[0], populate_existing=True)
    assert broken is not None
    assert broken.status == "failed"
    assert broken.error_code == "build_failed"
    assert len(list(outbox.glob("*.eml"))) == 1


async def test_concurrent_claims_split_the_rows(
    live_database: Database, live_tenant: Tenant
) -> None:
    """Two workers claiming the same ids at once: every row goes to exactly one of them."""
    async with live_database.transaction() as tx:
        ids = await queue_messages(tx, live_tenant, 50)

    async def claim() -> set[uuid.UUID]:
        async with live_database.transaction() as tx:
            return {m.id for m in await DeliveryRepository(tx).claim(ids, lease_seconds=60)}

    first, second = await asyncio.gather(claim(), claim())
    assert first.isdisjoint(second)
    assert first | second == set(ids)


async def test_the_worker_renders_templated_messages_and_fails_those_that_cannot_render(
    database: Database,
    session: AsyncSession,
    tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
) -> None:
    """A recurring job leaves its messages unrendered: the worker renders each one as it sends,
    keeps the subject on the row, and fails (permanently, recorded) one that cannot render."""
    controller, outbox = smtp_sink
    session.add(
        Template(
            tenant_id=tenant.id,
            name="welcome",
            subject="Hi {{ contact.attributes.nickname }}",
            text_body="Welcome aboard.",
            html_body=None,
            transactional=True,
            version=1,
        )
    )
    info = tenant_info(tenant)
    good = templated_message(
        info,
        template="birthday",
        to=schemas.Address(email="ada@example.net", name="Ada"),
        variables={"contact": {"email": "ada@example.net", "name": "Ada", "attributes": {}}},
        lane="scheduled",
    )
    bad = templated_message(
        info,
        template="welcome",
        to=schemas.Address(email="bob@example.net"),
        variables={"contact": {"email": "bob@example.net", "name": None, "attributes": {}}},
        lane="scheduled",
    )
    await accept_messages(session, [good, bad])
    await session.commit()
    transport = smtp(controller)
    report = await sending.deliver(database, transport, POLICY, [good.id, bad.id], lease_seconds=60)
    await transport.close()

    assert (report.claimed, report.sent, report.failed) == (2, 1, 1)
    [eml] = outbox.glob("*.eml")
    sent = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    rows = {
        r.id: r
        for r in (
            await session.execute(
                select(Message)
                .where(Message.id.in_([good.id, bad.id]))
                .execution_options(populate_existing=True)
            )
        ).scalars()
    }
    assert rows[good.id].status == "sent"
    assert rows[good.id].subject == sent["Subject"]
    assert "Ada" in sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (rows[bad.id].status, rows[bad.id].error_code, rows[bad.id].subject) == (
        "failed",
        "template_error",
        None,
    )
    assert "nickname" in (rows[bad.id].error or "")
    attempts = (
        await session.execute(select(Attempt).where(Attempt.message_id == bad.id))
    ).scalars()
    assert [(a.provider, a.outcome) for a in attempts] == [("render", "permanent_error")]


async def test_an_unrendered_message_is_rendered_again_when_it_is_retried(
    database: Database,
    session: AsyncSession,
    tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
) -> None:
    """Only its subject is kept after an attempt, so a retry must render the body again."""
    controller, outbox = smtp_sink
    message = templated_message(
        tenant_info(tenant),
        template="birthday",
        to=schemas.Address(email="ada@example.net", name="Ada"),
        variables={"contact": {"email": "ada@example.net", "name": "Ada", "attributes": {}}},
        lane="scheduled",
    )
    await accept_messages(session, [message])
    await session.commit()
    repo = DeliveryRepository(session)
    [first] = await repo.claim([message.id], lease_seconds=60)
    assert (first.template, first.subject) == ("birthday", None)
    await repo.record(
        [
            Outcome(
                message_id=message.id,
                attempt=1,
                status="retrying",
                error_code="421",
                error="try later",
                not_before=first.created_at - timedelta(hours=1),  # due
                subject="Happy birthday, Ada",
            )
        ],
        [],
    )
    transport = smtp(controller)
    report = await sending.deliver(database, transport, POLICY, [message.id], lease_seconds=60)
    await transport.close()
    assert report.sent == 1
    [eml] = outbox.glob("*.eml")
    sent = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert "Ada" in sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert sent.get_body(("html",)) is not None
