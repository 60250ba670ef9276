"""Each transport against its fake: the request matches the provider's documented API, and each
kind of answer maps to the right kind of error. A raw HTTP server gives the answers no fake does."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest
import pytest_asyncio

from mailsvc.delivery.chain import configured_transports
from mailsvc.delivery.errors import PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.http import HttpProviderConfig
from mailsvc.delivery.mailgun import MailgunTransport
from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.sendgrid import SendGridTransport
from mailsvc.delivery.ses import SesTransport
from mailsvc.delivery.transport import Transport
from mailsvc.devserver.fakes import FakeProviders
from tests.support.env import provider_settings

MESSAGE_ID = uuid.UUID("01a1fd00-0000-7000-8000-000000000001")


def email() -> OutgoingEmail:
    return OutgoingEmail(
        message_id=MESSAGE_ID,
        message_id_header="<01a1fd00000070008000000000000001@example.com>",
        sender=Mailbox("noreply@example.com", "Example"),
        to=[Mailbox("ada@example.net", "Ada"), Mailbox("bob@example.net")],
        cc=[Mailbox("carol@example.net")],
        bcc=[Mailbox("audit@example.com")],
        reply_to=Mailbox("support@example.com"),
        subject="Grüße",
        date=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
        text="Hello",
        html="<p>Hello</p>",
        headers={"X-Campaign": "spring"},
        tags=["welcome", "onboarding"],
    )


def transports(fakes: FakeProviders) -> dict[str, Transport]:
    return {t.name: t for t in configured_transports(provider_settings(fakes))}


async def test_sendgrid_receives_v3_mail_send(fake_providers: FakeProviders) -> None:
    transport = transports(fake_providers)["sendgrid"]
    accepted = await transport.send(email())
    [received] = fake_providers.sendgrid.received
    assert accepted.provider_message_id is not None
    assert received.request_headers["authorization"] == "Bearer SG.fake-key"
    assert received.content_type == "application/json"
    assert json.loads(received.body) == {
        "personalizations": [
            {
                "to": [{"email": "ada@example.net", "name": "Ada"}, {"email": "bob@example.net"}],
                "cc": [{"email": "carol@example.net"}],
                "bcc": [{"email": "audit@example.com"}],
            }
        ],
        "from": {"email": "noreply@example.com", "name": "Example"},
        "reply_to": {"email": "support@example.com"},
        "subject": "Grüße",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
        "headers": {
            "Message-ID": "<01a1fd00000070008000000000000001@example.com>",
            "X-Campaign": "spring",
        },
        "categories": ["welcome", "onboarding"],
        "custom_args": {"mailsvc_message_id": str(MESSAGE_ID)},
    }
    assert received.message_id == "<01a1fd00000070008000000000000001@example.com>"
    await transport.close()


async def test_mailgun_receives_form_fields(fake_providers: FakeProviders) -> None:
    transport = transports(fake_providers)["mailgun"]
    accepted = await transport.send(email())
    [received] = fake_providers.mailgun.received
    assert accepted.provider_message_id is not None
    assert accepted.provider_message_id.endswith("@mg.example.com>")
    expected_auth = "Basic " + base64.b64encode(b"api:key-fake").decode()
    assert received.request_headers["authorization"] == expected_auth
    assert received.content_type == "application/x-www-form-urlencoded"
    assert parse_qsl(received.body.decode(), keep_blank_values=True) == [
        ("from", "Example <noreply@example.com>"),
        ("subject", "Grüße"),
        ("to", "Ada <ada@example.net>"),
        ("to", "bob@example.net"),
        ("cc", "carol@example.net"),
        ("bcc", "audit@example.com"),
        ("text", "Hello"),
        ("html", "<p>Hello</p>"),
        ("h:Message-Id", "<01a1fd00000070008000000000000001@example.com>"),
        ("h:Reply-To", "support@example.com"),
        ("h:X-Campaign", "spring"),
        ("o:tag", "welcome"),
        ("o:tag", "onboarding"),
        ("v:mailsvc-message-id", str(MESSAGE_ID)),
    ]
    assert set(received.recipients) == {
        "ada@example.net",
        "bob@example.net",
        "carol@example.net",
        "audit@example.com",
    }
    await transport.close()


async def test_ses_receives_a_signed_v2_send_email_with_the_raw_message(
    fake_providers: FakeProviders,
) -> None:
    transport = transports(fake_providers)["ses"]
    message = email()
    accepted = await transport.send(message)
    [received] = fake_providers.ses.received
    assert accepted.provider_message_id is not None
    authorization = received.request_headers["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKE/")
    assert "/us-east-1/ses/aws4_request" in authorization
    assert received.request_headers["x-amz-date"]
    assert received.content_type == "application/json"
    body = json.loads(received.body)
    assert body == {
        "FromEmailAddress": "noreply@example.com",
        "Destination": {
            "ToAddresses": ["ada@example.net", "bob@example.net"],
            "CcAddresses": ["carol@example.net"],
            "BccAddresses": ["audit@example.com"],
        },
        "Content": {"Raw": {"Data": body["Content"]["Raw"]["Data"]}},
        "EmailTags": [{"Name": "mailsvc_message_id", "Value": str(MESSAGE_ID)}],
    }
    assert base64.b64decode(body["Content"]["Raw"]["Data"]) == message.raw
    assert received.message_id == message.message_id_header
    await transport.close()


async def test_smtp_delivers_the_mime_message_to_the_envelope(
    fake_providers: FakeProviders,
) -> None:
    transport = transports(fake_providers)["smtp"]
    message = email()
    await transport.send(message)
    [received] = fake_providers.smtp.received
    assert received.sender == "noreply@example.com"
    assert received.recipients == (
        "ada@example.net",
        "bob@example.net",
        "carol@example.net",
        "audit@example.com",
    )
    assert received.body == message.raw
    assert received.message_id == message.message_id_header
    await transport.close()


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses", "smtp"])
async def test_a_5xx_or_4xx_smtp_reply_is_transient(
    fake_providers: FakeProviders, name: str
) -> None:
    fake = fake_providers.providers[name]
    fake.fail(status=451 if name == "smtp" else 503, retry_after=None if name == "smtp" else 7)
    transport = transports(fake_providers)[name]
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert caught.value.code.startswith("smtp_451" if name == "smtp" else "http_503")
    assert caught.value.retry_after == (None if name == "smtp" else 7.0)


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses"])
async def test_429_is_transient_with_retry_after(fake_providers: FakeProviders, name: str) -> None:
    fake_providers.providers[name].fail(status=429, retry_after=42)
    transport = transports(fake_providers)[name]
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert caught.value.retry_after == 42.0


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses", "smtp"])
async def test_a_rejected_address_is_permanent(fake_providers: FakeProviders, name: str) -> None:
    fake_providers.providers[name].reject("ada@example.net")
    transport = transports(fake_providers)[name]
    alone = email()
    alone.to, alone.cc, alone.bcc = [Mailbox("ada@example.net")], [], []
    with pytest.raises(PermanentDeliveryError) as caught:
        await transport.send(alone)
    await transport.close()
    assert caught.value.code in {"http_400", "http_400_MessageRejected", "smtp_550"}
    assert fake_providers.providers[name].received == []


async def test_smtp_sends_to_the_others_when_one_recipient_is_refused(
    fake_providers: FakeProviders,
) -> None:
    fake_providers.smtp.reject("bob@example.net")
    transport = transports(fake_providers)["smtp"]
    accepted = await transport.send(email())
    await transport.close()
    assert accepted.refused is not None
    assert accepted.refused.startswith("bob@example.net: 550")
    [received] = fake_providers.smtp.received
    assert "bob@example.net" not in received.recipients


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses", "smtp"])
async def test_no_answer_in_time_is_a_transient_timeout(
    fake_providers: FakeProviders, name: str
) -> None:
    fake_providers.providers[name].timeout(delay=5)
    settings = provider_settings(
        fake_providers,
        sendgrid_timeout_seconds=0.3,
        mailgun_timeout_seconds=0.3,
        ses_timeout_seconds=0.3,
        smtp_timeout_seconds=0.3,
    )
    transport = {t.name: t for t in configured_transports(settings)}[name]
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    # The SMTP fake stalls after it queued the message, so the reply to its final "." never comes.
    assert caught.value.code == ("smtp_data_unconfirmed" if name == "smtp" else "timeout")


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses"])
async def test_a_refused_key_is_transient_so_the_chain_moves_on(
    fake_providers: FakeProviders, name: str
) -> None:
    settings = provider_settings(
        fake_providers,
        sendgrid_api_key="SG.wrong",
        mailgun_api_key="key-wrong",
        ses_secret_access_key="wrong-secret",
    )
    transport = {t.name: t for t in configured_transports(settings)}[name]
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(email())
    await transport.close()
    assert caught.value.code.startswith(("http_401", "http_403"))
    assert "refused our credentials" in caught.value.reason


async def test_smtp_dot_stuffs_a_message_with_a_line_that_starts_with_a_dot(
    fake_providers: FakeProviders,
) -> None:
    transport = transports(fake_providers)["smtp"]
    message = email()
    message.html = None
    message.text = ".hidden\n..two dots\n"
    await transport.send(message)
    await transport.close()
    [received] = fake_providers.smtp.received
    assert message.raw is not None
    assert message.raw.endswith(b"\r\n\r\n.hidden\r\n..two dots\r\n")
    assert received.body == message.raw


# -- answers no fake gives ----------------------------------------------------------------------


class RawHttpServer:
    """Reads each request whole, writes `answer` as given, then hangs up, or holds the connection
    open until stop() when `hold` is set."""

    def __init__(self, answer: bytes, *, hold: bool = False) -> None:
        self.answer = answer
        self.hold = hold
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)

    async def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.requests.append(head + await reader.readexactly(length))
            writer.write(self.answer)
            await writer.drain()
            if self.hold:
                await self._stopping.wait()
        finally:
            writer.close()


StartHttp = Callable[..., Awaitable[RawHttpServer]]


@pytest_asyncio.fixture
async def start_http() -> AsyncIterator[StartHttp]:
    started: list[RawHttpServer] = []

    async def start(answer: bytes, *, hold: bool = False) -> RawHttpServer:
        server = RawHttpServer(answer, hold=hold)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def answer(status: str, body: bytes, *headers: str, length: int | None = None) -> bytes:
    head = [
        f"HTTP/1.1 {status}",
        "X-Message-Id: sg-4f1c",  # where SendGrid puts its id; Mailgun and SES answer in the body
        f"Content-Length: {len(body) if length is None else length}",
        *headers,
    ]
    return "\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body


def raw_transport(name: str, server: RawHttpServer) -> Transport:
    config = HttpProviderConfig(server.url, timeout=0.5)
    if name == "sendgrid":
        return SendGridTransport(config, "SG.fake-key")
    if name == "mailgun":
        return MailgunTransport(config, "key-fake", "mg.example.com")
    return SesTransport(
        config, access_key_id="AKIDFAKE", secret_access_key="fake-secret", region="us-east-1"
    )


JSON = "Content-Type: application/json"
NOT_GZIP = b"this is not gzip data"


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses"])
@pytest.mark.parametrize(
    ("reply", "hold", "logged"),
    [
        pytest.param(
            answer("200 OK", b"Queued. Thank you.", "Content-Type: text/plain"),
            False,
            "Queued. Thank you.",
            id="not-json",
        ),
        pytest.param(answer("200 OK", b'["queued"]', JSON), False, '["queued"]', id="json-array"),
        pytest.param(answer("200 OK", b""), False, "(empty)", id="empty"),
        pytest.param(
            answer("200 OK", b'{"message": "Queued"}', JSON),
            False,
            '{"message": "Queued"}',
            id="object-without-the-id",
        ),
        pytest.param(
            answer("200 OK", b'{"id": 42, "MessageId": 42}', JSON),
            False,
            '{"id": 42, "MessageId": 42}',
            id="id-not-a-string",
        ),
        pytest.param(
            # PostgreSQL text cannot hold NUL: recording this id would fail after the acceptance.
            answer("200 OK", b'{"id": "a\\u0000b", "MessageId": "a\\u0000b"}', JSON),
            False,
            '{"id": "a\\u0000b", "MessageId": "a\\u0000b"}',
            id="id-with-nul",
        ),
        pytest.param(
            answer("200 OK", b"[" * 100_000, JSON),
            False,
            "[" * 200,
            id="json-nested-too-deep",
        ),
        pytest.param(
            answer("200 OK", NOT_GZIP, JSON, "Content-Encoding: gzip"),
            False,
            "DecodingError: Error -3 while decompressing data: incorrect header check",
            id="undecodable",
        ),
        pytest.param(
            answer("200 OK", b'{"id": "<2026', JSON, length=100),
            False,
            "RemoteProtocolError: peer closed connection without sending complete message body "
            "(received 13 bytes, expected 100)",
            id="cut-short",
        ),
        pytest.param(
            answer("200 OK", b'{"id": "<2026', JSON, length=100),
            True,
            "ReadTimeout",
            id="stalls-mid-body",
        ),
    ],
)
async def test_a_2xx_answer_is_an_acceptance_whatever_its_body(
    start_http: StartHttp,
    caplog: pytest.LogCaptureFixture,
    name: str,
    reply: bytes,
    hold: bool,
    logged: str,
) -> None:
    server = await start_http(reply, hold=hold)
    transport = raw_transport(name, server)
    caplog.set_level(logging.WARNING)
    # A DeliveryError here would send the accepted message again through the next provider.
    accepted = await transport.send(email())
    await transport.close()
    assert len(server.requests) == 1
    if name == "sendgrid":
        assert accepted.provider_message_id == "sg-4f1c"
        assert caplog.records == []
        return
    assert accepted.provider_message_id is None
    [record] = caplog.records
    key = "id" if name == "mailgun" else "MessageId"
    assert (record.name, record.levelname, record.getMessage()) == (
        "mailsvc.delivery.http",
        "WARNING",
        f"{name} accepted the message; its answer has no {key!r} to keep",
    )
    assert getattr(record, "fields", None) == {"provider": name, "answer": logged}


@pytest.mark.parametrize("name", ["sendgrid", "mailgun", "ses"])
@pytest.mark.parametrize(
    ("reply", "kind", "code", "reason", "retry_after"),
    [
        pytest.param(
            answer("503 Service Unavailable", NOT_GZIP, "Content-Encoding: gzip", "Retry-After: 9"),
            TransientDeliveryError,
            "http_503",
            "Service Unavailable",
            9.0,
            id="503-undecodable",
        ),
        pytest.param(
            answer("400 Bad Request", b'{"message": "to is', JSON, length=100),
            PermanentDeliveryError,
            "http_400",
            "Bad Request",
            None,
            id="400-cut-short",
        ),
    ],
)
async def test_a_refusal_with_an_unreadable_body_is_classified_by_its_status(
    start_http: StartHttp,
    name: str,
    reply: bytes,
    kind: type[TransientDeliveryError | PermanentDeliveryError],
    code: str,
    reason: str,
    retry_after: float | None,
) -> None:
    server = await start_http(reply)
    transport = raw_transport(name, server)
    with pytest.raises(kind) as caught:
        await transport.send(email())
    await transport.close()
    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.reason, caught.value.retry_after) == (
        code,
        reason,
        retry_after,
    )
    assert len(server.requests) == 1
