"""The worker's delivery service, awaited directly: claims, outcomes, fencing, build failures,
and the database going away while a batch is in flight."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from mailsvc.auth.service import tenant_info
from mailsvc.config import async_database_url
from mailsvc.db import Database
from mailsvc.delivery.chain import ProviderChain
from mailsvc.delivery.errors import PermanentDeliveryError
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.delivery.smtp import SmtpConfig, SmtpTransport
from mailsvc.delivery.transport import Receipt
from mailsvc.messages import schemas
from mailsvc.messages.service import accept_messages, templated_message
from mailsvc.models import Attempt, Message, MessageEvent, MessageStatus, Template, Tenant
from mailsvc.sending import pipeline
from mailsvc.sending.lanes import Lane
from mailsvc.sending.repository import AttemptRecord, DeliveryRepository, Outcome
from tests.factories import queue_messages
from tests.support.processes import eventually
from tests.support.servers import TestServers


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

    report = await pipeline.deliver(database, transport, POLICY, ids, lease_seconds=60)
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
    first = await pipeline.deliver(database, transport, POLICY, ids, lease_seconds=60)
    again = await pipeline.deliver(database, transport, POLICY, ids, lease_seconds=60)
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


async def test_a_claim_whose_answer_was_lost_is_taken_back_with_its_token(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    """The connection can die after the claim commits, before its answer arrives: the worker
    claims again with the same token and gets the rows back, as the same attempt."""
    [message_id] = await queue_messages(session, tenant, 1)
    ours, theirs = uuid.uuid4(), uuid.uuid4()
    async with database.transaction() as tx:
        await DeliveryRepository(tx).claim([message_id], lease_seconds=60, token=ours)
    async with database.transaction() as tx:
        assert (
            await DeliveryRepository(tx).claim([message_id], lease_seconds=60, token=theirs) == []
        )
    async with database.transaction() as tx:
        [again] = await DeliveryRepository(tx).claim([message_id], lease_seconds=60, token=ours)
    assert again.attempt == 1
    row = await session.get(Message, message_id, populate_existing=True)
    assert row is not None
    assert (row.status, row.attempt_count, row.claim_token) == ("sending", 1, ours)


async def test_a_batch_written_again_after_its_answer_was_lost_is_recorded_once(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    [message_id] = await queue_messages(session, tenant, 1)
    async with database.transaction() as tx:
        [claimed] = await DeliveryRepository(tx).claim([message_id], lease_seconds=60)
    outcome = Outcome(
        message_id=message_id, attempt=claimed.attempt, status=MessageStatus.sent, provider="smtp"
    )
    now = claimed.created_at + timedelta(seconds=1)
    attempt = AttemptRecord(message_id, 1, "smtp", now, now, "sent", None, None)
    async with database.transaction() as tx:
        assert await DeliveryRepository(tx).record([outcome], [attempt]) == {message_id}
    async with database.transaction() as tx:  # the first write's answer never came
        assert await DeliveryRepository(tx).record([outcome], [attempt], again=True) == {message_id}
    tries = await session.execute(select(Attempt.number).where(Attempt.message_id == message_id))
    assert list(tries.scalars()) == [1]
    events = await session.execute(
        select(MessageEvent.type).where(MessageEvent.message_id == message_id)
    )
    assert sorted(events.scalars()) == ["accepted", "sent"]


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
            [Outcome(message_id, 1, MessageStatus.sent, provider="smtp")], []
        )
    assert current == set()
    row = await session.get(Message, message_id, populate_existing=True)
    assert row is not None
    assert row.status == "sending"


class ExplodingTransport:
    name = "smtp"

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []

    async def send(self, message: OutgoingEmail) -> Receipt:
        raise PermanentDeliveryError("smtp_550", "5.1.1 mailbox unavailable")

    async def close(self) -> None:
        return None


async def test_a_permanent_refusal_fails_the_message_with_its_reason(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    [message_id] = await queue_messages(session, tenant, 1)
    report = await pipeline.deliver(
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
    report = await pipeline.deliver(database, transport, POLICY, ids, lease_seconds=60)
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
        lane=Lane.scheduled,
    )
    bad = templated_message(
        info,
        template="welcome",
        to=schemas.Address(email="bob@example.net"),
        variables={"contact": {"email": "bob@example.net", "name": None, "attributes": {}}},
        lane=Lane.scheduled,
    )
    await accept_messages(session, [good, bad])
    await session.commit()
    transport = smtp(controller)
    report = await pipeline.deliver(
        database, transport, POLICY, [good.id, bad.id], lease_seconds=60
    )
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
        lane=Lane.scheduled,
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
                status=MessageStatus.retrying,
                error_code="421",
                error="try later",
                not_before=first.created_at - timedelta(hours=1),  # due
                subject="Happy birthday, Ada",
            )
        ],
        [],
    )
    transport = smtp(controller)
    report = await pipeline.deliver(database, transport, POLICY, [message.id], lease_seconds=60)
    await transport.close()
    assert report.sent == 1
    [eml] = outbox.glob("*.eml")
    sent = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert "Ada" in sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert sent.get_body(("html",)) is not None


# -- the database going away while a batch is in flight ------------------------------------------

WORKER = "mailsvc-test-worker"  # the application_name of the delivering worker's connections


class HeldSmtp:
    """The SMTP sink, with every send held until the test lets them go: the batch is in flight
    (claimed, not yet recorded) for as long as the test needs."""

    name = "smtp"

    def __init__(self, controller: Controller) -> None:
        self.smtp = SmtpTransport(SmtpConfig(host="127.0.0.1", port=controller.port))
        self.gate = asyncio.Event()

    async def send(self, message: OutgoingEmail) -> Receipt:
        await self.gate.wait()
        return await self.smtp.send(message)

    async def close(self) -> None:
        await self.smtp.close()


@pytest_asyncio.fixture
async def worker_database(servers: TestServers) -> AsyncIterator[Database]:
    """A worker's committing database, its connections named so that a test can kill them."""
    engine = create_async_engine(
        async_database_url(servers.database_url),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": WORKER}},
    )
    yield Database(engine, async_sessionmaker(engine, expire_on_commit=False))
    await engine.dispose()


