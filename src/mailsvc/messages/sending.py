"""Delivering claimed messages: claim, build, send concurrently, record, in a few statements.

No transaction is held open while a provider is called: the claim commits first (its lease
keeps other workers off the rows), and the outcomes are written afterwards in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailsvc.db import Database
from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.transport import Transport
from mailsvc.kit.time import utcnow
from mailsvc.messages.repository import AttemptRecord, ClaimedMessage, DeliveryRepository, Outcome
from mailsvc.metrics import MESSAGES_FAILED, MESSAGES_SENT

log = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    stale: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


def _address(value: dict[str, Any]) -> Address:
    return Address(email=value["email"], name=value.get("name"))


def outgoing_email(message: ClaimedMessage) -> OutgoingEmail:
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


def _attempt_record(
    message: ClaimedMessage,
    provider: str,
    started: datetime,
    error: DeliveryError | None,
) -> AttemptRecord:
    if error is None:
        outcome = "sent"
    elif isinstance(error, TransientDeliveryError):
        outcome = "transient_error"
    else:
        outcome = "permanent_error"
    return AttemptRecord(
        message_id=message.id,
        number=message.attempt,
        provider=provider,
        started_at=started,
        finished_at=utcnow(),
        outcome=outcome,
        error_code=error.code if error else None,
        error=error.reason[:2000] if error else None,
    )


async def _attempt(transport: Transport, message: ClaimedMessage) -> tuple[Outcome, AttemptRecord]:
    started = utcnow()
    error: DeliveryError
    try:
        email = outgoing_email(message)
        ensure_raw(email)
    except Exception as exc:  # a message that cannot be built never will be: fail it, not the task
        log.exception("message could not be built", extra={"fields": {"message": str(message.id)}})
        error = PermanentDeliveryError("build_failed", f"{type(exc).__name__}: {exc}")
    else:
        try:
            accepted = await transport.send(email)
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a transport bug must not leave the row claimed
            log.exception(
                "transport failed unexpectedly", extra={"fields": {"message": str(message.id)}}
            )
            error = TransientDeliveryError("transport_error", f"{type(exc).__name__}: {exc}")
        else:
            return (
                Outcome(
                    message_id=message.id,
                    attempt=message.attempt,
                    status="sent",
                    provider=transport.name,
                    provider_message_id=accepted.provider_message_id,
                ),
                _attempt_record(message, transport.name, started, None),
            )
    return (
        Outcome(
            message_id=message.id,
            attempt=message.attempt,
            status="failed",
            provider=transport.name,
            error_code=error.code,
            error=error.reason[:2000],
        ),
        _attempt_record(message, transport.name, started, error),
    )


async def deliver(
    database: Database,
    transport: Transport,
    ids: Sequence[uuid.UUID],
    *,
    lease_seconds: int,
) -> DeliveryReport:
    report = DeliveryReport()
    async with database.autocommit() as connection:
        repo = DeliveryRepository(connection)
        claimed = await repo.claim(ids, lease_seconds=lease_seconds)
        report.claimed = len(claimed)
        if not claimed:
            return report
        results = await asyncio.gather(*(_attempt(transport, message) for message in claimed))
        outcomes = [outcome for outcome, _ in results]
        attempts = [attempt for _, attempt in results]
        current = await repo.record(outcomes, attempts)

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
    return report
