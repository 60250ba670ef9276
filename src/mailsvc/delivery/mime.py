"""RFC 5322 / MIME messages from OutgoingEmail, built directly as bytes.

The standard library's `email.mime` spends most of its time parsing back every header it is
given (measured in bench/mime.py at several times the cost of sending). Our input is already
validated, so this builder writes the same wire format itself:

- headers folded at white space (RFC 5322 section 2.2.3) to lines of at most 78 columns where a
  value allows it, and never over 998;
- RFC 2047 encoded words (UTF-8, base64) only where plain text cannot say it: non-ASCII text,
  text that merely looks like an encoded word ("=?utf-8?b?…?=", encoded so a receiver shows it
  as typed instead of decoding it, to CR/LF say), and a run with no white space too long for a
  998-character line. Plain ASCII is never encoded: some parsers hand encoded words back as is.
  A line that holds encoded words stays within 76 characters (RFC 2047 section 2) where the
  header's name leaves room;
- display names quoted per RFC 5322 when they hold specials;
- a header value with a line break or control character is refused (kit/headers.py): the API
  refuses them already, and a builder that wrote one would be writing a header injection;
- bodies in quoted-printable (RFC 2045), every line end CRLF (a body's own CR, LF and CRLF all
  become CRLF). A body reads back exactly as stored, line ends aside: one that ends in a newline
  ends in CRLF, and one that does not ends in a soft line break ("=" CRLF, which decodes to
  nothing), since the wire must end every line, and a single part's last one is its body's.
  Lines are at most 76 characters (RFC 2045 section 6.7);
- multipart/alternative with a boundary that starts with "=_", which quoted-printable output
  can never contain, so it cannot collide with a body.

Tests parse every shape back with the standard library (tests/delivery/test_mime.py), and as
delivered through SMTP (tests/delivery/test_delivered_mail.py).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from email.utils import format_datetime

from mailsvc.delivery.message import Mailbox, OutgoingEmail
from mailsvc.kit.headers import unsafe_character

_MAX_LINE = 78
_MAX_LINE_HARD = 998  # RFC 5322 section 2.1.1, CRLF aside
_QP_LINE = 76  # RFC 2045 section 6.7
_ENCODED_LINE = 76  # RFC 2047 section 2
_QP_LINE_END_ESCAPE = re.compile(rb"=(?:09|20)\n")
# RFC 2047: an encoded word is at most 75 characters; "=?utf-8?b?" + "?=" take 12 of them.
_WORD_PAYLOAD_BYTES = 45  # 45 bytes -> 60 base64 characters -> 72-character words
_ATOM_SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
_LOOKS_ENCODED = "=?"  # RFC 2047: where a decoder would start an encoded word
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322: printable ASCII but the colon


def encoded_words(text: str, first_bytes: int = _WORD_PAYLOAD_BYTES) -> list[str]:
    """RFC 2047 encoded words for `text`, split on UTF-8 character boundaries; the first holds
    at most `first_bytes` bytes (but room for any one character), the others 45."""
    data = text.encode("utf-8")
    words = []
    start = 0
    limit = max(first_bytes, 6)  # base64 takes 3-byte steps; a character takes up to 4 bytes
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never split a character
            end -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:end]).decode("ascii") + "?=")
        start = end
        limit = _WORD_PAYLOAD_BYTES
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """`Name: token token …`, folded with CRLF before the white space ahead of a token that would
    pass 78 columns. Tokens are the value split at single spaces: an empty one is a space more,
    and a run of spaces moves whole with the token after it, so no line ends past 78 in spaces."""
    head = f"{name}:"
    line = head
    lines = []
    gap = " "
    for token in tokens:
        if not token:
            gap += " "
            continue
        if len(line) + len(gap) + len(token) > _MAX_LINE and line != head:
            lines.append(line)
            line = gap + token
        else:
            line += gap + token
        gap = " "
    lines.append(line + gap[1:])  # the spaces a value ends in
    return "\r\n".join(lines)


def _safe(name: str, value: str) -> str:
    bad = unsafe_character(value)
    if bad is not None:
        raise ValueError(f"the {name} header would carry {bad}, a line break or control character")
    return value


def _text_header(name: str, value: str) -> str:
    _safe(name, value)
    if _LOOKS_ENCODED in value or not str.isascii(value):
        return _fold(name, _header_words(name, value))
    if len(name) + len(value) + 2 <= _MAX_LINE:
        return f"{name}: {value}"
    # Plain text folds only at white space, so a word longer than the 78 columns stays whole on
    # a longer line; only one that would pass 998 must be encoded.
    folded = _fold(name, value.split(" "))
    if max(map(len, folded.split("\r\n"))) > _MAX_LINE_HARD:
        return _fold(name, _header_words(name, value))
    return folded


def _header_words(name: str, value: str) -> list[str]:
    # RFC 2047 section 2: a line holding an encoded word is at most 76 characters, so the first
    # word, after "Name: ", is made shorter.
    room = _ENCODED_LINE - len(name) - 2 - len("=?utf-8?b??=")
    return encoded_words(value, first_bytes=room // 4 * 3)


def _display_name(name: str) -> list[str]:
    _safe("display name", name)
    if not str.isascii(name) or _LOOKS_ENCODED in name:
        return encoded_words(name)
    if _ATOM_SAFE.fullmatch(name):
        return name.split(" ")
    return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']


def _address_tokens(address: Mailbox) -> list[str]:
    if not address.name:
        return [address.email]
    return [*_display_name(address.name), f"<{address.email}>"]


def _address_header(name: str, addresses: list[Mailbox]) -> str:
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        parts = _address_tokens(address)
        if index < len(addresses) - 1:
            parts[-1] += ","
        tokens.extend(parts)
    return _fold(name, tokens)


def quoted_printable(body: str) -> bytes:
    """Quoted-printable UTF-8 with CRLF line ends (soft breaks included), ending in a line end
    when `body` is not empty: its own final newline, or a soft line break when it has none."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    encoded = _break_overlong(encoded)
    if encoded and encoded[-1] != 0x0A:
        # The CRLF that ends the message (or precedes a boundary) would otherwise read back as
        # a newline the body never had. b2a_qp leaves a last line of up to 76 characters, and
        # one of 76 ends in a literal character (an escape breaks the line sooner), so the line
        # can be broken before it without splitting an "=XX".
        if len(encoded) - encoded.rfind(b"\n") > _QP_LINE:
            encoded = encoded[:-1] + b"=\n" + encoded[-1:]
        encoded += b"=\n"
    return encoded.replace(b"\n", b"\r\n")


def _break_overlong(encoded: bytes) -> bytes:
    """b2a_qp escapes a line's trailing space or tab only once the line is laid out, which can
    take a 76-character line to 78: such a line is broken again before the escape."""
    pieces = []
    start = 0
    for found in _QP_LINE_END_ESCAPE.finditer(encoded):
        at = found.start()
        if at + 3 - (encoded.rfind(b"\n", 0, at) + 1) > _QP_LINE:
            pieces += [encoded[start:at], b"=\n"]
            start = at
    return b"".join([*pieces, encoded[start:]]) if pieces else encoded


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
