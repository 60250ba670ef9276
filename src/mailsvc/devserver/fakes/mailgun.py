"""A fake Mailgun Messages endpoint (POST /v3/{domain}/messages) that reads form fields and
answers like the real API: Basic auth, domain lookup, required parameters, its error bodies."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr
from http import HTTPStatus
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mailsvc.devserver.fakes.outbox import compose_eml
from mailsvc.devserver.fakes.script import (
    Failure,
    FakeProvider,
    Received,
    is_address,
    run_scripted,
)

MAX_TAGS = 3
FROM_MISSING = "'from' parameter is missing"
TO_MISSING = "'to' parameter is missing"
BODY_MISSING = "Need at least one of 'text', 'html' or 'template' parameters specified"
INVALID_TO = "to parameter is not a valid address. please check documentation"
TOO_MANY_TAGS = "Too many tags: at most 3 'o:tag' values are allowed per message"
WRONG_CONTENT_TYPE = (
    "Unsupported Content-Type: send multipart/form-data or application/x-www-form-urlencoded"
)

BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
CHARSET = re.compile(r'charset="?([^";\s]+)', re.IGNORECASE)
DISPOSITION_PARAM = re.compile(r';\s*([A-Za-z*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')
QUOTED_PAIR = re.compile(r"\\(.)")

Fields = list[tuple[str, str]]


def message_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


class MailgunFake:
    def __init__(self, provider: FakeProvider, api_key: str, domain: str) -> None:
        self.provider = provider
        self.domain = domain
        self._credentials = f"api:{api_key}".encode()

    async def send(self, request: Request) -> Response:
        return await run_scripted(self.provider, lambda: self._send(request), _failed)

    def _authorized(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._credentials)

    async def _send(self, request: Request) -> Response:
        if not self._authorized(request):
            return PlainTextResponse("Forbidden", status_code=401)
        domain = request.path_params["domain"]
        if domain != self.domain:
            return message_response(404, f"Domain not found: {domain}")
        content_type = request.headers.get("content-type")
        body = await request.body()
        fields = parse_form(content_type or "", body)
        if fields is None:
            return message_response(400, WRONG_CONTENT_TYPE)

        problem = validate(fields)
        if problem is not None:
            return message_response(400, problem)
        envelope = [
            address for name in ("to", "cc", "bcc") for address in _addresses(values(fields, name))
        ]
        if self.provider.first_rejected(envelope) is not None:
            return message_response(400, INVALID_TO)

        custom = [(name[2:], value) for name, value in fields if name.lower().startswith("h:")]
        subject = first(fields, "subject")
        self.provider.record(
            Received(
                provider=self.provider.name,
                message_id=next((v for k, v in custom if k.lower() == "message-id"), None),
                sender=parseaddr(values(fields, "from")[0])[1],
                recipients=tuple(envelope),
                subject=subject,
                request_headers=dict(request.headers),
                content_type=content_type,
                body=body,
                at=time.time(),
            ),
            eml=lambda: compose_eml(
                sender=values(fields, "from")[0],
                to=values(fields, "to"),
                cc=values(fields, "cc"),
                subject=subject,
                headers=custom,
                text=first(fields, "text"),
                html=first(fields, "html"),
            ),
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        return JSONResponse(
            {"id": f"<{stamp}.{secrets.token_hex(8)}@{domain}>", "message": "Queued. Thank you."}
        )


def _failed(failure: Failure) -> Response:
    headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
    try:
        phrase = HTTPStatus(failure.status).phrase
    except ValueError:
        phrase = "Error"
    return message_response(failure.status, phrase, headers)


def parse_form(content_type: str, body: bytes) -> Fields | None:
    """The form fields in request order (repeats kept), or None for a body that is not a form.
    Attachments come back as their field name with the file name as value."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    if media != "multipart/form-data":
        return None
    boundary = BOUNDARY.search(content_type)
    if boundary is None:
        return None
    return _multipart_fields(body, (boundary[1] or boundary[2]).encode("latin-1", "replace"))


def _multipart_fields(body: bytes, boundary: bytes) -> Fields | None:
    # python-multipart is not a dependency, and the email package's parser costs ten times
    # more per request than this split, which matters when a benchmark sends 20,000 messages.
    sections = body.split(b"--" + boundary)
    if len(sections) < 3:
        return None
    fields: Fields = []
    for section in sections[1:]:
        if section.startswith(b"--"):  # the closing delimiter
            break
        head, _, content = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        disposition, charset = "", "utf-8"
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
            elif name.strip().lower() == "content-type":
                found = CHARSET.search(value)
                charset = found[1] if found else charset
        params = {
            key.lower(): QUOTED_PAIR.sub(r"\1", quoted) if quoted else bare
            for key, quoted, bare in DISPOSITION_PARAM.findall(disposition)
        }
        if "name" not in params:
            continue
        if "filename" in params or "filename*" in params:
            fields.append((params["name"], params.get("filename") or params["filename*"]))
            continue
        try:
            fields.append((params["name"], content.decode(charset, "replace")))
        except LookupError:  # an unknown charset name
            fields.append((params["name"], content.decode("utf-8", "replace")))
    return fields


def values(fields: Fields, name: str) -> list[str]:
    return [value for key, value in fields if key == name and value.strip()]


def first(fields: Fields, name: str) -> str | None:
    found = values(fields, name)
    return found[0] if found else None


def _addresses(entries: Iterable[str]) -> list[str]:
    return [address for _, address in getaddresses(list(entries)) if address]


def validate(fields: Fields) -> str | None:
    """The first problem Mailgun would report for these fields, if any."""
    if not values(fields, "from"):
        return FROM_MISSING
    if not values(fields, "to"):
        return TO_MISSING
    if not any(values(fields, name) for name in ("text", "html", "template")):
        return BODY_MISSING
    if len(values(fields, "o:tag")) > MAX_TAGS:
        return TOO_MANY_TAGS
    if not is_address(parseaddr(values(fields, "from")[0])[1]):
        return "from parameter is not a valid address. please check documentation"
    for name in ("to", "cc", "bcc"):
        entries = values(fields, name)
        found = _addresses(entries)
        if (entries and not found) or any(not is_address(a) for a in found):
            return f"{name} parameter is not a valid address. please check documentation"
    return None
