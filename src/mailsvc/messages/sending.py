"""Delivering claimed messages: claim, build, send concurrently, record, in a few statements.

No transaction is held open while a provider is called: the claim commits first (its lease
keeps other workers off the rows), and the outcomes are written afterwards in one statement.
Each message goes through the provider chain; what the chain answers, with the retry policy,
decides whether it is sent, tried again later (not_before), or failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from mailsvc.db import Database
from mailsvc.delivery.chain import ChainResult, ProviderChain, Try
from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.retry import RetryPolicy
from mailsvc.kit.time import utcnow
from mailsvc.messages.repository import AttemptRecord, ClaimedMessage, DeliveryRepository, Outcome
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


def _deferred(message: ClaimedMessage, wait_seconds: float) -> Outcome:
    """No token for it yet: back where it was, parked until its slot."""
    return Outcome(
        message_id=message.id,
        attempt=message.attempt,
        status="queued" if message.attempt == 1 else "retrying",
        not_before=utcnow() + timedelta(seconds=wait_seconds),
        deferred=True,
    )


async def deliver(
    database: Database,
    chain: ProviderChain,
    policy: RetryPolicy,
    ids: Sequence[uuid.UUID],
    *,
    lease_seconds: int,
    throttle: Throttle | None = None,
) -> DeliveryReport:
    report = DeliveryReport()
    outcomes: list[Outcome] = []
    attempts: list[AttemptRecord] = []
    current: set[uuid.UUID] = set()
    async with database.autocommit() as connection:
        repo = DeliveryRepository(connection)
        claimed = await repo.claim(ids, lease_seconds=lease_seconds)
        report.claimed = len(claimed)
        if not claimed:
            return report
        if throttle is not None:
            # A batch takes the tokens it can; the rest are parked at their slots at once, so no
            # worker waits holding them.
            admission = await throttle.admit(
                claimed, key=lambda m: (m.tenant_id, m.lane), provider=await chain.preferred()
            )
            claimed = admission.admitted
            if admission.deferred:
                deferred = [_deferred(message, wait) for message, wait in admission.deferred]
                await repo.record(deferred, [])
                report.deferred = len(deferred)
        unwritten: list[Outcome] = []
        unwritten_attempts: list[AttemptRecord] = []
        claimed, unrenderable = await _render(TemplateRenderer(), connection, claimed)
        for outcome, tried in unrenderable:
            unwritten.append(outcome)
            unwritten_attempts.extend(tried)
        # Outcomes are written as sends complete, a few at a time: a worker that dies mid-batch
        # leaves unrecorded (and so sent again) only what was in flight, not the whole batch.
        sends = [asyncio.ensure_future(_attempt(chain, policy, m)) for m in claimed]
        last_write = time.monotonic()
        for done in asyncio.as_completed(sends):
            outcome, tried = await done
            unwritten.append(outcome)
            unwritten_attempts.extend(tried)
            due = time.monotonic() - last_write >= RECORD_INTERVAL_SECONDS
            if len(unwritten) >= RECORD_EVERY or due:
                current |= await repo.record(unwritten, unwritten_attempts)
                outcomes += unwritten
                attempts += unwritten_attempts
                unwritten, unwritten_attempts = [], []
                last_write = time.monotonic()
        if unwritten:  # the last few, and those that could not be rendered
            current |= await repo.record(unwritten, unwritten_attempts)
            outcomes += unwritten
            attempts += unwritten_attempts
    _report(report, outcomes, attempts, current)
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
