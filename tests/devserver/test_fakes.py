"""The fake providers: real client requests against real sockets, their validation, their
record of what arrived, their failure scripts and their control API."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mailsvc.devserver.fakes import FakeCredentials, FakeProviders, Received
from mailsvc.devserver.fakes.mailgun import parse_form
from mailsvc.devserver.fakes.script import is_address
from tests.support.processes import eventually_sync

CREDS = FakeCredentials()
SENDGRID_AUTH = {"Authorization": f"Bearer {CREDS.sendgrid_key}"}
MAILGUN_AUTH = ("api", CREDS.mailgun_key)
MAILGUN_PATH = f"/v3/{CREDS.mailgun_domain}/messages"
SES_PATH = "/v2/email/outbound-emails"


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fakes-outbox")


@pytest.fixture(scope="module")
def fakes(outbox: Path) -> Iterator[FakeProviders]:
    providers = FakeProviders(CREDS, outbox=outbox)
    providers.start(http_port=0, smtp_port=0)
    yield providers
    providers.stop()


@pytest.fixture(autouse=True)
def fresh(fakes: FakeProviders) -> None:
    for provider in fakes.providers.values():
        provider.clear()


@pytest.fixture
def http(fakes: FakeProviders) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fakes.http_url, timeout=10) as client:
        yield client


# SendGrid


def sendgrid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [
            {
                "to": [{"email": "ann@example.net", "name": "Ann"}],
                "cc": [{"email": "cy@example.net"}],
                "bcc": [{"email": "bo@example.net"}],
            }
        ],
        "from": {"email": "noreply@example.com", "name": "Example"},
        "subject": "Welcome",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
        "headers": {"Message-ID": "<sg-1@example.com>"},
    }
    body.update(overrides)
    return body


def sendgrid_errors(*problems: tuple[str, str | None]) -> dict[str, Any]:
    return {"errors": [{"message": m, "field": f, "help": None} for m, f in problems]}


def test_sendgrid_accepts_a_valid_send_and_records_it(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    response = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())

    assert response.status_code == 202
    assert response.content == b""
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", response.headers["x-message-id"])
    [received] = fakes.sendgrid.received
    assert received.provider == "sendgrid"
    assert received.message_id == "<sg-1@example.com>"
    assert received.sender == "noreply@example.com"
    assert received.recipients == ("ann@example.net", "cy@example.net", "bo@example.net")
    assert received.subject == "Welcome"
    assert received.content_type == "application/json"
    assert received.request_headers["authorization"] == "Bearer SG.fake-key"
    assert json.loads(received.body) == sendgrid_body()
    assert fakes.sendgrid.requests_seen == 1


def test_sendgrid_refuses_a_wrong_key(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post(
        "/v3/mail/send", headers={"Authorization": "Bearer SG.wrong"}, json=sendgrid_body()
    )

    assert response.status_code == 401
    assert response.json() == sendgrid_errors(
        ("The provided authorization grant is invalid, expired, or revoked", None)
    )
    assert fakes.sendgrid.received == []
    assert fakes.sendgrid.requests_seen == 1


def test_sendgrid_wants_json(fakes: FakeProviders, http: httpx.Client) -> None:
    wrong_type = http.post(
        "/v3/mail/send",
        headers={**SENDGRID_AUTH, "Content-Type": "text/plain"},
        content=json.dumps(sendgrid_body()),
    )
    malformed = http.post(
        "/v3/mail/send",
        headers={**SENDGRID_AUTH, "Content-Type": "application/json; charset=utf-8"},
        content=b"{not json",
    )

    assert wrong_type.status_code == 400
    assert wrong_type.json() == sendgrid_errors(("Content-Type should be application/json.", None))
    assert malformed.status_code == 400
    assert malformed.json() == sendgrid_errors(("Bad Request", None))
    assert fakes.sendgrid.received == []


def test_sendgrid_lists_every_missing_field(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json={})

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["field"] for e in errors] == ["personalizations", "from.email", "subject", "content"]
    assert errors[0]["message"] == (
        "The personalizations field is required and must have at least one personalization."
    )
    assert all(e["help"] is None for e in errors)
    assert fakes.sendgrid.received == []


def test_sendgrid_checks_recipients_and_content(fakes: FakeProviders, http: httpx.Client) -> None:
    no_to = http.post(
        "/v3/mail/send",
        headers=SENDGRID_AUTH,
        json=sendgrid_body(personalizations=[{"to": []}]),
    )
    bad_address = http.post(
        "/v3/mail/send",
        headers=SENDGRID_AUTH,
        json=sendgrid_body(personalizations=[{"to": [{"email": "not-an-address"}]}]),
    )
    empty_value = http.post(
        "/v3/mail/send",
        headers=SENDGRID_AUTH,
        json=sendgrid_body(content=[{"type": "text/plain", "value": ""}]),
    )

    assert no_to.status_code == 400
    assert [e["field"] for e in no_to.json()["errors"]] == ["personalizations.0.to"]
    assert bad_address.status_code == 400
    assert bad_address.json() == sendgrid_errors(
        ("Does not contain a valid address.", "personalizations.0.to.0.email")
    )
    assert empty_value.status_code == 400
    assert [e["field"] for e in empty_value.json()["errors"]] == ["content.0.value"]
    assert fakes.sendgrid.received == []


def test_sendgrid_wants_text_plain_before_html(fakes: FakeProviders, http: httpx.Client) -> None:
    content = [
        {"type": "text/html", "value": "<p>Hello</p>"},
        {"type": "text/plain", "value": "Hello"},
    ]
    response = http.post(
        "/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body(content=content)
    )

    assert response.status_code == 400
    assert response.json() == sendgrid_errors(
        (
            "If present, text/plain must be first, followed by text/html, followed by any "
            "other content.",
            "content.0.type",
        )
    )
    assert fakes.sendgrid.received == []


def test_sendgrid_accepts_subjects_per_personalization(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    body = sendgrid_body(
        personalizations=[{"to": [{"email": "ann@example.net"}], "subject": "Per person"}]
    )
    del body["subject"]

    response = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=body)

    assert response.status_code == 202
    assert [r.subject for r in fakes.sendgrid.received] == ["Per person"]


def test_sendgrid_refuses_reserved_headers(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post(
        "/v3/mail/send",
        headers=SENDGRID_AUTH,
        json=sendgrid_body(headers={"Reply-To": "x@example.com"}),
    )

    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["headers"]
    assert fakes.sendgrid.received == []


def test_sendgrid_caps_recipients_at_1000(fakes: FakeProviders, http: httpx.Client) -> None:
    to = [{"email": f"r{i}@example.net"} for i in range(1001)]
    response = http.post(
        "/v3/mail/send",
        headers=SENDGRID_AUTH,
        json=sendgrid_body(personalizations=[{"to": to}]),
    )

    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["personalizations"]
    assert fakes.sendgrid.received == []


def test_sendgrid_scripted_failure_until_recovered(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    fakes.sendgrid.fail(status=503, retry_after=7)

    failed = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())
    again = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())
    fakes.sendgrid.recover()
    recovered = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())

    assert (failed.status_code, again.status_code) == (503, 503)
    assert failed.headers["retry-after"] == "7"
    assert failed.json() == sendgrid_errors(("Service Unavailable", None))
    assert recovered.status_code == 202
    assert "retry-after" not in recovered.headers
    assert len(fakes.sendgrid.received) == 1
    assert fakes.sendgrid.requests_seen == 3


def test_sendgrid_failure_for_seconds_ends_by_itself(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    def send() -> httpx.Response:
        return http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())

    started = time.monotonic()
    fakes.sendgrid.fail(status=503, for_seconds=0.2)

    statuses: list[int] = []

    def accepted() -> bool:
        if (status := send().status_code) == 202:
            return True
        statuses.append(status)
        return False

    eventually_sync(accepted, timeout=5, interval=0.02, what="the failure to end by itself")

    assert statuses[0] == 503
    assert set(statuses) == {503}
    assert time.monotonic() - started >= 0.2
    assert len(fakes.sendgrid.received) == 1


def test_sendgrid_timeout_outlasts_a_short_client_timeout(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    fakes.sendgrid.timeout(delay=0.5)

    with pytest.raises(httpx.TimeoutException):
        http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body(), timeout=0.2)
    fakes.sendgrid.recover()
    prompt = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body(), timeout=2)

    assert prompt.status_code == 202


def test_sendgrid_rejects_only_the_scripted_recipient(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    fakes.sendgrid.reject("bad@example.net")
    rejected = sendgrid_body(
        personalizations=[{"to": [{"email": "ok@example.net"}, {"email": "bad@example.net"}]}]
    )
    response = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=rejected)
    other = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())

    assert response.status_code == 400
    assert response.json() == sendgrid_errors(
        ("Does not contain a valid address.", "personalizations.0.to.1.email")
    )
    assert other.status_code == 202
    assert [r.recipients[0] for r in fakes.sendgrid.received] == ["ann@example.net"]


# Mailgun


def mailgun_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "from": "Example <noreply@example.com>",
        "to": ["ann@example.net", "Bob <bob@example.net>, cy@example.net"],
        "bcc": "bo@example.net",
        "subject": "Welcome",
        "text": "Hello",
        "html": "<p>Hello</p>",
        "h:Message-Id": "<mg-1@example.com>",
        "o:tag": ["welcome", "onboarding"],
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def test_mailgun_accepts_multipart_and_records_it(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post(
        MAILGUN_PATH,
        auth=MAILGUN_AUTH,
        data=mailgun_fields(),
        files={"attachment": ("terms.txt", b"Terms", "text/plain")},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Queued. Thank you."
    assert re.fullmatch(r"<2\d{13}\.[0-9a-f]+@mg\.example\.com>", body["id"])
    [received] = fakes.mailgun.received
    assert received.message_id == "<mg-1@example.com>"
    assert received.sender == "noreply@example.com"
    assert received.recipients == (
        "ann@example.net",
        "bob@example.net",
        "cy@example.net",
        "bo@example.net",
    )
    assert received.subject == "Welcome"
    assert received.content_type is not None
    assert received.content_type.startswith("multipart/form-data; boundary=")
    expected = "Basic " + base64.b64encode(b"api:key-fake").decode()
    assert received.request_headers["authorization"] == expected


def test_mailgun_accepts_urlencoded(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(html=None))

    assert response.status_code == 200
    [received] = fakes.mailgun.received
    assert received.content_type == "application/x-www-form-urlencoded"
    assert received.message_id == "<mg-1@example.com>"
    assert len(received.recipients) == 4


def test_mailgun_refuses_a_wrong_key(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post(MAILGUN_PATH, auth=("api", "key-wrong"), data=mailgun_fields())
    missing = http.post(MAILGUN_PATH, data=mailgun_fields())

    assert (response.status_code, response.text) == (401, "Forbidden")
    assert (missing.status_code, missing.text) == (401, "Forbidden")
    assert fakes.mailgun.received == []


def test_mailgun_unknown_domain(fakes: FakeProviders, http: httpx.Client) -> None:
    response = http.post("/v3/other.example.com/messages", auth=MAILGUN_AUTH, data=mailgun_fields())

    assert response.status_code == 404
    assert response.json() == {"message": "Domain not found: other.example.com"}
    assert fakes.mailgun.received == []


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"from": None}, "'from' parameter is missing"),
        ({"to": None}, "'to' parameter is missing"),
        (
            {"text": None, "html": None},
            "Need at least one of 'text', 'html' or 'template' parameters specified",
        ),
    ],
)
def test_mailgun_required_parameters(
    fakes: FakeProviders, http: httpx.Client, missing: dict[str, None], message: str
) -> None:
    response = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(**missing))

    assert response.status_code == 400
    assert response.json() == {"message": message}
    assert fakes.mailgun.received == []


def test_mailgun_wants_a_form_and_at_most_three_tags(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    as_json = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, json={"from": "a@example.com"})
    four_tags = http.post(
        MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(**{"o:tag": ["a", "b", "c", "d"]})
    )

    assert as_json.status_code == 400
    assert set(as_json.json()) == {"message"}
    assert four_tags.status_code == 400
    assert set(four_tags.json()) == {"message"}
    assert fakes.mailgun.received == []


def test_mailgun_rejects_only_the_scripted_recipient(
    fakes: FakeProviders, http: httpx.Client
) -> None:
    fakes.mailgun.reject("Bad@Example.net")
    rejected = http.post(
        MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(to="ok@example.net, bad@example.net")
    )
    other = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields())

    assert rejected.status_code == 400
    assert rejected.json() == {
        "message": "to parameter is not a valid address. please check documentation"
    }
    assert other.status_code == 200
    assert len(fakes.mailgun.received) == 1


def test_mailgun_scripted_failure(fakes: FakeProviders, http: httpx.Client) -> None:
    fakes.mailgun.fail(status=429, retry_after=3)

    failed = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields())

    assert failed.status_code == 429
    assert failed.headers["retry-after"] == "3"
    assert set(failed.json()) == {"message"}
    assert fakes.mailgun.received == []


# SES


def raw_mime(message_id: str = "<ses-1@example.com>") -> bytes:
    message = EmailMessage()
    message["From"] = "Example <noreply@example.com>"
    message["To"] = "ann@example.net"
    message["Cc"] = "cy@example.net"
    message["Subject"] = "Welcome"
    message["Message-ID"] = message_id
    message.set_content("Hello")
    return message.as_bytes()


def signed_ses_post(
    http: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    access_key_id: str = CREDS.ses_access_key_id,
    secret: str = CREDS.ses_secret_access_key,
    tamper: Callable[[bytes], bytes] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(access_key_id, secret), "ses", CREDS.ses_region).add_auth(request)
    sent = tamper(body) if tamper else body
    return http.post(url, content=sent, headers=dict(request.headers), timeout=timeout)


def raw_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "Content": {"Raw": {"Data": base64.b64encode(raw_mime()).decode()}},
        "Destination": {"ToAddresses": ["ann@example.net"], "BccAddresses": ["bo@example.net"]},
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def ses_url(fakes: FakeProviders) -> str:
    return fakes.http_url + SES_PATH


def test_ses_accepts_a_signed_raw_send_and_records_it(
    fakes: FakeProviders, http: httpx.Client, ses_url: str
) -> None:
    response = signed_ses_post(http, ses_url, raw_payload())

    assert response.status_code == 200
    assert set(response.json()) == {"MessageId"}
    [received] = fakes.ses.received
    assert received.message_id == "<ses-1@example.com>"
    assert received.sender == "noreply@example.com"
    assert received.recipients == ("ann@example.net", "bo@example.net")
    assert received.subject == "Welcome"
    assert received.content_type == "application/json"
    assert received.request_headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDFAKE/"
    )


def test_ses_raw_without_destination_uses_the_mime_headers(
    fakes: FakeProviders, http: httpx.Client, ses_url: str
) -> None:
    response = signed_ses_post(http, ses_url, raw_payload(Destination=None))

    assert response.status_code == 200
    assert [r.recipients for r in fakes.ses.received] == [("ann@example.net", "cy@example.net")]


def test_ses_accepts_the_botocore_sesv2_client(fakes: FakeProviders) -> None:
    client = botocore.session.get_session().create_client(
        "sesv2",
        region_name=CREDS.ses_region,
        endpoint_url=fakes.http_url,
        aws_access_key_id=CREDS.ses_access_key_id,
        aws_secret_access_key=CREDS.ses_secret_access_key,
    )
    simple = client.send_email(
        FromEmailAddress="noreply@example.com",
        Destination={"ToAddresses": ["ann@example.net"]},
        Content={
            "Simple": {
                "Subject": {"Data": "Simple one"},
                "Body": {"Text": {"Data": "Hello"}},
                "Headers": [{"Name": "Message-ID", "Value": "<ses-simple@example.com>"}],
            }
        },
    )
    raw = client.send_email(Content={"Raw": {"Data": raw_mime("<ses-raw@example.com>")}})

    assert simple["MessageId"] != raw["MessageId"]
    assert [(r.message_id, r.subject, r.recipients) for r in fakes.ses.received] == [
        ("<ses-simple@example.com>", "Simple one", ("ann@example.net",)),
        ("<ses-raw@example.com>", "Welcome", ("ann@example.net", "cy@example.net")),
    ]


def test_ses_refuses_unknown_keys_and_bad_signatures(
    fakes: FakeProviders, http: httpx.Client, ses_url: str
) -> None:
    unknown = signed_ses_post(http, ses_url, raw_payload(), access_key_id="AKIDOTHER")
    wrong_secret = signed_ses_post(http, ses_url, raw_payload(), secret="not-the-secret")
    tampered = signed_ses_post(
        http, ses_url, raw_payload(), tamper=lambda body: body.replace(b"bo@", b"eve@")
    )
    unsigned = http.post(ses_url, json=raw_payload())

    assert unknown.status_code == 403
    assert unknown.headers["x-amzn-errortype"] == "UnrecognizedClientException"
    assert unknown.json() == {"message": "The security token included in the request is invalid."}
    for response in (wrong_secret, tampered):
        assert response.status_code == 403
        assert response.headers["x-amzn-errortype"] == "SignatureDoesNotMatch"
        assert response.json()["message"].startswith(
            "The request signature we calculated does not match the signature you provided."
        )
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert fakes.ses.received == []


@pytest.mark.parametrize(
    "content",
    [
        {"Raw": {"Data": "***not base64***"}},
        {
            "Raw": {"Data": base64.b64encode(raw_mime()).decode()},
            "Simple": {"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "y"}}},
        },
        {"Simple": {"Body": {"Text": {"Data": "no subject"}}}},
        {"Simple": {"Subject": {"Data": "no body"}}},
    ],
    ids=["bad-base64", "two-kinds", "no-subject", "no-body"],
)
def test_ses_validation_errors(
    fakes: FakeProviders, http: httpx.Client, ses_url: str, content: dict[str, Any]
) -> None:
    payload = raw_payload(Content=content, FromEmailAddress="noreply@example.com")
    response = signed_ses_post(http, ses_url, payload)

    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"] == "BadRequestException"
    assert set(response.json()) == {"message"}
    assert fakes.ses.received == []


def test_ses_rejects_only_the_scripted_recipient(
    fakes: FakeProviders, http: httpx.Client, ses_url: str
) -> None:
    fakes.ses.reject("bad@example.net")
    rejected = signed_ses_post(
        http, ses_url, raw_payload(Destination={"ToAddresses": ["bad@example.net"]})
    )
    other = signed_ses_post(http, ses_url, raw_payload())

    assert rejected.status_code == 400
    assert rejected.headers["x-amzn-errortype"] == "MessageRejected"
    assert rejected.json() == {
        "message": "Email address is not verified. The following identities failed the check "
        "in region US-EAST-1: bad@example.net"
    }
    assert other.status_code == 200
    assert len(fakes.ses.received) == 1


def test_ses_scripted_failures(fakes: FakeProviders, http: httpx.Client, ses_url: str) -> None:
    fakes.ses.fail(status=429, retry_after=2)
    throttled = signed_ses_post(http, ses_url, raw_payload())
    fakes.ses.fail(status=500)
    broken = signed_ses_post(http, ses_url, raw_payload())
    fakes.ses.recover()
    fine = signed_ses_post(http, ses_url, raw_payload())

    assert throttled.status_code == 429
    assert throttled.headers["x-amzn-errortype"] == "TooManyRequestsException"
    assert throttled.headers["retry-after"] == "2"
    assert broken.status_code == 500
    assert broken.headers["x-amzn-errortype"] == "InternalFailure"
    assert "retry-after" not in broken.headers
    assert fine.status_code == 200
    assert len(fakes.ses.received) == 1
    assert fakes.ses.requests_seen == 3


def test_ses_timeout(fakes: FakeProviders, http: httpx.Client, ses_url: str) -> None:
    fakes.ses.timeout(delay=0.5)

    with pytest.raises(httpx.TimeoutException):
        signed_ses_post(http, ses_url, raw_payload(), timeout=0.2)


# SMTP


def smtp_message(message_id: str = "<smtp-1@example.com>", to: str = "ann@example.net") -> Any:
    message = EmailMessage()
    message["From"] = "noreply@example.com"
    message["To"] = to
    message["Subject"] = "Welcome"
    message["Message-ID"] = message_id
    message.set_content("Hello")
    return message


async def test_smtp_accepts_and_records(fakes: FakeProviders, outbox: Path) -> None:
    await aiosmtplib.send(
        smtp_message(),
        hostname="127.0.0.1",
        port=fakes.smtp_port,
        recipients=["ann@example.net", "bo@example.net"],
    )

    [received] = fakes.smtp.received
    assert received.provider == "smtp"
    assert received.message_id == "<smtp-1@example.com>"
    assert received.sender == "noreply@example.com"
    assert received.recipients == ("ann@example.net", "bo@example.net")
    assert received.subject == "Welcome"
    assert received.request_headers == {}
    assert b"Hello" in received.body
    assert received.content_type is not None
    assert received.content_type.startswith("text/plain")
    assert any(path.read_bytes() == received.body for path in outbox.glob("smtp-*.eml")), (
        "the message is in the outbox"
    )


@pytest.mark.parametrize(
    ("status", "reply"),
    [(451, "4.3.0 Temporary failure (scripted)"), (554, "5.0.0 Permanent failure (scripted)")],
)
async def test_smtp_scripted_failure_at_mail_from(
    fakes: FakeProviders, status: int, reply: str
) -> None:
    fakes.smtp.fail(status=status)

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await aiosmtplib.send(smtp_message(), hostname="127.0.0.1", port=fakes.smtp_port)

    assert (refused.value.code, refused.value.message) == (status, reply)
    assert fakes.smtp.received == []
    fakes.smtp.recover()
    await aiosmtplib.send(smtp_message(), hostname="127.0.0.1", port=fakes.smtp_port)
    assert len(fakes.smtp.received) == 1
    assert fakes.smtp.requests_seen == 2


async def test_smtp_rejects_only_the_scripted_recipient(fakes: FakeProviders) -> None:
    fakes.smtp.reject("bad@example.net")

    errors, _ = await aiosmtplib.send(
        smtp_message(),
        hostname="127.0.0.1",
        port=fakes.smtp_port,
        recipients=["ok@example.net", "bad@example.net"],
    )
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            smtp_message(),
            hostname="127.0.0.1",
            port=fakes.smtp_port,
            recipients=["bad@example.net"],
        )

    assert {k: (v.code, v.message) for k, v in errors.items()} == {
        "bad@example.net": (550, "5.1.1 <bad@example.net>: Recipient address rejected")
    }
    assert refused.value.recipients[0].code == 550
    assert [r.recipients for r in fakes.smtp.received] == [("ok@example.net",)]


async def test_smtp_timeout_stalls_after_data(fakes: FakeProviders) -> None:
    fakes.smtp.timeout(delay=0.5)

    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await aiosmtplib.send(
            smtp_message(), hostname="127.0.0.1", port=fakes.smtp_port, timeout=0.2
        )


# Control API, outbox, entry point


def test_control_api_scripts_and_reports(fakes: FakeProviders, http: httpx.Client) -> None:
    assert http.post("/_fake/sendgrid/fail", json={"status": 502, "retry_after": 30}).json() == {
        "ok": True
    }
    failed = http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())
    http.post("/_fake/sendgrid/recover")
    http.post("/_fake/mailgun/reject", json={"address": "bad@example.net"})
    rejected = http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(to="bad@example.net"))
    accepted = [
        http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body()),
        http.post(
            MAILGUN_PATH,
            auth=MAILGUN_AUTH,
            data=mailgun_fields(**{"h:Message-Id": "<sg-1@example.com>"}),
        ),
    ]

    assert (failed.status_code, failed.headers["retry-after"]) == (502, "30")
    assert rejected.status_code == 400
    assert [r.status_code for r in accepted] == [202, 200]
    report = http.get("/_fake/sendgrid/received").json()
    assert report["count"] == 1
    assert report["requests_seen"] == 2
    assert report["messages"][0]["message_id"] == "<sg-1@example.com>"
    assert report["messages"][0]["recipients"] == [
        "ann@example.net",
        "cy@example.net",
        "bo@example.net",
    ]
    assert report["messages"][0]["subject"] == "Welcome"
    assert http.get("/_fake/deliveries").json() == {"<sg-1@example.com>": ["sendgrid", "mailgun"]}

    assert http.post("/_fake/sendgrid/clear").status_code == 200
    assert http.get("/_fake/sendgrid/received").json() == {
        "count": 0,
        "requests_seen": 0,
        "messages": [],
    }
    assert http.post("/_fake/postmark/fail").status_code == 404
    assert http.get("/_fake/postmark/received").status_code == 404
    assert http.post("/_fake/sendgrid/explode").status_code == 404
    assert http.post("/_fake/sendgrid/fail", json={"status": "soon"}).status_code == 400


async def test_control_api_scripts_smtp(fakes: FakeProviders) -> None:
    async with httpx.AsyncClient(base_url=fakes.http_url) as http:
        scripted = await http.post("/_fake/smtp/fail", json={"status": 451, "for_seconds": 30})
        with pytest.raises(aiosmtplib.SMTPSenderRefused):
            await aiosmtplib.send(smtp_message(), hostname="127.0.0.1", port=fakes.smtp_port)
        await http.post("/_fake/smtp/recover")
        await aiosmtplib.send(smtp_message(), hostname="127.0.0.1", port=fakes.smtp_port)
        report = (await http.get("/_fake/smtp/received")).json()

    assert scripted.status_code == 200
    assert (report["count"], report["requests_seen"]) == (1, 2)


def test_control_api_timeout(fakes: FakeProviders, http: httpx.Client) -> None:
    http.post("/_fake/mailgun/timeout", json={"delay": 0.5, "for_seconds": 30})

    with pytest.raises(httpx.TimeoutException):
        http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields(), timeout=0.2)


async def test_many_concurrent_sends_are_all_recorded(fakes: FakeProviders) -> None:
    async with httpx.AsyncClient(base_url=fakes.http_url) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    "/v3/mail/send",
                    headers=SENDGRID_AUTH,
                    json=sendgrid_body(headers={"Message-ID": f"<bulk-{i}@example.com>"}),
                )
                for i in range(200)
            )
        )

    assert {r.status_code for r in responses} == {202}
    deliveries = fakes.deliveries()
    assert len(deliveries) == 200
    assert set(map(tuple, deliveries.values())) == {("sendgrid",)}


def test_outbox_names_every_accepted_message(
    fakes: FakeProviders, http: httpx.Client, outbox: Path
) -> None:
    before = set(outbox.iterdir())
    http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())
    http.post(MAILGUN_PATH, auth=MAILGUN_AUTH, data=mailgun_fields())
    signed_ses_post(http, fakes.http_url + SES_PATH, raw_payload())

    written = sorted(p.name for p in set(outbox.iterdir()) - before)
    assert [name.split("-", 1)[0] for name in written] == ["mailgun", "sendgrid", "ses"]
    assert all(re.fullmatch(r"[a-z]+-\d+-\d+\.eml", name) for name in written)
    sendgrid_eml = (outbox / written[1]).read_bytes()
    assert b"Message-ID: <sg-1@example.com>" in sendgrid_eml
    assert b"Subject: Welcome" in sendgrid_eml


def test_received_is_a_snapshot(fakes: FakeProviders, http: httpx.Client) -> None:
    snapshot = fakes.sendgrid.received
    http.post("/v3/mail/send", headers=SENDGRID_AUTH, json=sendgrid_body())

    assert snapshot == []
    assert isinstance(fakes.sendgrid.received[0], Received)


def test_module_entry_point_prints_where_it_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailsvc.devserver.fakes",
            "--http-port",
            "0",
            "--smtp-port",
            "0",
            "--outbox",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "no JSON line within 30 s"
        where = json.loads(process.stdout.readline())
        assert set(where) == {"http_url", "smtp_port"}
        report = httpx.get(f"{where['http_url']}/_fake/ses/received", timeout=5).json()
        assert report == {"count": 0, "requests_seen": 0, "messages": []}

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_mailgun_multipart_parser_keeps_order_repeats_and_file_names() -> None:
    request = httpx.Request(
        "POST",
        "http://fake/",
        data={"to": ["a@example.net", "b@example.net"], "text": "héllo\r\n--not-a-boundary"},
        files={"attachment": ("terms.txt", b"Terms", "text/plain")},
    )

    fields = parse_form(request.headers["content-type"], request.read())

    assert fields == [
        ("to", "a@example.net"),
        ("to", "b@example.net"),
        ("text", "héllo\r\n--not-a-boundary"),
        ("attachment", "terms.txt"),
    ]
    assert parse_form("multipart/form-data", b"no boundary") is None
    assert parse_form("application/json", b"{}") is None


def test_stop_does_not_wait_out_held_requests() -> None:
    fakes = FakeProviders(CREDS)
    fakes.start()
    fakes.sendgrid.timeout(delay=30)
    outcome: list[int] = []

    def send() -> None:
        url = fakes.http_url + "/v3/mail/send"
        outcome.append(httpx.post(url, headers=SENDGRID_AUTH, json=sendgrid_body()).status_code)

    sender = threading.Thread(target=send)
    sender.start()
    eventually_sync(
        lambda: fakes.sendgrid.requests_seen > 0,
        timeout=5,
        interval=0.01,
        what="the request at the fake",
    )
    started = time.monotonic()
    fakes.stop()
    sender.join(5)

    assert time.monotonic() - started < 2
    assert outcome == [202]


@pytest.mark.parametrize("address", ["a@b.example\n", "a@b.example\r\n", " a@b.example"])
def test_the_fakes_match_an_address_whole(address: str) -> None:
    """`re.match` with `$` took an address ending in a newline, which a real provider refuses."""
    assert is_address("a@b.example")
    assert not is_address(address)
