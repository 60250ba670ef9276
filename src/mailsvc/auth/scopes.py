"""The scopes a token can carry. `admin` implies every other scope."""

from __future__ import annotations

MESSAGES_SEND = "messages:send"
MESSAGES_READ = "messages:read"
CAMPAIGNS_WRITE = "campaigns:write"
CAMPAIGNS_READ = "campaigns:read"
CONTACTS_WRITE = "contacts:write"
CONTACTS_READ = "contacts:read"
TEMPLATES_WRITE = "templates:write"
SUPPRESSIONS_WRITE = "suppressions:write"
ADMIN = "admin"

ALL_SCOPES = (
    MESSAGES_SEND,
    MESSAGES_READ,
    CAMPAIGNS_WRITE,
    CAMPAIGNS_READ,
    CONTACTS_WRITE,
    CONTACTS_READ,
    TEMPLATES_WRITE,
    SUPPRESSIONS_WRITE,
    ADMIN,
)
