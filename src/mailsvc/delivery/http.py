"""What HTTP providers' answers mean, shared by the SendGrid, Mailgun and SES transports.

2xx: accepted, whatever the body (the status is the provider taking the message). 429 and 5xx:
transient, with the provider's Retry-After. 401/403: transient too: a rejected key is the
provider's problem, not the message's, so the chain moves on to the next provider and the breaker
takes this one out. Any other 4xx: the message itself is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpProviderConfig:
    base_url: str
    timeout: float = 10.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait: Retry-After is either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class Answer:
    """A provider's 2xx answer: it took the message. `unreadable` says why `body` is empty when the
    body could not be read (cut short, stalled, badly encoded)."""

    headers: httpx.Headers
    body: bytes
    unreadable: str | None = None

    def message_id(self, provider: str, key: str) -> str | None:
        """The string at `key` of a JSON object body, else None and one warning line.

        Never an error: failing an accepted send would send it again through the next provider.
        """
        document: Any = None
        if self.unreadable is None:
            # RecursionError: a deeply nested document.
            with contextlib.suppress(ValueError, RecursionError):
                document = json.loads(self.body)
        value = document.get(key) if isinstance(document, dict) else None
        # PostgreSQL text cannot hold NUL: recording such an id would fail after the acceptance.
        if isinstance(value, str) and value and "\x00" not in value:
            return value
        log.warning(
            "%s accepted the message; its answer has no %r to keep",
            provider,
            key,
            extra={
                "fields": {
                    "provider": provider,
                    "answer": self.unreadable
                    or self.body[:200].decode("utf-8", "replace")
                    or "(empty)",
                }
            },
        )
        return None


def _reason(response: httpx.Response) -> str:
    """The provider's own words, from the usual error body shapes, kept short."""
    try:
        text = response.text[:2000]
    except httpx.ResponseNotRead:  # the body could not be read: the status says enough
        return response.reason_phrase
    try:
        body: Any = json.loads(text)
    except ValueError:
        return text.strip() or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list):  # SendGrid
            return "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in body["errors"]
            )
        for key in ("message", "Message", "error"):
            if key in body:
                return str(body[key])
    return text


def classify(response: httpx.Response) -> DeliveryError | None:
    """None when the provider accepted the request, else the error it amounts to."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    code = f"http_{status}"
    error_type = response.headers.get("x-amzn-errortype")
    if error_type:
        code = f"{code}_{error_type.split(':')[0]}"
    reason = _reason(response)
    if status == 429 or status >= 500:
        return TransientDeliveryError(
            code, reason, retry_after=parse_retry_after(response.headers.get("retry-after"))
        )
    if status in (401, 403):
        return TransientDeliveryError(code, f"the provider refused our credentials: {reason}")
    return PermanentDeliveryError(code, reason)


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    within: float,
    auth: httpx.Auth | None = None,
    **kwargs: Any,
) -> Answer:
    """POST and return the accepting answer; anything else raises the DeliveryError it means."""
    request = client.build_request("POST", url, timeout=within, **kwargs)
    try:
        response = await client.send(request, auth=auth, stream=True)
    except httpx.TimeoutException as exc:
        raise TransientDeliveryError("timeout", f"no answer within {within:g} s") from exc
    except httpx.HTTPError as exc:
        raise TransientDeliveryError("network", f"{type(exc).__name__}: {exc}") from exc
    # From here the status decides: a body that fails to arrive or decode changes nothing.
    unreadable = None
    try:
        await response.aread()
    except httpx.HTTPError as exc:
        unreadable = f"{type(exc).__name__}: {exc}".removesuffix(": ")
    finally:
        with contextlib.suppress(httpx.HTTPError):
            await response.aclose()
    error = classify(response)
    if error is not None:
        raise error
    return Answer(response.headers, b"" if unreadable else response.content, unreadable)


def new_client() -> httpx.AsyncClient:
    """One keep-alive client per provider per worker process."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        headers={"User-Agent": "mailsvc"},
    )
