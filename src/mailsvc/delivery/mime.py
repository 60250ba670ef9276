"""RFC 5322 / MIME messages from OutgoingEmail, built directly as bytes.

The standard library's `email.mime` spends most of its time parsing back every header it is
given (measured in bench/mime.py at several times the cost of sending). Our input is already
validated, so this builder writes the same wire format itself:

- headers folded at 78 columns, non-ASCII text as RFC 2047 encoded words (UTF-8, base64);
- display names quoted per RFC 5322 when they hold specials;
- text that merely looks like an encoded word ("=?utf-8?b?…?=") is itself encoded, so a
  receiver shows it as typed instead of decoding it (to CR/LF, say);
- a header value with a line break or control character is refused (kit/headers.py): the API
  refuses them already, and a builder that wrote one would be writing a header injection;
- bodies in quoted-printable (RFC 2045), lines ending in CRLF;
- multipart/alternative with a boundary that starts with "=_", which quoted-printable output
  can never contain, so it cannot collide with a body.

Tests parse every shape back with the standard library (tests/delivery/test_mime.py).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from email.utils import format_datetime

from mailsvc.delivery.message import Address, OutgoingEmail
from mailsvc.kit.headers import unsafe_character

_MAX_LINE = 78
# RFC 2047: an encoded word is at most 75 characters; "=?utf-8?b?" + "?=" take 12 of them.
_WORD_PAYLOAD_BYTES = 45  # 45 bytes -> 60 base64 characters -> 72-character words
_ATOM_SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
_LOOKS_ENCODED = "=?"  # RFC 2047: where a decoder would start an encoded word
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable ASCII but the colon


def encoded_words(text: str) -> list[str]:
    """RFC 2047 encoded words for `text`, split on UTF-8 character boundaries."""
    data = text.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_PAYLOAD_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never split a character
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:end]).decode("ascii") + "?=")
        start = end
    return words


def _fold(name: str, tokens: list[str], separator: str = " ") -> str:
    """`Name: token token …`, folded with CRLF SP before a token that would pass 78 columns."""
    line = f"{name}:"
    lines = []
    for index, token in enumerate(tokens):
        piece = (" " if index == 0 else separator) + token
        if len(line) + len(piece) > _MAX_LINE and token and line.strip() != f"{name}:":
            lines.append(line)
            line = " " + token
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


def _safe(name: str, value: str) -> str:
    bad = unsafe_character(value)
    if bad is not None:
        raise ValueError(f"the {name} header would carry {bad}, a line break or control character")
    return value


def _text_header(name: str, value: str) -> str:
    _safe(name, value)
    if _LOOKS_ENCODED in value:
        return _fold(name, encoded_words(value))
    if len(name) + len(value) + 2 <= _MAX_LINE and str.isascii(value):
        return f"{name}: {value}"
    words = value.split(" ")
    # Encoded words can be split anywhere; plain text only at spaces, and a line must stay
    # under 998 characters, so a long unbroken run is encoded too.
    if str.isascii(value) and max(map(len, words)) <= _MAX_LINE - len(name) - 2:
        return _fold(name, words)
    return _fold(name, encoded_words(value))


def _display_name(name: str) -> list[str]:
    _safe("display name", name)
    if not str.isascii(name) or _LOOKS_ENCODED in name:
        return encoded_words(name)
    if _ATOM_SAFE.fullmatch(name):
        return name.split(" ")
    return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']


def _address_tokens(address: Address) -> list[str]:
    if not address.name:
        return [address.email]
    return [*_display_name(address.name), f"<{address.email}>"]


def _address_header(name: str, addresses: list[Address]) -> str:
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        parts = _address_tokens(address)
        if index < len(addresses) - 1:
            parts[-1] += ","
        tokens.extend(parts)
    return _fold(name, tokens)


def quoted_printable(body: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (soft breaks included)."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(text, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")


def _part(subtype: str, body: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode("ascii") + quoted_printable(body)


def build_mime(email: OutgoingEmail) -> bytes:
    headers = [
        _address_header("From", [email.sender]),
        _address_header("To", email.to),
    ]
    if email.cc:
        headers.append(_address_header("Cc", email.cc))
    if email.reply_to is not None:
        headers.append(_address_header("Reply-To", [email.reply_to]))
    headers += [
        _text_header("Subject", email.subject),
        f"Date: {format_datetime(email.date)}",
        f"Message-ID: {email.message_id_header}",
        "MIME-Version: 1.0",
    ]
    for name, value in email.headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        headers.append(_text_header(name, value))

    bodies = [(sub, text) for sub, text in (("plain", email.text), ("html", email.html)) if text]
    if len(bodies) == 1 or not bodies:
        subtype, text = bodies[0] if bodies else ("plain", "")
        return ("\r\n".join(headers) + "\r\n").encode("ascii") + _part(subtype, text)

    boundary = "=_" + os.urandom(12).hex()
    head = "\r\n".join([*headers, f'Content-Type: multipart/alternative; boundary="{boundary}"'])
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    return b"".join(
        [
            head.encode("ascii"),
            b"\r\n\r\nThis is a multipart message in MIME format.",
            *(delimiter + _part(subtype, text) for subtype, text in bodies),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        ]
    )


def ensure_raw(email: OutgoingEmail) -> bytes:
    if email.raw is None:
        email.raw = build_mime(email)
    return email.raw
