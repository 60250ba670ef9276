"""A capture SMTP server: every message it receives is kept as an .eml file in an outbox folder."""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

_MESSAGE_ID = re.compile(rb"^message-id:\s*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
_UNSAFE = re.compile(r"[^A-Za-z0-9@._-]")


def write_atomically(path: Path, content: bytes) -> None:
    """Writes under a hidden temporary name first: readers never see a half-written file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


class CaptureHandler:
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._sequence = itertools.count()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        match = _MESSAGE_ID.search(content.split(b"\r\n\r\n", 1)[0])
        label = _UNSAFE.sub("_", match.group(1).decode("ascii", "replace")) if match else "no-id"
        name = f"{time.time_ns()}-{next(self._sequence):06d}-{label}.eml"
        write_atomically(self.outbox / name, content)
        return f"250 2.0.0 Ok: queued as {label}"


def start_capture_server(outbox: Path, *, host: str = "127.0.0.1", port: int = 2525) -> Controller:
    """Starts the server on a background thread; call .stop() on the result."""
    controller = Controller(
        CaptureHandler(outbox),
        hostname=host,
        port=port,
        data_size_limit=40 * 1024 * 1024,
        decode_data=False,
        ready_timeout=10,
    )
    controller.start()
    return controller
