"""The two kinds of delivery failure. Every transport maps its own errors onto these."""

from __future__ import annotations


class DeliveryError(Exception):
    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class TransientDeliveryError(DeliveryError):
    """Worth trying again: network errors, timeouts, SMTP 4xx, HTTP 429 and 5xx."""


class PermanentDeliveryError(DeliveryError):
    """Not worth trying again: SMTP 5xx, HTTP 4xx but 429, rejected addresses, bad templates."""
