"""The worker's log lines: each names its task, and the housekeeping beat runs every few
seconds is quiet unless it did something (its tasks say so themselves, at INFO)."""

from __future__ import annotations

import logging
from contextvars import Token
from typing import Any, Final

from celery.signals import task_postrun, task_prerun

from mailsvc.kit.logging import enter_log_context, leave_log_context
from mailsvc.worker.beat import HOUSEKEEPING

# Celery's "received" (in the main process) and "succeeded" (after the task, in the pool).
_TASK_LINE_LOGGERS: Final = ("celery.worker.strategy", "celery.app.trace")

_scopes: dict[str, Token[dict[str, str]]] = {}  # task id → its log context, while it runs


class TaskLines(logging.Filter):
    """On Celery's own lines about a task: its id as the `task_id` field, and DEBUG, not INFO,
    for housekeeping."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, dict) or "id" not in args:
            return True
        if not hasattr(record, "task_id"):
            record.task_id = args["id"]
        if args.get("name") in HOUSEKEEPING and record.levelno == logging.INFO:
            if not logging.getLogger().isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def install() -> None:
    """Once, in the worker's main process (its pool processes inherit it)."""
    for name in _TASK_LINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TaskLines) for f in logger.filters):
            logger.addFilter(TaskLines())


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    # Every line the task writes carries its id (the message lines add tenant and message_id).
    if task_id is not None:
        _scopes[task_id] = enter_log_context(task_id=task_id)


@task_postrun.connect
def _task_ended(task_id: str | None = None, **_: Any) -> None:
    token = _scopes.pop(task_id, None) if task_id is not None else None
    if token is not None:
        leave_log_context(token)
