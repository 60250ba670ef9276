"""The MIME builder writes what the standard library's strict parser reads back, for any input."""

from __future__ import annotations

import email
import email.header
import email.policy
import uuid
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.delivery.mime import build_mime, encoded_words

NOW = datetime(2026, 11, 21, 9, 30, 5, tzinfo=UTC)


def make(**overrides: object) -> OutgoingEmail:
    fields: dict[str, object] = {
        "message_id": uuid.uuid4(),
        "message_id_header": "<abc123@example.com>",
        "sender": Mailbox("noreply@example.com", "Example"),
        "to": [Mailbox("ada@example.net")],
        "subject": "Hello",
        "date": NOW,
        "text": "Hi Ada",
        "html": "<p>Hi Ada</p>",
    }
    fields.update(overrides)
    return OutgoingEmail(**fields)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def display_name(message: EmailMessage, header: str) -> str:
    """The display name as RFC 2047 decodes it.

    Encoded words go through the legacy decoder: the modern parser keeps the white space between
    adjacent encoded words in a phrase (RFC 2047 section 6.2 says to drop it), even for what the
    standard library's own generator writes.
    """
    value = next(v for k, v in message.raw_items() if k.lower() == header.lower())
    if "=?" not in value:
        return str(message[header].addresses[0].display_name)
    phrase = value.rsplit("<", 1)[0]
    return str(email.header.make_header(email.header.decode_header(phrase))).strip()


def no_defects(message: EmailMessage) -> None:
    for part in message.walk():
        assert part.defects == [], part.defects
        for name, value in part.items():
            assert getattr(value, "defects", ()) == (), (name, value.defects)


def test_multipart_alternative_exact_shape() -> None:
    raw = build_mime(make(headers={"X-Campaign": "spring"}))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF everywhere
    message = parse(raw)
    no_defects(message)
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == "Example <noreply@example.com>"
    assert message["To"] == "ada@example.net"
    assert message["Subject"] == "Hello"
    assert message["Date"] == "Sat, 21 Nov 2026 09:30:05 +0000"
    assert message["Message-ID"] == "<abc123@example.com>"
    assert message["MIME-Version"] == "1.0"
    assert message["X-Campaign"] == "spring"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content() == "Hi Ada"
    assert html.get_content() == "<p>Hi Ada</p>"
    assert all(p["Content-Transfer-Encoding"] == "quoted-printable" for p in message.iter_parts())


def test_single_part_when_only_text() -> None:
    message = parse(build_mime(make(html=None)))
    no_defects(message)
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Hi Ada"


def test_non_ascii_headers_are_encoded_words() -> None:
    raw = build_mime(
        make(
            subject="Grüße — ça marche ☃",
            sender=Mailbox("noreply@example.com", "Zoë Ünïcode, Inc."),
            cc=[Mailbox("b@example.net", 'Bob "the builder"'), Mailbox("c@example.net", "C.")],
        )
    )
    assert raw.isascii()
    message = parse(raw)
    no_defects(message)
    assert message["Subject"] == "Grüße — ça marche ☃"
    assert display_name(message, "From") == "Zoë Ünïcode, Inc."
    assert [a.display_name for a in message["Cc"].addresses] == ['Bob "the builder"', "C."]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["b@example.net", "c@example.net"]


def test_long_subject_folds_under_78_columns() -> None:
    subject = "A very long subject line " * 8
    raw = build_mime(make(subject=subject.strip()))
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert parse(raw)["Subject"] == subject.strip()


def test_body_lines_stay_short_and_dots_and_trailing_spaces_survive() -> None:
    # A space or tab that ends a 75- or 76-character line is escaped after the line is laid out.
    text = (
        "x" * 300 + "\n.\nend with spaces   \n\tand a tab\n" + "y" * 75 + " \n" + "z" * 74 + "\t\n"
    )
    raw = build_mime(make(text=text, html=None))
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # RFC 2045 section 6.7
    assert parse(raw).get_content().replace("\r\n", "\n") == text


def test_encoded_words_never_split_a_character() -> None:
    words = encoded_words("☃" * 100)
    assert all(len(word) <= 75 for word in words)
    assert "".join(str(email.header.make_header(email.header.decode_header(w))) for w in words) == (
        "☃" * 100
    )


