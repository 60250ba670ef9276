"""Signed links: they verify until they expire, and any change to them is caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr

from mailsvc.config import settings
from mailsvc.templates.links import InvalidLink, sign_link, verify_link

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TTL = timedelta(hours=48)
URL = "https://app.example.com/confirm?user=42&next=%2Fhome#welcome"


def signed(url: str = URL, email: str = "ada@example.net") -> str:
    return sign_link(url, email, now=NOW, ttl=TTL)


def token_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["token"]


def test_round_trip_keeps_query_and_fragment() -> None:
    link = signed()

    assert link.startswith("https://app.example.com/confirm?user=42&next=%2Fhome&token=")
    assert link.endswith("#welcome")
    assert verify_link(link, now=NOW) == "ada@example.net"
    assert verify_link(link, now=NOW + TTL - timedelta(seconds=1)) == "ada@example.net"


def test_url_without_a_query() -> None:
    link = signed("https://app.example.com/confirm")

    assert link.startswith("https://app.example.com/confirm?token=")
    assert verify_link(link, now=NOW) == "ada@example.net"


def test_the_token_is_url_safe() -> None:
    token = token_of(signed(email="o'brien+tag@example.net"))

    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert verify_link(signed(email="o'brien+tag@example.net"), now=NOW) == (
        "o'brien+tag@example.net"
    )


def test_expired() -> None:
    with pytest.raises(InvalidLink, match="expired"):
        verify_link(signed(), now=NOW + TTL)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("user=42", "user=43"),  # another user
        ("app.example.com", "evil.example.com"),  # another host
        ("/confirm", "/delete"),  # another path
        ("next=%2Fhome&", ""),  # a parameter dropped
        ("?user=42", "?admin=1&user=42"),  # a parameter added
    ],
)
def test_tampered_url(old: str, new: str) -> None:
    link = signed()
    assert old in link

    with pytest.raises(InvalidLink, match="signature does not match"):
        verify_link(link.replace(old, new, 1), now=NOW)


def test_tampered_token_parts() -> None:
    link = signed()
    email, expires, mac = token_of(link).split(".")
    other_email = sign_link(URL, "eve@example.net", now=NOW, ttl=TTL)
    forged = [
        link.replace(email, token_of(other_email).split(".")[0]),  # another address
        link.replace(f".{expires}.", f".{int(expires) + 3600}."),  # a longer life
        link.replace(mac, mac[:-2] + ("AA" if not mac.endswith("AA") else "BB")),
    ]
    for url in forged:
        with pytest.raises(InvalidLink, match="signature does not match"):
            verify_link(url, now=NOW)


def test_another_secret_does_not_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    link = signed()
    monkeypatch.setattr(settings, "link_secret", SecretStr("another secret"))

    with pytest.raises(InvalidLink, match="signature does not match"):
        verify_link(link, now=NOW)


def test_falls_back_to_the_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "link_secret", None)
    monkeypatch.setattr(settings, "jwt_secret", SecretStr("jwt secret"))

    assert verify_link(signed(), now=NOW) == "ada@example.net"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://app.example.com/confirm", "has no token"),
        ("https://app.example.com/confirm?token=abc", "malformed"),
        ("https://app.example.com/confirm?token=a.b.c", "malformed"),
        ("https://app.example.com/confirm?token=%%%.1.abc", "malformed"),
    ],
)
def test_malformed(url: str, reason: str) -> None:
    with pytest.raises(InvalidLink, match=reason):
        verify_link(url, now=NOW)


def test_two_tokens() -> None:
    link = signed()

    with pytest.raises(InvalidLink, match="two tokens"):
        verify_link(link.replace("#", f"&token={token_of(link)}#"), now=NOW)


@pytest.mark.parametrize(
    ("url", "email", "reason"),
    [
        ("/confirm", "ada@example.net", "absolute http"),
        ("javascript:alert(1)", "ada@example.net", "absolute http"),
        ("https://app.example.com/?token=x", "ada@example.net", "already has a 'token'"),
        ("https://app.example.com/", "", "needs an email"),
    ],
)
def test_refuses_to_sign(url: str, email: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        sign_link(url, email, now=NOW, ttl=TTL)


def test_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_link(URL, "ada@example.net", now=datetime(2026, 11, 21), ttl=TTL)  # noqa: DTZ001
