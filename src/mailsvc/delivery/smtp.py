"""SMTP through a pool of reused aiosmtplib connections, with STARTTLS and AUTH when configured.

A relay that refuses or drops the session before MAIL refuses us, not the message: like a refused
HTTP key it is transient, so the chain moves on and the breaker counts it. Its code names the step
and the outcome, `smtp_{connect,greeting,ehlo,starttls,auth}_{<reply code>,timeout,disconnected,
failed,unsupported}` ("failed": a socket or TLS error); codes without a step are the transaction's.
A hang-up or timeout once the message data was written is `smtp_data_unconfirmed`: the relay may
have queued the message, so it is not sent again on a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from mailsvc.delivery.errors import PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import OutgoingEmail
from mailsvc.delivery.mime import ensure_raw
from mailsvc.delivery.transport import Receipt


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
        """A new session ready for MAIL, or a TransientDeliveryError with the connection closed."""
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
            # STARTTLS is done below rather than inside connect(), so a refusal names its step.
            start_tls=False,
            tls_context=tls_context,
        )
        step = "connect"
        try:
            await client.connect()
            step = "ehlo"
            await client.ehlo()
            if config.starttls:
                step = "starttls"
                await client.starttls()
                step = "ehlo"  # RFC 3207: what the server offers is asked again over TLS
                await client.ehlo()
            if config.username and config.password:
                step = "auth"
                await client.login(config.username, config.password)
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise _session_refused(step, exc) from exc
        except BaseException:
            client.close()
            raise
        return client

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        """An idle pooled session (True) or a new one (False)."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
            client.close()
        return await self._connect(), False

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append(client)

    async def send(self, email: OutgoingEmail) -> Receipt:
        raw = ensure_raw(email)
        recipients = email.envelope_recipients
        async with self._slots:
            # From here `client` is always a session this call owns: it is pooled again or closed.
            client, pooled = await self._checkout()
            while True:
                try:
                    refused_by_address, reply = await _transaction(
                        client, email.sender.email, recipients, raw
                    )
                except TransientDeliveryError:
                    # smtp_data_unconfirmed: _data closed the session; never retried here.
                    raise
                except aiosmtplib.SMTPServerDisconnected as exc:
                    # Raised only before the message data was written (after it, _data raises
                    # smtp_data_unconfirmed): nothing of the message was committed.
                    client.close()
                    if not pooled:
                        raise TransientDeliveryError("smtp_disconnected", str(exc)) from exc
                    # A pooled connection the server closed while idle gets one retry on a new one.
                    client, pooled = await self._connect(), False
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    await self._reset(client)
                    first = exc.recipients[0]
                    raise _classify(first.code, f"{first.recipient}: {first.message}") from exc
                except aiosmtplib.SMTPResponseException as exc:
                    await self._reset(client)
                    raise _classify(exc.code, exc.message) from exc
                except (aiosmtplib.SMTPException, OSError) as exc:
                    client.close()
                    raise TransientDeliveryError(
                        "smtp_connection", str(exc) or type(exc).__name__
                    ) from exc
                except BaseException:
                    # Cancelled mid-transaction (or a bug): the session cannot be reused.
                    client.close()
                    raise
                else:
                    break
            self._checkin(client)
        # Some recipients may have been refused while others were accepted: the message
        # went out, and the refusals are kept with the attempt.
        refused = "; ".join(
            f"{address}: {response.code} {response.message}"
            for address, response in refused_by_address.items()
        )
        return Receipt(provider_message_id=None, detail=reply, refused=refused or None)

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """After a refusal the session is still good once RSET clears the transaction."""
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
            return
        except BaseException:
            client.close()
            raise
        self._checkin(client)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        try:
            for client in idle:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
        finally:
            # quit() leaves a session open when the server answers it with anything but 221.
            for client in idle:
                client.close()


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
    """DATA and the message, without `client.data`'s regex passes when they would change nothing.

    `client.data` normalises line ends and dot-stuffs every message. mailsvc's builder writes
    CRLF only and quoted-printable bodies, whose lines never start with "." (it is "=2E"), so a
    fast byte search proves the message already transparent; anything else takes the long way.
    Sending DATA here also tells a failure before the message was handed over (raised as
    aiosmtplib's, safe to send again) from one after it (smtp_data_unconfirmed).
    """
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    if b"\n." in raw or not raw.endswith(b"\r\n") or b"\r\r" in raw:
        raw = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw))
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    # write() raises before writing anything when the connection is already closing.
    protocol.write(raw + b".\r\n")
    try:
        # No await between the write and read_response, so the reply cannot arrive unexpected.
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
        client.close()
        # It may be queued: a later send (the chain's) is at-least-once, with the same Message-ID.
        raise TransientDeliveryError("smtp_data_unconfirmed", str(exc)) from exc
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


def _classify(code: int, message: str) -> TransientDeliveryError | PermanentDeliveryError:
    if 400 <= code < 500:
        return TransientDeliveryError(f"smtp_{code}", message)
    return PermanentDeliveryError(f"smtp_{code}", message)


def _session_refused(step: str, exc: aiosmtplib.SMTPException | OSError) -> TransientDeliveryError:
    """What a failure while opening the session amounts to (see the module docstring)."""
    failure: BaseException = exc
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        step = "greeting"
    elif isinstance(exc, aiosmtplib.SMTPConnectError) and isinstance(
        exc.__cause__, aiosmtplib.SMTPException
    ):
        # connect() covers the TCP connect and the greeting: an SMTP-level cause (a read timeout,
        # a hang-up) means TCP was up and it is the greeting that failed.
        step, failure = "greeting", exc.__cause__
    if isinstance(failure, aiosmtplib.SMTPResponseException):
        return TransientDeliveryError(
            f"smtp_{step}_{failure.code}", f"{failure.code} {failure.message}"
        )
    if isinstance(failure, TimeoutError):
        outcome = "timeout"
    elif isinstance(failure, aiosmtplib.SMTPServerDisconnected):
        outcome = "disconnected"
    elif isinstance(failure, OSError):
        outcome = "failed"
    else:  # the server does not offer STARTTLS, or no AUTH mechanism that we know
        outcome = "unsupported"
    return TransientDeliveryError(f"smtp_{step}_{outcome}", str(exc) or type(exc).__name__)
