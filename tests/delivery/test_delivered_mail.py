"""Mail as it arrives: built by the real builder, sent by the SMTP transport into the capture
server, and read back by the standard library's parser. Bodies come back byte for byte (line
ends as CRLF, mime.py's rule), and plain ASCII header values come back as written, folded at
white space, never as encoded words unless a line could not hold them."""

from __future__ import annotations

import email.policy
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller

from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.smtp import SmtpConfig, SmtpTransport

Deliver = Callable[[OutgoingEmail], Awaitable[bytes]]


@pytest_asyncio.fixture
async def deliver(smtp_sink: tuple[Controller, Path]) -> AsyncIterator[Deliver]:
    """Sends one email through SMTP and returns the bytes the capture server kept."""
    controller, outbox = smtp_sink
    transport = SmtpTransport(SmtpConfig(host="127.0.0.1", port=controller.port))

    async def send(message: OutgoingEmail) -> bytes:
        before = set(outbox.glob("*.eml"))
        await transport.send(message)  # the server keeps the file before it answers 250
        [delivered] = set(outbox.glob("*.eml")) - before
        raw = delivered.read_bytes()
        assert raw == message.raw  # dot-stuffing and the end of data undone: what was built
        return raw

    yield send
    await transport.close()


def make(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "message_id": uuid.uuid4(),
        "message_id_header": f"<{uuid.uuid4().hex}@example.com>",
        "sender": Mailbox("noreply@example.com", "Example"),
        "to": [Mailbox("ada@example.net")],
        "subject": "Hello",
        "date": datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    for part in message.walk():
        assert part.defects == [], part.defects
    return message


def crlf(body: str) -> str:
    """The documented rule: CR, LF and CRLF each become one CRLF; nothing else changes."""
    return re.sub(r"\r\n|\r|\n", "\r\n", body)


# -- bodies --------------------------------------------------------------------------------------

BODIES = {
    "no-final-newline": "Hello Ada,\nyour code is 1234",
    "final-newline": "Hello Ada,\nyour code is 1234\n",
    "only-newlines": "\n\n\n",
    "crlf-lf-cr-mix": "one\r\ntwo\nthree\rfour\r\n\r\nfive\n\r",
    "long-lines": "x" * 300 + "\n" + "word " * 60 + "\n" + "y" * 77,
    "last-line-76": "a" * 76,
    "last-line-75-then-escape": "a" * 75 + "é",
    "trailing-white-space": (
        "spaces   \ntab\t\n" + "y" * 75 + " \n" + "z" * 74 + "\t\n" + " \t \nends in a space "
    ),
    "equals-and-dots-at-line-starts": "=3D stays as typed\n.\n..two\n.line\n=\n==\n=",
    "from-lines": "From here\n>From there\nFrom",
    "non-ascii": "Grüße, Zoë ☃ 𝄞\n" + "é" * 100 + "\n日本語のテキスト",
    "html-like": '<p style="a=b">one</p>\r\n<p>two &amp; three</p>',
    "empty": "",
}
SHAPES = {
    "text": lambda body: {"text": body, "html": None},
    "html": lambda body: {"text": None, "html": body},
    "both": lambda body: {"text": body, "html": f"<div>{body}</div>"},
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_bodies_read_back_byte_for_byte(deliver: Deliver, body: str, shape: str) -> None:
    contents: dict[str, str | None] = SHAPES[shape](body)
    raw = await deliver(make(**contents))
    message = parse(raw)

    # What the builder leaves out: an empty part of two; an email with no body is one empty
    # text/plain part.
    expected = {
        sub: text for sub, text in zip(("plain", "html"), contents.values(), strict=True) if text
    }
    parts = list(message.iter_parts()) if message.is_multipart() else [message]
    assert [part.get_content_subtype() for part in parts] == (list(expected) or ["plain"])
    for part in parts:
        written = expected.get(part.get_content_subtype(), "")
        assert part.get_payload(decode=True) == crlf(written).encode("utf-8")
        assert part.get_content() == crlf(written)
        assert part["Content-Transfer-Encoding"] == "quoted-printable"

    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 76  # RFC 2045 section 6.7


# -- headers -------------------------------------------------------------------------------------


def words(length: int) -> str:
    """Plain ASCII text of exactly `length` characters: words of 1 to 11 letters, single spaces."""
    text = " ".join("abcdefghijk"[: 1 + i % 11] for i in range(length))[:length]
    return text if not text.endswith(" ") else text[:-1] + "z"


def field_lines(raw: bytes, name: str) -> list[bytes]:
    """The physical lines of the header `name`: its first line and its continuation lines."""
    fields: list[list[bytes]] = []
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        else:
            fields.append([line])
    [lines] = [f for f in fields if f[0].split(b":", 1)[0].lower() == name.lower().encode()]
    return lines


async def delivered_header(deliver: Deliver, name: str, value: str) -> tuple[bytes, EmailMessage]:
    if name == "Subject":
        raw = await deliver(make(subject=value, text="Hi"))
    else:
        raw = await deliver(make(headers={name: value}, text="Hi"))
    message = parse(raw)
    header = message[name]
    assert header.defects == ()
    assert str(header) == value
    return raw, message


PLAIN_VALUES = {
    "short": words(5),
    "fits-one-line": words(78 - len("X-Campaign: ")),
    "77": words(77),
    "200": words(200),
    "990": words(990),
    "tabs-and-double-spaces": "tab\there  two  spaces, " * 10 + "end",
    "parentheses-and-quotes": '(not a comment) "not quoted" <not@an.address>, ' * 4 + "end",
    "77-unbroken": "x" * 77,
    "990-unbroken": "u" * (998 - len("X-Campaign: ")),
    "long-url": "see https://example.com/" + "p" * 300 + "?a=1&b=2 and more words after it",
}
FOLDABLE = {"77", "200", "990", "tabs-and-double-spaces", "parentheses-and-quotes"}


@pytest.mark.parametrize("name", ["Subject", "X-Campaign"])
@pytest.mark.parametrize("case", PLAIN_VALUES)
async def test_ascii_header_values_are_written_as_text(
    deliver: Deliver, name: str, case: str
) -> None:
    value = PLAIN_VALUES[case]
    raw, _ = await delivered_header(deliver, name, value)
    lines = field_lines(raw, name)
    assert b"=?" not in b"".join(lines)  # no encoded word: some parsers return them undecoded
    assert b"".join(lines) == f"{name}: {value}".encode("ascii")  # RFC 5322 unfolding
    assert max(len(line) for line in lines) <= 998
    if case in FOLDABLE or len(name) + len(value) + 2 <= 78:
        assert max(len(line) for line in lines) <= 78
    if case in FOLDABLE:
        assert len(lines) > 1


async def test_a_run_too_long_for_one_line_is_encoded(deliver: Deliver) -> None:
    value = "r" * 1000
    raw, _ = await delivered_header(deliver, "X-Campaign", value)
    lines = field_lines(raw, "X-Campaign")
    assert all(b"=?utf-8?b?" in line for line in lines)
    assert max(len(line) for line in lines) <= 76  # RFC 2047 section 2


@pytest.mark.parametrize(
    "value",
    [
        "Grüße — ça marche ☃",
        "naïve café ☃ " * 20 + "𝄞",
        "日本語" * 120,
        "=?utf-8?q?=41?= only looks encoded",
        "ends with a look-alike =?",
    ],
    ids=["short", "long", "cjk-run", "looks-encoded", "look-alike-start"],
)
@pytest.mark.parametrize("name", ["Subject", "X-Campaign"])
async def test_other_values_round_trip_through_encoded_words(
    deliver: Deliver, name: str, value: str
) -> None:
    raw, _ = await delivered_header(deliver, name, value)
    lines = field_lines(raw, name)
    assert raw.isascii()
    assert lines[0].startswith(f"{name}: =?utf-8?b?".encode("ascii"))
    assert max(len(line) for line in lines) <= 76  # RFC 2047 section 2
