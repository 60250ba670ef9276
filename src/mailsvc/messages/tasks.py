"""Celery tasks of the messages domain. Thin: parse ids, run the service coroutine on the bridge."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.config import settings
from mailsvc.db import database_unavailable, describe_outage
from mailsvc.kit.logging import log_context
from mailsvc.messages import sending, upkeep
from mailsvc.messages.service import SEND_TASK, send_task_for
from mailsvc.templates.builtin import BUILTIN_NAMES
from mailsvc.worker import bridge, queues
from mailsvc.worker.app import celery_app
from mailsvc.worker.publish import queue_depths

log = logging.getLogger(__name__)

T = TypeVar("T")

# A send that finds the database down waits for it inside the task, polling: most outages (a
# restart, a failover) last seconds, and the messages go out as soon as it answers, where the
# sweeper would take a minute. The wait is bounded, so a long outage does not hold the task
# past its time limit; after it the task goes back to the broker for a few seconds, never
# longer (see ARCHITECTURE.md, "No long delays inside Redis").
CLAIM_WAIT_SECONDS = 20.0
SEND_RETRY_COUNTDOWN_SECONDS = 5
# Kept between the end of a task's work and its soft time limit, which would interrupt it.
TIME_LIMIT_MARGIN_SECONDS = 5.0


def _send(self: Task, ids: list[str]) -> dict[str, int]:
    """Claim and deliver these messages; a duplicate or stale task claims nothing."""
    runtime = bridge.runtime()
    started = time.monotonic()
    soft_limit = settings.task_soft_time_limit_seconds
    with log_context(task_id=self.request.id):
        try:
            report = runtime.run(
                sending.deliver(
                    runtime.database,
                    runtime.chain,
                    runtime.policy,
                    [uuid.UUID(i) for i in ids],
                    lease_seconds=settings.claim_lease_seconds,
                    throttle=runtime.throttle,
                    deadline=started + soft_limit - TIME_LIMIT_MARGIN_SECONDS,
                    claim_wait_until=started + min(CLAIM_WAIT_SECONDS, soft_limit / 3),
                )
            )
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # Nothing was sent. Celery logs the retry in one line.
            raise self.retry(countdown=SEND_RETRY_COUNTDOWN_SECONDS, max_retries=None) from None
    return {
        "claimed": report.claimed,
        "sent": report.sent,
        "failed": report.failed,
        "retrying": report.retrying,
        "deferred": report.deferred,
        "stale": report.stale,
        "unrecorded": report.unrecorded,
    }


send = celery_app.task(name=SEND_TASK, bind=True)(_send)


def _email_task(template: str) -> Task:
    """`emails.<template>`: the same delivery, under a name per kind of email (Flower shows it)."""

    def deliver_email(self: Task, ids: list[str]) -> dict[str, int]:
        return _send(self, ids)

    deliver_email.__name__ = deliver_email.__qualname__ = f"send_{template}"
    deliver_email.__doc__ = f"Claim and deliver {template} emails."
    name = send_task_for(template, queues.TRANSACTIONAL)
    task: Task = celery_app.task(name=name, bind=True)(deliver_email)
    return task


EMAIL_TASKS = {template: _email_task(template) for template in BUILTIN_NAMES}


def _unless_database_down(job: str, run: Callable[[], T], nothing: T) -> T:
    """Beat runs these jobs again in seconds: while the database is down, each run is one line
    in the log, not a traceback."""
    try:
        return run()
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("%s skipped: the database is unavailable (%s)", job, describe_outage(exc))
        return nothing


def _dispatch_rounds(runtime: bridge.Runtime) -> int:
    total = 0
    # Several rounds per run, so a large backlog of due rows drains between beats.
    for _ in range(20):
        count = runtime.run(
            runtime.in_transaction(
                lambda session: upkeep.dispatch_due(session, limit=settings.sweep_batch_size)
            )
        )
        total += count
        if count < settings.sweep_batch_size:
            break
    return total


def _feed_bulk(runtime: bridge.Runtime) -> int:
    """Keep the bulk queue holding about `bulk_queue_target_batches`, at the pace of the limits.

    Each run releases at most what the preferred provider's limit (and each tenant's bulk
    limit) lets through until the next run, so a rate-limited backlog is not claimed only to be
    parked again.
    """
    batch_size = settings.bulk_batch_size
    waiting = queue_depths([queues.BULK])[queues.BULK] * batch_size
    room = settings.bulk_queue_target_batches * batch_size - waiting
    pace = settings.dispatch_interval_seconds
    limits = runtime.throttle.limits

    async def feed(session: AsyncSession) -> int:
        allowed = room
        provider_rate = await limits.provider_rate(await runtime.chain.preferred())
        if provider_rate is not None:
            allowed = min(allowed, int(provider_rate * pace) - waiting)

        async def tenant_budget(tenant_id: uuid.UUID) -> int | None:
            rate = await limits.tenant_rate(tenant_id, queues.BULK)
            return None if rate is None else max(1, int(rate * pace))

        return await upkeep.feed_bulk(
            session, room=allowed, batch_size=batch_size, tenant_budget=tenant_budget
        )

    return runtime.run(runtime.in_transaction(feed))


@celery_app.task(name="messages.dispatch_due")
def dispatch_due() -> dict[str, int]:
    """Publish parked messages whose time has come, and keep the bulk queue topped up."""
    runtime = bridge.runtime()
    return _unless_database_down(
        "dispatch",
        lambda: {"due": _dispatch_rounds(runtime), "bulk": _feed_bulk(runtime)},
        {"due": 0, "bulk": 0},
    )


@celery_app.task(name="messages.sweep")
def sweep() -> dict[str, Any]:
    """Park again the messages a dead worker or a lost broker left behind."""
    runtime = bridge.runtime()
    return _unless_database_down("sweep", lambda: _sweep(runtime), {"skipped": True})


def _sweep(runtime: bridge.Runtime) -> dict[str, Any]:
    depths = queue_depths(queues.ALL_QUEUES)
    report = runtime.run(
        runtime.in_transaction(
            lambda session: upkeep.sweep(
                session,
                depths=depths,
                older_than_seconds=settings.sweep_after_seconds,
                limit=settings.sweep_batch_size,
                max_attempts=settings.retry_max_attempts,
            )
        )
    )
    dispatched = _dispatch_rounds(runtime) if report.expired_leases or report.lost else 0
    return {
        "expired_leases": report.expired_leases,
        "failed": report.failed,
        "lost": report.lost,
        "dispatched": dispatched,
        "depths": depths,
    }


@celery_app.task(name="messages.expire_idempotency_keys")
def expire_idempotency_keys() -> int:
    """Release Idempotency-Keys past their 24 h."""
    runtime = bridge.runtime()
    return _unless_database_down("idempotency key expiry", lambda: _expire_keys(runtime), 0)


def _expire_keys(runtime: bridge.Runtime) -> int:
    total = 0
    while True:
        count = runtime.run(
            runtime.in_transaction(
                lambda session: upkeep.expire_idempotency_keys(
                    session,
                    ttl_hours=settings.idempotency_ttl_hours,
                    limit=settings.sweep_batch_size,
                )
            )
        )
        total += count
        if count < settings.sweep_batch_size:
            return total
