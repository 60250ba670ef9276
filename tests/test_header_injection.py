"""No line break or control character reaches a header, through any field on any path.

`{"subject": "x\\u000bBcc: evil@evil.example"}` used to be accepted: only CR, LF and NUL were
refused, and Python's email package, re-serialising the delivered message, turned the VT into a
real Bcc header. Now every C0 and C1 control (TAB aside), DEL, U+2028 and U+2029 is refused in
every value that can reach a header, by one validator (kit/headers.py).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mailsvc.kit.headers import check_header_text, one_line, unsafe_character
from mailsvc.models import Tenant
from tests.support.auth import bearer
from tests.support.operations import OPERATIONS, Operation, replaced

UNSAFE = [
    *(chr(c) for c in range(0x00, 0x20) if c != 0x09),
    "\x7f",
    *(chr(c) for c in range(0x80, 0xA0)),
    "\u2028",
    "\u2029",
]


def _operation(method: str, template: str, *, templated: bool = False) -> Operation:
    found = [o for o in OPERATIONS if o.method == method and o.template == template]
    return found[-1] if templated else found[0]


SEND = _operation("POST", "/v1/messages")
BATCH = _operation("POST", "/v1/messages/batch")
EVENT = _operation("POST", "/v1/events")
CONTACT = _operation("PUT", "/v1/contacts/{email}")

# Every value a header is made of, by operation: display names, subject, X-header values.
HEADER_TEXT: list[tuple[Operation, tuple[str | int, ...]]] = [
    (SEND, ("subject",)),
    (SEND, ("to", 0, "name")),
    (SEND, ("bcc", 0, "name")),
    (SEND, ("from", "name")),
    (SEND, ("reply_to", "name")),
    (SEND, ("headers", "X-Ref")),
    (BATCH, ("messages", 0, "subject")),
    (BATCH, ("messages", 0, "to", 0, "name")),
    (BATCH, ("messages", 0, "from", "name")),
    (BATCH, ("messages", 0, "headers", "X-Ref")),
    (EVENT, ("contact", "name")),
    (CONTACT, ("name",)),
]
# Addresses reach headers too; email-validator refuses these characters in them.
ADDRESSES: list[tuple[Operation, tuple[str | int, ...]]] = [
    (SEND, ("to", 0, "email")),
    (SEND, ("cc", 0)),
    (SEND, ("from", "email")),
    (BATCH, ("messages", 0, "to", 0, "email")),
    (EVENT, ("contact", "email")),
    (_operation("PUT", "/v1/schedules/{name}"), ("recipients", 0)),
]


def test_the_class_of_characters() -> None:
    assert [unsafe_character(f"a{c}b") for c in UNSAFE] == [f"U+{ord(c):04X}" for c in UNSAFE]
    assert unsafe_character("tab\tis fine, and ünïcode ☃, and U+FEFF \ufeff") is None
    for char in UNSAFE:
        with pytest.raises(ValueError, match=f"found U\\+{ord(char):04X}"):
            check_header_text(f"x{char}Bcc: evil@evil.example")
        assert one_line(f"a{char}b") == "a b"


async def _send(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, body: Any
) -> httpx.Response:
    return await client.request(
        operation.method,
        operation.path,
        content=json.dumps(body).encode(),
        headers={**bearer(tenant), "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    ("operation", "loc"), HEADER_TEXT, ids=lambda v: v.id if isinstance(v, Operation) else str(v)
)
async def test_every_control_character_is_refused_in_every_header_field(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, loc: tuple[str | int, ...]
) -> None:
    for char in UNSAFE:
        body = replaced(operation.body, loc, f"x{char}Bcc: evil@evil.example")
        response = await _send(client, tenant, operation, body)
        assert response.status_code == 422, (char, response.text)
        msg = (
            "must not contain NUL characters"
            if char == "\x00"
            else f"must not contain line breaks or control characters (found U+{ord(char):04X})"
        )
        assert response.json()["errors"] == [{"loc": ["body", *loc], "msg": msg}], char


@pytest.mark.parametrize(
    ("operation", "loc"), ADDRESSES, ids=lambda v: v.id if isinstance(v, Operation) else str(v)
)
async def test_every_control_character_is_refused_in_every_address(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, loc: tuple[str | int, ...]
) -> None:
    for char in UNSAFE:
        body = replaced(operation.body, loc, f"ada{char}@example.net")
        response = await _send(client, tenant, operation, body)
        assert response.status_code == 422, (char, response.text)
        (error,) = response.json()["errors"]
        assert error["loc"][: len(loc) + 1] == ["body", *loc], (char, error)


@pytest.mark.parametrize(
    ("operation", "loc"), HEADER_TEXT, ids=lambda v: v.id if isinstance(v, Operation) else str(v)
)
async def test_a_tab_is_allowed_where_rfc_5322_allows_white_space(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, loc: tuple[str | int, ...]
) -> None:
    response = await _send(client, tenant, operation, replaced(operation.body, loc, "a\tb"))
    assert response.status_code in (200, 201, 202), response.text


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
async def test_a_rendered_subject_is_one_line(
    client: httpx.AsyncClient, tenant: Tenant, char: str
) -> None:
    """A template's subject may take a variable with a line break in it: the author asked for
    one line, so every break and control becomes a space (and the subject is never blank)."""
    put = await client.put(
        "/v1/templates/notice",
        json={"subject": "Hi {{ who }}!", "text": "Hello."},
        headers=bearer(tenant),
    )
    assert put.status_code == 200, put.text
    who = f"Ada{char}Bcc: evil@evil.example" if char != "\x00" else "Ada Bcc: evil@evil.example"
    preview = await client.post(
        "/v1/templates/notice/preview", json={"variables": {"who": who}}, headers=bearer(tenant)
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["subject"] == "Hi Ada Bcc: evil@evil.example!"


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\r", " ", ":", "\t", "\x0b", "\u2028"])
async def test_a_header_name_must_be_all_name(
    client: httpx.AsyncClient, tenant: Tenant, suffix: str
) -> None:
    """`re.match("^X-…$")` accepted "X-Probe\\n": `$` matches before a final newline, and the
    name ended the header block early. Names are matched whole now."""
    name = f"X-Probe{suffix}"
    body = {**SEND.body, "headers": {name: "v"}}
    response = await _send(client, tenant, SEND, body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "loc": ["body", "headers", name, "[key]"],
            "msg": f"header {name!r} is not allowed: only X-* headers may be set",
        }
    ]


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x0b"])
async def test_a_tag_must_be_all_tag(
    client: httpx.AsyncClient, tenant: Tenant, suffix: str
) -> None:
    tag = f"welcome{suffix}"
    response = await _send(client, tenant, SEND, {**SEND.body, "tags": [tag]})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"loc": ["body", "tags"], "msg": f"tag {tag!r} must be 1-64 of A-Z a-z 0-9 _ . : -"}
    ]
