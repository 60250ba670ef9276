"""Each transport against its fake: the request matches the provider's documented API, and each
kind of answer maps to the right kind of error."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest

from mailsvc.delivery.chain import configured_transports
from mailsvc.delivery.errors import PermanentDeliveryError, TransientDeliveryError
from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.delivery.transport import Transport
from mailsvc.devserver.fakes import FakeProviders
from tests.conftest import provider_settings

MESSAGE_ID = uuid.UUID("01a1fd00-0000-7000-8000-000000000001")


def email() -> OutgoingEmail:
    return OutgoingEmail(
        message_id=MESSAGE_ID,
        message_id_header="<01a1fd00000070008000000000000001@example.com>",
        sender=Address("noreply@example.com", "Example"),
        to=[Address("ada@example.net", "Ada"), Address("bob@example.net")],
        cc=[Address("carol@example.net")],
        bcc=[Address("audit@example.com")],
        reply_to=Address("support@example.com"),
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
    alone.to, alone.cc, alone.bcc = [Address("ada@example.net")], [], []
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
    assert caught.value.code in {"timeout", "smtp_connection", "smtp_disconnected"}


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
