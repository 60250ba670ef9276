"""The stack under test, started as `make run` starts it: `mailsvc dev` in a scratch folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mailsvc.devserver.embedded import free_port

# The benches measure capacity: one tenant's API rate limit would be measured instead.
UNLIMITED_API = '{"per_second": 1000000, "burst": 1000000}'


@dataclass
class Stack:
    folder: Path
    process: subprocess.Popen[bytes]
    api_url: str
    token: str
    database_url: str
    redis_url: str
    smtp_port: int

    @property
    def outbox(self) -> Path:
        return self.folder / ".mailsvc" / "outbox"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_stack(
    folder: Path, *, smtp: tuple[str, int] | None = None, env: dict[str, str] | None = None
) -> Stack:
    """`mailsvc dev` in `folder`; with `smtp`, mail is relayed there instead of captured.

    `env` adds MAILSVC_* settings, so that one run can compare two of them side by side."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "dev.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSVC_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailsvc",
                "dev",
                "--port",
                str(port),
                *(["--smtp", f"{smtp[0]}:{smtp[1]}"] if smtp else []),
            ],
            cwd=folder,
            env={
                **clean,
                "MAILSVC_LOG_LEVEL": "WARNING",
                "MAILSVC_API_RATE_LIMIT": UNLIMITED_API,
                **(env or {}),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 180
    while "Ctrl-C stops everything." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mailsvc dev did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    lines = log.read_text().splitlines()
    token = lines[lines.index("Token (all scopes, 30 days):") + 1].strip()
    runtime = json.loads((folder / ".mailsvc" / "runtime.json").read_text())
    return Stack(
        folder=folder,
        process=process,
        api_url=runtime["api_url"],
        token=token,
        database_url=runtime["database_url"],
        redis_url=runtime["redis_url"],
        smtp_port=runtime["smtp_port"],
    )


def use_stack(stack: Stack) -> None:
    """Point this process's publisher at the stack's Redis."""
    from mailsvc.config import Settings
    from mailsvc.worker.app import celery_app, configure

    celery_app.close()
    configure(celery_app, Settings(redis_url=stack.redis_url))


def count_files(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for entry in entries if entry.name.endswith(".eml"))
