"""What HTTP providers' answers mean, shared by the SendGrid, Mailgun and SES transports.

2xx: accepted. 429 and 5xx: transient, with the provider's Retry-After. 401/403: transient
too: a rejected key is the provider's problem, not the message's, so the chain moves on to the
next provider and the breaker takes this one out. Any other 4xx: the message itself is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from mailsvc.delivery.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError


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


def _reason(response: httpx.Response) -> str:
    """The provider's own words, from the usual error body shapes, kept short."""
    text = response.text[:2000]
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
    client: httpx.AsyncClient, url: str, *, within: float, **kwargs: Any
) -> httpx.Response:
    """POST and return the accepting response; anything else raises the DeliveryError it means."""
    try:
        response = await client.post(url, timeout=within, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientDeliveryError("timeout", f"no answer within {within:g} s") from exc
    except httpx.TransportError as exc:
        raise TransientDeliveryError("network", f"{type(exc).__name__}: {exc}") from exc
    error = classify(response)
    if error is not None:
        raise error
    return response


def new_client() -> httpx.AsyncClient:
    """One keep-alive client per provider per worker process."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        headers={"User-Agent": "mailsvc"},
    )
