"""What a fake provider has received, and the misbehaviour it is scripted to show (fail, stall,
reject); shared by the HTTP and SMTP fakes, safe to use from any thread."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from mailsvc.devserver.fakes.outbox import FakeOutbox

R = TypeVar("R")

# How often a held answer checks whether its server is stopping; stop() then takes this long
# at most instead of the whole hold, and nothing is cancelled mid-request.
HOLD_POLL_SECONDS = 0.05


# What the providers take as an address (loosely: they check the shape, not the mailbox).
_EMAIL_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")


def is_address(value: object) -> bool:
    """Matched whole: `re.match` with `$` would take an address ending in a newline."""
    return isinstance(value, str) and _EMAIL_ADDRESS.fullmatch(value) is not None


@dataclass(frozen=True)
class Received:
    """One message a fake provider accepted."""

    provider: str
    message_id: str | None  # the Message-ID header value, angle brackets included
    sender: str
    recipients: tuple[str, ...]  # the envelope: to + cc + bcc
    subject: str | None
    request_headers: dict[str, str]  # lower-cased names; empty for SMTP
    content_type: str | None
    body: bytes  # the raw HTTP request body, or the raw SMTP message
    at: float  # time.time()


@dataclass(frozen=True)
class Failure:
    status: int  # an HTTP status, or an SMTP reply code for the SMTP fake
    retry_after: int | None


@dataclass(frozen=True)
class Script:
    """The misbehaviour in force for one request, read once when it arrives."""

    failure: Failure | None
    delay: float  # seconds to hold the answer; 0.0 answers at once


def _active(until: float | None, now: float) -> bool:
    return until is None or now < until


class FakeProvider:
    """The scripts and the record of one fake provider."""

    def __init__(self, name: str, outbox: FakeOutbox | None = None) -> None:
        self.name = name
        self._outbox = outbox
        self._lock = threading.Lock()
        self._failure: Failure | None = None
        self._failure_until: float | None = None
        self._delay = 0.0
        self._delay_until: float | None = None
        self._rejected: set[str] = set()
        self._received: list[Received] = []
        self._requests_seen = 0
        self._stopping = threading.Event()

    # Scripting, called by tests, benchmarks and the control API.

    def fail(
        self, status: int = 503, retry_after: int | None = None, for_seconds: float | None = None
    ) -> None:
        """Answer every request with `status` until recover(), or for `for_seconds` from now."""
        if not 400 <= status <= 599:
            raise ValueError(f"a scripted failure needs a 4xx or 5xx status, not {status}")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        with self._lock:
            self._failure = Failure(status, retry_after)
            self._failure_until = _deadline(for_seconds)

    def timeout(self, for_seconds: float | None = None, delay: float = 30.0) -> None:
        """Hold every answer `delay` seconds, until recover() or for `for_seconds` from now."""
        if delay < 0:
            raise ValueError("delay must not be negative")
        with self._lock:
            self._delay = delay
            self._delay_until = _deadline(for_seconds)

    def reject(self, address: str) -> None:
        """Refuse, permanently, every message addressed to `address` (until clear())."""
        with self._lock:
            self._rejected.add(address.strip().lower())

    def recover(self) -> None:
        """Drop the fail and timeout scripts; rejections stay."""
        with self._lock:
            self._failure, self._failure_until = None, None
            self._delay, self._delay_until = 0.0, None

    def clear(self) -> None:
        """Back to a fresh provider: no scripts, no rejections, nothing received."""
        with self._lock:
            self._failure, self._failure_until = None, None
            self._delay, self._delay_until = 0.0, None
            self._rejected.clear()
            self._received.clear()
            self._requests_seen = 0

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def requests_seen(self) -> int:
        with self._lock:
            return self._requests_seen

    # Used by the servers.

    def on_request(self) -> Script:
        """Counts one request and returns the script it is subject to."""
        with self._lock:
            self._requests_seen += 1
            return self._script(time.monotonic())

    def current_script(self) -> Script:
        with self._lock:
            return self._script(time.monotonic())

    def _script(self, now: float) -> Script:
        failure = self._failure if _active(self._failure_until, now) else None
        delay = self._delay if _active(self._delay_until, now) else 0.0
        return Script(failure, delay)

    async def hold(self, delay: float) -> None:
        """Sleeps `delay` seconds, or less when the servers are stopping."""
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, HOLD_POLL_SECONDS))

    def release_holds(self, stopping: bool = True) -> None:
        """Ends every hold at once while the servers stop; False allows holds again."""
        if stopping:
            self._stopping.set()
        else:
            self._stopping.clear()

    def is_rejected(self, address: str) -> bool:
        with self._lock:
            return address.strip().lower() in self._rejected

    def first_rejected(self, addresses: Iterable[str]) -> str | None:
        with self._lock:
            for address in addresses:
                if address.strip().lower() in self._rejected:
                    return address
        return None

    def record(self, received: Received, eml: Callable[[], bytes] | None = None) -> None:
        """Keeps an accepted message; `eml` renders it for the outbox, if there is one."""
        if self._outbox is not None and eml is not None:
            self._outbox.write(self.name, eml())
        with self._lock:
            self._received.append(received)


def _deadline(for_seconds: float | None) -> float | None:
    if for_seconds is None:
        return None
    if for_seconds < 0:
        raise ValueError("for_seconds must not be negative")
    return time.monotonic() + for_seconds


async def run_scripted(
    provider: FakeProvider,
    handle: Callable[[], Awaitable[R]],
    failed: Callable[[Failure], R],
) -> R:
    """Answers one HTTP request as scripted: a scripted failure instead of the real handling,
    and any hold after it, so a message is accepted even when the client gives up waiting
    (as a real provider does when the response is lost)."""
    script = provider.on_request()
    answer = failed(script.failure) if script.failure is not None else await handle()
    if script.delay > 0:
        await provider.hold(script.delay)
    return answer
