"""A fake Amazon SES API v2 SendEmail endpoint (POST /v2/email/outbound-emails) that verifies
AWS Signature Version 4 with botocore and answers with SES's error types."""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
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

SERVICE = "ses"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-fA-F]+)"
)
UNSIGNED_PAYLOADS = frozenset({"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
FAILURE_TYPES = {
    400: ("BadRequestException", "Bad request."),
    403: ("AccessDeniedException", "Access denied."),
    404: ("NotFoundException", "Resource not found."),
    429: ("TooManyRequestsException", "Too many requests."),
}
INTERNAL_FAILURE = (
    "InternalFailure",
    "The request processing has failed because of an unknown error, exception or failure.",
)


class BadRequest(Exception):
    pass


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={
            "x-amzn-ErrorType": error_type,
            "x-amzn-RequestId": str(uuid.uuid4()),
            **(headers or {}),
        },
    )


class _SignedHeadersSigV4(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
    """SigV4 over exactly the headers the client listed in SignedHeaders. botocore's own
    selection leaves out headers it never signs itself (User-Agent, Expect), which another
    client may well have signed."""

    def headers_to_sign(self, request: Any) -> Any:
        return request.headers


class SesFake:
    def __init__(
        self, provider: FakeProvider, access_key_id: str, secret_access_key: str, region: str
    ) -> None:
        self.provider = provider
        self.access_key_id = access_key_id
        self.region = region
        self._credentials = Credentials(access_key_id, secret_access_key)

    async def send(self, request: Request) -> Response:
        return await run_scripted(self.provider, lambda: self._send(request), _failed)

    async def _send(self, request: Request) -> Response:
        body = await request.body()
        refusal = self.authenticate(request, body)
        if refusal is not None:
            return refusal
        try:
            email = parse_send_email(body)
        except BadRequest as problem:
            return error_response(400, "BadRequestException", str(problem))
        rejected = self.provider.first_rejected(email.recipients)
        if rejected is not None:
            return error_response(
                400,
                "MessageRejected",
                "Email address is not verified. The following identities failed the check in "
                f"region {self.region.upper()}: {rejected}",
            )
        self.provider.record(
            Received(
                provider=self.provider.name,
                message_id=email.message_id,
                sender=email.sender,
                recipients=email.recipients,
                subject=email.subject,
                request_headers=dict(request.headers),
                content_type=request.headers.get("content-type"),
                body=body,
                at=time.time(),
            ),
            eml=email.eml,
        )
        return JSONResponse({"MessageId": f"{time.time_ns():x}-{uuid.uuid4()}-000000"})

    def authenticate(self, request: Request, body: bytes) -> Response | None:
        """None when the request carries a valid SigV4 signature, else SES's 403."""
        authorization = request.headers.get("authorization")
        if not authorization:
            return error_response(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        match = AUTHORIZATION.fullmatch(authorization.strip())
        scope = match["credential"].split("/") if match else []
        if match is None or len(scope) != 5:
            return error_response(
                403,
                "IncompleteSignatureException",
                "Authorization header requires 'Credential', 'Signature' and "
                "'SignedHeaders' parameters.",
            )
        access_key_id, day, region, service, terminator = scope
        if not hmac.compare_digest(access_key_id.encode(), self.access_key_id.encode()):
            return error_response(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = request.headers.get("x-amz-date")
        if not amz_date:
            return error_response(
                403,
                "IncompleteSignatureException",
                "Authorization header requires existence of either a "
                "'X-Amz-Date' or a 'Date' header.",
            )
        signed = match["signed"].lower().split(";")
        if (
            day != amz_date[:8]
            or region != self.region
            or service != SERVICE
            or terminator != "aws4_request"
            or "host" not in signed
            or any(name not in request.headers for name in signed)
        ):
            return error_response(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)
        declared = request.headers.get("x-amz-content-sha256")
        if declared is not None and declared not in UNSIGNED_PAYLOADS:
            if not hmac.compare_digest(declared, hashlib.sha256(body).hexdigest()):
                return error_response(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)

        # The URL the client signed: this server's address as the Host header names it.
        url = f"http://{request.headers['host']}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = {name: ",".join(request.headers.getlist(name)) for name in signed}
        rebuilt = AWSRequest(method=request.method, url=url, data=body, headers=headers)
        rebuilt.context["timestamp"] = amz_date
        signer = _SignedHeadersSigV4(self._credentials, SERVICE, self.region)
        canonical_request = signer.canonical_request(rebuilt)
        string_to_sign = signer.string_to_sign(rebuilt, canonical_request)
        expected = str(signer.signature(string_to_sign, rebuilt))
        if not hmac.compare_digest(expected.encode(), match["signature"].lower().encode()):
            return error_response(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH)
        return None


def _failed(failure: Failure) -> Response:
    error_type, message = FAILURE_TYPES.get(failure.status, INTERNAL_FAILURE)
    if failure.status < 500 and failure.status not in FAILURE_TYPES:
        error_type, message = FAILURE_TYPES[400]
    headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
    return error_response(failure.status, error_type, message, headers)


@dataclass(frozen=True)
class SendEmail:
    """What a valid SendEmail request asks SES to send."""

    sender: str
    recipients: tuple[str, ...]
    subject: str | None
    message_id: str | None
    mime: bytes | None = None  # Content.Raw, decoded
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    html: str | None = None

    def eml(self) -> bytes:
        if self.mime is not None:
            return self.mime
        return compose_eml(
            sender=self.sender,
            to=self.to,
            cc=self.cc,
            subject=self.subject,
            headers=self.headers,
            text=self.text,
            html=self.html,
        )


def _addresses(destination: dict[str, Any], key: str) -> list[str]:
    found = destination.get(key)
    if found is None:
        return []
    if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
        raise BadRequest(f"Destination.{key} must be a list of email addresses.")
    for address in found:
        if not is_address(parseaddr(address)[1]):
            raise BadRequest(f"Invalid email address <{address}>.")
    return [parseaddr(address)[1] for address in found]


def _data(container: object, path: str) -> str:
    value = container.get("Data") if isinstance(container, dict) else None
    if not isinstance(value, str) or (path.endswith("Subject") and not value):
        raise BadRequest(f"Missing required parameter: {path}.Data")
    return value


def _sender(payload: dict[str, Any]) -> str:
    sender = payload.get("FromEmailAddress")
    if not isinstance(sender, str) or not sender:
        raise BadRequest("Missing required parameter: FromEmailAddress")
    address = parseaddr(sender)[1]
    if not is_address(address):
        raise BadRequest(f"Invalid email address <{sender}>.")
    return address


def parse_send_email(body: bytes) -> SendEmail:
    payload = _json_object(body)
    content = payload.get("Content")
    if not isinstance(content, dict):
        raise BadRequest("Missing required parameter: Content")
    kinds = [kind for kind in ("Simple", "Raw", "Template") if content.get(kind) is not None]
    if len(kinds) != 1:
        raise BadRequest("Content must have exactly one of Simple, Raw or Template.")
    destination = _destination(payload)
    if kinds == ["Raw"]:
        return _raw(payload, content["Raw"], destination.recipients)
    if not destination.recipients:
        raise BadRequest("Missing required parameter: Destination")
    sender = _sender(payload)
    if kinds == ["Template"]:
        return _templated(sender, destination, content["Template"])
    return _simple(sender, destination, content["Simple"])


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object.")
    return payload


@dataclass(frozen=True)
class _Destination:
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.to, *self.cc, *self.bcc)


def _destination(payload: dict[str, Any]) -> _Destination:
    destination = payload.get("Destination")
    if destination is None:
        destination = {}
    if not isinstance(destination, dict):
        raise BadRequest("Destination must be an object.")
    return _Destination(
        to=tuple(_addresses(destination, "ToAddresses")),
        cc=tuple(_addresses(destination, "CcAddresses")),
        bcc=tuple(_addresses(destination, "BccAddresses")),
    )


def _templated(sender: str, destination: _Destination, template: object) -> SendEmail:
    if not isinstance(template, dict) or not any(
        isinstance(template.get(key), str | dict) and template.get(key)
        for key in ("TemplateName", "TemplateArn", "TemplateContent")
    ):
        raise BadRequest("Content.Template needs TemplateName, TemplateArn or TemplateContent.")
    return SendEmail(
        sender=sender,
        recipients=destination.recipients,
        subject=None,
        message_id=None,
        to=destination.to,
        cc=destination.cc,
        text=json.dumps(template, sort_keys=True),
    )


def _simple(sender: str, destination: _Destination, simple: object) -> SendEmail:
    if not isinstance(simple, dict):
        raise BadRequest("Content.Simple must be an object.")
    subject = _data(simple.get("Subject"), "Content.Simple.Subject")
    message_body = simple.get("Body")
    if not isinstance(message_body, dict) or not (
        message_body.get("Text") or message_body.get("Html")
    ):
        raise BadRequest("Content.Simple.Body needs Text or Html.")
    text, html = (
        _data(message_body[part], f"Content.Simple.Body.{part}") if part in message_body else None
        for part in ("Text", "Html")
    )
    headers = _simple_headers(simple.get("Headers"))
    return SendEmail(
        sender=sender,
        recipients=destination.recipients,
        subject=subject,
        message_id=next((v for k, v in headers if k.lower() == "message-id"), None),
        to=destination.to,
        cc=destination.cc,
        headers=tuple(headers),
        text=text,
        html=html,
    )


def _simple_headers(headers: object) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if not isinstance(headers, list):
        raise BadRequest("Content.Simple.Headers must be a list of {Name, Value}.")
    found: list[tuple[str, str]] = []
    for header in headers:
        name = header.get("Name") if isinstance(header, dict) else None
        value = header.get("Value") if isinstance(header, dict) else None
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise BadRequest("Content.Simple.Headers must be a list of {Name, Value}.")
        found.append((name, value))
    return found


def _raw(payload: dict[str, Any], raw: object, destination: tuple[str, ...]) -> SendEmail:
    data = raw.get("Data") if isinstance(raw, dict) else None
    if not isinstance(data, str) or not data:
        raise BadRequest("Missing required parameter: Content.Raw.Data")
    try:
        mime = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Content.Raw.Data is not valid base64.") from None
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(mime)
    if isinstance(payload.get("FromEmailAddress"), str):
        sender = _sender(payload)
    else:
        sender = parseaddr(str(headers.get("From", "")))[1]
        if not sender:
            raise BadRequest("Missing required parameter: FromEmailAddress (or a From header).")
    recipients = destination or tuple(
        address
        for _, address in getaddresses(
            [str(value) for name in ("To", "Cc") for value in headers.get_all(name, [])]
        )
        if address
    )
    if not recipients:
        raise BadRequest("Missing required parameter: Destination (or To/Cc headers).")
    message_id = headers.get("Message-ID")
    subject = headers.get("Subject")
    return SendEmail(
        sender=sender,
        recipients=recipients,
        subject=None if subject is None else str(subject),
        message_id=None if message_id is None else str(message_id).strip(),
        mime=mime,
    )
