"""Signed links: they verify until they expire, for the tenant that signed them only, and any
change to them is caught."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest

from mailsvc.kit.signing import derive_key
from mailsvc.templates.links import InvalidLink, sign_link, verify_link
from tests.support.links import LINK_SECRET, sign_with

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TTL = timedelta(hours=48)
URL = "https://app.example.com/confirm?user=42&next=%2Fhome#welcome"
TENANT = uuid.UUID("0190a000-0000-7000-8000-00000000000a")
OTHER_TENANT = uuid.UUID("0190a000-0000-7000-8000-00000000000b")


def signed(url: str = URL, email: str = "ada@example.net", tenant: uuid.UUID = TENANT) -> str:
    return sign_link(url, email, tenant_id=tenant, now=NOW, ttl=TTL)


def verify(url: str, *, now: datetime = NOW, tenant: uuid.UUID = TENANT) -> str:
    return verify_link(url, tenant_id=tenant, now=now)


def token_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["token"]


def test_round_trip_keeps_query_and_fragment() -> None:
    link = signed()

    assert link.startswith("https://app.example.com/confirm?user=42&next=%2Fhome&token=")
    assert link.endswith("#welcome")
    assert verify(link) == "ada@example.net"
    assert verify(link, now=NOW + TTL - timedelta(seconds=1)) == "ada@example.net"


def test_url_without_a_query() -> None:
    link = signed("https://app.example.com/confirm")

    assert link.startswith("https://app.example.com/confirm?token=")
    assert verify(link) == "ada@example.net"


def test_the_token_is_url_safe() -> None:
    token = token_of(signed(email="o'brien+tag@example.net"))

    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert verify(signed(email="o'brien+tag@example.net")) == ("o'brien+tag@example.net")


def test_expired() -> None:
    with pytest.raises(InvalidLink, match="expired"):
        verify(signed(), now=NOW + TTL)


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
        verify(link.replace(old, new, 1))


def test_tampered_token_parts() -> None:
    link = signed()
    email, expires, mac = token_of(link).split(".")
    other_email = sign_link(URL, "eve@example.net", tenant_id=TENANT, now=NOW, ttl=TTL)
    forged = [
        link.replace(email, token_of(other_email).split(".")[0]),  # another address
        link.replace(f".{expires}.", f".{int(expires) + 3600}."),  # a longer life
        link.replace(mac, mac[:-2] + ("AA" if not mac.endswith("AA") else "BB")),
    ]
    for url in forged:
        with pytest.raises(InvalidLink, match="signature does not match"):
            verify(url)


def test_another_secret_does_not_verify() -> None:
    link = signed()
    sign_with(link_secret="another secret")

    with pytest.raises(InvalidLink, match="signature does not match"):
        verify(link)


def test_falls_back_to_the_jwt_secret() -> None:
    sign_with(link_secret=None, jwt_secret="jwt secret")

    assert verify(signed()) == "ada@example.net"


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
        verify(url)


def test_two_tokens() -> None:
    link = signed()

    with pytest.raises(InvalidLink, match="two tokens"):
        verify(link.replace("#", f"&token={token_of(link)}#"))


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
        sign_link(url, email, tenant_id=TENANT, now=NOW, ttl=TTL)


def test_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_link(
            URL,
            "ada@example.net",
            tenant_id=TENANT,
            now=datetime(2026, 11, 21),  # noqa: DTZ001
            ttl=TTL,
        )


def test_a_link_of_one_tenant_never_verifies_for_another() -> None:
    """The MAC key is the tenant's own: tenant B cannot mint A's links nor verify them."""
    mine = signed(tenant=TENANT)
    theirs = signed(tenant=OTHER_TENANT)

    assert token_of(mine) != token_of(theirs)
    assert verify(mine, tenant=TENANT) == "ada@example.net"
    assert verify(theirs, tenant=OTHER_TENANT) == "ada@example.net"
    for link, tenant in ((mine, OTHER_TENANT), (theirs, TENANT)):
        with pytest.raises(InvalidLink, match="signature does not match"):
            verify(link, tenant=tenant)


def test_a_mac_made_for_another_purpose_does_not_verify() -> None:
    """A token is bound to its purpose: the same tenant's key for "unsubscribe" is another key."""
    link = signed()
    email, expires, _ = token_of(link).split(".")
    canonical = "https://app.example.com/confirm?user=42&next=%2Fhome"
    message = json.dumps(["ada@example.net", canonical, int(expires)], separators=(",", ":"))
    secret = LINK_SECRET.encode()
    for purpose, verifies in (("link", True), ("unsubscribe", False)):
        mac = hmac.new(derive_key(secret, TENANT, purpose), message.encode(), hashlib.sha256)
        forged_token = f"{email}.{expires}.{_b64(mac.digest())}"
        forged = link.replace(token_of(link), forged_token)
        if verifies:
            assert verify(forged) == "ada@example.net"
        else:
            with pytest.raises(InvalidLink, match="signature does not match"):
                verify(forged)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_previous_secret_verifies_during_a_rotation() -> None:
    sign_with(link_secret="old secret")
    before = signed()
    sign_with(link_secret="new secret")
    after = signed()

    with pytest.raises(InvalidLink, match="signature does not match"):
        verify(before)  # rotated without a grace period: the old links stop
    sign_with(link_secret="new secret", link_secret_previous="old secret")
    assert verify(before) == "ada@example.net"
    assert verify(after) == "ada@example.net"
    with pytest.raises(InvalidLink, match="signature does not match"):
        verify(before, tenant=OTHER_TENANT)  # the grace period is per tenant too
    sign_with(link_secret="new secret")
    with pytest.raises(InvalidLink, match="signature does not match"):
        verify(before)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_a_token_with_anything_after_it_is_malformed(suffix: str) -> None:
    """`$` in re.match accepts a final newline; the whole token must match."""
    link = signed()
    token = token_of(link)
    url = link.replace(token, token + suffix.replace("\n", "%0A").replace("\r", "%0D"))
    url = url.replace(" ", "%20").replace("\x00", "%00")

    with pytest.raises(InvalidLink, match="malformed"):
        verify(url)
