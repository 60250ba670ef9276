"""Structured logging: JSON in production, readable text in dev, with tenant/message/task context.

Context travels in contextvars, so a log line written deep in the delivery code still names the
tenant, message and task it belongs to. Secrets and message bodies are never passed to a logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_context: ContextVar[dict[str, str]] = ContextVar("mailsvc_log_context", default={})  # noqa: B039

_CONTEXT_KEYS = ("tenant", "message_id", "task_id", "request_id")


@contextlib.contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Adds fields (tenant=…, message_id=…, task_id=…) to every log line written inside."""
    merged = {**_context.get(), **{k: str(v) for k, v in values.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={getattr(record, key)}" for key in _CONTEXT_KEYS if hasattr(record, key)
        )
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            context = " ".join([context, *(f"{k}={v}" for k, v in extra.items())]).strip()
        return f"{line} [{context}]" if context else line


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pgserver", "mail.log", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_celery_chatter() -> None:
    """For `mailsvc dev`: no line per task received/succeeded; mailsvc logs what was sent."""
    for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat"):
        logging.getLogger(name).setLevel(logging.WARNING)
