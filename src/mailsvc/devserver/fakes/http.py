"""The fakes' HTTP side: one Starlette app with the three provider APIs and the /_fake control
API, served by uvicorn on a background thread with its own event loop."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailsvc.devserver.fakes.mailgun import MailgunFake
from mailsvc.devserver.fakes.script import FakeProvider
from mailsvc.devserver.fakes.sendgrid import SendGridFake
from mailsvc.devserver.fakes.ses import SesFake


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlApi:
    """POST /_fake/{provider}/{fail,timeout,reject,recover,clear}, GET /_fake/{provider}/received
    and GET /_fake/deliveries: scripting and inspection from other processes."""

    def __init__(
        self,
        providers: Mapping[str, FakeProvider],
        deliveries: Callable[[], dict[str, list[str]]],
    ) -> None:
        self.providers = providers
        self._deliveries = deliveries

    def _provider(self, request: Request) -> FakeProvider:
        name = request.path_params["provider"]
        provider = self.providers.get(name)
        if provider is None:
            raise ControlError(404, f"unknown provider {name!r}; one of {sorted(self.providers)}")
        return provider

    async def script(self, request: Request) -> Response:
        try:
            provider = self._provider(request)
            options = await _options(request)
            action = request.path_params["action"]
            if action == "fail":
                provider.fail(
                    status=_integer(options, "status", 503),
                    retry_after=_optional_integer(options, "retry_after"),
                    for_seconds=_optional_seconds(options, "for_seconds"),
                )
            elif action == "timeout":
                delay = _optional_seconds(options, "delay")
                provider.timeout(
                    for_seconds=_optional_seconds(options, "for_seconds"),
                    delay=30.0 if delay is None else delay,
                )
            elif action == "reject":
                address = options.get("address")
                if not isinstance(address, str) or not address:
                    raise ControlError(400, "reject needs {'address': '...'}")
                provider.reject(address)
            elif action == "recover":
                provider.recover()
            elif action == "clear":
                provider.clear()
            else:
                raise ControlError(404, f"unknown action {action!r}")
        except ControlError as problem:
            return JSONResponse({"error": str(problem)}, status_code=problem.status)
        except ValueError as problem:
            return JSONResponse({"error": str(problem)}, status_code=400)
        return JSONResponse({"ok": True})

    async def received(self, request: Request) -> Response:
        try:
            provider = self._provider(request)
        except ControlError as problem:
            return JSONResponse({"error": str(problem)}, status_code=problem.status)
        messages = provider.received
        return JSONResponse(
            {
                "count": len(messages),
                "requests_seen": provider.requests_seen,
                "messages": [
                    {
                        "message_id": m.message_id,
                        "recipients": list(m.recipients),
                        "subject": m.subject,
                        "at": m.at,
                    }
                    for m in messages
                ],
            }
        )

    async def deliveries(self, request: Request) -> Response:
        return JSONResponse(self._deliveries())


async def _options(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        options = json.loads(body)
    except ValueError:
        raise ControlError(400, "the body must be a JSON object") from None
    if not isinstance(options, dict):
        raise ControlError(400, "the body must be a JSON object")
    return options


def _integer(options: dict[str, Any], key: str, default: int) -> int:
    value = _optional_integer(options, key)
    return default if value is None else value


def _optional_integer(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(400, f"{key} must be an integer")
    return value


def _optional_seconds(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{key} must be a number of seconds")
    return float(value)


def build_app(
    sendgrid: SendGridFake, mailgun: MailgunFake, ses: SesFake, control: ControlApi
) -> Starlette:
    return Starlette(
        routes=[
            Route("/v3/mail/send", sendgrid.send, methods=["POST"]),
            Route("/v3/{domain}/messages", mailgun.send, methods=["POST"]),
            Route("/v2/email/outbound-emails", ses.send, methods=["POST"]),
            Route("/_fake/deliveries", control.deliveries, methods=["GET"]),
            Route("/_fake/{provider}/received", control.received, methods=["GET"]),
            Route("/_fake/{provider}/{action}", control.script, methods=["POST"]),
        ],
        # A client that hung up mid-request (a worker killed by a chaos run) is not an error.
        exception_handlers={ClientDisconnect: _client_gone},
    )


async def _client_gone(_: Request, __: Exception) -> Response:
    return Response(status_code=499)


class HttpServerThread:
    """uvicorn on its own thread and event loop, bound before start() returns."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the fake HTTP server is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.requested_port))
        except OSError:
            listener.close()
            raise
        self.port = int(listener.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,  # tens of thousands of requests in the benchmarks
            timeout_graceful_shutdown=1,  # held (timeout-scripted) requests must not block stop()
            backlog=4096,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [listener]},
            name="fake-providers-http",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the fake HTTP server stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("the fake HTTP server did not start in time")
            time.sleep(0.01)
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._server = None
        self._thread = None
