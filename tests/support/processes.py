"""Real worker and beat processes for end-to-end tests, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    """The deadline of one wait: `check()` fails the test once it has passed, saying what was
    awaited (`what` may be a function, called then, for a log tail or the last state seen)."""

    def __init__(self, timeout: float, what: str | Callable[[], str]) -> None:
        self.timeout = timeout
        self.what = what
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            what = self.what() if callable(self.what) else self.what
            raise AssertionError(f"timed out after {self.timeout:.0f} s waiting for {what}")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Polls `probe` until it returns something truthy; fails the test at the deadline."""
    deadline = Deadline(timeout, what)
    while not (value := await probe()):
        deadline.check()
        await asyncio.sleep(interval)
    return value


def eventually_sync(
    probe: Callable[[], T | None],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> T:
    """`eventually` for a test or a probe with no event loop: the wait blocks the thread."""
    deadline = Deadline(timeout, what)
    while not (value := probe()):
        deadline.check()
        time.sleep(interval)
    return value


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signals the whole process group: the Celery main process and its pool children."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)
        self.process.wait()


def start_service(
    name: str,
    args: list[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    ready_marker: str | None,
    timeout: float = 60.0,
) -> ServiceProcess:
    """Starts `mailsvc <args>` in its own process group and waits for `ready_marker` in its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailsvc", *args],
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service = ServiceProcess(name, process, log_path)
    if ready_marker is None:
        return service

    def ready() -> bool:
        if not service.alive:
            raise RuntimeError(f"{name} exited early:\n{service.log()[-4000:]}")
        return ready_marker in service.log()

    try:
        eventually_sync(
            ready, timeout=timeout, what=lambda: f"{name} to be ready:\n{service.log()[-4000:]}"
        )
    except AssertionError:
        service.stop()
        raise
    return service


WORKER_READY = " ready."
BEAT_READY = "beat: Starting..."
