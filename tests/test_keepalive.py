"""A real `mailsvc api` keeps an idle connection longer than common clients do, so it never closes
one that a client is reusing at that very moment (the connection resets of the chaos run)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import eventually
from tests.support.servers import TestServers
from tests.support.stack import api_process

pytestmark = pytest.mark.e2e

HTTPX_IDLE_EXPIRY = 5.0  # httpx.Limits' default keepalive_expiry: the chaos bench's client


async def test_a_pooled_connection_reused_as_the_keep_alive_fires_is_answered(
    servers: TestServers, tmp_path: Path
) -> None:
    with api_process(servers, tmp_path / "logs") as api:
        # httpx's default pool, as bench.chaos uses: it reuses a connection idle up to 5 s.
        async with httpx.AsyncClient(base_url=api.url) as client:
            first = await client.get("/healthz")
            idle_from = time.monotonic()
            assert first.status_code == 200

            # The race, made certain. In the wild the next request is on the wire when the API's
            # keep-alive timer fires; here the API is frozen (SIGSTOP) while idle in epoll_wait,
            # the client sends its request on the pooled connection just inside its own idle
            # limit, and the API is resumed once its timer is due too. Resumed, the event loop
            # runs the due timer before it polls the socket: an API whose keep-alive is not
            # longer than the client's idle limit closes the connection with the request
            # unread, and the client gets a reset (httpx.ReadError) and no answer.
            pid = api.process.process.pid
            await eventually(
                lambda: _idle_in_epoll(pid), timeout=10, what="the API's event loop to be idle"
            )
            api.process.kill(signal.SIGSTOP)
            try:
                # The scenario's timeline, not a wait for work: the reuse comes at 4.5 s idle.
                await asyncio.sleep(idle_from + HTTPX_IDLE_EXPIRY - 0.5 - time.monotonic())
                asyncio.get_running_loop().call_later(1.0, api.process.kill, signal.SIGCONT)
                second = await client.get("/healthz")
            finally:
                api.process.kill(signal.SIGCONT)

            assert second.status_code == 200
            assert second.json() == {"status": "ok"}
            # On the same connection: httpx did reuse it, so the race was really run.
            assert _local_port(second) == _local_port(first)


def test_the_keep_alive_is_a_setting(servers: TestServers, tmp_path: Path) -> None:
    with (
        api_process(servers, tmp_path / "logs", MAILSVC_API_KEEPALIVE_SECONDS="1") as api,
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection,
    ):
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: mailsvc.test\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            chunk = connection.recv(4096)
            assert chunk, f"closed before the whole answer: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close" not in answer.lower()  # kept open for the next request
        # Left idle, it is closed by the API after 1 s: before this 4 s timeout, which uvicorn's
        # own default (5 s) and ours (120 s) would both outlast.
        connection.settimeout(4)
        assert connection.recv(4096) == b""


async def _idle_in_epoll(pid: int) -> bool:
    """Whether the API's main thread (its event loop) is blocked waiting for events."""
    wchan = Path(f"/proc/{pid}/wchan").read_text()
    return "epoll" in wchan or "ep_poll" in wchan


def _local_port(response: httpx.Response) -> int:
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port
