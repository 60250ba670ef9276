"""The worker side's queries: claim a batch and record it, and beat's hand-over and recovery.

Writes on the hot path work on sets: one statement claims a batch, one records it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, Boolean, Integer, Text, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mailsvc.kit.json import storable
from mailsvc.models import Message, MessageStatus

_UUIDS = ARRAY(UUID(as_uuid=True))
_TEXTS = ARRAY(Text)
_INTS = ARRAY(Integer)
_TIMES = ARRAY(TIMESTAMP(timezone=True))


@dataclass(frozen=True)
class ClaimedMessage:
    """What a worker needs to send one message, returned by the claim."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    lane: str
    sender: dict[str, Any]
    to: list[dict[str, Any]]
    cc: list[dict[str, Any]]
    bcc: list[dict[str, Any]]
    reply_to: dict[str, Any] | None
    subject: str | None  # None until first rendered
    text_body: str | None
    html_body: str | None
    headers: dict[str, str]
    tags: list[str]
    message_id_header: str
    created_at: datetime
    # Set only for a message stored without a body: the worker renders it (every attempt).
    template: str | None = None
    variables: dict[str, Any] | None = None


@dataclass(frozen=True)
class AttemptRecord:
    message_id: uuid.UUID
    number: int
    provider: str
    started_at: datetime
    finished_at: datetime
    outcome: str
    error_code: str | None
    error: str | None


@dataclass(frozen=True)
class Outcome:
    """Where one claimed message ends up after its attempt."""

    message_id: uuid.UUID
    attempt: int  # the fencing token: only the claim that made this attempt may record it
    status: MessageStatus  # sent, retrying or failed; queued or retrying when deferred
    provider: str | None = None
    provider_message_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    not_before: datetime | None = None
    deferred: bool = False  # not attempted: the rate limit had no token for it
    subject: str | None = None  # rendered by the worker: stored so the message shows it


@dataclass(frozen=True)
class Parked:
    """A row handed to the broker, or taken back from it."""

    id: uuid.UUID
    lane: str
    status: str
    template: str | None = None
    tenant_id: uuid.UUID | None = None  # given where jobs take tenants in turn


# Each claim carries a token: a claim whose answer was lost (the connection died while it
# committed) is taken again by the same delivery with the same token, as the same attempt,
# instead of waiting for its lease to run out.
_CLAIM = text(
    """
    UPDATE messages
       SET status = 'sending',
           lease_until = now() + make_interval(secs => :lease_seconds),
           attempt_count = attempt_count
               + CASE WHEN status = 'sending' AND claim_token = :token THEN 0 ELSE 1 END,
           claim_token = :token,
           updated_at = now()
     WHERE id = ANY(:ids)
       AND ((status IN ('queued', 'retrying') AND not_before <= now())
            OR (status = 'sending' AND (lease_until < now() OR claim_token = :token)))
    RETURNING id, tenant_id, attempt_count, lane, sender, "to", cc, bcc, reply_to, subject,
              text_body, html_body, headers, tags, message_id_header, created_at,
              -- No body stored: made by a job, the worker renders it at every attempt.
              CASE WHEN text_body IS NULL AND html_body IS NULL THEN template END AS template,
              CASE WHEN text_body IS NULL AND html_body IS NULL THEN variables END AS variables
    """
).bindparams(bindparam("ids", type_=_UUIDS), bindparam("token", type_=UUID(as_uuid=True)))

