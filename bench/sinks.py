"""Where benchmark mail lands, and how arrivals are counted.

- the capture SMTP server of `make run` (aiosmtpd, one .eml file per message);
- Postfix's smtp-sink (C; Debian's `postfix` package), which MEASURED.md recommends for
  throughput figures: aiosmtpd costs 0.4-1.1 ms of CPU a message and becomes the bottleneck.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Protocol

from bench.stack import count_files
from mailsvc.devserver.embedded import free_port, wait_for_port

SMTP_SINK = "/usr/sbin/smtp-sink"
_COUNTER = re.compile(rb"mesg=(\d+)")


class Sink(Protocol):
    name: str
    host: str
    port: int

    def count(self) -> int: ...


class CaptureSink:
    name = "capture SMTP server (aiosmtpd, as `make run`)"
    host = "127.0.0.1"

    def __init__(self, outbox: Path, port: int) -> None:
        self.outbox = outbox
        self.port = port

    def count(self) -> int:
        return count_files(self.outbox) if self.outbox.exists() else 0


class PostfixSmtpSink:
    name = "Postfix smtp-sink"
    host = "127.0.0.1"

    @staticmethod
    def available() -> bool:
        return Path(SMTP_SINK).exists() or shutil.which("smtp-sink") is not None

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "smtp-sink.out"
        with self.log.open("wb") as out:
            # -c prints "sess=N quit=N mesg=N" on each event; 1024 is the listen backlog.
            self.process = subprocess.Popen(
                [SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port)

    def count(self) -> int:
        tail = self.log.read_bytes()[-200:]
        found = _COUNTER.findall(tail)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def wait_for(sink: Sink, target: int, *, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        started = time.perf_counter()
        if sink.count() >= target:
            return started
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sink.count()} of {target} messages reached {sink.name}")
        # Listing a folder of many thousand .eml files costs milliseconds: poll at most 10% of
        # the time, so the counting does not slow down what is counted.
        time.sleep(max(0.02, 10 * (time.perf_counter() - started)))
