"""The fakes' outbox: every accepted message as an .eml file, and the rendering of HTTP API
requests (JSON or form fields) into such a message."""

from __future__ import annotations

import email.policy
import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path

from mailsvc.devserver.capture_smtp import write_atomically


class FakeOutbox:
    """Writes "<provider>-<time_ns>-<seq>.eml" files into one folder, from any thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    def write(self, provider: str, content: bytes) -> Path:
        with self._lock:
            sequence = next(self._sequence)
        path = self.folder / f"{provider}-{time.time_ns()}-{sequence:06d}.eml"
        write_atomically(path, content)
        return path


def compose_eml(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    subject: str | None,
    headers: Iterable[tuple[str, str]] = (),
    text: str | None = None,
    html: str | None = None,
) -> bytes:
    """The message an HTTP API request describes, as the provider would put it on the wire."""
    message = EmailMessage(policy=email.policy.SMTP)
    for name, value in [("From", sender), ("To", ", ".join(to)), ("Cc", ", ".join(cc))]:
        _set_header(message, name, value)
    if subject is not None:
        _set_header(message, "Subject", subject)
    for name, value in headers:
        _set_header(message, name, value)
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    return message.as_bytes()


def _set_header(message: EmailMessage, name: str, value: str) -> None:
    if not value:
        return
    try:
        message[name] = value
    except (ValueError, TypeError):
        # The outbox copy is a convenience: a header the email package refuses (a line break in
        # a value, a malformed address) is left out rather than failing an accepted request.
        return
