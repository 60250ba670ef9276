"""SMTP through a pool of reused aiosmtplib connections, with STARTTLS and AUTH when configured."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailsvc.delivery.errors import PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.transport import Accepted


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 15.0
    pool_size: int = 4
    verify_tls: bool = True


class SmtpTransport:
    """Keeps up to `pool_size` open connections per worker process and reuses them."""

    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(config.pool_size)

    async def _connect(self) -> aiosmtplib.SMTP:
        config = self.config
        tls_context = None
        if config.starttls and not config.verify_tls:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            timeout=config.timeout,
            start_tls=config.starttls,
            tls_context=tls_context,
        )
        await client.connect()
        await client.ehlo()
        if config.username and config.password:
            await client.login(config.username, config.password)
        return client

    async def _checkout(self, *, fresh: bool) -> aiosmtplib.SMTP:
        while self._idle and not fresh:
            client = self._idle.pop()
            if client.is_connected:
                return client
        return await self._connect()

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append(client)

    async def send(self, email: OutgoingEmail) -> Accepted:
        raw = ensure_raw(email)
        recipients = email.envelope_recipients
        async with self._slots:
            # A pooled connection the server closed while idle gets one retry on a fresh one.
            for fresh in (False, True):
                try:
                    client = await self._checkout(fresh=fresh)
                    refused_by_address, reply = await _transaction(
                        client, email.sender.email, recipients, raw
                    )
                except aiosmtplib.SMTPServerDisconnected as exc:
                    if fresh:
                        raise TransientDeliveryError("smtp_disconnected", str(exc)) from exc
                    continue
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    await self._reset(client)
                    first = exc.recipients[0]
                    raise _classify(first.code, f"{first.recipient}: {first.message}") from exc
                except aiosmtplib.SMTPResponseException as exc:
                    await self._reset(client)
                    raise _classify(exc.code, exc.message) from exc
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    raise TransientDeliveryError(
                        "smtp_connection", str(exc) or type(exc).__name__
                    ) from exc
                self._checkin(client)
                # Some recipients may have been refused while others were accepted: the message
                # went out, and the refusals are kept with the attempt.
                refused = "; ".join(
                    f"{address}: {response.code} {response.message}"
                    for address, response in refused_by_address.items()
                )
                return Accepted(provider_message_id=None, detail=reply, refused=refused or None)
        raise AssertionError("unreachable")

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """After a refusal the session is still good once RSET clears the transaction."""
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
            return
        self._checkin(client)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                await client.quit()


async def _transaction(
    client: aiosmtplib.SMTP, sender: str, recipients: list[str], raw: bytes
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """MAIL, RCPT…, DATA on an open connection, as `SMTP.sendmail` does, minus its address parsing.

    sendmail parses each address twice with email.utils (a tenth of a worker's time); these were
    validated and stored in ASCII form at the API, and aiosmtplib still refuses control characters.
    """
    response = await client.execute_command(b"MAIL", f"FROM:<{sender}>".encode("ascii"))
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    refused: dict[str, aiosmtplib.SMTPResponse] = {}
    for recipient in recipients:
        response = await client.execute_command(b"RCPT", f"TO:<{recipient}>".encode("ascii"))
        if response.code not in (250, 251):
            refused[recipient] = response
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(
            [
                aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
                for recipient, response in refused.items()
            ]
        )
    response = await _data(client, raw)
    return refused, response.message


async def _data(client: aiosmtplib.SMTP, raw: bytes) -> aiosmtplib.SMTPResponse:
    """DATA, skipping aiosmtplib's two regex passes over the body when they would change nothing.

    `client.data` normalises line ends and dot-stuffs every message. mailsvc's builder writes
    CRLF only and quoted-printable bodies, whose lines never start with "." (it is "=2E"), so a
    fast byte search proves the message already transparent; anything else takes the long way.
    """
    protocol = client.protocol
    if protocol is None or b"\n." in raw or not raw.endswith(b"\r\n") or b"\r\r" in raw:
        return await client.data(raw)
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    try:
        # No await between the write and read_response, so the reply cannot arrive unexpected.
        protocol.write(raw + b".\r\n")
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _classify(code: int, message: str) -> TransientDeliveryError | PermanentDeliveryError:
    if 400 <= code < 500:
        return TransientDeliveryError(f"smtp_{code}", message)
    return PermanentDeliveryError(f"smtp_{code}", message)
