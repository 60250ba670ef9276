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
from contextvars import ContextVar, Token
from typing import Any

_OUTSIDE: dict[str, str] = {}  # the context outside any scope: never written to
_context: ContextVar[dict[str, str]] = ContextVar("mailsvc_log_context", default=_OUTSIDE)

_CONTEXT_KEYS = ("tenant", "message_id", "task_id", "request_id")


def _strings(values: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


@contextlib.contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Adds fields (tenant=…, message_id=…, task_id=…) to every log line written inside.

    It is also a scope for `bind`: what is bound inside stays inside."""
    token = enter_log_context(**values)
    try:
        yield
    finally:
        leave_log_context(token)


def enter_log_context(**values: object) -> Token[dict[str, str]]:
    """`log_context` for code that cannot hold a `with` open (a task's start and end signals):
    the caller must `leave_log_context` with the token, in the same thread."""
    return _context.set({**_context.get(), **_strings(values)})


def leave_log_context(token: Token[dict[str, str]]) -> None:
    _context.reset(token)


def bind(**values: object) -> None:
    """Adds fields to the innermost `log_context`, for the rest of it: a request learns its
    tenant only once its token is read, and its access line, written last, should name it."""
    fields = _context.get()
    if fields is not _OUTSIDE:
        fields.update(_strings(values))


def context_value(key: str) -> str | None:
    """A field of the current context (the request id a problem body echoes)."""
    return _context.get().get(key)


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record a handler writes (configure_logging adds it)."""

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
    handler.addFilter(ContextFilter())
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
