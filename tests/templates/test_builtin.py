"""Every built-in renders to a well-formed email, with a plain-text part that stands on its own."""

from __future__ import annotations

import copy
import html
import re
import uuid
from html.parser import HTMLParser
from typing import Any

import pytest

from mailsvc.kit.time import utcnow
from mailsvc.templates.builtin import (
    BUILTIN_NAMES,
    builtin_templates,
    get_builtin,
    is_builtin,
    sample_variables,
)
from mailsvc.templates.engine import Rendered, TemplateRenderError, compile_template
from mailsvc.templates.links import verify_link

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class TagBalance(HTMLParser):
    """Checks that every element is closed, in order; collects hrefs and the preheader."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


def parse(markup: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(markup)
    parser.close()
    return parser


def render(name: str, variables: dict[str, Any] | None = None) -> Rendered:
    source = get_builtin(name)
    assert source is not None
    compiled = compile_template(source, cache_key=(None, name))
    return compiled.render(
        sample_variables(name) if variables is None else variables, tenant_id=uuid.UUID(int=1)
    )


# What each built-in's text part must say on its own: the information the email exists for.
KEY_TEXT = {
    "account_confirmation": ["Hi Ada Lovelace,", "ada@example.net", "expires in 48 hours"],
    "welcome": ["Welcome to Analytical Engines!", "https://app.example.com/login"],
    "password_changed": [
        "ada@example.net",
        "2026-11-21 09:14 UTC",
        "203.0.113.7",
        "https://app.example.com/reset",
    ],
    "profile_reminder": ["  - Company\n  - Time zone\n", "https://app.example.com/profile"],
    "activation_reminder": ["ada@example.net", "https://app.example.com/activate"],
    "birthday": ["Happy birthday, Ada Lovelace!", "BDAY-7Q2X", "https://shop.example.com/birthday"],
    "weekly_report": ["2026-W47", "2026-11-16 to 2026-11-22", "Messages this week: 12,840"],
    "marketing": [
        "The Difference Engine No. 2 is here",
        "Come and see it calculate: <demos> every day at 11 & 3.",
        "Book a demo: https://www.example.com/engine?utm_source=email",
    ],
}

SUBJECTS = {
    "account_confirmation": "Confirm your email address for Analytical Engines",
    "welcome": "Welcome to Analytical Engines",
    "password_changed": "Your Analytical Engines password was changed",
    "profile_reminder": "Finish setting up your Analytical Engines profile",
    "activation_reminder": "Your Analytical Engines account is waiting for you",
    "birthday": "Happy birthday, Ada Lovelace!",
    "weekly_report": "Analytical Engines weekly report 2026-W47: 12,840 messages",
    "marketing": "The Difference Engine No. 2 is here",
}


def test_the_eight_built_ins() -> None:
    assert BUILTIN_NAMES == (
        "account_confirmation",
        "welcome",
        "password_changed",
        "profile_reminder",
        "activation_reminder",
        "birthday",
        "weekly_report",
        "marketing",
    )
    templates = builtin_templates()
    assert list(templates) == list(BUILTIN_NAMES)
    assert {n for n, t in templates.items() if not t.transactional} == {
        "marketing",
        "birthday",
        "weekly_report",
    }
    assert all(t.builtin and t.version == 1 and t.description for t in templates.values())
    assert is_builtin("welcome")
    assert not is_builtin("invoice")
    assert get_builtin("invoice") is None


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_renders_a_well_formed_email(name: str) -> None:
    rendered = render(name)

    assert rendered.subject == SUBJECTS[name]
    assert rendered.text is not None
    assert rendered.html is not None
    for expected in KEY_TEXT[name]:
        assert expected in rendered.text, expected
    assert "None" not in rendered.text
    assert "\n\n\n" not in rendered.text.strip()

    page = parse(rendered.html)
    assert page.problems == []
    assert page.stack == []
    assert page.tags[:2] == ["html", "head"]
    assert "table" in page.tags
    assert 'name="viewport"' in rendered.html
    assert "max-width:600px" in rendered.html
    assert "@media only screen and (max-width: 620px)" in rendered.html
    assert re.search(r'<div style="display:none;[^"]*">[^<]+</div>', rendered.html), "preheader"
    assert "{{" not in rendered.html
    assert "{%" not in rendered.html
    assert "None" not in rendered.html
    for href in page.hrefs:
        assert href.startswith("https://"), href


# What each built-in's HTML must show (visible text) and link to.
KEY_HTML: dict[str, tuple[list[str], list[str]]] = {
    "account_confirmation": (
        ["Hi Ada Lovelace,", "ada@example.net", "Confirm email address", "expires in 48 hours"],
        [],  # the signed link: test_account_confirmation_links_verify
    ),
    "welcome": (
        ["Welcome to Analytical Engines", "Get started"],
        ["https://app.example.com/login"],
    ),
    "password_changed": (
        ["ada@example.net", "2026-11-21 09:14 UTC", "203.0.113.7", "Reset your password"],
        ["https://app.example.com/reset"],
    ),
    "profile_reminder": (["Company", "Time zone"], ["https://app.example.com/profile"]),
    "activation_reminder": (
        ["ada@example.net", "Activate your account"],
        ["https://app.example.com/activate"],
    ),
    "birthday": (
        ["Happy birthday, Ada Lovelace!", "BDAY-7Q2X", "Celebrate with us"],
        ["https://shop.example.com/birthday", "https://mailsvc.example.com/u/sample-token"],
    ),
    "weekly_report": (
        ["Weekly report: 2026-W47", "2026-11-16 to 2026-11-22", "Messages this week 12,840"],
        ["https://mailsvc.example.com/u/sample-token"],
    ),
    "marketing": (
        ["The Difference Engine No. 2 is here", "every day at 11 & 3.", "Book a demo"],
        [
            "https://www.example.com/engine?utm_source=email",
            "https://mailsvc.example.com/u/sample-token",
        ],
    ),
}


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_the_html_says_what_the_text_says(name: str) -> None:
    rendered = render(name)
    assert rendered.html is not None
    body = rendered.html[rendered.html.index("<body") :]
    visible = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
    visible = re.sub(r" ([,.!:])", r"\1", visible)  # text split by tags: "Ada </strong>,"
    texts, links = KEY_HTML[name]

    for expected in texts:
        assert expected in visible, expected
    assert set(links) <= set(parse(rendered.html).hrefs)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_documented_variables_are_all_it_needs(name: str) -> None:
    """With only the variables a built-in lists (and contact.name None), it renders."""
    source = get_builtin(name)
    assert source is not None
    variables: dict[str, Any] = {}
    sample = sample_variables(name)
    for path in source.variables:
        top, _, key = path.partition(".")
        variables.setdefault(top, {})[key] = sample[top][key]
    variables.setdefault("data", {})
    if "contact" in variables:
        variables["contact"]["name"] = None

    rendered = render(name, variables)

    assert rendered.subject
    assert rendered.text
    if "contact" in variables and name != "birthday":
        assert "Hi there," in rendered.text
    assert "None" not in rendered.text


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_each_documented_variable_is_required(name: str) -> None:
    source = get_builtin(name)
    assert source is not None
    for path in source.variables:
        if path == "contact.name":
            continue  # may be None, but the key is read
        top, _, key = path.partition(".")
        variables = copy.deepcopy(sample_variables(name))
        del variables[top][key]

        with pytest.raises(TemplateRenderError) as caught:
            render(name, variables)

        assert caught.value.missing_variable, path
        assert key in caught.value.reason, path


def test_account_confirmation_links_verify() -> None:
    rendered = render("account_confirmation")
    assert rendered.text is not None
    assert rendered.html is not None

    (text_link,) = re.findall(r"https://app\.example\.com/confirm\S+", rendered.text)
    html_links = {h for h in parse(rendered.html).hrefs if "/confirm" in h}

    assert text_link.startswith("https://app.example.com/confirm?user=42&token=")
    assert len(html_links) == 1
    now = utcnow()
    for link in (text_link, *html_links):
        assert verify_link(link, tenant_id=uuid.UUID(int=1), now=now) == "ada@example.net"


def test_marketing_escapes_its_body_in_html_and_keeps_paragraphs() -> None:
    rendered = render("marketing")
    assert rendered.html is not None

    assert "Come and see it calculate: &lt;demos&gt; every day at 11 &amp; 3." in rendered.html
    assert "<demos>" not in rendered.html
    assert "We rebuilt it from the original 1849 plans.<br>It has 8,000 parts" in rendered.html
    assert rendered.html.count("Come and see") == 1
    assert 'href="https://mailsvc.example.com/u/sample-token"' in rendered.html


def test_marketing_without_optional_parts() -> None:
    variables = {
        "tenant": {"name": "Acme"},
        "data": {"headline": "News", "body": "One.\r\n\r\nTwo."},
    }

    rendered = render("marketing", variables)

    assert rendered.text == (
        "News\n\nOne.\n\nTwo.\n\n--\nYou are receiving this email because you are a customer of "
        "Acme.\n"
    )
    assert rendered.html is not None
    assert "Unsubscribe" not in rendered.html
    assert "Learn more" not in rendered.html


def test_weekly_report_tables() -> None:
    rendered = render("weekly_report")
    assert rendered.text is not None
    assert rendered.html is not None

    lines = rendered.text.splitlines()
    header = lines.index("By status") + 1
    assert lines[header] == f"{'Status':<32} {'Messages':>12} {'Share':>7}"
    assert lines[header + 2 : header + 6] == [
        f"{'delivered':<32} {'12,210':>12} {'95.1%':>7}",
        f"{'bounced':<32} {'412':>12} {'3.2%':>7}",
        f"{'failed':<32} {'131':>12} {'1.0%':>7}",
        f"{'suppressed':<32} {'87':>12} {'0.7%':>7}",
    ]
    assert f"{'sendgrid':<32} {'9,120':>12} {'71.0%':>7}" in lines
    assert f"{'password-reset':<32} {'1,204':>12} {'9.4%':>7}" in lines
    # In HTML: one row per entry, with its count, in three tables.
    assert rendered.html.count("<th ") == 9
    for value in ("delivered", "12,210", "95.1%", "sendgrid", "9,120", "password-reset"):
        assert f">{value}</td>" in rendered.html


def test_weekly_report_of_an_empty_week() -> None:
    variables = sample_variables("weekly_report")
    variables["report"] = {
        **variables["report"],
        "total": 0,
        "by_status": [],
        "by_provider": [],
        "by_tag": [],
    }

    rendered = render("weekly_report", variables)

    assert rendered.text is not None
    assert rendered.text.count("(none this week)") == 3
    assert rendered.html is not None
    assert rendered.html.count("None this week.") == 3


def test_contact_names_are_escaped_in_html() -> None:
    variables = sample_variables("welcome")
    variables["contact"]["name"] = "<script>alert(1)</script>"

    rendered = render("welcome", variables)

    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "Hi &lt;script&gt;alert(1)&lt;/script&gt;," in rendered.html
    assert rendered.text is not None
    assert "Hi <script>alert(1)</script>," in rendered.text
