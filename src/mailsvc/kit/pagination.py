"""Opaque cursors for keyset pagination over time-ordered ids."""

from __future__ import annotations

import base64
import binascii
import uuid

from mailsvc.errors import FieldError, ValidationFailed


class InvalidCursor(ValueError):
    pass


def encode_cursor(last_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(last_id.bytes).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("cursor is not one this API issued") from exc


def cursor_query(cursor: str | None) -> uuid.UUID | None:
    """The `cursor` query parameter as the id to continue before; a 422 naming it if forged."""
    try:
        return decode_cursor(cursor) if cursor else None
    except InvalidCursor as exc:
        raise ValidationFailed(
            str(exc), errors=[FieldError(("query", "cursor"), str(exc))]
        ) from exc
