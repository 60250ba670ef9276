"""The beat schedule, declared in one place."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import redis
from celery.schedules import crontab

from mailsvc.config import Settings
from mailsvc.worker import queues

log = logging.getLogger(__name__)

# Beat's housekeeping: the worker logs it at DEBUG unless it did something (worker/logs.py).
DISPATCH_DUE: Final = "messages.dispatch_due"
SWEEP: Final = "messages.sweep"
EXPIRE_KEYS: Final = "messages.expire_idempotency_keys"
HOUSEKEEPING: Final = frozenset({DISPATCH_DUE, SWEEP, EXPIRE_KEYS})


def beat_schedule(config: Settings) -> dict[str, dict[str, Any]]:
    def every(seconds: float, task: str) -> dict[str, Any]:
        # A run that waited longer than its own interval is dropped: the next one does its work.
        return {
            "task": task,
            "schedule": seconds,
            "options": {"queue": queues.MAINTENANCE, "expires": max(seconds, 1.0)},
        }

    return {
        "dispatch-due-messages": every(config.dispatch_interval_seconds, DISPATCH_DUE),
        "sweep-outbox": every(config.sweep_interval_seconds, SWEEP),
        "expire-idempotency-keys": every(3600, EXPIRE_KEYS),
        # Recurring email, hourly: each job picks who is due in their own time zone, and catches
        # up a missed hour; the send ledger stops any double.
        **{
            f"recurring-{task.split('.')[1]}": {
                "task": task,
                "schedule": crontab(minute=0),
                "options": {"queue": queues.MAINTENANCE, "expires": 3000},
            }
            for task in (
                "schedules.birthdays",
                "schedules.activation_reminders",
                "schedules.weekly_reports",
            )
        },
    }


class BeatLock:
    """Exactly one beat: a lease in Redis that the running beat keeps renewing.

    A second beat waits, doing nothing, until the lease is free (the first stopped, or died and
    its lease ran out). A lease that Redis lost with its data is taken back at the next renewal;
    a beat that finds another holding it stops itself.
    The jobs are idempotent besides (the recurring-send ledger, the claim), so even an overlap
    in a partition mails nobody twice.
    """

    KEY = "mailsvc:beat:leader"
    # Renew our lease; take it back if it vanished (Redis restarted without its data); fail
    # only if another beat holds it.
    _RENEW = """
    local holder = redis.call('get', KEYS[1])
    if holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
    if not holder then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0 end
    return 0
    """
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"  # noqa: E501

    def __init__(self, client: redis.Redis, *, ttl_seconds: float = 30.0) -> None:
        self.client = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    @classmethod
    def hold(cls, redis_url: str, *, ttl_seconds: float) -> BeatLock:
        """Wait until no other beat runs, then keep the lease; SIGTERM this process if lost."""
        lock = cls(redis.Redis.from_url(redis_url, socket_timeout=5), ttl_seconds=ttl_seconds)

        def standing_by(holder: str | None) -> None:
            log.warning("another beat holds the lock (%s); standing by", holder)

        lock.wait(poll_seconds=ttl_seconds / 3, on_wait=standing_by)
        log.warning("beat lock taken (%s): this beat runs the schedule", lock.token)

        def lost() -> None:
            log.error("beat lock lost: stopping, so that two beats never run together")
            os.kill(os.getpid(), signal.SIGTERM)

        lock.keep(on_lost=lost)
        return lock

    def acquire(self) -> bool:
        return bool(self.client.set(self.KEY, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.client.eval(self._RENEW, 1, self.KEY, self.token, str(self.ttl_ms)))

    def release(self) -> None:
        self.client.eval(self._RELEASE, 1, self.KEY, self.token)

    def holder(self) -> str | None:
        value = self.client.get(self.KEY)
        return value.decode() if isinstance(value, bytes) else None

    def wait(self, *, poll_seconds: float, on_wait: Callable[[str | None], None]) -> None:
        """Block until this beat holds the lease."""
        while not self.acquire():
            on_wait(self.holder())
            time.sleep(poll_seconds)

    def keep(self, *, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew the lease every third of its life in a daemon thread; on_lost if it slips."""

        def renew_forever() -> None:
            while True:
                time.sleep(self.ttl_ms / 3000)
                try:
                    held = self.renew()
                except redis.RedisError:
                    log.warning("beat lock: Redis did not answer; renewing again shortly")
                    continue
                if not held:
                    on_lost()
                    return

        thread = threading.Thread(target=renew_forever, name="beat-lock", daemon=True)
        thread.start()
        return thread
