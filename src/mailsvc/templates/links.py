"""Signed, expiring links for email (account confirmation): HMAC-SHA256 over who, where, until,
under a key of the sending tenant's own.

`sign_link` appends `token=<email>.<expiry>.<mac>` to a URL, keeping its other query parameters
as they were written. The MAC covers the email, the URL without the token (scheme and host
lower-cased, query parameters decoded and re-encoded, no fragment) and the expiry, so neither
the address, the target nor the lifetime can be changed without the key. The key is the
tenant's, derived for the purpose "link" (kit.signing), so one tenant's link never verifies for
another tenant. The secret is MAILSVC_LINK_SECRET, or the JWT secret when that is unset;
MAILSVC_LINK_SECRET_PREVIOUS keeps links signed before a rotation valid until they expire.

The process's entry point (the API's app factory, the worker's start) hands the settings over
once, with `use_link_settings`; links are signed inside template rendering, far from them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mailsvc.config import Settings
from mailsvc.kit.signing import Signer

TOKEN_PARAM = "token"  # noqa: S105 (a query parameter name, not a secret)
PURPOSE = "link"
# base64url(email) . expiry (unix seconds) . base64url(HMAC-SHA256), unpadded
_TOKEN = re.compile(
    r"(?P<email>[A-Za-z0-9_-]+)\.(?P<expires>[0-9]{1,12})\.(?P<mac>[A-Za-z0-9_-]{43})"
)


class InvalidLink(Exception):
    """A link whose token is missing, malformed, forged, or expired."""


@dataclass(frozen=True)
class LinkSettings:
    signer: Signer | None  # None: no secret configured, and links cannot be signed
    ttl: timedelta  # of a link signed without a lifetime of its own


_in_use = LinkSettings(None, timedelta(hours=Settings.model_fields["link_ttl_hours"].default))


def use_link_settings(config: Settings) -> LinkSettings:
    """The secrets and default lifetime this process signs and verifies links with, from now;
    returns those it used until now."""
    return set_link_settings(
        LinkSettings(link_signer(config), timedelta(hours=config.link_ttl_hours))
    )


def set_link_settings(value: LinkSettings) -> LinkSettings:
    global _in_use
    previous, _in_use = _in_use, value
    return previous


def link_settings() -> LinkSettings:
    return _in_use


def link_signer(config: Settings) -> Signer | None:
    """The signer of links under `config`'s secrets; None when it has none."""
    secret = config.link_secret or config.jwt_secret
    if secret is None:
        return None
    previous = config.link_secret_previous
    return Signer(
        secret.get_secret_value().encode(),
        previous.get_secret_value().encode() if previous is not None else None,
    )


def _signer() -> Signer:
    signer = _in_use.signer
    if signer is None:
        raise RuntimeError("signing links needs MAILSVC_LINK_SECRET or MAILSVC_JWT_SECRET")
    return signer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(scheme: str, netloc: str, path: str, pairs: list[tuple[str, str]]) -> str:
    return urlunsplit((scheme.lower(), netloc.lower(), path, urlencode(pairs), ""))


def _message(email: str, canonical_url: str, expires: int) -> bytes:
    return json.dumps([email, canonical_url, expires], separators=(",", ":")).encode()


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def sign_link(url: str, email: str, *, tenant_id: uuid.UUID, now: datetime, ttl: timedelta) -> str:
    """`url` with a `token` parameter for `email` that verifies, for this tenant only, until
    now + ttl."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"a signed link needs an absolute http(s) URL, not {url[:100]!r}")
    if not email or email != email.strip():
        raise ValueError("a signed link needs an email address")
    if ttl <= timedelta(0):
        raise ValueError("a signed link needs a positive lifetime")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == TOKEN_PARAM for name, _ in pairs):
        raise ValueError(f"the URL already has a {TOKEN_PARAM!r} parameter")
    expires = int((_aware(now) + ttl).timestamp())
    message = _message(email, _canonical(parts.scheme, parts.netloc, parts.path, pairs), expires)
    mac = _signer().sign(tenant_id, PURPOSE, message)
    token = f"{_b64(email.encode())}.{expires}.{_b64(mac)}"
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(
        (parts.scheme, parts.netloc, parts.path, f"{query}{TOKEN_PARAM}={token}", parts.fragment)
    )


def verify_link(url: str, *, tenant_id: uuid.UUID, now: datetime) -> str:
    """The email a link was signed for by this tenant; InvalidLink if another tenant signed it,
    or it was altered, or it has expired."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    tokens = [value for name, value in pairs if name == TOKEN_PARAM]
    if len(tokens) != 1:
        raise InvalidLink("the link has no token" if not tokens else "the link has two tokens")
    match = _TOKEN.fullmatch(tokens[0])
    if match is None:
        raise InvalidLink("the link's token is malformed")
    try:
        email = _unb64(match["email"]).decode("utf-8")
        mac = _unb64(match["mac"])
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidLink("the link's token is malformed") from exc
    expires = int(match["expires"])
    rest = [(name, value) for name, value in pairs if name != TOKEN_PARAM]
    message = _message(email, _canonical(parts.scheme, parts.netloc, parts.path, rest), expires)
    if not _signer().verify(tenant_id, PURPOSE, message, mac):
        raise InvalidLink("the link's signature does not match")
    if _aware(now).timestamp() >= expires:
        raise InvalidLink("the link has expired")
    return email
