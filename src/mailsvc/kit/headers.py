"""What may go into an email header: one check for every value that can reach one.

CR and LF are how header injection works, but they are not the only line breaks: VT, FF, the
C0 separators FS/GS/RS, NEL (U+0085) and U+2028/U+2029 are line boundaries to Python's
`str.splitlines`, which the standard library's email package uses when it re-serialises a
message, so `"x\\u000bBcc: evil@evil.example"` becomes a real Bcc header in the receiver's hands.
Every C0 and C1 control character is refused (TAB aside: RFC 5322 allows it as white space),
with DEL and the two Unicode line separators; a template's rendered subject has them turned into
spaces instead (`one_line`), since its author asked for one line.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

# C0 but TAB, DEL, C1, LINE SEPARATOR, PARAGRAPH SEPARATOR.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_UNSAFE_OR_TAB = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# An X- header name: RFC 5322 field-name characters, limited to letters, digits and hyphens.
HEADER_NAME = re.compile(r"X-[A-Za-z0-9][A-Za-z0-9-]{0,75}")
# Header names mailsvc sets itself: a tenant may not set or spoof them.
RESERVED_HEADER_PREFIX = "x-mailsvc-"
MAX_HEADER_VALUE_CHARS = 998  # RFC 5322's line limit


def unsafe_character(value: str) -> str | None:
    """The first character of `value` that may not appear in a header, as U+XXXX, or None."""
    found = _UNSAFE.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_header_text(value: str) -> str:
    """A pydantic validator: refuse a value that would break out of its header."""
    bad = unsafe_character(value)
    if bad is not None:
        raise ValueError(f"must not contain line breaks or control characters (found {bad})")
    return value


def check_header_name(name: str) -> str:
    """An X-* header name a tenant may set; ValueError naming the rule it breaks."""
    # fullmatch: `re.match("…$")` would accept a name ending in "\n" and end the header block.
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"header {name!r} is not allowed: only X-* headers may be set")
    if name.lower().startswith(RESERVED_HEADER_PREFIX):
        raise ValueError(f"header {name!r} is reserved")
    return name


# Any value that ends up in a header (a subject, a display name, an X-header's value).
HeaderText = Annotated[str, AfterValidator(check_header_text)]
HeaderName = Annotated[str, AfterValidator(check_header_name)]
HeaderValue = Annotated[HeaderText, Field(max_length=MAX_HEADER_VALUE_CHARS)]


def one_line(text: str) -> str:
    """`text` as one header line: line breaks and control characters become spaces, runs of
    white space one space, and the ends are trimmed."""
    return " ".join(_UNSAFE_OR_TAB.sub(" ", text).split())
