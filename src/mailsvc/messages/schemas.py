"""Request and response bodies of the messages API."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from mailsvc.kit.addresses import MAX_RECIPIENTS, normalise_email
from mailsvc.kit.headers import MAX_HEADER_VALUE_CHARS, HeaderName, HeaderText, HeaderValue

Priority = Literal["high", "normal", "low"]

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class Address(BaseModel):
    """An address: "a@b.c", or {"email": "a@b.c", "name": "Ada"}."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]
    name: Annotated[HeaderText, Field(max_length=200)] | None = None


def _address_from_string(value: Any) -> Any:
    return {"email": value} if isinstance(value, str) else value


AddressIn = Annotated[Address, BeforeValidator(_address_from_string)]


def _check_tags(tags: list[str]) -> list[str]:
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise ValueError(f"tag {tag!r} must be 1-64 of A-Z a-z 0-9 _ . : -")
    return list(dict.fromkeys(tags))


def _check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64:
            raise ValueError("metadata keys must be 1-64 characters")
        if len(value) > 1024:
            raise ValueError(f"metadata value of {key!r} is longer than 1024 characters")
    return metadata


_TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"  # pydantic: `$` is the very end


class MessageCreate(BaseModel):
    """One email to send: subject and text and/or html, or a template and its variables."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: Annotated[list[AddressIn], Field(min_length=1)]
    cc: list[AddressIn] = Field(default_factory=list)
    bcc: list[AddressIn] = Field(default_factory=list)
    from_: Annotated[AddressIn | None, Field(alias="from")] = None
    reply_to: AddressIn | None = None
    subject: Annotated[
        HeaderText | None, Field(min_length=1, max_length=MAX_HEADER_VALUE_CHARS)
    ] = None
    text: Annotated[str | None, Field(max_length=512 * 1024)] = None
    html: Annotated[str | None, Field(max_length=512 * 1024)] = None
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=20)] = Field(
        default_factory=dict
    )
    tags: Annotated[list[str], AfterValidator(_check_tags), Field(max_length=10)] = Field(
        default_factory=list
    )
    metadata: Annotated[dict[str, str], AfterValidator(_check_metadata), Field(max_length=20)] = (
        Field(default_factory=dict)
    )
    template: Annotated[str | None, Field(pattern=_TEMPLATE_NAME)] = None
    variables: dict[str, Any] | None = None
    # Default: high for a raw message or a transactional template, normal for the others.
    priority: Priority | None = None
    send_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _content_and_recipients(self) -> MessageCreate:
        if self.template is None:
            if self.subject is None:
                raise ValueError("give a subject, or a template that provides one")
            if self.text is None and self.html is None:
                raise ValueError("give text, html or both, or a template")
        elif self.variables is None:
            self.variables = {}
        if self.template is None and self.variables is not None:
            raise ValueError("variables are for a template: give template too")
        count = self.recipient_count()
        if count > MAX_RECIPIENTS:
            raise ValueError(
                f"at most {MAX_RECIPIENTS} recipients (to, cc and bcc together); got {count}"
            )
        return self

    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)


class MessageBatchCreate(BaseModel):
    """Up to 500 emails in one request: all are accepted, or none."""

    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[MessageCreate], Field(min_length=1, max_length=500)]


class Attempt(BaseModel):
    number: int
    provider: str
    started_at: datetime
    finished_at: datetime
    outcome: str
    error_code: str | None
    error: str | None


class Event(BaseModel):
    type: str
    at: datetime
    detail: dict[str, Any]


class Message(BaseModel):
    """A message and everything that happened to it."""

    model_config = ConfigDict(populate_by_name=True)

    id: uuid.UUID
    status: str
    from_: Annotated[Address, Field(alias="from", serialization_alias="from")]
    to: list[Address]
    cc: list[Address]
    subject: str | None  # None only until a worker renders a scheduled job's template
    template: str | None
    tags: list[str]
    metadata: dict[str, str]
    priority: Priority
    send_at: datetime | None
    created_at: datetime
    sent_at: datetime | None
    provider: str | None
    provider_message_id: str | None
    message_id_header: str
    attempt_count: int
    error_code: str | None
    error: str | None
    attempts: list[Attempt]
    events: list[Event]


class MessageBatch(BaseModel):
    data: list[Message]


class MessagePage(BaseModel):
    data: list[Message]
    next_cursor: str | None
