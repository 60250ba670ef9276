"""Delivering claimed messages: a list of stages over a batch, from the claim to the record.

No transaction is held open while a provider is called: the claim commits first (its lease
keeps other workers off the rows), and the outcomes are written as the sends complete, a few at
a time. Each message goes through the provider chain; what the chain answers, with the retry
policy, decides whether it is sent, tried again later (not_before), or failed. Outcomes the
database could not take are kept and written again while the lease lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from mailsvc.db import Database, database_unavailable, describe_outage
from mailsvc.delivery.chain import ChainResult, ProviderChain, Try
from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.kit.time import utcnow
from mailsvc.metrics import MESSAGES_FAILED, MESSAGES_SENT
from mailsvc.models import MessageStatus
from mailsvc.ratelimit.throttle import Throttle
from mailsvc.sending.repository import (
    AttemptRecord,
    ClaimedMessage,
    DeliveryRepository,
    Outcome,
    new_claim_token,
)
from mailsvc.templates.engine import Rendered
from mailsvc.templates.service import TemplateRenderer

log = logging.getLogger(__name__)


# Outcomes are written in sets as sends complete: a worker killed mid-batch sends again only
# what it had not written yet.
RECORD_EVERY = 50
RECORD_INTERVAL_SECONDS = 0.2
# Writing outcomes again while the database is away: the first try at once (a dropped
# connection alone is common), then waits growing to the cap.
REWRITE_FIRST_WAIT_SECONDS = 0.2
REWRITE_MAX_WAIT_SECONDS = 2.0
# Claiming again while the database is away: soon, since a restart takes seconds.
CLAIM_FIRST_WAIT_SECONDS = 0.2
CLAIM_MAX_WAIT_SECONDS = 1.0


@dataclass
class DeliveryReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    deferred: int = 0  # no rate-limit token yet: parked, not attempted
    stale: int = 0
    unrecorded: int = 0  # the database stayed away until the lease ran out: sent again later
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class Delivery:
    """One try at delivering a batch: what the stages work with, and what they have done."""

    ids: Sequence[uuid.UUID]
    token: uuid.UUID  # the claim's: claiming again with it takes back what an earlier try took
    lease_seconds: int
    chain: ProviderChain
    policy: RetryPolicy
    throttle: Throttle | None
    connection: AsyncConnection  # autocommit: the claim, the templates, the first writes
    recorder: OutcomeWriter
    renderer: TemplateRenderer = field(default_factory=TemplateRenderer)
    report: DeliveryReport = field(default_factory=DeliveryReport)
    sending: bool = False  # from the first send on, an outage is the recorder's to ride out
    tenants: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # of each claimed message


@dataclass(frozen=True)
class Batch:
    """The messages a delivery still has in hand between two stages.

    A stage that finishes a message early (parked for a rate-limit slot, failed to render or to
    build) hands its outcome to the recorder and leaves it out of the batch it returns.
    """

    messages: Sequence[ClaimedMessage] = ()
    emails: Mapping[uuid.UUID, OutgoingEmail] = field(default_factory=dict)  # by id, once built


Stage = Callable[[Delivery, Batch], Awaitable[Batch]]


async def claim(delivery: Delivery, batch: Batch) -> Batch:
    """Take the rows that are due and unclaimed; a duplicate or stale task gets none."""
    claimed = await DeliveryRepository(delivery.connection).claim(
        delivery.ids, lease_seconds=delivery.lease_seconds, token=delivery.token
    )
    delivery.report.claimed = len(claimed)
    delivery.tenants = {message.id: message.tenant_id for message in claimed}
    return Batch(claimed)


async def admit(delivery: Delivery, batch: Batch) -> Batch:
    """Keep what the rate limits let through now. The rest are parked at their slots at once,
    so no worker waits holding them."""
    if delivery.throttle is None or not batch.messages:
        return batch
    admission = await delivery.throttle.admit(
        batch.messages,
        key=lambda m: (m.tenant_id, m.lane),
        provider=await delivery.chain.preferred(),
    )
    if admission.deferred:
        deferred = [_deferred(message, wait) for message, wait in admission.deferred]
        if await delivery.recorder.write(deferred, []) is None:
            return Batch()  # the database stayed away: what is sent would go out twice
        delivery.report.deferred = len(deferred)
    return Batch(admission.admitted)


async def render(delivery: Delivery, batch: Batch) -> Batch:
    """Render the messages a scheduled job left unrendered; a template that fails never will."""
    pending = [m for m in batch.messages if m.template is not None]
    if not pending:
        return batch
    started = utcnow()
    results = await delivery.renderer.render_many(
        delivery.connection, [(m.tenant_id, m.template or "", m.variables or {}) for m in pending]
    )
    rendered: dict[uuid.UUID, ClaimedMessage] = {}
    failed: set[uuid.UUID] = set()
    for message, result in zip(pending, results, strict=True):
        if isinstance(result, Rendered):
            rendered[message.id] = replace(
                message, subject=result.subject, text_body=result.text, html_body=result.html
            )
            continue
        log.warning(
            "template failed to render",
            extra={
                **about(message.id, message.tenant_id),
                "fields": {"template": message.template},
            },
        )
        error = PermanentDeliveryError("template_error", f"template {message.template!r}: {result}")
        delivery.recorder.hold(*_failed_before_sending(message, "render", error, started))
        failed.add(message.id)
    return Batch([rendered.get(m.id, m) for m in batch.messages if m.id not in failed])


async def suppress(delivery: Delivery, batch: Batch) -> Batch:
    """Leave out the messages to suppressed addresses. A no-op until the suppression list exists.

    The next issue fills it: one query on `delivery.connection` for the batch's recipients
    against the tenant's suppression list, a `suppressed` outcome held on the recorder for each
    message it leaves out (no attempt is made), and the rest returned.
    """
    return batch


async def build(delivery: Delivery, batch: Batch) -> Batch:
    """Build each message's MIME once, shared by every provider that needs it.

    A message that cannot be built never will be: it fails alone, not the task."""
    started = utcnow()
    built: list[ClaimedMessage] = []
    emails: dict[uuid.UUID, OutgoingEmail] = {}
    for message in batch.messages:
        try:
            email = outgoing_email(message)
            ensure_raw(email)
        except Exception as exc:
            log.exception("message could not be built", extra=about(message.id, message.tenant_id))
            failure = PermanentDeliveryError("build_failed", f"{type(exc).__name__}: {exc}")
            delivery.recorder.hold(*_failed_before_sending(message, "build", failure, started))
            continue
        built.append(message)
        emails[message.id] = email
    return Batch(built, emails)


async def send(delivery: Delivery, batch: Batch) -> Batch:
    """Send the whole batch concurrently, handing each outcome to the recorder as it comes.

    The recorder writes them a few at a time: a worker that dies mid-batch leaves unrecorded
    (and so sent again) only what was in flight, not the whole batch. While a write waits for
    the database, the other sends go on.
    """
    delivery.sending = True
    recorder = delivery.recorder
    sends = [
        asyncio.ensure_future(_attempt(delivery.chain, delivery.policy, m, batch.emails[m.id]))
        for m in batch.messages
    ]
    last_write = time.monotonic()
    for done in asyncio.as_completed(sends):
        recorder.hold(*await done)
        due = time.monotonic() - last_write >= RECORD_INTERVAL_SECONDS
        if len(recorder.waiting) >= RECORD_EVERY or due:
            await recorder.flush()
            last_write = time.monotonic()
    return Batch()


async def record(delivery: Delivery, batch: Batch) -> Batch:
    """Write what is still held (the last sends, failures before sending), and report."""
    recorder = delivery.recorder
    await recorder.flush()
    delivery.report.unrecorded = recorder.report_given_up()
    _report(
        delivery.report, recorder.outcomes, recorder.attempts, recorder.current, delivery.tenants
    )
    return batch


# The stages, in order: each takes the batch and returns what goes on. A new concern
# (attachments, DKIM signing) is one more function here.
PIPELINE: Final[tuple[Stage, ...]] = (claim, admit, render, suppress, build, send, record)


async def deliver(
    database: Database,
    chain: ProviderChain,
    policy: RetryPolicy,
    ids: Sequence[uuid.UUID],
    *,
    lease_seconds: int,
    throttle: Throttle | None = None,
    deadline: float | None = None,
    claim_wait_until: float | None = None,
) -> DeliveryReport:
    """Claim, send and record these messages.

    While the database is unavailable before anything is sent (at the claim, usually), the
    delivery is tried again, polling, until `claim_wait_until` (time.monotonic()); then the error
    is raised, nothing sent. `deadline` is when the caller must be done (a task's time limit):
    outcomes the database has not taken by then, or by the end of the lease, are given up on.
    """
    # One token for every try: a claim that committed without its answer reaching us is ours.
    token = new_claim_token()
    wait = CLAIM_FIRST_WAIT_SECONDS
    waiting = False
    while True:
        try:
            return await _deliver(
                database,
                chain,
                policy,
                ids,
                lease_seconds=lease_seconds,
                throttle=throttle,
                deadline=deadline,
                token=token,
            )
        except _NothingSent as stopped:
            if not waiting:
                log.warning(
                    "messages not claimed: the database is unavailable; waiting for it (%s)",
                    describe_outage(stopped.error),
                    extra={"fields": {"messages": len(ids)}},
                )
                waiting = True
            if claim_wait_until is None or time.monotonic() + wait > claim_wait_until:
                raise stopped.error from None
        await asyncio.sleep(wait)
        wait = min(wait * 2, CLAIM_MAX_WAIT_SECONDS)


async def _deliver(
    database: Database,
    chain: ProviderChain,
    policy: RetryPolicy,
    ids: Sequence[uuid.UUID],
    *,
    lease_seconds: int,
    throttle: Throttle | None,
    deadline: float | None,
    token: uuid.UUID,
) -> DeliveryReport:
    """One try: the stages in order, on one autocommit connection."""
    claimed_at = time.monotonic()
    # A write that lands later is still fenced by the attempt number; the margin keeps us from
    # writing while the sweeper may be taking the rows back.
    give_up_at = claimed_at + lease_seconds - min(5.0, lease_seconds / 4)
    if deadline is not None:
        give_up_at = min(give_up_at, deadline)
    delivery: Delivery | None = None
    try:
        async with database.autocommit() as connection:
            delivery = Delivery(
                ids=ids,
                token=token,
                lease_seconds=lease_seconds,
                chain=chain,
                policy=policy,
                throttle=throttle,
                connection=connection,
                recorder=OutcomeWriter(database, connection, give_up_at=give_up_at),
            )
            batch = Batch()
            for stage in PIPELINE:
                batch = await stage(delivery, batch)
            return delivery.report
    except Exception as exc:
        if database_unavailable(exc) and (delivery is None or not delivery.sending):
            raise _NothingSent(exc) from exc
        raise


class _NothingSent(Exception):
    """The database went away before any message was sent: delivering again is safe."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class OutcomeWriter:
    """Writes a batch's outcomes on the claim's connection, one statement each time.

    If the database drops that connection, the outcomes are kept (the messages were sent:
    losing their outcomes sends them again after the lease) and written again on fresh
    connections until `give_up_at` (time.monotonic()), a little before the lease runs out.
    """

    def __init__(self, database: Database, connection: AsyncConnection, *, give_up_at: float):
        self.database = database
        self.repo: DeliveryRepository | None = DeliveryRepository(connection)
        self.give_up_at = give_up_at
        self.outcomes: list[Outcome] = []  # recorded by `record`
        self.attempts: list[AttemptRecord] = []
        self.current: set[uuid.UUID] = set()  # of those, the ids whose claim was current
        self.given_up: list[Outcome] = []  # their claims run out, then the sweeper has them
        self.waiting: list[Outcome] = []  # held for the next write
        self.waiting_attempts: list[AttemptRecord] = []

    def hold(self, outcome: Outcome, attempts: list[AttemptRecord]) -> None:
        """Keep an outcome for the next write (`flush`)."""
        self.waiting.append(outcome)
        self.waiting_attempts += attempts

    async def flush(self) -> None:
        """Write the outcomes held so far, in one statement."""
        if self.waiting:
            outcomes, attempts = self.waiting, self.waiting_attempts
            self.waiting, self.waiting_attempts = [], []
            await self.record(outcomes, attempts)

    async def record(self, outcomes: list[Outcome], attempts: list[AttemptRecord]) -> None:
        written = await self.write(outcomes, attempts)
        if written is not None:
            self.current |= written
            self.outcomes += outcomes
            self.attempts += attempts

    async def write(
        self, outcomes: Sequence[Outcome], attempts: Sequence[AttemptRecord]
    ) -> set[uuid.UUID] | None:
        """The ids whose claim was current; None when the outcomes could not be written."""
        if self.given_up:  # the database stayed away past the deadline: no more waiting
            self.given_up += outcomes
            return None
        failed = False
        if self.repo is not None:
            try:
                return await self.repo.record(outcomes, attempts)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # A dead connection cannot be used again: every later write takes a fresh one.
                self.repo = None
                failed = True
                log.warning(
                    "outcomes not written: the database is unavailable; keeping them and trying "
                    "again (%s)",
                    describe_outage(exc),
                    extra={"fields": {"outcomes": len(outcomes)}},
                )
        return await self._write_again(outcomes, attempts, failed=failed)

    async def _write_again(
        self, outcomes: Sequence[Outcome], attempts: Sequence[AttemptRecord], *, failed: bool
    ) -> set[uuid.UUID] | None:
        started = time.monotonic()
        wait = 0.0
        tries = 0
        while True:
            tries += 1
            try:
                async with self.database.autocommit() as connection:
                    current = await DeliveryRepository(connection).record(
                        outcomes, attempts, again=True
                    )
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                wait = min(max(wait * 2, REWRITE_FIRST_WAIT_SECONDS), REWRITE_MAX_WAIT_SECONDS)
                if time.monotonic() + wait < self.give_up_at:
                    await asyncio.sleep(wait)
                    continue
                self.given_up = list(outcomes)
                return None
            if failed or tries > 1:
                log.info(
                    "outcomes written: the database answers again",
                    extra={
                        "fields": {
                            "outcomes": len(outcomes),
                            "tries": tries,
                            "seconds": round(time.monotonic() - started, 1),
                        }
                    },
                )
            return current

    def report_given_up(self) -> int:
        """One line for what the database never took, the messages a sweep will send again."""
        if self.given_up:
            log.warning(
                "outcomes not written: the database did not answer before the claim's lease ran "
                "out; the sweeper takes these messages back after it",
                extra={
                    "fields": {
                        "outcomes": len(self.given_up),
                        "message_ids": [str(o.message_id) for o in self.given_up],
                    }
                },
            )
        return len(self.given_up)


def _mailbox(value: dict[str, Any]) -> Mailbox:
    return Mailbox(email=value["email"], name=value.get("name"))


def outgoing_email(message: ClaimedMessage) -> OutgoingEmail:
    if message.subject is None:  # never sent blank: a template renders it first
        raise ValueError("the message has no subject")
    return OutgoingEmail(
        message_id=message.id,
        message_id_header=message.message_id_header,
        sender=_mailbox(message.sender),
        to=[_mailbox(a) for a in message.to],
        cc=[_mailbox(a) for a in message.cc],
        bcc=[_mailbox(a) for a in message.bcc],
        reply_to=_mailbox(message.reply_to) if message.reply_to else None,
        subject=message.subject,
        date=message.created_at,
        text=message.text_body,
        html=message.html_body,
        headers=dict(message.headers),
        tags=list(message.tags),
    )


def _kind(error: DeliveryError | None) -> str:
    if error is None:
        return "sent"  # an attempt's outcome, not a message status
    return "transient_error" if isinstance(error, TransientDeliveryError) else "permanent_error"


def _attempt_record(message: ClaimedMessage, attempt: Try) -> AttemptRecord:
    return AttemptRecord(
        message_id=message.id,
        number=message.attempt,
        provider=attempt.provider,
        started_at=attempt.started_at,
        finished_at=attempt.finished_at,
        outcome=_kind(attempt.error),
        error_code=attempt.error.code if attempt.error else None,
        error=(attempt.error.reason if attempt.error else attempt.note or "")[:2000] or None,
    )


def _outcome(message: ClaimedMessage, result: ChainResult, policy: RetryPolicy) -> Outcome:
    """Where the message goes after this attempt: sent, retrying later, or failed."""
    if result.receipt is not None:
        return Outcome(
            message_id=message.id,
            attempt=message.attempt,
            status=MessageStatus.sent,
            provider=result.provider,
            provider_message_id=result.receipt.provider_message_id,
        )
    error = result.failure()
    last_provider = result.tries[-1].provider if result.tries else None
    if isinstance(error, PermanentDeliveryError) or policy.exhausted(message.attempt):
        reason = error.reason
        if not isinstance(error, PermanentDeliveryError):
            reason = f"gave up after {message.attempt} attempts; the last error: {reason}"
        return Outcome(
            message_id=message.id,
            attempt=message.attempt,
            status=MessageStatus.failed,
            provider=last_provider,
            error_code=error.code,
            error=reason[:2000],
        )
    wait = policy.delay(message.attempt, retry_after=result.retry_after)
    return Outcome(
        message_id=message.id,
        attempt=message.attempt,
        status=MessageStatus.retrying,
        provider=last_provider,
        error_code=error.code,
        error=error.reason[:2000],
        not_before=utcnow() + timedelta(seconds=wait),
    )


def _failed_before_sending(
    message: ClaimedMessage, stage: str, error: PermanentDeliveryError, started: datetime
) -> tuple[Outcome, list[AttemptRecord]]:
    result = ChainResult(tries=[Try(stage, started, utcnow(), error)], error=error)
    return _outcome(message, result, RetryPolicy()), [
        _attempt_record(message, t) for t in result.tries
    ]


async def _attempt(
    chain: ProviderChain, policy: RetryPolicy, message: ClaimedMessage, email: OutgoingEmail
) -> tuple[Outcome, list[AttemptRecord]]:
    started = utcnow()
    result = await chain.send(email)
    if not result.tries:  # every circuit open: the attempt still counts, and is recorded
        result.tries.append(Try("none", started, utcnow(), result.failure()))
    outcome = _outcome(message, result, policy)
    if message.template is not None:  # rendered here: show the subject on the row
        outcome = replace(outcome, subject=message.subject)
    return outcome, [_attempt_record(message, t) for t in result.tries]


def _deferred(message: ClaimedMessage, wait_seconds: float) -> Outcome:
    """No token for it yet: back where it was, parked until its slot."""
    return Outcome(
        message_id=message.id,
        attempt=message.attempt,
        status=MessageStatus.queued if message.attempt == 1 else MessageStatus.retrying,
        not_before=utcnow() + timedelta(seconds=wait_seconds),
        deferred=True,
    )


def about(message_id: uuid.UUID, tenant_id: uuid.UUID | None) -> dict[str, object]:
    """The fields of a log line about one message (the task's id comes from its context)."""
    fields: dict[str, object] = {"message_id": str(message_id)}
    if tenant_id is not None:
        fields["tenant"] = str(tenant_id)
    return fields


def _report(
    report: DeliveryReport,
    outcomes: list[Outcome],
    attempts: list[AttemptRecord],
    current: set[uuid.UUID],
    tenants: Mapping[uuid.UUID, uuid.UUID],
) -> None:
    for outcome in outcomes:
        message = about(outcome.message_id, tenants.get(outcome.message_id))
        if outcome.message_id not in current:
            report.stale += 1
            log.warning("outcome not recorded: the claim was taken over", extra=message)
            continue
        if outcome.status == MessageStatus.sent:
            report.sent += 1
            MESSAGES_SENT.labels(outcome.provider).inc()
        elif outcome.status == MessageStatus.retrying:
            report.retrying += 1
        else:
            report.failed += 1
        log.info(
            "message %s",
            outcome.status,
            extra={
                **message,
                "fields": {
                    "provider": outcome.provider,
                    **({"error_code": outcome.error_code} if outcome.error_code else {}),
                },
            },
        )
    for attempt in attempts:
        if attempt.outcome != "sent":
            MESSAGES_FAILED.labels(attempt.provider, attempt.outcome.removesuffix("_error")).inc()
    report.outcomes = outcomes
