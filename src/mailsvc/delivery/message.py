"""The email as transports see it: addresses, content, headers, and its stable Message-ID."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Mailbox:
    """An address with its display name, if any: RFC 5322's mailbox."""

    email: str
    name: str | None = None


@dataclass
class OutgoingEmail:
    message_id: uuid.UUID
    message_id_header: str  # "<…@domain>", the same on every copy
    sender: Mailbox
    to: list[Mailbox]
    subject: str
    date: datetime
    cc: list[Mailbox] = field(default_factory=list)
    bcc: list[Mailbox] = field(default_factory=list)
    reply_to: Mailbox | None = None
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    # The encoded RFC 5322 message, built once and shared by every transport that needs it.
    raw: bytes | None = None

    @property
    def envelope_recipients(self) -> list[str]:
        return [a.email for a in (*self.to, *self.cc, *self.bcc)]
