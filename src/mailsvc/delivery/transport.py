"""The one interface every provider implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailsvc.delivery.message import OutgoingEmail


@dataclass(frozen=True)
class Receipt:
    """What a provider returns when it takes a message.

    Its id, where it gives one, links later webhooks to the message.
    """

    provider_message_id: str | None
    detail: str = ""
    # Recipients the provider refused while it took the message for the others.
    refused: str | None = None


class Transport(Protocol):
    name: str

    async def send(self, email: OutgoingEmail) -> Receipt:
        """Hand one message to the provider, or raise a DeliveryError subclass."""
        ...

    async def close(self) -> None: ...
