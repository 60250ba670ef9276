"""The built-in templates, read once from the package's builtin/<name>/ files.

Every built-in is rendered with `contact` ({email, name or None, attributes}), `data` (the
event's data) and `tenant` ({name}); weekly_report also gets `report`. `variables` lists what a
built-in cannot do without; anything else it reads is optional and guarded with `is defined`.
Bulk ones (not transactional) also show `unsubscribe_url` when it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any

from mailsvc.templates.engine import TemplateSource

BUILTIN_VERSION = 1


@dataclass(frozen=True)
class _About:
    transactional: bool
    description: str
    variables: tuple[str, ...]


_CONTACT = ("contact.email", "contact.name", "tenant.name")
_NAME = ("contact.name", "tenant.name")

_BUILTINS: dict[str, _About] = {
    "account_confirmation": _About(
        True,
        "Asks a new user to confirm their address with a signed link that expires "
        "(settings.link_ttl_hours).",
        (*_CONTACT, "data.confirm_url"),
    ),
    "welcome": _About(
        True,
        "Greets a new user. Optional: data.login_url.",
        _NAME,
    ),
    "password_changed": _About(
        True,
        "Tells a user their password changed. Optional: data.changed_at, data.ip_address, "
        "data.reset_url.",
        _CONTACT,
    ),
    "profile_reminder": _About(
        True,
        "Asks a user to finish their profile. Optional: data.profile_url, "
        "data.missing_fields (a list of field names).",
        _NAME,
    ),
    "activation_reminder": _About(
        True,
        "Reminds a user who signed up but never activated. Optional: data.activate_url.",
        _CONTACT,
    ),
    "birthday": _About(
        False,
        "Birthday wishes. Optional: data.message, data.offer_code, data.cta_url, "
        "data.cta_label, unsubscribe_url.",
        _NAME,
    ),
    "weekly_report": _About(
        False,
        "The week's sending for a tenant's admins: report.total and tables by status, "
        "provider and tag. Optional: unsubscribe_url.",
        (
            "tenant.name",
            "report.week",
            "report.start",
            "report.end",
            "report.total",
            "report.by_status",
            "report.by_provider",
            "report.by_tag",
        ),
    ),
    "marketing": _About(
        False,
        "A newsletter or announcement: a headline and plain-text body (blank lines separate "
        "paragraphs). Optional: data.cta_url, data.cta_label, data.preheader, unsubscribe_url.",
        ("tenant.name", "data.headline", "data.body"),
    ),
}

BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)


def _read(name: str, filename: str) -> str:
    return files(__package__).joinpath("builtin", name, filename).read_text(encoding="utf-8")


def _shared(filename: str) -> str:
    return files(__package__).joinpath("builtin", filename).read_text(encoding="utf-8")


def _html(name: str, *, transactional: bool) -> str:
    """A built-in's own <title> and body inside the shared <head> and footer.

    A built-in's html.html holds its <title> line, then its body up to the footer. The footer
    says why the mail came: an account's service message, or, for the others, a customer's
    mail with an unsubscribe link when one is given.
    """
    title, _, body = _read(name, "html.html").partition("\n")
    note = _shared("_note_account.html" if transactional else "_note_customer.html")
    head = _shared("_head.html").replace("<!-- title -->", title)
    return head + body + _shared("_foot.html").replace("<!-- note -->\n", note)


@cache
def builtin_templates() -> Mapping[str, TemplateSource]:
    """Every built-in by name."""
    return MappingProxyType(
        {
            name: TemplateSource(
                name=name,
                subject=_read(name, "subject.txt").strip(),
                text=_read(name, "text.txt"),
                html=_html(name, transactional=about.transactional),
                transactional=about.transactional,
                version=BUILTIN_VERSION,
                builtin=True,
                description=about.description,
                variables=about.variables,
            )
            for name, about in _BUILTINS.items()
        }
    )


def get_builtin(name: str) -> TemplateSource | None:
    return builtin_templates().get(name)


def is_builtin(name: str) -> bool:
    return name in _BUILTINS


def sample_variables(name: str) -> dict[str, Any]:
    """Variables that render built-in `name` fully: for previews, tests and the benchmark."""
    contact = {
        "email": "ada@example.net",
        "name": "Ada Lovelace",
        "attributes": {"plan": "pro", "timezone": "Europe/London"},
    }
    variables: dict[str, Any] = {
        "contact": contact,
        "tenant": {"name": "Analytical Engines"},
        "data": _sample_data().get(name, {}),
    }
    if name == "weekly_report":
        variables["report"] = _sample_report()
    if not _BUILTINS[name].transactional:
        variables["unsubscribe_url"] = "https://mailsvc.example.com/u/sample-token"
    return variables


def _sample_data() -> dict[str, dict[str, Any]]:
    """Each built-in's `data`, as the event or campaign that sends it would give it."""
    return {
        "account_confirmation": {"confirm_url": "https://app.example.com/confirm?user=42"},
        "welcome": {"login_url": "https://app.example.com/login"},
        "password_changed": {
            "changed_at": "2026-11-21 09:14 UTC",
            "ip_address": "203.0.113.7",
            "reset_url": "https://app.example.com/reset",
        },
        "profile_reminder": {
            "profile_url": "https://app.example.com/profile",
            "missing_fields": ["Company", "Time zone"],
        },
        "activation_reminder": {"activate_url": "https://app.example.com/activate"},
        "birthday": {
            "message": "Treat yourself today: your next month is on us.",
            "offer_code": "BDAY-7Q2X",
            "cta_url": "https://shop.example.com/birthday",
        },
        "weekly_report": {},
        "marketing": {
            "headline": "The Difference Engine No. 2 is here",
            "body": "We rebuilt it from the original 1849 plans.\n"
            "It has 8,000 parts and weighs five tonnes.\n\n"
            "Come and see it calculate: <demos> every day at 11 & 3.",
            "cta_url": "https://www.example.com/engine?utm_source=email",
            "cta_label": "Book a demo",
        },
    }


def _sample_report() -> dict[str, Any]:
    """A week's report, as the weekly_report job computes it."""
    return {
        "week": "2026-W47",
        "start": "2026-11-16",
        "end": "2026-11-22",
        "total": 12840,
        "by_status": [
            {"status": "delivered", "count": 12210},
            {"status": "bounced", "count": 412},
            {"status": "failed", "count": 131},
            {"status": "suppressed", "count": 87},
        ],
        "by_provider": [
            {"provider": "sendgrid", "count": 9120},
            {"provider": "ses", "count": 3720},
        ],
        "by_tag": [
            {"tag": "welcome", "count": 5320},
            {"tag": "password-reset", "count": 1204},
        ],
    }
