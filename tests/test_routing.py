"""Every /v1 operation checks the caller first, then reads its input strictly: each class of bad
input gets its precise 4xx at every place it can reach, never a 500."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from mailsvc.auth import scopes
from mailsvc.models import Tenant
from tests.support.api import problem
from tests.support.auth import bearer
from tests.support.operations import (
    OPERATIONS,
    WITH_BODY,
    Operation,
    keys,
    leaves,
    renamed,
    replaced,
)

JSON = {"Content-Type": "application/json"}


async def call(
    client: httpx.AsyncClient,
    operation: Operation,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
    path: str | None = None,
) -> httpx.Response:
    if content is None and operation.body is not None:
        content = json.dumps(operation.body).encode()
    return await client.request(
        operation.method, path or operation.path, content=content, headers=headers
    )


def test_every_operation_is_listed(app: FastAPI) -> None:
    spec = app.openapi()
    declared = {
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }
    assert declared == {operation.id for operation in OPERATIONS}


# -- the caller before the body ------------------------------------------------------------------

ANONYMOUS_INPUTS = {
    "malformed JSON": (b'{"to": [', JSON),
    "deep JSON": (b"[" * 100_000 + b"]" * 100_000, JSON),
    "not JSON": (b"to=a@example.net", {"Content-Type": "application/x-www-form-urlencoded"}),
    "too large": (b"{}", {**JSON, "Content-Length": str(64 * 1024 * 1024)}),
    "NUL": (b'{"x": "\\u0000"}', JSON),
}


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o.id)
@pytest.mark.parametrize("what", list(ANONYMOUS_INPUTS))
async def test_an_anonymous_caller_gets_401_whatever_it_sends(
    client: httpx.AsyncClient, operation: Operation, what: str
) -> None:
    content, headers = ANONYMOUS_INPUTS[what]
    if what == "too large":  # httpx sets Content-Length from the content: stream a lie instead
        request = client.build_request(operation.method, operation.path, content=content)
        request.headers.update(headers)
        response = await client.send(request)
    else:
        path = f"{operation.path}?tag=%00" if what == "NUL" else operation.path
        response = await client.request(operation.method, path, content=content, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == problem(
        401, "Unauthorized", "an Authorization: Bearer token is required", "unauthorized"
    )
    assert response.headers["www-authenticate"] == 'Bearer realm="mailsvc"'


async def test_a_token_without_the_scope_gets_403_before_its_body_is_read(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await client.post(
        "/v1/messages",
        content=b'{"to": [',
        headers={**bearer(tenant, [scopes.MESSAGES_READ]), **JSON},
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "this token lacks the 'messages:send' scope"


# -- the body: type, encoding, syntax ------------------------------------------------------------


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda o: o.id)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        None,
    ],
)
async def test_a_body_that_is_not_json_gets_415(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, content_type: str | None
) -> None:
    headers = bearer(tenant)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await call(client, operation, headers=headers)
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["type"] == "https://mailsvc.dev/problems/unsupported-media-type"
    assert "application/json" in body["detail"]


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda o: o.id)
async def test_json_types_with_a_suffix_or_utf8_charset_are_json(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation
) -> None:
    for content_type in ("application/json; charset=UTF-8", "application/merge-patch+json"):
        response = await call(
            client, operation, headers={**bearer(tenant), "Content-Type": content_type}
        )
        assert response.status_code not in (400, 415, 500), (content_type, response.text)


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda o: o.id)
@pytest.mark.parametrize(
    ("content", "msg"),
    [
        (b'{"to": [', "the body is not valid JSON: Expecting value: line 1 column 9 (char 8)"),
        (b"\xff\xfe{}", "the body is not UTF-8: byte 0 is invalid"),
        (b'{"a": "\xed\xa0\x80"}', "the body is not UTF-8: byte 7 is invalid"),  # a surrogate
        (
            b"\xef\xbb\xbf{}",
            "the body is not valid JSON: Unexpected UTF-8 BOM (decode using "
            "utf-8-sig): line 1 column 1 (char 0)",
        ),
        (b"{} {}", "the body is not valid JSON: Extra data: line 1 column 4 (char 3)"),
        (b'{"x": NaN}', "the body is not valid JSON: NaN is not a JSON number"),
        (b'{"x": -Infinity}', "the body is not valid JSON: -Infinity is not a JSON number"),
        (b'{"x": 1e999}', "the body is not valid JSON: 1e999 is too large a number"),
        (
            b'{"x": ' + b"9" * 5000 + b"}",
            "the body is not valid JSON: Exceeds the limit (4300 digits) for integer string "
            "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase "
            "the limit",
        ),
    ],
)
async def test_a_body_that_cannot_be_read_gets_400(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, content: bytes, msg: str
) -> None:
    response = await call(client, operation, headers={**bearer(tenant), **JSON}, content=content)
    assert response.status_code == 400, response.text
    assert response.json() == problem(
        400, "Bad Request", msg, "bad-request", errors=[{"loc": ["body"], "msg": msg}]
    )


# -- the body: what no field validator should need to know ------------------------------------

SURROGATE = "a\ud800b"
SURROGATE_MSG = "must not contain unpaired surrogates (found U+D800)"
NUL = "a\x00b"
NUL_MSG = "must not contain NUL characters"


def _places(operation: Operation) -> list[tuple[str | int, ...]]:
    return list(leaves(operation.body))


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda o: o.id)
@pytest.mark.parametrize(("bad", "msg"), [(SURROGATE, SURROGATE_MSG), (NUL, NUL_MSG)])
async def test_unstorable_strings_are_422_at_every_place(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation, bad: str, msg: str
) -> None:
    """asyncpg cannot encode a lone surrogate; PostgreSQL stores no U+0000: every string of
    every body, and every key, is checked, and the 422 names the exact place."""
    places = _places(operation)
    assert places
    for loc in places:
        body = replaced(operation.body, loc, bad)
        content = json.dumps(body).encode()  # ensure_ascii: "\ud800" travels escaped
        response = await call(
            client, operation, headers={**bearer(tenant), **JSON}, content=content
        )
        assert response.status_code == 422, (loc, response.text)
        assert response.json()["errors"] == [{"loc": ["body", *loc], "msg": msg}], loc
    for loc in keys(operation.body):
        body = renamed(operation.body, loc, bad)
        content = json.dumps(body).encode()
        response = await call(
            client, operation, headers={**bearer(tenant), **JSON}, content=content
        )
        assert response.status_code == 422, (loc, response.text)
        place = ["body", *loc[:-1], bad]
        assert response.json()["errors"] == [{"loc": place, "msg": f"key {msg}"}], loc


def _nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("operation", WITH_BODY, ids=lambda o: o.id)
async def test_json_nested_too_deep_is_422_at_every_place(
    client: httpx.AsyncClient, tenant: Tenant, operation: Operation
) -> None:
    """At most 32 levels in all: the 320 levels found in `variables` and event `data` (which
    exhausted a recursive walk) and 100,000 (which exhausts the parser) are both 422s."""
    for loc in _places(operation):
        content = json.dumps(replaced(operation.body, loc, _nested(320))).encode()
        response = await call(
            client, operation, headers={**bearer(tenant), **JSON}, content=content
        )
        assert response.status_code == 422, (loc, response.text)
        (error,) = response.json()["errors"]
        assert error["msg"] == "is nested more than 32 levels deep"
        assert error["loc"][: len(loc) + 1] == ["body", *loc]
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await call(client, operation, headers={**bearer(tenant), **JSON}, content=deep)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "is nested more than 32 levels deep"}
    ]


async def test_32_levels_are_fine(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"to": ["ada@example.net"], "template": "welcome", "variables": {"x": _nested(29)}}
    response = await client.post("/v1/messages", json=body, headers=bearer(tenant))
    assert response.status_code == 202, response.text


# -- query and path values ---------------------------------------------------------------------


def _parameters(app: FastAPI) -> list[tuple[str, str, str, str]]:
    """(method, path template, where, name) of every path and query parameter in the spec."""
    found = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("path", "query"):
                    found.append((method.upper(), path, parameter["in"], parameter["name"]))
    return found


async def test_nul_in_every_path_and_query_value_is_422(
    app: FastAPI, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """PostgreSQL takes no U+0000 in text: `?tag=%00`, `?to=` and `/templates/a%00b/preview`
    were 500s."""
    parameters = _parameters(app)
    assert ("GET", "/v1/messages", "query", "tag") in parameters
    by_template = {operation.template: operation for operation in OPERATIONS}
    for method, template, where, name in parameters:
        operation = (
            next(o for o in OPERATIONS if o.template == template and o.method == method)
            if (template in by_template)
            else None
        )
        assert operation is not None, template
        path = operation.path
        if where == "path":
            example = path.split("/")[template.split("/").index("{" + name + "}")]
            path = path.replace(example, quote("a\x00b", safe=""), 1)
        else:
            path = f"{path}?{name}={quote('a' + chr(0) + 'b')}"
        response = await call(client, operation, headers={**bearer(tenant), **JSON}, path=path)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["errors"] == [{"loc": [where, name], "msg": NUL_MSG}], path


async def test_a_path_value_with_a_line_break_or_a_slash_is_answered_as_documented(
    app: FastAPI, client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Starlette's `path` convertor stopped at a line break: `PUT /v1/contacts/a%0Ab` was not
    routed at all, a 404 the operation did not document. Each such value now reaches the
    route (a 422, or the route's own 404), and a "/" that makes a path no route has is a 404
    that every operation with a path value documents."""
    spec = app.openapi()["paths"]
    for method, template, where, name in _parameters(app):
        if where != "path":
            continue
        operation = next(o for o in OPERATIONS if o.template == template and o.method == method)
        example = operation.path.split("/")[template.split("/").index("{" + name + "}")]
        documented = set(spec[template][method.lower()]["responses"])
        for value in ("a\nb@example.net", "a/b", "\r\n"):
            path = operation.path.replace(example, quote(value, safe=""), 1)
            response = await call(client, operation, headers={**bearer(tenant), **JSON}, path=path)
            assert response.status_code in (404, 422), (path, response.text)
            assert str(response.status_code) in documented, (method, template, value)
