"""A fake SendGrid v3 Mail Send endpoint (POST /v3/mail/send) that checks requests the way the
real API does and answers with its status codes and error bodies."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from email.utils import formataddr
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailsvc.devserver.fakes.outbox import compose_eml
from mailsvc.devserver.fakes.script import (
    Failure,
    FakeProvider,
    Received,
    is_address,
    run_scripted,
)

MAX_RECIPIENTS = 1000
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)

UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
PERSONALIZATIONS_REQUIRED = (
    "The personalizations field is required and must have at least one personalization."
)
TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least one "
    "email object with a valid email address."
)
INVALID_ADDRESS = "Does not contain a valid address."
FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires the "
    "email parameter, but may also contain a name parameter."
)
SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template with a "
    "subject defined or if every personalization has a subject defined."
)
CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must be at "
    "least one defined content block. We typically suggest both text/plain and text/html blocks "
    "are included, but only one block is required."
)
CONTENT_ORDER = (
    "If present, text/plain must be first, followed by text/html, followed by any other content."
)
TOO_MANY_RECIPIENTS = (
    "The total number of recipients must be no more than 1000. This includes all recipients "
    "defined within the to, cc, and bcc parameters, across each object that you include in the "
    "personalizations array."
)


def error(message: str, field: str | None) -> dict[str, Any]:
    return {"message": message, "field": field, "help": None}


def errors_response(
    status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


class SendGridFake:
    def __init__(self, provider: FakeProvider, api_key: str) -> None:
        self.provider = provider
        self._authorization = f"Bearer {api_key}".encode()

    async def send(self, request: Request) -> Response:
        return await run_scripted(self.provider, lambda: self._send(request), _failed)

    async def _send(self, request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._authorization):
            return errors_response(401, [error(UNAUTHORIZED, None)])
        content_type = request.headers.get("content-type")
        if (content_type or "").split(";", 1)[0].strip().lower() != "application/json":
            return errors_response(400, [error("Content-Type should be application/json.", None)])
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError:  # UnicodeDecodeError is one
            payload = None
        if not isinstance(payload, dict):
            return errors_response(400, [error("Bad Request", None)])
        problems = validate(payload)
        if problems:
            return errors_response(400, problems)

        envelope = recipients(payload)
        rejected = self.provider.first_rejected(address for _, address in envelope)
        if rejected is not None:
            field = next(field for field, address in envelope if address == rejected)
            return errors_response(400, [error(INVALID_ADDRESS, field)])

        headers = payload.get("headers") or {}
        message_id = next((v for k, v in headers.items() if k.lower() == "message-id"), None)
        self.provider.record(
            Received(
                provider=self.provider.name,
                message_id=message_id,
                sender=payload["from"]["email"],
                recipients=tuple(address for _, address in envelope),
                subject=_subject(payload),
                request_headers=dict(request.headers),
                content_type=content_type,
                body=body,
                at=time.time(),
            ),
            eml=lambda: _eml(payload),
        )
        return Response(status_code=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})


def _failed(failure: Failure) -> Response:
    headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
    return errors_response(failure.status, [error(_phrase(failure.status), None)], headers)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _non_empty_string(value: object) -> bool:
    return isinstance(value, str) and value != ""


def validate(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem SendGrid would report for this body, in its order."""
    problems: list[dict[str, Any]] = []
    personalizations = payload.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(error(PERSONALIZATIONS_REQUIRED, "personalizations"))
        personalizations = []
    total = 0
    for i, personalization in enumerate(personalizations):
        if not isinstance(personalization, dict):
            problems.append(error(TO_REQUIRED, f"personalizations.{i}.to"))
            continue
        to = personalization.get("to")
        if not isinstance(to, list) or not to:
            problems.append(error(TO_REQUIRED, f"personalizations.{i}.to"))
        for kind in ("to", "cc", "bcc"):
            entries = personalization.get(kind)
            if not isinstance(entries, list):
                if entries is not None and kind != "to":
                    problems.append(error(INVALID_ADDRESS, f"personalizations.{i}.{kind}"))
                continue
            for j, entry in enumerate(entries):
                total += 1
                if not isinstance(entry, dict) or not is_address(entry.get("email")):
                    problems.append(
                        error(INVALID_ADDRESS, f"personalizations.{i}.{kind}.{j}.email")
                    )
        problems.extend(_header_problems(personalization.get("headers"), f"personalizations.{i}."))
    if total > MAX_RECIPIENTS:
        problems.append(error(TOO_MANY_RECIPIENTS, "personalizations"))

    sender = payload.get("from")
    if not isinstance(sender, dict) or not is_address(sender.get("email")):
        problems.append(error(FROM_REQUIRED, "from.email"))

    templated = _non_empty_string(payload.get("template_id"))
    every_personalization_has_subject = bool(personalizations) and all(
        isinstance(p, dict) and _non_empty_string(p.get("subject")) for p in personalizations
    )
    if not (
        templated or _non_empty_string(payload.get("subject")) or every_personalization_has_subject
    ):
        problems.append(error(SUBJECT_REQUIRED, "subject"))

    problems.extend(_content_problems(payload.get("content"), templated))
    problems.extend(_header_problems(payload.get("headers"), ""))
    return problems