# One statement records a batch: the outcome of each claim that is still current (the attempt
# number fences out a worker whose lease expired), every attempt made, and an event per outcome.
_RECORD_DELIVERIES = """
    WITH outcome AS (
        SELECT * FROM unnest(:ids, :attempts, :statuses, :providers, :provider_ids, :codes,
                             :errors, :not_befores, :deferred, :subjects)
            AS v(id, attempt, status, provider, provider_message_id, error_code, error,
                 not_before, deferred, subject)
    ), updated AS (
        -- A deferred row (no rate-limit token) was not attempted: it gets its attempt back and
        -- keeps its last error.
        UPDATE messages AS m
           SET status = v.status,
               sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE m.sent_at END,
               provider = COALESCE(v.provider, m.provider),
               provider_message_id = COALESCE(v.provider_message_id, m.provider_message_id),
               error_code = CASE WHEN v.deferred THEN m.error_code ELSE v.error_code END,
               error = CASE WHEN v.deferred THEN m.error ELSE v.error END,
               attempt_count = m.attempt_count - CASE WHEN v.deferred THEN 1 ELSE 0 END,
               not_before = COALESCE(v.not_before, m.not_before),
               subject = COALESCE(m.subject, v.subject),
               lease_until = NULL,
               enqueued_at = NULL,
               updated_at = now()
          FROM outcome AS v
         WHERE m.id = v.id AND m.status = 'sending' AND m.attempt_count = v.attempt
        RETURNING m.id, v.status, v.provider, v.error_code, v.not_before, v.deferred
    ), followers AS (
        -- A message held until this one was done (a welcome after its confirmation) is due now.
        UPDATE messages AS f
           SET not_before = now(), updated_at = now()
          FROM updated AS u
         WHERE f.after_message_id = u.id AND f.status = 'scheduled'
           AND u.status IN ('sent', 'failed')
    ), tried AS (
        INSERT INTO attempts (message_id, number, provider, started_at, finished_at, outcome,
                              error_code, error)
        SELECT * FROM unnest(:attempt_ids, :numbers, :attempt_providers, :started, :finished,
                             :outcomes, :attempt_codes, :attempt_errors)
            AS a(message_id, number, provider, started_at, finished_at, outcome, error_code,
                 error)
        {new_attempts_only}
    ), logged AS (
        INSERT INTO message_events (message_id, type, detail)
        SELECT id, status,
               jsonb_strip_nulls(jsonb_build_object('provider', provider, 'error_code', error_code,
                                                    'retry_at', not_before))
          FROM updated
         WHERE NOT deferred
    )
    SELECT id FROM updated
    {recorded_before}
    """

# Written again after a failure, the same batch may have been recorded already: the connection
# can die after the commit, before its answer. Its attempts are not inserted twice, and the
# outcomes it recorded still count as current.
_RECORD_AGAIN_CLAUSES = {
    "new_attempts_only": """
         WHERE NOT EXISTS (SELECT 1 FROM attempts AS t
                            WHERE t.message_id = a.message_id AND t.number = a.number
                              AND t.provider = a.provider AND t.started_at = a.started_at)""",
    "recorded_before": """
    UNION
    SELECT m.id FROM messages AS m JOIN outcome AS v ON m.id = v.id
     WHERE NOT v.deferred AND m.status = v.status AND m.attempt_count = v.attempt
       AND m.lease_until IS NULL""",
}

_RECORD_BINDS = (
    bindparam("ids", type_=_UUIDS),
    bindparam("attempts", type_=_INTS),
    bindparam("statuses", type_=_TEXTS),
    bindparam("providers", type_=_TEXTS),
    bindparam("provider_ids", type_=_TEXTS),
    bindparam("codes", type_=_TEXTS),
    bindparam("errors", type_=_TEXTS),
    bindparam("not_befores", type_=_TIMES),
    bindparam("deferred", type_=ARRAY(Boolean)),
    bindparam("subjects", type_=_TEXTS),
    bindparam("attempt_ids", type_=_UUIDS),
    bindparam("numbers", type_=_INTS),
    bindparam("attempt_providers", type_=_TEXTS),
    bindparam("started", type_=_TIMES),
    bindparam("finished", type_=_TIMES),
    bindparam("outcomes", type_=_TEXTS),
    bindparam("attempt_codes", type_=_TEXTS),
    bindparam("attempt_errors", type_=_TEXTS),
)
_RECORD = text(_RECORD_DELIVERIES.format(new_attempts_only="", recorded_before="")).bindparams(
    *_RECORD_BINDS
)
_RECORD_AGAIN = text(_RECORD_DELIVERIES.format(**_RECORD_AGAIN_CLAUSES)).bindparams(*_RECORD_BINDS)

_DISPATCH_DUE = text(
    """
    WITH due AS (
        SELECT id FROM messages
         WHERE enqueued_at IS NULL
           AND status IN ('scheduled', 'queued', 'retrying')
           AND NOT (lane = 'bulk' AND status = 'queued')
           AND not_before <= now()
         ORDER BY not_before
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE messages AS m
       SET enqueued_at = now(),
           status = CASE WHEN m.status = 'scheduled' THEN 'queued' ELSE m.status END,
           updated_at = now()
      FROM due
     WHERE m.id = due.id
    RETURNING m.id, m.lane, m.status, m.template
    """
)

