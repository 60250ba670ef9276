"""The beat schedule, declared in one place."""

from __future__ import annotations

from typing import Any

from mailsvc.config import Settings
from mailsvc.worker import queues


def beat_schedule(config: Settings) -> dict[str, dict[str, Any]]:
    def every(seconds: float, task: str) -> dict[str, Any]:
        # A run that waited longer than its own interval is dropped: the next one does its work.
        return {
            "task": task,
            "schedule": seconds,
            "options": {"queue": queues.MAINTENANCE, "expires": max(seconds, 1.0)},
        }

    return {
        "dispatch-due-messages": every(config.dispatch_interval_seconds, "messages.dispatch_due"),
        "sweep-outbox": every(config.sweep_interval_seconds, "messages.sweep"),
        "expire-idempotency-keys": every(3600, "messages.expire_idempotency_keys"),
    }