async def _rows(database: Database, ids: Sequence[uuid.UUID]) -> list[tuple[str, int]]:
    async with database.sessionmaker() as session:
        rows = await session.execute(
            select(Message.status, Message.attempt_count)
            .where(Message.id.in_(ids))
            .order_by(Message.id)
        )
        return [(row.status, row.attempt_count) for row in rows]


async def _attempts(database: Database, ids: Sequence[uuid.UUID]) -> list[tuple[int, str, str]]:
    async with database.sessionmaker() as session:
        rows = await session.execute(
            select(Attempt.number, Attempt.provider, Attempt.outcome).where(
                Attempt.message_id.in_(ids)
            )
        )
        return sorted((row.number, row.provider, row.outcome) for row in rows)


async def _each_sent_once_and_recorded(
    report: pipeline.DeliveryReport, database: Database, ids: Sequence[uuid.UUID], outbox: Path
) -> None:
    count = len(ids)
    assert (report.claimed, report.sent, report.stale, report.unrecorded) == (count, count, 0, 0)
    assert await _rows(database, ids) == [("sent", 1)] * len(ids)
    assert await _attempts(database, ids) == [(1, "smtp", "sent")] * len(ids)
    copies = _copies(outbox)
    assert (len(copies), set(copies.values())) == (len(ids), {1})


def _copies(outbox: Path) -> Counter[str]:
    """Message-ID → how many copies the sink received."""
    return Counter(
        str(email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["Message-ID"])
        for f in outbox.glob("*.eml")
    )


async def _claimed_and_held(live_database: Database, ids: Sequence[uuid.UUID], count: int) -> None:
    async def claimed() -> bool:
        return await _rows(live_database, ids) == [("sending", 1)] * count

    await eventually(claimed, what="the batch claimed")


KEPT = "outcomes not written: the database is unavailable; keeping them and trying again (%s)"
WRITTEN = "outcomes written: the database answers again"
GIVEN_UP = (
    "outcomes not written: the database did not answer before the claim's lease ran out; "
    "the sweeper takes these messages back after it"
)


def _logged(caplog: pytest.LogCaptureFixture, level: int) -> list[tuple[object, dict[str, Any]]]:
    """(message template, fields) of the delivery's lines at `level` and above."""
    return [
        (r.msg, getattr(r, "fields", {}))
        for r in caplog.records
        if r.levelno >= level
        and r.name == "mailsvc.sending.pipeline"
        and r.msg != "message %s"  # a line per message recorded
    ]


async def test_outcomes_whose_connection_was_killed_are_written_on_a_fresh_one(
    worker_database: Database,
    live_database: Database,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller, outbox = smtp_sink
    caplog.set_level(logging.INFO)
    async with live_database.transaction() as tx:
        ids = await queue_messages(tx, live_tenant, 5)
    transport = HeldSmtp(controller)
    delivery = asyncio.create_task(
        pipeline.deliver(worker_database, ProviderChain([transport]), POLICY, ids, lease_seconds=60)
    )
    await _claimed_and_held(live_database, ids, 5)
    async with live_database.autocommit() as admin:
        killed = await admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": WORKER},
        )
        assert set(killed.scalars()) == {True}  # the claim's connection among them
    transport.gate.set()
    report = await asyncio.wait_for(delivery, 30)
    await transport.close()

    await _each_sent_once_and_recorded(report, live_database, ids, outbox)
    [(kept, refused), (written, fields)] = _logged(caplog, logging.INFO)
    assert (kept, written) == (KEPT, WRITTEN)
    # Written a few at a time: how many had come back when the first write went out is timing.
    assert 1 <= refused["outcomes"] <= 5
    assert (fields["outcomes"], fields["tries"]) == (refused["outcomes"], 1)  # the server is up
    assert [r for r in caplog.records if r.exc_info] == []