@pytest.mark.parametrize("first_bytes", [0, 6, 7])
def test_the_first_encoded_word_can_be_made_shorter(first_bytes: int) -> None:
    words = encoded_words("𝄞" * 30, first_bytes=first_bytes)
    assert len(words[0]) == len("=?utf-8?b??=") + 8  # one 4-byte character at most
    assert all(len(word) == 72 for word in words[1:-1])
    decoded = (str(email.header.make_header(email.header.decode_header(w))) for w in words)
    assert "".join(decoded) == "𝄞" * 30


header_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\u2028\u2029"
    ),
    min_size=1,
    max_size=200,
).filter(lambda s: s.strip() == s and "  " not in s)
body_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\x00"),
    max_size=2000,
)


@settings(max_examples=300, deadline=None)
@given(subject=header_text, name=header_text, text=body_text, html=body_text)
def test_round_trip_any_text(subject: str, name: str, text: str, html: str) -> None:
    raw = build_mime(
        make(subject=subject, sender=Mailbox("noreply@example.com", name), text=text, html=html)
    )
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = parse(raw)
    assert message["Subject"] == subject
    assert display_name(message, "From") == name
    assert message["From"].addresses[0].addr_spec == "noreply@example.com"
    if text and html:
        plain = message.get_body(("plain",))
        rich = message.get_body(("html",))
        assert plain is not None
        assert rich is not None
        assert plain.get_content().replace("\r\n", "\n") == text
        assert rich.get_content().replace("\r\n", "\n") == html


# -- header injection: what a receiver's own email package makes of it -----------------------

UNSAFE = [
    *(chr(c) for c in range(0x00, 0x20) if c != 0x09),
    "\x7f",
    *(chr(c) for c in range(0x80, 0xA0)),
    "\u2028",
    "\u2029",
]


def reserialised(raw: bytes) -> EmailMessage:
    """The message as a receiver built on Python's email package writes it out again."""
    out = BytesIO()
    BytesGenerator(out, policy=email.policy.SMTP).flatten(parse(raw))
    return parse(out.getvalue())


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_no_header_value_may_carry_a_line_break_or_control(char: str) -> None:
    """The API refuses these; the builder refuses them too rather than write an injection."""
    payload = f"x{char}Bcc: evil@evil.example"
    for overrides in (
        {"subject": payload},
        {"sender": Mailbox("noreply@example.com", payload)},
        {"to": [Mailbox("ada@example.net", payload)]},
        {"reply_to": Mailbox("r@example.net", payload)},
        {"headers": {"X-Ref": payload}},
    ):
        with pytest.raises(ValueError, match=f"U\\+{ord(char):04X}"):
            build_mime(make(**overrides))


def test_a_tab_is_white_space_and_stays() -> None:
    message = reserialised(build_mime(make(subject="a\tb", headers={"X-Ref": "c\td"})))
    assert "Bcc" not in message
    assert message["X-Ref"] == "c\td"


@pytest.mark.parametrize(
    "literal",
    [
        "=?utf-8?b?DQpCY2M6IGV2aWxAZXZpbC5leGFtcGxl?=",  # decodes to "\r\nBcc: evil@…"
        "=?utf-8?q?=0D=0ABcc:_evil@evil.example?=",
        "Ada =?iso-8859-1?q?=0A?= Lovelace",
    ],
)
def test_text_that_looks_like_an_encoded_word_arrives_as_typed(literal: str) -> None:
    raw = build_mime(
        make(
            subject=literal,
            sender=Mailbox("noreply@example.com", literal),
            to=[Mailbox("ada@example.net", literal)],
            headers={"X-Ref": literal},
        )
    )
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert literal not in head  # never written as the atom a decoder would decode
    message = parse(raw)
    assert message["Subject"] == literal
    assert message["X-Ref"] == literal
    assert display_name(message, "From") == literal
    assert display_name(message, "To") == literal
    # Python's own generator writes the decoded text back unencoded (its weakness, not ours);
    # even so no header is made of it.
    assert "Bcc" not in reserialised(raw)


@pytest.mark.parametrize("name", ["X-Probe\n", "X-A: b", "X Probe", "Ünïcode"])
def test_a_header_name_must_be_a_field_name(name: str) -> None:
    with pytest.raises(ValueError, match="is not a header name"):
        build_mime(make(headers={name: "v"}))