# Tenants with parked bulk rows: a loose index scan over ix_messages_bulk_parked, one probe per
# tenant, however many rows each has waiting.
_BULK_TENANTS = text(
    """
    WITH RECURSIVE waiting AS (
        (SELECT tenant_id FROM messages
          WHERE lane = 'bulk' AND status = 'queued' AND enqueued_at IS NULL
          ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT m.tenant_id FROM messages AS m
                 WHERE m.lane = 'bulk' AND m.status = 'queued' AND m.enqueued_at IS NULL
                   AND m.tenant_id > waiting.tenant_id
                 ORDER BY m.tenant_id LIMIT 1)
          FROM waiting
         WHERE waiting.tenant_id IS NOT NULL
    )
    SELECT tenant_id FROM waiting WHERE tenant_id IS NOT NULL
    """
)

# Up to quota due bulk rows from each tenant, oldest first, marked as handed over.
_TAKE_BULK = text(
    """
    UPDATE messages AS m
       SET enqueued_at = now(), updated_at = now()
      FROM (SELECT picked.id
              FROM unnest(:tenants, :quotas) AS t(tenant_id, quota)
             CROSS JOIN LATERAL (
                   SELECT id FROM messages
                    WHERE tenant_id = t.tenant_id AND lane = 'bulk' AND status = 'queued'
                      AND enqueued_at IS NULL AND not_before <= now()
                    ORDER BY not_before
                    LIMIT t.quota
                      FOR UPDATE SKIP LOCKED) AS picked) AS taken
     WHERE m.id = taken.id
    RETURNING m.id, m.tenant_id, m.not_before, m.lane, m.status, m.template
    """
).bindparams(bindparam("tenants", type_=_UUIDS), bindparam("quotas", type_=_INTS))

# A claim whose lease ran out belonged to a worker that died (or hung past its time limit).
# The row is tried again, unless that already happened max_attempts times: a message that
# kills every worker that touches it must stop somewhere.
_RELEASE_EXPIRED_LEASES = text(
    """
    WITH expired AS (
        SELECT id FROM messages
         WHERE status = 'sending' AND lease_until < now()
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    ), released AS (
        UPDATE messages AS m
           SET status = CASE WHEN m.attempt_count >= :max_attempts THEN 'failed'
                             ELSE 'retrying' END,
               error_code = CASE WHEN m.attempt_count >= :max_attempts THEN 'lease_expired'
                                 ELSE m.error_code END,
               error = CASE WHEN m.attempt_count >= :max_attempts
                            THEN 'no worker recorded an outcome in ' || m.attempt_count
                                 || ' attempts; each lease expired'
                            ELSE m.error END,
               lease_until = NULL, enqueued_at = NULL, not_before = now(), updated_at = now()
          FROM expired
         WHERE m.id = expired.id
        RETURNING m.id, m.status
    ), logged AS (
        INSERT INTO message_events (message_id, type, detail)
        SELECT id, CASE WHEN status = 'failed' THEN 'failed' ELSE 'lease_expired' END,
               '{"error_code": "lease_expired"}'::jsonb
          FROM released
    )
    SELECT id, status FROM released
    """
)

_UNPARK_LOST = text(
    """
    UPDATE messages
       SET enqueued_at = NULL, updated_at = now()
     WHERE id IN (SELECT id FROM messages
                   WHERE enqueued_at IS NOT NULL
                     AND enqueued_at < now() - make_interval(secs => :older_than)
                     AND ((status = 'queued' AND lane = ANY(:lanes))
                          OR (status = 'retrying' AND :include_retrying))
                   LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING id
    """
).bindparams(bindparam("lanes", type_=_TEXTS))


