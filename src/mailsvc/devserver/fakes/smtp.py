"""The scriptable fake SMTP provider: an aiosmtpd server that records what it accepts and can
be told to fail MAIL FROM, stall after DATA or refuse recipients."""

from __future__ import annotations

import asyncio
import email.policy
import time
from collections.abc import Awaitable
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.controller import Controller

from mailsvc.devserver.fakes.script import FakeProvider, Received

DATA_SIZE_LIMIT = 40 * 1024 * 1024


def failure_reply(status: int) -> str:
    if status < 500:
        return f"{status} 4.3.0 Temporary failure (scripted)"
    return f"{status} 5.0.0 Permanent failure (scripted)"


class FakeSmtpHandler:
    """aiosmtpd hooks; each message transaction (from MAIL FROM) counts as one request."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        script = self.provider.on_request()
        if script.failure is not None:
            return failure_reply(script.failure.status)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.provider.is_rejected(address):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(content)
        message_id = headers.get("Message-ID")
        subject = headers.get("Subject")
        content_type = headers.get("Content-Type")
        self.provider.record(
            Received(
                provider=self.provider.name,
                message_id=None if message_id is None else str(message_id).strip(),
                sender=str(envelope.mail_from or ""),
                recipients=tuple(envelope.rcpt_tos),
                subject=None if subject is None else str(subject),
                request_headers={},
                content_type=None if content_type is None else str(content_type),
                body=content,
                at=time.time(),
            ),
            eml=lambda: content,
        )
        # Accepted before the hold, as a real server that stalls after queueing would have it:
        # a client that gives up waiting may retry and deliver the message twice.
        delay = self.provider.current_script().delay
        if delay > 0:
            await self.provider.hold(delay)
        return "250 2.0.0 Ok: queued"


class FakeSmtpController(Controller):
    """aiosmtpd's threaded Controller, except that port 0 binds a free port and reports it."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, ssl=self.ssl_context
        )
        self.port = int(server.sockets[0].getsockname()[1])
        return server


def start_fake_smtp(
    provider: FakeProvider, *, host: str = "127.0.0.1", port: int = 0
) -> FakeSmtpController:
    """Starts the server on a background thread; `.port` is the bound port, `.stop()` stops it."""
    controller = FakeSmtpController(
        FakeSmtpHandler(provider),
        hostname=host,
        port=port,
        data_size_limit=DATA_SIZE_LIMIT,
        decode_data=False,
        ready_timeout=10,
    )
    controller.start()
    return controller