async def test_outcomes_are_kept_through_a_database_crash_and_written_once_it_is_back(
    servers: TestServers,
    worker_database: Database,
    live_database: Database,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    control = servers.database_control()
    controller, outbox = smtp_sink
    caplog.set_level(logging.INFO)
    async with live_database.transaction() as tx:
        ids = await queue_messages(tx, live_tenant, 5)
    transport = HeldSmtp(controller)
    delivery = asyncio.create_task(
        pipeline.deliver(worker_database, ProviderChain([transport]), POLICY, ids, lease_seconds=60)
    )
    await _claimed_and_held(live_database, ids, 5)
    await asyncio.to_thread(control.crash)
    try:
        transport.gate.set()

        async def tried_and_waiting() -> bool:  # the sends went out and the first write failed
            return len(_copies(outbox)) == 5 and len(_logged(caplog, logging.WARNING)) == 1

        await eventually(tried_and_waiting, what="the sends out and the write refused")
        assert not delivery.done()
    finally:
        await asyncio.to_thread(control.start)
    report = await asyncio.wait_for(delivery, 30)
    await transport.close()

    await _each_sent_once_and_recorded(report, live_database, ids, outbox)
    [(kept, refused), (written, fields)] = _logged(caplog, logging.INFO)
    assert (kept, written) == (KEPT, WRITTEN)
    assert fields["outcomes"] == refused["outcomes"]
    assert fields["tries"] > 1  # refused while the server was down
    assert [r for r in caplog.records if r.exc_info] == []


async def test_outcomes_the_database_never_takes_are_given_up_at_the_deadline(
    servers: TestServers,
    worker_database: Database,
    live_database: Database,
    live_tenant: Tenant,
    smtp_sink: tuple[Controller, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the deadline (the task's time limit, or the lease) the task ends; the rows stay
    claimed until the lease runs out, then the sweeper takes them back."""
    control = servers.database_control()
    controller, outbox = smtp_sink
    caplog.set_level(logging.INFO)
    async with live_database.transaction() as tx:
        ids = await queue_messages(tx, live_tenant, 3)
    transport = HeldSmtp(controller)
    delivery = asyncio.create_task(
        pipeline.deliver(
            worker_database,
            ProviderChain([transport]),
            POLICY,
            ids,
            lease_seconds=60,
            deadline=time.monotonic() + 3,
        )
    )
    await _claimed_and_held(live_database, ids, 3)
    await asyncio.to_thread(control.crash)
    try:
        transport.gate.set()
        report = await asyncio.wait_for(delivery, 30)
    finally:
        await asyncio.to_thread(control.start)
    await transport.close()

    assert (report.claimed, report.sent, report.stale, report.unrecorded) == (3, 0, 0, 3)
    assert await _rows(live_database, ids) == [("sending", 1)] * 3
    assert await _attempts(live_database, ids) == []
    copies = _copies(outbox)
    assert (len(copies), set(copies.values())) == (3, {1})
    [(kept, _), (given_up, fields)] = _logged(caplog, logging.INFO)
    assert (kept, given_up) == (KEPT, GIVEN_UP)
    assert (fields["outcomes"], sorted(fields["message_ids"])) == (3, sorted(map(str, ids)))
    assert [r for r in caplog.records if r.exc_info] == []


async def test_a_providers_reply_that_postgresql_cannot_store_is_kept_readable(
    database: Database, session: AsyncSession, tenant: Tenant
) -> None:
    """A relay's refusal text is outside input we can refuse: NUL or a lone surrogate in it
    failed the outcome write after the send, so the message went out again after its lease."""
    [message_id] = await queue_messages(session, tenant, 1)
    async with database.transaction() as tx:
        [claimed] = await DeliveryRepository(tx).claim([message_id], lease_seconds=60)
    now = datetime.now(UTC)
    reply = "550 no\x00such\udcffuser"
    async with database.transaction() as tx:
        current = await DeliveryRepository(tx).record(
            [
                Outcome(
                    message_id,
                    claimed.attempt,
                    MessageStatus.failed,
                    "smtp",
                    error_code="smtp_550",
                    error=reply,
                )
            ],
            [AttemptRecord(message_id, 1, "smtp", now, now, "permanent_error", "smtp_550", reply)],
        )
    assert current == {message_id}
    row = await session.get(Message, message_id, populate_existing=True)
    assert row is not None
    assert (row.status, row.error) == ("failed", "550 no\ufffdsuch\ufffduser")
    attempt = (
        await session.execute(select(Attempt).where(Attempt.message_id == message_id))
    ).scalar_one()
    assert attempt.error == "550 no\ufffdsuch\ufffduser"