class UpkeepRepository:
    """Beat's queries: hand due rows to the broker, take back what a dead worker or a lost
    broker left, and expire idempotency keys. Each runs in the task's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def mark_due_enqueued(self, *, limit: int) -> list[Parked]:
        result = await self.session.execute(_DISPATCH_DUE, {"limit": limit})
        return [
            Parked(id=row.id, lane=row.lane, status=row.status, template=row.template)
            for row in result
        ]

    async def bulk_tenants_waiting(self) -> list[uuid.UUID]:
        return list((await self.session.execute(_BULK_TENANTS)).scalars())

    async def take_bulk(self, quotas: Mapping[uuid.UUID, int]) -> list[Parked]:
        """The rows taken, oldest first within each tenant."""
        result = await self.session.execute(
            _TAKE_BULK, {"tenants": list(quotas), "quotas": list(quotas.values())}
        )
        rows = sorted(result, key=lambda row: (row.not_before, row.id))
        return [
            Parked(
                id=row.id,
                lane=row.lane,
                status=row.status,
                template=row.template,
                tenant_id=row.tenant_id,
            )
            for row in rows
        ]

    async def release_expired_leases(self, *, limit: int, max_attempts: int) -> list[Parked]:
        result = await self.session.execute(
            _RELEASE_EXPIRED_LEASES, {"limit": limit, "max_attempts": max_attempts}
        )
        return [Parked(id=row.id, lane="", status=row.status) for row in result]

    async def unpark_lost(
        self,
        *,
        lanes: Sequence[str],
        include_retrying: bool,
        older_than_seconds: int,
        limit: int,
    ) -> list[uuid.UUID]:
        result = await self.session.execute(
            _UNPARK_LOST,
            {
                "lanes": list(lanes),
                "include_retrying": include_retrying,
                "older_than": older_than_seconds,
                "limit": limit,
            },
        )
        return [row.id for row in result]

    async def expire_idempotency_keys(self, *, older_than: timedelta, limit: int) -> int:
        """Clear keys past their TTL, a batch at a time (served by a partial index)."""
        expired = (
            select(Message.id)
            .where(
                Message.idempotency_key.is_not(None),
                Message.created_at < func.now() - older_than,
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = await self.session.execute(
            update(Message).where(Message.id.in_(expired)).values(idempotency_key=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def new_claim_token() -> uuid.UUID:
    return uuid.uuid4()


class DeliveryRepository:
    """The worker's hot path: one statement to claim a batch, one to record it.

    It runs on an autocommit connection: each statement is its own transaction, so a batch
    costs two round trips and holds no transaction open while providers are called.
    """

    def __init__(self, connection: AsyncConnection | AsyncSession) -> None:
        self.connection = connection

    async def claim(
        self, ids: Sequence[uuid.UUID], *, lease_seconds: int, token: uuid.UUID | None = None
    ) -> list[ClaimedMessage]:
        """Take the rows that are due and unclaimed; a duplicate or stale task gets nothing.

        `token` marks the claim: claiming again with the same token takes back the rows an
        earlier claim of ours took, if its answer never arrived.
        """
        result = await self.connection.execute(
            _CLAIM,
            {
                "ids": list(ids),
                "lease_seconds": lease_seconds,
                "token": token or new_claim_token(),
            },
        )
        return [
            ClaimedMessage(
                id=row.id,
                tenant_id=row.tenant_id,
                attempt=row.attempt_count,
                lane=row.lane,
                sender=row.sender,
                to=row.to,
                cc=row.cc,
                bcc=row.bcc,
                reply_to=row.reply_to,
                subject=row.subject,
                text_body=row.text_body,
                html_body=row.html_body,
                headers=row.headers,
                tags=row.tags,
                message_id_header=row.message_id_header,
                created_at=row.created_at,
                template=row.template,
                variables=row.variables,
            )
            for row in result
        ]

    async def record(
        self,
        outcomes: Sequence[Outcome],
        attempts: Sequence[AttemptRecord],
        *,
        again: bool = False,
    ) -> set[uuid.UUID]:
        """Write outcomes, attempts and events at once; returns the ids whose claim was current.

        Every attempt is kept, even one whose claim went stale: it did reach the provider.
        `again`: this batch's write failed before, and may have committed without its answer.
        """
        if not outcomes and not attempts:
            return set()
        result = await self.connection.execute(
            _RECORD_AGAIN if again else _RECORD,
            {
                "ids": [o.message_id for o in outcomes],
                "attempts": [o.attempt for o in outcomes],
                "statuses": [o.status for o in outcomes],
                "providers": [o.provider for o in outcomes],
                "provider_ids": [storable(o.provider_message_id) for o in outcomes],
                "codes": [storable(o.error_code) for o in outcomes],
                "errors": [storable(o.error) for o in outcomes],
                "not_befores": [o.not_before for o in outcomes],
                "deferred": [o.deferred for o in outcomes],
                "subjects": [o.subject for o in outcomes],
                "attempt_ids": [a.message_id for a in attempts],
                "numbers": [a.number for a in attempts],
                "attempt_providers": [a.provider for a in attempts],
                "started": [a.started_at for a in attempts],
                "finished": [a.finished_at for a in attempts],
                "outcomes": [a.outcome for a in attempts],
                "attempt_codes": [storable(a.error_code) for a in attempts],
                "attempt_errors": [storable(a.error) for a in attempts],
            },
        )
        return {row.id for row in result}
