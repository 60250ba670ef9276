"""`mailsvc dev` (what `make run` runs) from an empty folder, as a newcomer would use it."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mailsvc.devserver.embedded import free_port
from tests.support.processes import eventually_sync

pytestmark = pytest.mark.e2e

BANNER = "mailsvc is running."


class DevRun:
    def __init__(self, folder: Path, port: int, *extra: str) -> None:
        self.folder = folder
        self.port = port
        self.log = folder / f"dev-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSVC_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailsvc", "dev", "--port", str(port), *extra],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> str:
        def ready() -> bool:
            assert self.process.poll() is None, self.text()[-4000:]
            return BANNER in self.text() and "Ctrl-C stops everything." in self.text()

        eventually_sync(ready, timeout=timeout, interval=0.1, what=self.log_tail)
        lines = self.text().splitlines()
        return lines[lines.index("Token (all scopes, 30 days):") + 1].strip()

    def log_tail(self) -> str:
        return f"mailsvc dev; its output ends:\n{self.text()[-4000:]}"

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C delivers
        return self.process.wait(60)


def sent(api: str, headers: dict[str, str], message_id: str) -> dict[str, Any]:
    """The message once it is sent, as the API shows it."""
    seen: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        seen.update(httpx.get(f"{api}/v1/messages/{message_id}", headers=headers).json())
        return dict(seen) if seen["status"] == "sent" else None

    return eventually_sync(probe, what=lambda: f"message {message_id} sent; last seen: {seen}")


def processes_of(folder: Path) -> list[psutil.Process]:
    """Anything still running that was started in, or points into, the folder."""
    found = []
    for process in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = process.info.get("cwd") or ""
        cmdline = " ".join(process.info.get("cmdline") or [])
        if process.pid != os.getpid() and (cwd.startswith(str(folder)) or str(folder) in cmdline):
            found.append(process)
    return found


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    project = tmp_path / "p"
    project.mkdir()
    yield project
    for process in processes_of(project):  # never leave a server behind, even on failure
        process.kill()


def test_make_run_sends_an_email_then_stops_cleanly_and_keeps_its_data(folder: Path) -> None:
    port = free_port()
    first = DevRun(folder, port)
    token = first.wait_ready()
    curl = re.search(r"-d '(\{.*\})'", first.text())
    assert curl is not None, "the banner shows a ready curl line"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    api = f"http://127.0.0.1:{port}"

    response = httpx.post(f"{api}/v1/messages", content=curl.group(1), headers=headers)
    assert response.status_code == 202, response.text
    accepted = response.json()

    outbox = folder / ".mailsvc" / "outbox"
    [eml] = eventually_sync(lambda: list(outbox.glob("*.eml")), what=first.log_tail)
    received = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert received["Message-ID"] == accepted["message_id_header"]

    message = sent(api, headers, accepted["id"])
    assert len(message["attempts"]) == 1

    assert first.interrupt() == 0
    assert processes_of(folder) == []
    assert not (folder / ".mailsvc" / "runtime.json").exists()

    second = DevRun(folder, port)
    token = second.wait_ready()
    again = httpx.get(
        f"{api}/v1/messages/{accepted['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert again.status_code == 200
    assert again.json()["status"] == "sent"
    assert second.interrupt() == 0
    assert processes_of(folder) == []


def test_make_run_with_fake_providers_shows_a_failover(folder: Path) -> None:
    port = free_port()
    dev = DevRun(folder, port, "--fake-providers")
    token = dev.wait_ready()
    found = re.search(r"curl -s -X POST (http://\S+)/_fake/sendgrid/fail", dev.text())
    assert found is not None, "the banner shows how to make a provider fail"
    fakes_url = found.group(1)
    api = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"to": ["someone@example.net"], "subject": "Hi", "text": "Hello"}

    def post() -> str:
        return str(httpx.post(f"{api}/v1/messages", json=body, headers=headers).json()["id"])

    first = sent(api, headers, post())
    assert first["provider"] == "sendgrid"

    scripted = httpx.post(f"{fakes_url}/_fake/sendgrid/fail", json={"status": 503})
    assert scripted.status_code == 200
    second = sent(api, headers, post())
    assert second["provider"] == "mailgun"
    attempts = second["attempts"]
    assert isinstance(attempts, list)
    assert [(a["provider"], a["outcome"]) for a in attempts] == [
        ("sendgrid", "transient_error"),
        ("mailgun", "sent"),
    ]
    deliveries = httpx.get(f"{fakes_url}/_fake/deliveries").json()
    assert deliveries[str(second["message_id_header"])] == ["mailgun"]
    assert list((folder / ".mailsvc" / "outbox").glob("mailgun-*.eml"))
    assert dev.interrupt() == 0
    assert processes_of(folder) == []
