"""Every /v1 operation with a valid request, so a test can break one thing at a time everywhere.

`test_every_operation_is_listed` (tests/test_routing.py) fails when a route is added to the app
without an entry here, so the class tests below it cover new routes too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MESSAGE: dict[str, Any] = {
    "to": [{"email": "ada@example.net", "name": "Ada"}],
    "cc": ["cc@example.net"],
    "bcc": [{"email": "bcc@example.net", "name": "B"}],
    "from": {"email": "news@example.com", "name": "News"},
    "reply_to": {"email": "reply@example.com", "name": "Replies"},
    "subject": "Hello",
    "text": "Hi Ada",
    "html": "<p>Hi Ada</p>",
    "headers": {"X-Ref": "r-1"},
    "tags": ["welcome"],
    "metadata": {"user": "42"},
}
TEMPLATED: dict[str, Any] = {
    "to": ["ada@example.net"],
    "template": "welcome",
    "variables": {"contact": {"name": "Ada"}, "data": {"plan": "pro"}},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with example path values filled in
    template: str  # the route as the app declares it
    body: Any = None

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}"


OPERATIONS = [
    Operation("POST", "/v1/messages", "/v1/messages", MESSAGE),
    Operation("POST", "/v1/messages", "/v1/messages", TEMPLATED),
    Operation("POST", "/v1/messages/batch", "/v1/messages/batch", {"messages": [MESSAGE]}),
    Operation("GET", "/v1/messages", "/v1/messages"),
    Operation(
        "GET",
        "/v1/messages/0190a000-0000-7000-8000-000000000001",
        "/v1/messages/{message_id}",
    ),
    Operation(
        "POST",
        "/v1/messages/0190a000-0000-7000-8000-000000000001/cancel",
        "/v1/messages/{message_id}/cancel",
    ),
    Operation(
        "POST",
        "/v1/events",
        "/v1/events",
        {
            "type": "user.password_changed",
            "contact": {"email": "ada@example.net", "name": "Ada", "attributes": {"k": "v"}},
            "data": {"k": "v"},
        },
    ),
    Operation("GET", "/v1/events/types", "/v1/events/types"),
    Operation(
        "PUT",
        "/v1/events/types/shop.order_shipped",
        "/v1/events/types/{event_type}",
        {"templates": ["welcome"], "priority": "normal"},
    ),
    Operation(
        "PUT",
        "/v1/contacts/ada@example.net",
        "/v1/contacts/{email}",
        {"name": "Ada", "timezone": "Europe/London", "attributes": {"plan": ["pro"]}},
    ),
    Operation("GET", "/v1/contacts/ada@example.net", "/v1/contacts/{email}"),
    Operation("DELETE", "/v1/contacts/ada@example.net", "/v1/contacts/{email}"),
    Operation("GET", "/v1/contacts", "/v1/contacts"),
    Operation("GET", "/v1/templates", "/v1/templates"),
    Operation(
        "PUT",
        "/v1/templates/invoice",
        "/v1/templates/{name}",
        {"subject": "Invoice {{ n }}", "text": "You owe {{ n }}.", "html": "<p>{{ n }}</p>"},
    ),
    Operation(
        "POST",
        "/v1/templates/welcome/preview",
        "/v1/templates/{name}/preview",
        {"variables": {"contact": {"name": "Ada"}}},
    ),
    Operation("POST", "/v1/links/verify", "/v1/links/verify", {"url": "https://app.example.com/c"}),
    Operation("GET", "/v1/schedules", "/v1/schedules"),
    Operation(
        "PUT",
        "/v1/schedules/weekly_report",
        "/v1/schedules/{name}",
        {
            "enabled": True,
            "cron": "0 9 * * 1",
            "timezone": "Europe/Paris",
            "recipients": ["boss@example.com"],
        },
    ),
]

WITH_BODY = [operation for operation in OPERATIONS if operation.body is not None]


def leaves(value: Any, loc: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The place of every string in a JSON value (keys are reached through `keys`)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, (*loc, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, (*loc, index))
    elif isinstance(value, str):
        yield loc


def keys(value: Any, loc: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The place of every object key in a JSON value."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*loc, key)
            yield from keys(child, (*loc, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from keys(child, (*loc, index))


def replaced(value: Any, loc: tuple[str | int, ...], new: Any) -> Any:
    """A copy of `value` with the thing at `loc` replaced."""
    if not loc:
        return new
    head, *rest = loc
    if isinstance(value, dict):
        return {k: replaced(v, tuple(rest), new) if k == head else v for k, v in value.items()}
    return [replaced(v, tuple(rest), new) if i == head else v for i, v in enumerate(value)]


def renamed(value: Any, loc: tuple[str | int, ...], new_key: str) -> Any:
    """A copy of `value` with the key at `loc` renamed."""
    *parent, last = loc
    if not parent:
        return {new_key if k == last else k: v for k, v in value.items()}
    head, *rest = parent
    if isinstance(value, dict):
        return {k: renamed(v, (*rest, last), new_key) if k == head else v for k, v in value.items()}
    return [renamed(v, (*rest, last), new_key) if i == head else v for i, v in enumerate(value)]