def _content_problems(content: object, templated: bool) -> list[dict[str, Any]]:
    if content is None or content == []:
        return [] if templated else [error(CONTENT_REQUIRED, "content")]
    if not isinstance(content, list):
        return [error(CONTENT_REQUIRED, "content")]
    problems: list[dict[str, Any]] = []
    types: list[str] = []
    for k, block in enumerate(content):
        if not isinstance(block, dict) or not _non_empty_string(block.get("type")):
            problems.append(
                error(
                    "The content type must be a string at least one character in length.",
                    f"content.{k}.type",
                )
            )
            continue
        if not _non_empty_string(block.get("value")):
            problems.append(
                error(
                    "The content value must be a string at least one character in length.",
                    f"content.{k}.value",
                )
            )
        types.append(str(block["type"]).split(";", 1)[0].strip().lower())
    if "text/plain" in types and types[0] != "text/plain":
        problems.append(error(CONTENT_ORDER, "content.0.type"))
    elif "text/html" in types and types.index("text/html") != (1 if "text/plain" in types else 0):
        problems.append(error(CONTENT_ORDER, "content.0.type"))
    return problems


def _header_problems(headers: object, prefix: str) -> list[dict[str, Any]]:
    if headers is None:
        return []
    if not isinstance(headers, dict):
        return [
            error(
                "The headers parameter must be an object of string keys and values.",
                f"{prefix}headers",
            )
        ]
    problems: list[dict[str, Any]] = []
    for name, value in headers.items():
        if name.lower() in RESERVED_HEADERS:
            problems.append(
                error(f"The header {name} is reserved and cannot be set.", f"{prefix}headers")
            )
        elif not isinstance(value, str):
            problems.append(
                error(f"The value of header {name} must be a string.", f"{prefix}headers")
            )
    return problems


def recipients(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, address) for every envelope recipient of a valid body."""
    found: list[tuple[str, str]] = []
    for i, personalization in enumerate(payload["personalizations"]):
        for kind in ("to", "cc", "bcc"):
            for j, entry in enumerate(personalization.get(kind) or []):
                found.append((f"personalizations.{i}.{kind}.{j}.email", entry["email"]))
    return found


def _subject(payload: dict[str, Any]) -> str | None:
    subject = payload.get("subject")
    if _non_empty_string(subject):
        return str(subject)
    first = payload["personalizations"][0].get("subject")
    return str(first) if _non_empty_string(first) else None


def _display(entry: dict[str, Any]) -> str:
    name = entry.get("name")
    return formataddr((name, entry["email"])) if isinstance(name, str) else str(entry["email"])


def _eml(payload: dict[str, Any]) -> bytes:
    personalizations: list[dict[str, Any]] = payload["personalizations"]
    values = {
        str(block["type"]).split(";", 1)[0].strip().lower(): str(block["value"])
        for block in payload.get("content") or []
    }
    headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
    return compose_eml(
        sender=_display(payload["from"]),
        to=[_display(e) for p in personalizations for e in p.get("to") or []],
        cc=[_display(e) for p in personalizations for e in p.get("cc") or []],
        subject=_subject(payload),
        headers=headers,
        text=values.get("text/plain"),
        html=values.get("text/html"),
    )
