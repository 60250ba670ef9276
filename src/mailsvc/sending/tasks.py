"""Celery tasks of the sending domain. Thin: parse ids, run the coroutine on the runtime.

Their names are wire names (`messages.send`, `emails.<template>`, `messages.dispatch_due` …):
jobs already in the broker at a deploy carry them, so they stay as they are. They are shared
tasks, bound to the worker's Celery app when it imports them; each finds the worker thread's
runtime, and the settings the worker started with, through `runtime_of(self)`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.db import database_unavailable, describe_outage
from mailsvc.sending import pipeline, upkeep
from mailsvc.sending.lanes import SEND_QUEUES, SEND_TASK, Lane, email_task
from mailsvc.sending.runtime import Runtime, runtime_of
from mailsvc.templates.builtin import BUILTIN_NAMES

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
    runtime = runtime_of(self)
    config = runtime.settings
    started = time.monotonic()
    soft_limit = config.task_soft_time_limit_seconds
    try:
        report = runtime.run(
            pipeline.deliver(
                runtime.database,
                runtime.chain,
                runtime.policy,
                [uuid.UUID(i) for i in ids],
                lease_seconds=config.claim_lease_seconds,
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


send = shared_task(name=SEND_TASK, bind=True)(_send)


def _email_task(template: str) -> Task:
    """`emails.<template>`: the same delivery, under a name per kind of email (Flower shows it)."""

    def deliver_email(self: Task, ids: list[str]) -> dict[str, int]:
        return _send(self, ids)

    deliver_email.__name__ = deliver_email.__qualname__ = f"send_{template}"
    deliver_email.__doc__ = f"Claim and deliver {template} emails."
    task: Task = shared_task(name=email_task(template), bind=True)(deliver_email)
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


def _dispatch_rounds(runtime: Runtime) -> int:
    total = 0
    limit = runtime.settings.sweep_batch_size
    # Several rounds per run, so a large backlog of due rows drains between beats.
    for _ in range(20):
        count = runtime.run(
            runtime.in_transaction(lambda session: upkeep.dispatch_due(session, limit=limit))
        )
        total += count
        if count < limit:
            break
    return total


def _feed_bulk(runtime: Runtime) -> int:
    """Keep the bulk queue holding about `bulk_queue_target_batches`, at the pace of the limits.

    Each run releases at most what the preferred provider's limit (and each tenant's bulk
    limit) lets through until the next run, so a rate-limited backlog is not claimed only to be
    parked again.
    """
    config = runtime.settings
    batch_size = config.bulk_batch_size
    waiting = runtime.queue_depths([Lane.bulk])[Lane.bulk] * batch_size
    room = config.bulk_queue_target_batches * batch_size - waiting
    pace = config.dispatch_interval_seconds
    limits = runtime.throttle.limits

    async def feed(session: AsyncSession) -> int:
        allowed = room
        provider_rate = await limits.provider_rate(await runtime.chain.preferred())
        if provider_rate is not None:
            allowed = min(allowed, int(provider_rate * pace) - waiting)

        async def tenant_budget(tenant_id: uuid.UUID) -> int | None:
            rate = await limits.tenant_rate(tenant_id, Lane.bulk)
            return None if rate is None else max(1, int(rate * pace))

        return await upkeep.feed_bulk(
            session, room=allowed, batch_size=batch_size, tenant_budget=tenant_budget
        )

    return runtime.run(runtime.in_transaction(feed))


@shared_task(name="messages.dispatch_due", bind=True)
def dispatch_due(self: Task) -> dict[str, int]:
    """Publish parked messages whose time has come, and keep the bulk queue topped up."""
    runtime = runtime_of(self)
    done = _unless_database_down(
        "dispatch",
        lambda: {"due": _dispatch_rounds(runtime), "bulk": _feed_bulk(runtime)},
        {"due": 0, "bulk": 0},
    )
    if any(done.values()):  # Celery's own lines for it are DEBUG (worker/logs.py)
        log.info("dispatched %d due messages, fed %d to the bulk queue", done["due"], done["bulk"])
    return done


@shared_task(name="messages.sweep", bind=True)
def sweep(self: Task) -> dict[str, Any]:
    """Park again the messages a dead worker or a lost broker left behind."""
    runtime = runtime_of(self)
    return _unless_database_down("sweep", lambda: _sweep(runtime), {"skipped": True})


def _sweep(runtime: Runtime) -> dict[str, Any]:
    config = runtime.settings
    depths = runtime.queue_depths(SEND_QUEUES)
    report = runtime.run(
        runtime.in_transaction(
            lambda session: upkeep.sweep(
                session,
                depths=depths,
                older_than_seconds=config.sweep_after_seconds,
                limit=config.sweep_batch_size,
                max_attempts=config.retry_max_attempts,
            )
        )
    )
    dispatched = _dispatch_rounds(runtime) if report.expired_leases or report.lost else 0
    if report.expired_leases or report.lost:
        log.info(
            "swept %d expired leases (%d failed) and %d messages the broker lost",
            report.expired_leases,
            report.failed,
            report.lost,
        )
    return {
        "expired_leases": report.expired_leases,
        "failed": report.failed,
        "lost": report.lost,
        "dispatched": dispatched,
        "depths": depths,
    }


@shared_task(name="messages.expire_idempotency_keys", bind=True)
def expire_idempotency_keys(self: Task) -> int:
    """Release Idempotency-Keys past their 24 h."""
    runtime = runtime_of(self)
    return _unless_database_down("idempotency key expiry", lambda: _expire_keys(runtime), 0)


def _expire_keys(runtime: Runtime) -> int:
    total = 0
    config = runtime.settings
    while True:
        count = runtime.run(
            runtime.in_transaction(
                lambda session: upkeep.expire_idempotency_keys(
                    session,
                    ttl_hours=config.idempotency_ttl_hours,
                    limit=config.sweep_batch_size,
                )
            )
        )
        total += count
        if count < config.sweep_batch_size:
            if total:
                log.info("released %d expired Idempotency-Keys", total)
            return total
