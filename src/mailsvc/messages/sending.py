"""Delivering claimed messages: claim, build, send concurrently, record, in a few statements.

No transaction is held open while a provider is called: the claim commits first (its lease
keeps other workers off the rows), and the outcomes are written afterwards in one statement.
Each message goes through the provider chain; what the chain answers, with the retry policy,
decides whether it is sent, tried again later (not_before), or failed. Outcomes the database
could not take are kept and written again while the lease lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailsvc.db import Database, database_unavailable, describe_outage
from mailsvc.delivery.chain import ChainResult, ProviderChain, Try
from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.kit.time import utcnow
from mailsvc.messages.repository import (
    AttemptRecord,
    ClaimedMessage,
    DeliveryRepository,
    Outcome,
    new_claim_token,
)
from mailsvc.metrics import MESSAGES_FAILED, MESSAGES_SENT
from mailsvc.ratelimit.throttle import Throttle
from mailsvc.templates.engine import Rendered
from mailsvc.templates.service import TemplateRenderer

log = logging.getLogger(__name__)


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


def _address(value: dict[str, Any]) -> Address:
    return Address(email=value["email"], name=value.get("name"))


def outgoing_email(message: ClaimedMessage) -> OutgoingEmail:
    if message.subject is None:  # never sent blank: a template renders it first
        raise ValueError("the message has no subject")
    return OutgoingEmail(
        message_id=message.id,
        message_id_header=message.message_id_header,
        sender=_address(message.sender),
        to=[_address(a) for a in message.to],
        cc=[_address(a) for a in message.cc],
        bcc=[_address(a) for a in message.bcc],
        reply_to=_address(message.reply_to) if message.reply_to else None,
        subject=message.subject,
        date=message.created_at,
        text=message.text_body,
        html=message.html_body,
        headers=dict(message.headers),
        tags=list(message.tags),
    )


def _kind(error: DeliveryError | None) -> str:
    if error is None:
        return "sent"
    return "transient_error" if isinstance(error, TransientDeliveryError) else "permanent_error"


def _record(message: ClaimedMessage, attempt: Try) -> AttemptRecord:
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
    if result.accepted is not None:
        return Outcome(
            message_id=message.id,
            attempt=message.attempt,
            status="sent",
            provider=result.provider,
            provider_message_id=result.accepted.provider_message_id,
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
            status="failed",
            provider=last_provider,
            error_code=error.code,
            error=reason[:2000],
        )
    wait = policy.delay(message.attempt, retry_after=result.retry_after)
    return Outcome(
        message_id=message.id,
        attempt=message.attempt,
        status="retrying",
        provider=last_provider,
        error_code=error.code,
        error=error.reason[:2000],
        not_before=utcnow() + timedelta(seconds=wait),
    )


def _failed_before_sending(
    message: ClaimedMessage, stage: str, error: PermanentDeliveryError, started: datetime
) -> tuple[Outcome, list[AttemptRecord]]:
    result = ChainResult(tries=[Try(stage, started, utcnow(), error)], error=error)
    return _outcome(message, result, RetryPolicy()), [_record(message, t) for t in result.tries]


async def _render(
    renderer: TemplateRenderer,
    connection: AsyncConnection,
    claimed: Sequence[ClaimedMessage],
) -> tuple[list[ClaimedMessage], list[tuple[Outcome, list[AttemptRecord]]]]:
    """Render the messages a scheduled job left unrendered; a template that fails never will."""
    pending = [m for m in claimed if m.template is not None]
    if not pending:
        return list(claimed), []
    started = utcnow()
    results = await renderer.render_many(
        connection, [(m.tenant_id, m.template or "", m.variables or {}) for m in pending]
    )
    rendered: dict[uuid.UUID, ClaimedMessage] = {}
    failed: list[tuple[Outcome, list[AttemptRecord]]] = []
    for message, result in zip(pending, results, strict=True):
        if isinstance(result, Rendered):
            rendered[message.id] = replace(
                message, subject=result.subject, text_body=result.text, html_body=result.html
            )
        else:
            log.warning(
                "template failed to render",
                extra={"fields": {"message_id": str(message.id), "template": message.template}},
            )
            error = PermanentDeliveryError(
                "template_error", f"template {message.template!r}: {result}"
            )
            failed.append(_failed_before_sending(message, "render", error, started))
    failed_ids = {outcome.message_id for outcome, _ in failed}
    ready = [rendered.get(m.id, m) for m in claimed if m.id not in failed_ids]
    return ready, failed


async def _attempt(
    chain: ProviderChain, policy: RetryPolicy, message: ClaimedMessage
) -> tuple[Outcome, list[AttemptRecord]]:
    started = utcnow()
    try:
        email = outgoing_email(message)
        ensure_raw(email)
    except Exception as exc:  # a message that cannot be built never will be: fail it, not the task
        log.exception("message could not be built", extra={"fields": {"message": str(message.id)}})
        failure = PermanentDeliveryError("build_failed", f"{type(exc).__name__}: {exc}")
        return _failed_before_sending(message, "build", failure, started)
    result = await chain.send(email)
    if not result.tries:  # every circuit open: the attempt still counts, and is recorded
        result.tries.append(Try("none", started, utcnow(), result.failure()))
    outcome = _outcome(message, result, policy)
    if message.template is not None:  # rendered here: show the subject on the row
        outcome = replace(outcome, subject=message.subject)
    return outcome, [_record(message, t) for t in result.tries]


RECORD_EVERY = 50
RECORD_INTERVAL_SECONDS = 0.2
# Writing outcomes again while the database is away: the first try at once (a dropped
# connection alone is common), then waits growing to the cap.
REWRITE_FIRST_WAIT_SECONDS = 0.2
REWRITE_MAX_WAIT_SECONDS = 2.0
# Claiming again while the database is away: soon, since a restart takes seconds.
CLAIM_FIRST_WAIT_SECONDS = 0.2
CLAIM_MAX_WAIT_SECONDS = 1.0


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


def _deferred(message: ClaimedMessage, wait_seconds: float) -> Outcome:
    """No token for it yet: back where it was, parked until its slot."""
    return Outcome(
        message_id=message.id,
        attempt=message.attempt,
        status="queued" if message.attempt == 1 else "retrying",
        not_before=utcnow() + timedelta(seconds=wait_seconds),
        deferred=True,
    )


class _NothingSent(Exception):
    """The database went away before any message was sent: delivering again is safe."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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
    report = DeliveryReport()
    claimed_at = time.monotonic()
    # A write that lands later is still fenced by the attempt number; the margin keeps us from
    # writing while the sweeper may be taking the rows back.
    give_up_at = claimed_at + lease_seconds - min(5.0, lease_seconds / 4)
    if deadline is not None:
        give_up_at = min(give_up_at, deadline)
    async with AsyncExitStack() as stack:
        try:
            connection = await stack.enter_async_context(database.autocommit())
            claimed = await DeliveryRepository(connection).claim(
                ids, lease_seconds=lease_seconds, token=token
            )
            report.claimed = len(claimed)
            if not claimed:
                return report
            writer = OutcomeWriter(database, connection, give_up_at=give_up_at)
            if throttle is not None:
                # A batch takes the tokens it can; the rest are parked at their slots at once, so
                # no worker waits holding them.
                admission = await throttle.admit(
                    claimed, key=lambda m: (m.tenant_id, m.lane), provider=await chain.preferred()
                )
                claimed = admission.admitted
                if admission.deferred:
                    deferred = [_deferred(message, wait) for message, wait in admission.deferred]
                    if await writer.write(deferred, []) is None:
                        claimed = []  # the database stayed away: what is sent would go out twice
                    else:
                        report.deferred = len(deferred)
            claimed, unrenderable = await _render(TemplateRenderer(), connection, claimed)
        except Exception as exc:
            if database_unavailable(exc):
                raise _NothingSent(exc) from exc
            raise
        unwritten: list[Outcome] = []
        unwritten_attempts: list[AttemptRecord] = []
        for outcome, tried in unrenderable:
            unwritten.append(outcome)
            unwritten_attempts.extend(tried)
        # Outcomes are written as sends complete, a few at a time: a worker that dies mid-batch
        # leaves unrecorded (and so sent again) only what was in flight, not the whole batch.
        # While a write waits for the database, the other sends go on.
        sends = [asyncio.ensure_future(_attempt(chain, policy, m)) for m in claimed]
        last_write = time.monotonic()
        for done in asyncio.as_completed(sends):
            outcome, tried = await done
            unwritten.append(outcome)
            unwritten_attempts.extend(tried)
            due = time.monotonic() - last_write >= RECORD_INTERVAL_SECONDS
            if len(unwritten) >= RECORD_EVERY or due:
                await writer.record(unwritten, unwritten_attempts)
                unwritten, unwritten_attempts = [], []
                last_write = time.monotonic()
        if unwritten:  # the last few, and those that could not be rendered
            await writer.record(unwritten, unwritten_attempts)
        report.unrecorded = writer.report_given_up()
    _report(report, writer.outcomes, writer.attempts, writer.current)
    return report


def _report(
    report: DeliveryReport,
    outcomes: list[Outcome],
    attempts: list[AttemptRecord],
    current: set[uuid.UUID],
) -> None:
    for outcome in outcomes:
        if outcome.message_id not in current:
            report.stale += 1
            log.warning(
                "outcome not recorded: the claim was taken over",
                extra={"fields": {"message_id": str(outcome.message_id)}},
            )
            continue
        if outcome.status == "sent":
            report.sent += 1
            MESSAGES_SENT.labels(outcome.provider).inc()
        elif outcome.status == "retrying":
            report.retrying += 1
        else:
            report.failed += 1
        log.info(
            "message %s",
            outcome.status,
            extra={
                "fields": {
                    "message_id": str(outcome.message_id),
                    "provider": outcome.provider,
                    **({"error_code": outcome.error_code} if outcome.error_code else {}),
                }
            },
        )
    for attempt in attempts:
        if attempt.outcome != "sent":
            MESSAGES_FAILED.labels(attempt.provider, attempt.outcome.removesuffix("_error")).inc()
    report.outcomes = outcomes
